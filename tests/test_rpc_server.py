"""The RPC server over real mutual TLS: every status code, handlers, auth, proxies."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import requests
import treq
from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.python import threadable
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from ccnet.config import TLSConfig
from ccnet.edge.client import ClientPolicy
from ccnet.rpc import S_ERROR, S_OK, RPCService, blocking
from ccnet.rpc.codec import encode
from ccnet.tls import TLSMaterial
from tests.test_rpc_fixtures import ADMIN_DN, CLIENT_DN, RPCSite, make_proxy, start_rpc_site

SERVICES = """
[rpc:Test/Service]
class = tests.test_rpc_server:SampleService
auth.configured = CSAdministrator
Colour = blue
Retries = 3
"""


class SampleService(RPCService):
    """A service written the DIRAC way, with one export per behaviour under test."""

    auth_add = ["all"]
    types_add = [int, int]
    auth_fail = ["authenticated"]
    auth_adminOnly = ["CSAdministrator"]
    auth_option = ["all"]

    def export_add(self, a: int, b: int) -> dict[str, Any]:
        return S_OK(a + b)

    def export_fail(self) -> dict[str, Any]:
        return dict(S_ERROR("it went wrong"), CallStack=["secret frame"])

    def export_crash(self) -> None:
        raise RuntimeError("handler bug with a secret")

    def export_adminOnly(self) -> str:  # noqa: N802
        return "welcome"

    def export_configured(self) -> str:
        return "configured"

    def export_option(self) -> list[Any]:
        return [self.srv_getCSOption("Colour"), self.srv_getCSOption("Retries", 0),
                self.srv_getCSOption("Missing", "dflt"), self.srv_getServiceName()]

    def export_plainValue(self) -> dict[str, Any]:  # noqa: N802
        return {"a": (1, 2), "b": b"\x00"}

    def export_unencodable(self) -> object:
        return object()


def client_agent(site: RPCSite, who: str | None = "client") -> Agent:
    pki = site.pki
    if who is None:
        from twisted.internet import ssl

        trust = ssl.Certificate.loadPEM(pki.ca_cert.read_bytes())

        @implementer(IPolicyForHTTPS)
        class Anonymous:
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802
                return ssl.optionsForClientTLS(hostname.decode(), trustRoot=trust)

        policy: Any = Anonymous()
    else:
        material = TLSMaterial(TLSConfig(ca=pki.ca_cert, cert=pki.cert(who), key=pki.key(who),
                                         crl=None, min_version="1.2", allow_proxies=False))
        policy = ClientPolicy(material)
    return Agent(reactor, contextFactory=policy, pool=HTTPConnectionPool(reactor, persistent=False))


async def call(
    site: RPCSite,
    fields: dict[str, str] | None,
    *,
    service: str = "Test/Service",
    who: str | None = "client",
    method: str = "POST",
    data: bytes | None = None,
) -> tuple[int, Any, Any]:
    """POST (or ``method``) to the site; return (status, headers, decoded JSON body)."""
    agent = client_agent(site, who)
    body: Any = data if data is not None else fields
    response = await treq.request(method, site.url(service), data=body, agent=agent)
    content = await treq.content(response)
    ctype = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return response.code, response.headers, (json.loads(content) if ctype == b"application/json" else content)


class StatusCodeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = start_rpc_site(self, SERVICES)

    def assertSError(self, body: Any) -> None:
        self.assertIsInstance(body, dict)
        self.assertIs(body["OK"], False)
        self.assertIsInstance(body["Message"], str)
        self.assertNotIn("CallStack", body)

    async def test_handled_call_S_OK_is_200(self) -> None:
        status, headers, body = await call(self.site, {"method": "add", "args": encode([2, 3])})
        self.assertEqual((status, body), (200, {"OK": True, "Value": 5}))

    async def test_handled_call_S_ERROR_is_200_without_callstack(self) -> None:
        status, _, body = await call(self.site, {"method": "fail"})
        self.assertEqual(status, 200)
        self.assertSError(body)
        self.assertEqual(body["Message"], "it went wrong")

    async def test_missing_method_is_400(self) -> None:
        status, _, body = await call(self.site, {"args": "[]"})
        self.assertEqual(status, 400)
        self.assertSError(body)

    async def test_undecodable_args_are_400(self) -> None:
        status, _, body = await call(self.site, {"method": "add", "args": "[1, 2"})
        self.assertEqual(status, 400)
        self.assertSError(body)

    async def test_not_authorized_is_401_not_403(self) -> None:
        status, _, body = await call(self.site, {"method": "adminOnly"})
        self.assertEqual(status, 401)
        self.assertSError(body)
        self.assertIn(CLIENT_DN, body["Message"])
        status, _, body = await call(self.site, {"method": "adminOnly"}, who="admin")
        self.assertEqual((status, body["Value"]), (200, "welcome"))

    async def test_config_rule_overrides_default(self) -> None:
        status, _, _ = await call(self.site, {"method": "configured"})
        self.assertEqual(status, 401)
        status, _, body = await call(self.site, {"method": "configured"}, who="admin")
        self.assertEqual((status, body["Value"]), (200, "configured"))

    async def test_unknown_service_is_404(self) -> None:
        status, _, body = await call(self.site, {"method": "ping"}, service="Test/Nothing")
        self.assertEqual(status, 404)
        self.assertSError(body)
        status, _, body = await call(self.site, {"method": "ping"}, service="")
        self.assertEqual(status, 404)
        self.assertSError(body)

    async def test_get_is_405_with_allow_header(self) -> None:
        status, headers, body = await call(self.site, None, method="GET")
        self.assertEqual(status, 405)
        self.assertEqual(headers.getRawHeaders(b"allow"), [b"POST"])
        self.assertSError(body)

    async def test_body_over_limit_is_413(self) -> None:
        site = start_rpc_site(self, SERVICES, rpc_options="max-body = 64 KB")
        big = b"method=ping&args=" + b"1" * (70 * 1024)
        status, _, body = await call(site, None, data=big)
        self.assertEqual(status, 413)
        self.assertSError(body)
        # The connection-level limit did not break normal calls.
        status, _, body = await call(site, {"method": "ping"})
        self.assertEqual(status, 200)

    async def test_handler_exception_is_500_with_short_message(self) -> None:
        status, _, body = await call(self.site, {"method": "crash"})
        self.assertEqual(status, 500)
        self.assertSError(body)
        self.assertNotIn("secret", body["Message"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_unencodable_result_is_500(self) -> None:
        status, _, body = await call(self.site, {"method": "unencodable"})
        self.assertEqual(status, 500)
        self.assertSError(body)

    async def test_unknown_method_is_501(self) -> None:
        status, _, body = await call(self.site, {"method": "nosuch"})
        self.assertEqual(status, 501)
        self.assertEqual(body["Message"], "nosuch is not implemented")

    async def test_types_mismatch_is_handled_S_ERROR(self) -> None:
        status, _, body = await call(self.site, {"method": "add", "args": encode(["2", 3])})
        self.assertEqual(status, 200)
        self.assertSError(body)

    async def test_plain_value_is_wrapped_and_jencoded(self) -> None:
        status, _, body = await call(self.site, {"method": "plainValue"})
        self.assertEqual(body, {"OK": True, "Value": {"a": [1, 2], "b": {"__dCls": "b64", "obj": "AA=="}}})

    async def test_cs_options_reach_the_service(self) -> None:
        _, _, body = await call(self.site, {"method": "option"})
        self.assertEqual(body["Value"], ["blue", 3, "dflt", "Test/Service"])


class TrustedHeaderTests(unittest.TestCase):
    """trust-ssl-headers: a TLS-terminating proxy passes the client certificate on."""

    async def _whoami_with_admin_header(self, site: RPCSite, sender: str = "server") -> Any:
        from urllib.parse import quote

        pem = quote(site.pki.cert("admin").read_text())
        agent = client_agent(site, sender)
        response = await treq.post(
            site.url(), data={"method": "whoami"}, agent=agent,
            headers={"X-SSL-CERT": pem, "X-Ssl_client_verify": "SUCCESS"},
        )
        return await response.json()

    async def test_header_identity_used_only_when_configured(self) -> None:
        trusting = start_rpc_site(self, SERVICES, rpc_options="trust-ssl-headers = yes")
        self.assertEqual((await self._whoami_with_admin_header(trusting))["Value"]["DN"], ADMIN_DN)
        default = start_rpc_site(self, SERVICES)
        self.assertEqual((await self._whoami_with_admin_header(default, "client"))["Value"]["DN"], CLIENT_DN)

    async def test_header_from_a_peer_without_trusted_host_is_ignored(self) -> None:
        trusting = start_rpc_site(self, SERVICES, rpc_options="trust-ssl-headers = yes")
        body = await self._whoami_with_admin_header(trusting, "client")
        self.assertEqual(body["Value"]["DN"], CLIENT_DN)


class AnonymousListenerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = start_rpc_site(self, SERVICES, allow_anonymous=True)

    async def test_no_certificate_is_401_for_authenticated_methods(self) -> None:
        status, _, body = await call(self.site, {"method": "whoami"}, who=None)
        self.assertEqual(status, 401)
        self.assertIs(body["OK"], False)

    async def test_no_certificate_may_call_methods_open_to_all(self) -> None:
        status, _, body = await call(self.site, {"method": "ping"}, who=None)
        self.assertEqual(status, 200)
        self.assertEqual(body["Value"]["name"], "Test/Service")


class BuiltinTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = start_rpc_site(self, SERVICES)

    async def test_ping_reports_DIRAC_fields(self) -> None:
        _, _, body = await call(self.site, {"method": "ping"})
        value = body["Value"]
        for key in ("version", "time", "host uptime", "service start time", "service uptime",
                    "load", "name", "URL", "cpu times"):
            self.assertIn(key, value)
        self.assertEqual(value["time"]["__dCls"], "dt")
        self.assertEqual(value["URL"], f"https://localhost:{self.site.port_number}/Test/Service")
        with open("/proc/uptime") as handle:  # what DIRAC reads; ccnet asks the clock
            self.assertLess(abs(value["host uptime"] - float(handle.read().split()[0])), 5)

    async def test_ping_load_is_loadavg_text_and_URL_the_address_the_client_used(self) -> None:
        # DIRAC: load = the first three fields of /proc/loadavg; URL = Tornado's full_url().
        agent = client_agent(self.site)
        url = self.site.url(host="127.0.0.1")
        response = await treq.post(url, data={"method": "ping"}, agent=agent)
        value = json.loads(await treq.content(response))["Value"]
        self.assertRegex(value["load"], r"^\d+\.\d+ \d+\.\d+ \d+\.\d+\Z")
        self.assertEqual(value["URL"], url)

    async def test_nan_and_infinity_round_trip_as_DIRAC_JEncode(self) -> None:
        status, _, body = await call(self.site, {"method": "echo", "args": "[[NaN, Infinity, -Infinity]]"})
        self.assertEqual(status, 200)
        nan, inf, minus_inf = body["Value"]
        self.assertTrue(math.isnan(nan))
        self.assertEqual((inf, minus_inf), (math.inf, -math.inf))

    async def test_hosts_extra_credentials_from_a_user_certificate_is_a_visitor(self) -> None:
        # DIRAC clients with useCertificates=True send extraCredentials="hosts" from any certificate.
        status, _, body = await call(self.site, {"method": "ping", "extraCredentials": '"hosts"'})
        self.assertEqual(status, 200, body)
        status, _, body = await call(self.site, {"method": "add", "args": "[1, 2]",
                                                 "extraCredentials": '"hosts"'})
        self.assertEqual((status, body["Value"]), (200, 3))
        status, _, body = await call(self.site, {"method": "whoami", "extraCredentials": '"hosts"'})
        self.assertEqual(status, 401)
        self.assertIs(body["OK"], False)
        status, _, body = await call(self.site, {"method": "adminOnly", "extraCredentials": '"hosts"'},
                                     who="admin")
        self.assertEqual(status, 401)

    async def test_echo_returns_its_argument(self) -> None:
        arg = [1, "two", {"__dCls": "date", "obj": "2020-01-02"}]
        _, _, body = await call(self.site, {"method": "echo", "args": json.dumps([arg])})
        self.assertEqual(body["Value"], arg)

    def test_seed_requests_example_whoami(self) -> None:
        """The seed's plain ``requests.post`` works unchanged against ccnet."""
        url = self.site.url()
        crt, key = self.site.pki.pair("client")
        ca = str(self.site.pki.ca_cert)

        def seed() -> Any:
            kwargs = {"method": "whoami"}
            with requests.post(url, data=kwargs, cert=(crt, key), verify=ca) as r:
                return r.status_code, r.json()

        d = deferToThread(seed)

        def check(result: tuple[int, Any]) -> None:
            status, reply = result
            self.assertEqual(status, 200)
            self.assertTrue(reply["OK"])
            value = reply["Value"]
            self.assertEqual(value["DN"], CLIENT_DN)
            self.assertEqual(value["identity"], CLIENT_DN)
            self.assertEqual(value["subject"], CLIENT_DN)
            self.assertEqual(value["issuer"], "/C=IT/O=ccnet/CN=ccnet test CA")
            self.assertEqual(value["username"], "client")
            self.assertEqual(value["group"], "dirac_user")
            self.assertEqual(value["properties"], ["NormalUser"])
            self.assertIs(value["isProxy"], False)
            self.assertIs(value["isLimitedProxy"], False)
            self.assertIs(value["validDN"], True)
            self.assertIs(value["validGroup"], True)
            self.assertGreater(value["secondsLeft"], 86400)

        return d.addCallback(check)


PROXY_SERVICES = """
[rpc:Test/Service]
class = tests.test_rpc_server:SampleService
"""


class ProxyTests(unittest.TestCase):
    def _whoami(self, site: RPCSite, proxy: Path) -> defer.Deferred[Any]:
        url, ca = site.url(), str(site.pki.ca_cert)

        def post() -> Any:
            # DIRAC style: one file with proxy, key and the identity certificate.
            with requests.post(url, data={"method": "whoami"}, cert=str(proxy), verify=ca) as r:
                return r.status_code, r.json()

        return deferToThread(post)

    async def test_proxy_is_reported_with_identity_dn(self) -> None:
        site = start_rpc_site(self, PROXY_SERVICES, allow_proxies=True)
        proxy = make_proxy(site.pki, "client", Path(self.mktemp()))
        status, reply = await self._whoami(site, proxy)
        self.assertEqual(status, 200, reply)
        value = reply["Value"]
        self.assertIs(value["isProxy"], True)
        self.assertIs(value["isLimitedProxy"], False)
        self.assertEqual(value["DN"], CLIENT_DN)
        self.assertEqual(value["identity"], CLIENT_DN)
        self.assertEqual(value["issuer"], CLIENT_DN)
        self.assertTrue(value["subject"].startswith(CLIENT_DN + "/CN="))
        self.assertEqual(value["username"], "client")

    async def test_limited_proxy_is_flagged(self) -> None:
        site = start_rpc_site(self, PROXY_SERVICES, allow_proxies=True)
        proxy = make_proxy(site.pki, "client", Path(self.mktemp()), limited=True)
        status, reply = await self._whoami(site, proxy)
        self.assertEqual(status, 200, reply)
        self.assertIs(reply["Value"]["isLimitedProxy"], True)

    async def test_rpc_refuses_proxy_with_401_when_its_own_setting_says_no(self) -> None:
        # TLS lets proxies through (for other listeners), [rpc] allow-proxies = no refuses them.
        site = start_rpc_site(self, PROXY_SERVICES, allow_proxies=True, rpc_options="allow-proxies = no")
        proxy = make_proxy(site.pki, "client", Path(self.mktemp()))
        status, reply = await self._whoami(site, proxy)
        self.assertEqual(status, 401)
        self.assertIn("proxy", reply["Message"])

    async def test_proxy_rejected_when_not_allowed(self) -> None:
        site = start_rpc_site(self, PROXY_SERVICES, allow_proxies=False)
        proxy = make_proxy(site.pki, "client", Path(self.mktemp()))
        with self.assertRaises(requests.exceptions.RequestException):
            await self._whoami(site, proxy)


class ConcurrencyService(RPCService):
    """initializeHandler waits for the test to release it; counts its runs."""

    init_runs = 0
    release: defer.Deferred[None] | None = None
    gate = threading.Event()

    @classmethod
    def initializeHandler(cls, serviceInfo: dict[str, Any]) -> defer.Deferred[None]:  # noqa: N802, N803
        ConcurrencyService.init_runs += 1
        cls.ready = serviceInfo["serviceName"]
        d: defer.Deferred[None] = defer.Deferred()
        ConcurrencyService.release = d
        return d

    auth_ready = ["all"]

    def export_ready(self) -> str:
        return str(self.ready)

    auth_later = ["all"]

    def export_later(self, value: int) -> defer.Deferred[dict[str, Any]]:
        return task.deferLater(reactor, 0, lambda: S_OK(value * 2))

    auth_threaded = ["all"]

    @blocking
    def export_threaded(self) -> str:
        # Holds a pool thread until the test has shown the reactor still serves calls.
        if not ConcurrencyService.gate.wait(10):
            return "gate never opened"
        return threading.current_thread().name

    auth_coroutine = ["all"]

    async def export_coroutine(self) -> str:
        await task.deferLater(reactor, 0, lambda: None)
        return "awaited"


CONCURRENCY = """
[rpc:Test/Concurrent]
class = tests.test_rpc_server:ConcurrencyService
"""


class HandlerTests(unittest.TestCase):
    def setUp(self) -> None:
        ConcurrencyService.init_runs = 0
        ConcurrencyService.release = None
        ConcurrencyService.gate.clear()
        self.site = start_rpc_site(self, CONCURRENCY)

    async def test_initialize_handler_runs_once_under_concurrent_first_requests(self) -> None:
        calls = [
            defer.ensureDeferred(call(self.site, {"method": "ready"}, service="Test/Concurrent"))
            for _ in range(8)
        ]
        # Wait until the first request reached initializeHandler, then let the others queue.
        while ConcurrencyService.release is None:
            await task.deferLater(reactor, 0.01, lambda: None)
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(ConcurrencyService.init_runs, 1)
        self.assertFalse(any(c.called for c in calls))
        ConcurrencyService.release.callback(None)
        results = await defer.gatherResults(calls)
        self.assertEqual([r[2]["Value"] for r in results], ["Test/Concurrent"] * 8)
        self.assertEqual(ConcurrencyService.init_runs, 1)

    async def _initialized(self) -> None:
        first = defer.ensureDeferred(call(self.site, {"method": "ready"}, service="Test/Concurrent"))
        while ConcurrencyService.release is None:
            await task.deferLater(reactor, 0.01, lambda: None)
        ConcurrencyService.release.callback(None)
        await first

    async def test_deferred_and_coroutine_exports(self) -> None:
        await self._initialized()
        _, _, body = await call(self.site, {"method": "later", "args": "[21]"}, service="Test/Concurrent")
        self.assertEqual(body["Value"], 42)
        _, _, body = await call(self.site, {"method": "coroutine"}, service="Test/Concurrent")
        self.assertEqual(body["Value"], "awaited")

    async def test_blocking_export_runs_in_pool_while_reactor_serves(self) -> None:
        await self._initialized()
        slow = defer.ensureDeferred(call(self.site, {"method": "threaded"}, service="Test/Concurrent"))
        # While the blocking export holds its thread, other calls are answered.
        status, _, body = await call(self.site, {"method": "ping"}, service="Test/Concurrent")
        self.assertEqual(status, 200)
        self.assertFalse(slow.called)
        ConcurrencyService.gate.set()
        _, _, body = await slow
        self.assertIn("rpc-test", body["Value"])


class InitFailureService(RPCService):
    attempts = 0

    @classmethod
    def initializeHandler(cls, serviceInfo: dict[str, Any]) -> None:  # noqa: N802, N803
        InitFailureService.attempts += 1
        if InitFailureService.attempts == 1:
            raise OSError("database not there yet")

    auth_hello = ["all"]

    def export_hello(self) -> str:
        return "hi"


class InitFailureTests(unittest.TestCase):
    async def test_failed_initialize_is_500_and_retried_next_request(self) -> None:
        InitFailureService.attempts = 0
        site = start_rpc_site(self, "[rpc:Test/Init]\nclass = tests.test_rpc_server:InitFailureService\n")
        status, _, body = await call(site, {"method": "hello"}, service="Test/Init")
        self.assertEqual(status, 500)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        status, _, body = await call(site, {"method": "hello"}, service="Test/Init")
        self.assertEqual((status, body["Value"]), (200, "hi"))


class FinishService(RPCService):
    """``finish_<method>`` hooks; ``runs`` records which export/hook bodies ran."""

    auth_Default = ["all"]
    auth_guarded = ["CSAdministrator"]
    runs: list[str] = []

    @blocking
    def export_threaded(self, value: int) -> dict[str, Any]:
        return S_OK({"value": value, "thread": threading.get_ident()})

    def finish_threaded(self) -> dict[str, Any]:
        return S_OK({"export": self.result["Value"], "thread": threading.get_ident(),
                     "io thread": threadable.isInIOThread()})

    def export_refused(self) -> dict[str, Any]:
        return S_ERROR("refused by the export")

    def finish_refused(self) -> str:
        return f"finish saw: {self.result['Message']}"

    def export_later(self) -> defer.Deferred[str]:
        return task.deferLater(reactor, 0, lambda: "export value")

    def finish_later(self) -> defer.Deferred[dict[str, Any]]:
        return task.deferLater(reactor, 0, lambda: S_OK(self.result.upper()))

    def export_broken(self) -> str:
        return "fine"

    def finish_broken(self) -> None:
        raise RuntimeError("finish bug with a secret")

    def export_brokenLater(self) -> str:  # noqa: N802
        return "fine"

    def finish_brokenLater(self) -> defer.Deferred[None]:  # noqa: N802
        return defer.fail(ValueError("late finish bug"))

    def export_crash(self) -> None:
        raise RuntimeError("export bug")

    def finish_crash(self) -> str:
        FinishService.runs.append("finish crash")
        return "never sent"

    def export_guarded(self) -> str:
        FinishService.runs.append("export guarded")
        return "guarded"

    def finish_guarded(self) -> str:
        FinishService.runs.append("finish guarded")
        return f"finished {self.result}"

    def export_plain(self) -> dict[str, Any]:
        return S_OK("default reply")


FINISH = """
[rpc:Test/Finish]
class = tests.test_rpc_server:FinishService
"""


class FinishHookTests(unittest.TestCase):
    def setUp(self) -> None:
        FinishService.runs = []
        self.site = start_rpc_site(self, FINISH)

    async def _call(self, method: str, args: str = "[]", who: str = "client") -> tuple[int, Any]:
        status, _, body = await call(self.site, {"method": method, "args": args},
                                     service="Test/Finish", who=who)
        return status, body

    async def test_hook_replies_from_the_result_on_the_reactor_thread(self) -> None:
        reactor_thread = threading.get_ident()  # trial runs the test on the reactor thread
        status, body = await self._call("threaded", "[7]")
        self.assertEqual(status, 200)
        value = body["Value"]
        self.assertEqual(value["export"]["value"], 7)
        self.assertNotEqual(value["export"]["thread"], reactor_thread)
        self.assertEqual(value["thread"], reactor_thread)
        self.assertIs(value["io thread"], True)

    async def test_hook_sees_an_S_ERROR_result_too(self) -> None:
        status, body = await self._call("refused")
        self.assertEqual((status, body), (200, {"OK": True, "Value": "finish saw: refused by the export"}))

    async def test_hook_may_return_a_deferred(self) -> None:
        status, body = await self._call("later")
        self.assertEqual((status, body), (200, {"OK": True, "Value": "EXPORT VALUE"}))

    async def test_hook_failure_is_500_and_service_keeps_serving(self) -> None:
        status, body = await self._call("broken")
        self.assertEqual(status, 500)
        self.assertIs(body["OK"], False)
        self.assertNotIn("secret", body["Message"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        status, body = await self._call("brokenLater")
        self.assertEqual(status, 500)
        self.assertIs(body["OK"], False)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        status, body = await self._call("later")
        self.assertEqual((status, body["Value"]), (200, "EXPORT VALUE"))

    async def test_hook_does_not_run_when_the_export_raises(self) -> None:
        status, body = await self._call("crash")
        self.assertEqual(status, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(FinishService.runs, [])

    async def test_authorization_comes_before_export_and_hook(self) -> None:
        status, body = await self._call("guarded")
        self.assertEqual(status, 401)
        self.assertEqual(FinishService.runs, [])
        status, body = await self._call("guarded", who="admin")
        self.assertEqual((status, body["Value"]), (200, "finished guarded"))
        self.assertEqual(FinishService.runs, ["export guarded", "finish guarded"])

    async def test_method_without_hook_gets_the_default_reply(self) -> None:
        status, body = await self._call("plain")
        self.assertEqual((status, body), (200, {"OK": True, "Value": "default reply"}))


class WhoamiAdminTests(unittest.TestCase):
    async def test_admin_properties(self) -> None:
        site = start_rpc_site(self, SERVICES)
        _, _, body = await call(site, {"method": "whoami"}, who="admin")
        self.assertEqual(body["Value"]["DN"], ADMIN_DN)
        self.assertEqual(body["Value"]["properties"], ["CSAdministrator", "NormalUser"])
