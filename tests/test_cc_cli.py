"""ccnet-cc send / listen against real servers."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from ccnet.cc.cli import main
from tests.test_cc_crypto import make_keystore
from tests.test_cc_server import ServerTestCase, echo_config, free_port


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), out, err)
    return rc, out.getvalue(), err.getvalue()


class SendTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_send_prints_the_echo_response(self) -> Any:
        srv = self.start(echo_config())
        rc, out, _ = yield threads.deferToThread(
            run_cli, "send", "echo.request", '{"target": "cli"}', "--endpoint", srv.endpoint
        )
        self.assertEqual(rc, 0)
        reply = json.loads(out)
        self.assertEqual(reply["type"], "echo.response")
        self.assertEqual(reply["body"]["orig_target"], "cli")

    @defer.inlineCallbacks
    def test_error_reply_gives_exit_status_1(self) -> Any:
        srv = self.start(echo_config())
        rc, out, _ = yield threads.deferToThread(
            run_cli, "send", "pub.nothing", "{}", "--endpoint", srv.endpoint
        )
        self.assertEqual(rc, 1)
        self.assertIn("no route", json.loads(out)["body"]["msg"])

    @defer.inlineCallbacks
    def test_signed_send_with_blob_and_verified_reply(self) -> Any:
        ks = make_keystore(Path(self.mktemp()))
        srv = self.start(echo_config(extra=f"cms-keystore = {ks}\ncms-verify-ca = ca\ncms-sign = server"))
        blob = Path(self.mktemp())
        blob.write_bytes(b"payload")
        rc, out, _ = yield threads.deferToThread(
            run_cli, "send", "echo.request", "{}", "--endpoint", srv.endpoint, "--blob", str(blob),
            "--keystore", str(ks), "--sign", "client", "--verify-ca", "ca",
        )
        self.assertEqual(rc, 0, out)
        reply = json.loads(out)
        self.assertTrue(reply["signed"])
        self.assertEqual(reply["signer"]["cn"], "server")

    @defer.inlineCallbacks
    def test_config_file_gives_endpoint_and_keys(self) -> Any:
        ks = make_keystore(Path(self.mktemp()).absolute())
        srv = self.start(echo_config(extra=f"cms-keystore = {ks}\ncms-verify-ca = ca\ncms-sign = server"))
        ini = Path(self.mktemp())
        # what a local client on the server's host would read: same keys, real port
        ini.write_text(
            f"[cc]\ncc-socket = {srv.endpoint}\ncms-keystore = {ks}\ncms-sign = client\ncms-verify-ca = ca\n"
        )
        rc, out, err = yield threads.deferToThread(run_cli, "send", "echo.request", "{}", "--config", str(ini))
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["signer"]["cn"], "server")
        rc, _, err = yield threads.deferToThread(run_cli, "send", "echo", "{}", "--config", str(ks / "ca.crt"))
        self.assertEqual(rc, 2)

    @defer.inlineCallbacks
    def test_keystore_flag_keeps_the_other_cms_keys_of_the_config_and_encrypted_reply_is_signed(self) -> Any:
        ks = make_keystore(Path(self.mktemp()).absolute())
        srv = self.start(echo_config(extra=f"cms-keystore = {ks}\ncms-verify-ca = ca\ncms-sign = server\n"
                                           "cms-decrypt = server\ncms-encrypt = client"))
        ini = Path(self.mktemp())
        ini.write_text(f"[cc]\ncc-socket = {srv.endpoint}\ncms-keystore = {ks}\n"
                       "cms-sign = client\ncms-encrypt = server\ncms-verify-ca = ca\ncms-decrypt = client\n")
        rc, out, err = yield threads.deferToThread(
            run_cli, "send", "echo.request", '{"target": "enc"}', "--config", str(ini), "--keystore", str(ks)
        )
        self.assertEqual(rc, 0, err + out)
        reply = json.loads(out)
        self.assertEqual(reply["type"], "echo.response")
        self.assertEqual(reply["body"]["orig_target"], "enc")
        self.assertIs(reply["encrypted"], True)
        self.assertIs(reply["signed"], True)
        self.assertEqual(reply["signer"]["cn"], "server")

    def test_timeout_and_bad_arguments_exit_2(self) -> None:
        rc, _, err = run_cli("send", "echo.request", "{}", "--endpoint",
                             f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.2")
        self.assertEqual(rc, 2)
        self.assertIn("no reply", err)
        self.assertEqual(run_cli("send", "bad type", "{}")[0], 2)
        self.assertEqual(run_cli("send", "echo", "[1]")[0], 2)
        self.assertEqual(run_cli("listen", "pub.*")[0], 2)


class ListenTests(TestCase):
    @defer.inlineCallbacks
    def test_listen_prints_matching_messages_and_answers_echo(self) -> Any:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        result: dict[str, Any] = {}

        def listen() -> None:
            result["rc"], result["out"], _ = run_cli(
                "listen", "echo", "--endpoint", endpoint, "--count", "1", "--reply"
            )

        t = threading.Thread(target=listen, daemon=True)
        t.start()
        # pub.x does not match 'echo' and is skipped; echo.request is printed and answered
        rc1, _, _ = yield threads.deferToThread(
            run_cli, "send", "pub.x", "{}", "--endpoint", endpoint, "--no-wait"
        )
        rc2, out, _ = yield threads.deferToThread(
            run_cli, "send", "echo.request", '{"target": "l"}', "--endpoint", endpoint
        )
        yield threads.deferToThread(t.join, 10)
        self.assertEqual((rc1, rc2, result["rc"]), (0, 0, 0))
        seen = json.loads(result["out"])
        self.assertEqual(seen["type"], "echo.request")
        self.assertEqual(seen["body"]["target"], "l")
        self.assertEqual(json.loads(out)["body"]["orig_target"], "l")
