"""DIRAC 9.1.22's own client code, unchanged, loads its configuration from ccnet's CS.

The test builds (once per machine) a venv under /tmp with ``DIRAC==9.1.22`` and the
packages its client path imports (DIRAC's full dependency list pulls grid storage
bindings that need the gfal2 C library; the configuration client does not use them).
M2Crypto has no wheel for every Python: it builds with swig and the OpenSSL headers
(scripts/system-deps.sh). The test is skipped, with pip's reason, only when PyPI cannot
be reached.

The DIRAC client runs ``DIRAC.initialize()`` (authentication required) with a
``dirac.cfg`` naming ccnet in ``DIRAC/Configuration/Servers`` and an RFC 3820 proxy, as a
DIRAC user has; it then reads options served by ccnet through ``gConfig``, and commits a
change with DIRAC's ``CSAPI``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from diraccfg import CFG
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.support import free_port, start_service, test_pki
from tests.test_rpc_cs import CS, MASTER_CFG, daemon_config
from tests.test_rpc_fixtures import make_proxy_of

DIRAC_VERSION = "9.1.22"
DIRAC_VENV = Path("/tmp/ccnet-dirac-venv-" + DIRAC_VERSION)
# What DIRAC's configuration client and CSAPI import (its full list needs gfal2's C library).
CLIENT_PACKAGES = [
    "diraccfg==1.0.1", "M2Crypto==0.51.0", "requests==2.34.2", "pyasn1", "pyasn1-modules", "python-dateutil",
    "pytz", "cachetools", "certifi", "packaging", "psutil", "pydantic", "importlib_metadata",
    "importlib_resources", "typing_extensions", "pyparsing",
]
_UNREACHABLE = ("Could not find a version", "Failed to establish a new connection",
                "Temporary failure in name resolution", "No matching distribution", "ConnectTimeout")

_CA_BUNDLE_VARIABLES = {"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"}

CLIENT_SCRIPT = r'''
import json, sys, zlib
import DIRAC
DIRAC.initialize()   # require_auth: syncs from the CS, then whoami on it
from DIRAC import gConfig
from DIRAC.ConfigurationSystem.Client.ConfigurationData import gConfigurationData
from DIRAC.ConfigurationSystem.Client.ConfigurationClient import ConfigurationClient
report = {
    "version": gConfigurationData.getVersion(),
    "name": gConfigurationData.getName(),
    "colour": gConfig.getValue("/Systems/Framework/Colour"),
}
# the URL from DIRAC/Configuration/Servers, as DIRAC's refresher does
client = ConfigurationClient(url=gConfigurationData.getServers()[0])
history = client.getCommitHistory()
report["history"] = history
data = client.getCompressedData()
if not data["OK"]:
    print("REPORT " + json.dumps({"getCompressedData": data}))
    sys.exit(1)
cfg = zlib.decompress(data["Value"]).decode()
edited = cfg.replace("Colour = blue", "Colour = " + sys.argv[1])
report["commit"] = client.commitNewData(zlib.compress(edited.encode(), 9))
newer = client.getCompressedDataIfNewer(report["version"])
report["ifnewer"] = sorted(newer["Value"]) if newer["OK"] else newer
print("REPORT " + json.dumps(report))
'''


def ensure_dirac_venv() -> tuple[Path | None, str]:
    """(python of a venv with DIRAC's client, "") or (None, why PyPI could not be used). Blocking."""
    python = DIRAC_VENV / "bin" / "python"
    marker = DIRAC_VENV / "ccnet-ok"
    if marker.exists():
        return python, ""
    shutil.rmtree(DIRAC_VENV, ignore_errors=True)
    subprocess.run([shutil.which("python3.11") or "python3", "-m", "venv", str(DIRAC_VENV)],
                   check=True, capture_output=True, timeout=120)
    pip = [str(DIRAC_VENV / "bin" / "pip"), "install", "-q"]
    for command in ([*pip, "--no-deps", f"DIRAC=={DIRAC_VERSION}", f"DIRACCommon=={DIRAC_VERSION}"],
                    [*pip, *CLIENT_PACKAGES]):
        out = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if out.returncode != 0:
            if any(sign in out.stderr for sign in _UNREACHABLE):
                return None, f"PyPI cannot be reached: {out.stderr.strip()[-300:]}"
            raise RuntimeError(f"{' '.join(command)} failed: {out.stderr.strip()[-2000:]}")
    marker.write_text("ok")
    return python, ""


class RealDIRACClientTests(unittest.TestCase):
    timeout = 1500  # the first run builds the venv (M2Crypto compiles)

    async def test_dirac_initialize_loads_and_commits_through_ccnet(self) -> None:
        python, why = await deferToThread(ensure_dirac_venv)
        if python is None:
            raise unittest.SkipTest(why)
        pki = test_pki()
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        (folder / "master.cfg").write_text(MASTER_CFG)
        port = free_port()
        url = f"https://localhost:{port}/{CS}"
        await start_service(self, daemon_config(folder, f"sqlite:///{folder / 'var' / 'ccnet.db'}",
                                                "File = master.cfg", port), folder)
        # The admin's proxy: whoami and a commit (CSAdministrator) as a DIRAC administrator.
        proxy = make_proxy_of(pki.cert("admin"), pki.key("admin"), folder / "proxy")
        home = folder / "dirac"
        (home / "etc").mkdir(parents=True)
        (home / "etc" / "dirac.cfg").write_text(
            f"DIRAC\n{{\n  Configuration\n  {{\n    Servers = {url}\n  }}\n}}\n")
        # requests lets REQUESTS_CA_BUNDLE & co. override DIRAC's session.verify: a DIRAC
        # client trusts X509_CERT_DIR only, so the machine's bundle settings stay out.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("X509_", "DIRAC")) and k not in _CA_BUNDLE_VARIABLES}
        # grid-security style: a folder of CA certificates named by subject hash
        certificates = home / "certificates"
        certificates.mkdir()
        subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(pki.ca_cert)],
                                      capture_output=True, text=True, check=True).stdout.strip()
        shutil.copy(pki.ca_cert, certificates / f"{subject_hash}.0")
        env.update(DIRAC_ROOT_PATH=str(home), DIRACSYSCONFIG=str(home / "etc" / "dirac.cfg"),
                   X509_USER_PROXY=str(proxy), X509_CERT_DIR=str(certificates), HOME=str(home))
        (folder / "client.py").write_text(CLIENT_SCRIPT)
        done = await deferToThread(subprocess.run, [str(python), str(folder / "client.py"), "red"],
                                   capture_output=True, text=True, env=env, timeout=300, cwd=folder)
        lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
        self.assertTrue(lines, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        report: dict[str, Any] = json.loads(lines[-1][len("REPORT "):])
        served = CFG().loadFromFile(str(folder / "master.cfg"))
        self.assertEqual(report["name"], "ccnet-test")
        self.assertEqual(report["colour"], "blue")
        self.assertEqual(report["history"]["Value"], [["(file)", report["version"]]])
        self.assertTrue(report["commit"]["OK"], report["commit"])
        self.assertEqual(served.getOption("Systems/Framework/Colour"), "red")
        self.assertEqual(served.getOption("DIRAC/Configuration/Version"), report["commit"]["Value"])
        self.assertEqual(report["ifnewer"], ["data", "newestVersion"])
