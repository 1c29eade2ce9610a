"""Pure decisions: credentials, auth rules and the status code of every refusal."""

from __future__ import annotations

import datetime
import errno

from twisted.trial import unittest

from ccnet.identity import Identity, UserMap
from ccnet.rpc.codec import JCodec, encode
from ccnet.rpc.credentials import CredentialsError, build_credentials
from ccnet.rpc.dispatch import CallPlan, CallRequest, MethodTable, blocking, in_reactor, plan_call
from ccnet.rpc.result import (
    S_ERROR,
    S_OK,
    ErrorReply,
    as_return_structure,
    error_reply,
    isReturnStructure,
)
from ccnet.rpc.service import RPCService

USERS = UserMap.from_string(
    """
[user:alice]
dn = /C=IT/O=ccnet/OU=Clients/CN=alice
group = dirac_user
groups = dirac_user, dirac_admin
properties = NormalUser
vo = vo1

[user:bob]
dn = /C=IT/O=ccnet/OU=Clients/CN=bob
group = guests

[user:gateway]
dn = /C=IT/O=ccnet/OU=Hosts/CN=gateway
group = hosts
properties = TrustedHost
"""
)
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


def ident(cn: str, ou: str = "Clients", proxy: bool = False, limited: bool = False) -> Identity:
    dn = f"/C=IT/O=ccnet/OU={ou}/CN={cn}"
    return Identity(
        dn=dn,
        subject_dn=dn + ("/CN=12345" if proxy else ""),
        dotted=f"IT.ccnet.{ou}.{cn}",
        cn=cn,
        issuer_dn="/C=IT/O=ccnet/CN=CA",
        serial=1,
        not_after=NOW + datetime.timedelta(hours=1),
        is_proxy=proxy,
        is_limited_proxy=limited,
        chain=(),
    )


class Sample(RPCService):
    auth_open = ["all"]
    auth_admin = ["CSAdministrator"]
    auth_grouped = ["group:dirac_admin"]
    auth_vo = ["vo:vo1"]
    types_typed = [str, (int, float)]

    def export_open(self, *args: object) -> object:
        return args

    def export_admin(self) -> None:
        return None

    def export_grouped(self) -> None:
        return None

    def export_vo(self) -> None:
        return None

    def export_plain(self) -> None:
        return None

    def export_typed(self, name: str, amount: float) -> None:
        return None

    def export_two(self, a: object, b: object) -> None:
        return None

    @blocking
    def export_slow(self) -> None:
        return None


class AllBlocking(RPCService):
    blocking = True

    def export_a(self) -> None:
        return None

    @in_reactor
    def export_b(self) -> None:
        return None


class WithFinish(RPCService):
    def export_done(self) -> None:
        return None

    def finish_done(self) -> str:
        return "finished"

    def export_plain(self) -> None:
        return None

    finish_plain = None  # not callable: no hook

    def finish_orphan(self) -> None:  # no export_orphan: never called
        return None


def plan(method: str | None, who: Identity | None, args: str | None = None, extra: object = None,
         table: MethodTable | None = None, allow_proxies: bool = True) -> CallPlan | ErrorReply:
    req = CallRequest(method=method, args=args,
                      extra_credentials=encode(extra) if extra is not None else None)
    return plan_call(req, table or MethodTable(Sample), who, USERS, JCodec(),
                     allow_proxies=allow_proxies, now=lambda: NOW)


class ResultTests(unittest.TestCase):
    def test_shapes(self) -> None:
        self.assertEqual(S_OK(3), {"OK": True, "Value": 3})
        self.assertEqual(S_ERROR("boom"), {"OK": False, "Message": "boom", "Errno": 0})
        self.assertEqual(S_ERROR(errno.EACCES, "no")["Errno"], errno.EACCES)
        self.assertTrue(isReturnStructure(S_OK()))
        self.assertFalse(isReturnStructure({"OK": True}))
        self.assertFalse(isReturnStructure({"OK": 1, "Value": 2}))

    def test_callstack_never_leaves_and_plain_values_are_wrapped(self) -> None:
        err = dict(S_ERROR("x"), CallStack=["a"], ExecInfo=("t", "v", "tb"))
        self.assertEqual(as_return_structure(err), {"OK": False, "Message": "x", "Errno": 0})
        self.assertEqual(as_return_structure([1]), {"OK": True, "Value": [1]})

    def test_error_reply_has_status_and_errno(self) -> None:
        reply = error_reply(501, "foo is not implemented")
        self.assertEqual((reply.status, reply.body["Errno"], reply.body["OK"]), (501, errno.ENOSYS, False))


class CredentialTests(unittest.TestCase):
    def test_known_user_dict_matches_DIRAC_fields(self) -> None:
        cred = build_credentials(ident("alice"), USERS, now=lambda: NOW).cred_dict
        self.assertEqual(cred["DN"], "/C=IT/O=ccnet/OU=Clients/CN=alice")
        self.assertEqual(cred["identity"], cred["DN"])
        self.assertEqual(cred["username"], "alice")
        self.assertEqual(cred["group"], "dirac_user")
        self.assertEqual(cred["properties"], ["NormalUser"])
        self.assertEqual((cred["validDN"], cred["validGroup"]), (True, True))
        self.assertEqual(cred["secondsLeft"], 3600)
        self.assertEqual((cred["isProxy"], cred["isLimitedProxy"]), (False, False))

    def test_unknown_dn_is_anonymous_visitor(self) -> None:
        cred = build_credentials(ident("mallory"), USERS).cred_dict
        self.assertEqual((cred["username"], cred["group"], cred["validDN"]), ("anonymous", "visitor", False))

    def test_no_certificate_is_anonymous_visitor(self) -> None:
        creds = build_credentials(None, USERS)
        self.assertEqual((creds.cred_dict["username"], creds.cred_dict["group"]), ("anonymous", "visitor"))
        self.assertIsNone(creds.record)

    def test_proxy_flags_and_subject(self) -> None:
        cred = build_credentials(ident("alice", proxy=True, limited=True), USERS).cred_dict
        self.assertTrue(cred["isProxy"] and cred["isLimitedProxy"])
        self.assertEqual(cred["subject"], "/C=IT/O=ccnet/OU=Clients/CN=alice/CN=12345")
        self.assertEqual(cred["DN"], "/C=IT/O=ccnet/OU=Clients/CN=alice")

    def test_proxy_refused_when_not_allowed(self) -> None:
        self.assertRaises(CredentialsError, build_credentials, ident("alice", proxy=True), USERS,
                          allow_proxies=False)

    def test_trusted_host_may_delegate(self) -> None:
        creds = build_credentials(ident("gateway", "Hosts"), USERS,
                                  ["/C=IT/O=ccnet/OU=Clients/CN=alice", "dirac_admin"])
        self.assertEqual(creds.cred_dict["username"], "alice")
        self.assertEqual(creds.cred_dict["group"], "dirac_admin")
        self.assertEqual(creds.cred_dict["extraCredentials"],
                         ["/C=IT/O=ccnet/OU=Clients/CN=alice", "dirac_admin"])

    def test_delegation_from_untrusted_caller_is_refused(self) -> None:
        self.assertRaises(CredentialsError, build_credentials, ident("bob"), USERS,
                          ["/C=IT/O=ccnet/OU=Clients/CN=alice", "dirac_user"])

    def test_delegation_to_a_group_the_user_lacks_is_refused(self) -> None:
        self.assertRaises(CredentialsError, build_credentials, ident("gateway", "Hosts"), USERS,
                          ["/C=IT/O=ccnet/OU=Clients/CN=alice", "wheel"])

    def test_hosts_extra_credentials_from_a_user_make_an_anonymous_visitor(self) -> None:
        # DIRAC clients with useCertificates=True send "hosts" whatever their certificate.
        creds = build_credentials(ident("alice"), USERS, "hosts")
        self.assertEqual((creds.cred_dict["username"], creds.cred_dict["group"]), ("anonymous", "visitor"))
        self.assertEqual(creds.cred_dict["DN"], "/C=IT/O=ccnet/OU=Clients/CN=alice")
        self.assertEqual(creds.cred_dict["extraCredentials"], "hosts")
        self.assertIsNone(creds.record)

    def test_hosts_extra_credentials_make_a_host_group(self) -> None:
        cred = build_credentials(ident("gateway", "Hosts"), USERS, "hosts").cred_dict
        self.assertEqual(cred["group"], "hosts")


class PlanTests(unittest.TestCase):
    def assertStatus(self, outcome: CallPlan | ErrorReply, status: int) -> None:
        self.assertIsInstance(outcome, ErrorReply)
        assert isinstance(outcome, ErrorReply)
        self.assertEqual(outcome.status, status, outcome.body)
        self.assertFalse(outcome.body["OK"])

    def test_missing_method_is_400(self) -> None:
        self.assertStatus(plan(None, ident("alice")), 400)

    def test_unknown_method_is_501(self) -> None:
        out = plan("nothing", ident("alice"))
        self.assertStatus(out, 501)
        assert isinstance(out, ErrorReply)
        self.assertEqual(out.message, "nothing is not implemented")

    def test_rule_all_admits_anonymous(self) -> None:
        self.assertIsInstance(plan("open", None), CallPlan)

    def test_method_without_rules_requires_a_registered_caller(self) -> None:
        self.assertIsInstance(plan("plain", ident("bob")), CallPlan)
        self.assertStatus(plan("plain", ident("mallory")), 401)
        self.assertStatus(plan("plain", None), 401)

    def test_property_rule(self) -> None:
        self.assertStatus(plan("admin", ident("alice")), 401)
        admins = MethodTable(Sample, {"admin": ["NormalUser"]})
        self.assertIsInstance(plan("admin", ident("alice"), table=admins), CallPlan)

    def test_group_and_vo_rules(self) -> None:
        self.assertIsInstance(plan("grouped", ident("alice")), CallPlan)
        self.assertStatus(plan("grouped", ident("bob")), 401)
        self.assertIsInstance(plan("vo", ident("alice")), CallPlan)
        self.assertStatus(plan("vo", ident("bob")), 401)

    def test_config_default_and_class_default_order(self) -> None:
        table = MethodTable(Sample, {"default": ["all"]})
        self.assertIsInstance(plan("plain", None, table=table), CallPlan)
        # A class rule beats the config default; a config rule beats the class rule.
        self.assertStatus(plan("admin", ident("alice"), table=table), 401)
        self.assertEqual(MethodTable(Sample).unknown_rules, [])
        self.assertEqual(MethodTable(Sample, {"nosuch": ["all"]}).unknown_rules, ["nosuch"])

    def test_builtins_have_DIRAC_rules(self) -> None:
        table = MethodTable(Sample)
        self.assertEqual(table.get("ping").rules, ("all",))  # type: ignore[union-attr]
        self.assertEqual(table.get("whoami").rules, ("authenticated",))  # type: ignore[union-attr]
        self.assertIn("streamToClient", table.names())

    def test_bad_args_are_400(self) -> None:
        self.assertStatus(plan("open", ident("alice"), args="[1,"), 400)
        self.assertStatus(plan("open", ident("alice"), args='{"a": 1}'), 400)

    def test_args_are_decoded(self) -> None:
        out = plan("open", ident("alice"), args=encode([1, (2, 3), b"x"]))
        assert isinstance(out, CallPlan)
        self.assertEqual(out.args, (1, [2, 3], b"x"))

    def test_types_and_arity_mismatch_are_handled_S_ERROR(self) -> None:
        self.assertStatus(plan("typed", ident("alice"), args=encode(["a", "b"])), 200)
        self.assertIsInstance(plan("typed", ident("alice"), args=encode(["a", 2.5])), CallPlan)
        self.assertStatus(plan("two", ident("alice"), args=encode([1])), 200)

    def test_delegation_from_untrusted_is_401(self) -> None:
        self.assertStatus(plan("open", ident("bob"), extra=["/C=x/CN=y", "g"]), 401)

    def test_hosts_from_a_user_certificate_opens_all_methods_only(self) -> None:
        # As DIRAC's AuthManager: an invalid host is a visitor where "all" allows it.
        out = plan("open", ident("alice"), extra="hosts")
        self.assertIsInstance(out, CallPlan)
        assert isinstance(out, CallPlan)
        self.assertEqual(out.credentials.cred_dict["group"], "visitor")
        self.assertStatus(plan("plain", ident("alice"), extra="hosts"), 401)
        self.assertStatus(plan("admin", ident("alice"), extra="hosts"), 401)

    def test_blocking_marks(self) -> None:
        table = MethodTable(Sample)
        self.assertTrue(table.get("slow").blocking)  # type: ignore[union-attr]
        self.assertFalse(table.get("open").blocking)  # type: ignore[union-attr]
        many = MethodTable(AllBlocking)
        self.assertTrue(many.get("a").blocking)  # type: ignore[union-attr]
        self.assertFalse(many.get("b").blocking)  # type: ignore[union-attr]

    def test_finish_hooks(self) -> None:
        table = MethodTable(WithFinish)
        self.assertTrue(table.get("done").has_finish)  # type: ignore[union-attr]
        self.assertEqual(table.get("done").finish_attr, "finish_done")  # type: ignore[union-attr]
        self.assertFalse(table.get("plain").has_finish)  # type: ignore[union-attr]
        self.assertFalse(table.get("ping").has_finish)  # type: ignore[union-attr]
        self.assertNotIn("orphan", table.names())

    def test_raw_content_flag_from_form(self) -> None:
        req = CallRequest.from_form({b"method": [b"streamToClient"], b"rawContent": [b"True"]})
        self.assertTrue(req.raw_content)
        self.assertFalse(CallRequest.from_form({b"rawContent": [b"False"]}).raw_content)
