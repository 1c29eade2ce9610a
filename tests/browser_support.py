"""A real headless Chromium that presents a client certificate (for the web console tests).

The certificate is imported into an NSS database under a temporary HOME (Chromium on
Linux reads ``$HOME/.pki/nssdb``), the CA is trusted there, and a managed policy
(``AutoSelectCertificateForUrls``) makes Chromium present it without asking. Pages are
read with ``--dump-dom``; forms are driven through the DevTools protocol
(``--remote-debugging-port``, websocket-client). Blocking: call from a thread.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support import TestPKI, stop_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
POLICY_DIR = Path("/etc/chromium/policies/managed")
P12_PASSWORD = "ccnet-test"


def unavailable() -> str | None:
    """Why a browser test cannot run here (None: it can)."""
    if CHROMIUM is None:
        return "chromium is not installed (scripts/system-deps.sh installs it as root)"
    if shutil.which("certutil") is None or shutil.which("pk12util") is None:
        return "certutil/pk12util (libnss3-tools) are not installed"
    try:
        POLICY_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot write Chromium's managed policies in {POLICY_DIR} ({exc.strerror})"
    if not os.access(POLICY_DIR, os.W_OK):
        return f"cannot write Chromium's managed policies in {POLICY_DIR}"
    return None


class Browser:
    """Headless Chromium with the suite's certificate ``name`` as its client certificate."""

    def __init__(self, pki: TestPKI, name: str, folder: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import pkcs12

        self.home = folder / f"home-{name}"
        self.profile = folder / f"profile-{name}"
        nssdb = self.home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        self.env = {**os.environ, "HOME": str(self.home)}
        db = f"sql:{nssdb}"
        self._run(["certutil", "-N", "--empty-password", "-d", db])
        self._run(["certutil", "-A", "-n", "ccnet test CA", "-t", "C,,", "-i", str(pki.ca_cert), "-d", db])
        cert = x509.load_pem_x509_certificate(pki.cert(name).read_bytes())
        key = serialization.load_pem_private_key(pki.key(name).read_bytes(), None)
        p12 = folder / f"{name}.p12"
        p12.write_bytes(pkcs12.serialize_key_and_certificates(
            name.encode(), key, cert, None,  # type: ignore[arg-type]
            serialization.BestAvailableEncryption(P12_PASSWORD.encode())))
        self._run(["pk12util", "-i", str(p12), "-d", db, "-W", P12_PASSWORD])
        # Present the (only) certificate of this NSS db, issued by the suite's CA, to
        # https://localhost on any port without a prompt. Every Browser writes the same
        # rule (Chromium takes one file's value when several set a policy), so browsers
        # of tests running side by side never undo each other's.
        self.policy = POLICY_DIR / f"ccnet-test-{uuid.uuid4().hex}.json"
        rule = json.dumps({"pattern": "https://localhost:*", "filter": {"ISSUER": {"CN": "ccnet test CA"}}})
        self.policy.write_text(json.dumps({"AutoSelectCertificateForUrls": [rule]}))
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None
        self._id = 0

    def _run(self, argv: list[str]) -> None:
        subprocess.run(argv, env=self.env, check=True, capture_output=True, timeout=60)

    def _argv(self, *extra: str) -> list[str]:
        assert CHROMIUM is not None
        return [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", f"--user-data-dir={self.profile}",
                "--window-size=1280,800", *extra]

    def dump_dom(self, url: str) -> str:
        """The page's DOM after load, as Chromium serializes it."""
        done = subprocess.run(self._argv("--dump-dom", url), env=self.env, capture_output=True, timeout=90)
        return done.stdout.decode("utf-8", "replace")

    # ---------------------------------------------------------------- DevTools

    def start(self) -> None:
        """Chromium kept running, driven over the DevTools protocol."""
        import websocket  # websocket-client

        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        self._proc = subprocess.Popen(self._argv("--remote-debugging-port=0", "about:blank"), env=self.env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            targets = json.loads(resp.read())
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.cdp("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)

    def cdp(self, method: str, **params: Any) -> Any:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.cdp("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None  # navigating: the context went away under us
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def navigate(self, url: str) -> None:
        self.cdp("Page.navigate", url=url)
        self.wait_for(f"document.readyState === 'complete' && location.href === {json.dumps(url)}", url)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.cdp("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._proc is not None:
            stop_process(self._proc)
        self.policy.unlink(missing_ok=True)
