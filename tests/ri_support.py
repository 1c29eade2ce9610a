"""The unmodified 2014 mPlane RI fork (``../shared/peers/mplane-ri``) as a test peer.

Blocking helpers (run them through ``deferToThread`` from trial tests), in the style of
``tests.test_mplane_support``'s SDK helpers:

* ``ensure_ri_venv()``: a Python <= 3.11 venv with the RI's requirements (tornado 4.5.3,
  urllib3 1.26); ``(None, reason)`` when it cannot exist here, for ``SkipTest(reason)``;
* ``ri_certs()`` / ``ri_conf_dir()``: the RI's ``*-certs.conf`` and ``users.conf`` /
  ``caps.conf`` for the suite PKI;
* ``start_ri_supervisor()``, ``start_ri_tstat_proxy()`` + ``wait_ri_registration()``;
* ``RIClientShell``: the RI client shell (``mplane.client``) driven over pipes;
* ``start_ccnet_supervisor()``: a ccnet daemon whose supervisor RI peers can use.

The RI code always runs from the peer folder, read-only and unmodified: everything it
writes (the tstat proxy rewrites its runtime.conf) goes to copies in the test's folder.
"""

from __future__ import annotations

import codecs
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tests.support import REPO, Daemon, TestPKI, start_daemon, stop_process, tls_section
from tests.test_mplane_support import dotted

RI_DIR = REPO.parent / "shared" / "peers" / "mplane-ri"
RI_VENV = Path(os.environ.get("CCNET_MPLANE_RI_VENV", "/tmp/ccnet-mplane-ri-venv"))

# The capabilities the RI tstat proxy offers (mplane/tstat_caps.py), in registration order.
RI_TSTAT_LABELS = (
    "tstat-log_tcp_complete-core",
    "tstat-log_tcp_complete-end_to_end",
    "tstat-log_tcp_complete-tcp_options",
    "tstat-log_tcp_complete-p2p_stats",
    "tstat-log_tcp_complete-layer7",
)
PROMPT = "|mplane| "
# fill_spec's questions, written without a newline before input(): "|when| = ", "|param| NAME = ".
QUESTION = re.compile(r"\|(?:when|param)\|(?: [^\n|]*)? = \Z")
_VENV_LOCK = threading.Lock()


# ---------------------------------------------------------------------------
# venv


def _interpreter() -> tuple[str | None, str]:
    """A python between 3.8 and 3.11 (the RI proxy calls ssl.wrap_socket, gone in 3.12)."""
    seen = []
    for name in ("python3.11", "python3.10", "python3.9", "python3.8", "python3"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode != 0:  # e.g. a pyenv shim for a version that is not installed
            continue
        version = tuple(int(x) for x in out.stdout.strip().split("."))
        seen.append(f"{name}={out.stdout.strip()}")
        if (3, 8) <= version <= (3, 11):
            return path, ""
    return None, ("no Python 3.8-3.11 found for the mPlane RI (its tstat proxy needs ssl.wrap_socket, "
                  f"removed in 3.12; found: {', '.join(seen) or 'none'})")


def ensure_ri_venv() -> tuple[Path | None, str]:
    """(python of a venv with the RI's requirements.txt, "") or (None, why not). Blocking.

    The venv lives in ``$CCNET_MPLANE_RI_VENV`` (default /tmp/ccnet-mplane-ri-venv); a
    marker holding the hash of requirements.txt says it is complete, a file lock keeps
    concurrent test processes from building it twice."""
    requirements = RI_DIR / "requirements.txt"
    if not (RI_DIR / "mplane" / "supervisor.py").exists() or not requirements.exists():
        return None, f"the mPlane RI peer is not at {RI_DIR} (expected beside the repository)"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    python = RI_VENV / "bin" / "python"
    marker = RI_VENV / "ccnet-ok"
    with _VENV_LOCK:
        if marker.exists() and marker.read_text() == digest and python.exists():
            return python, ""
        interp, why = _interpreter()
        if interp is None:
            return None, why
        RI_VENV.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{RI_VENV}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if marker.exists() and marker.read_text() == digest and python.exists():
                return python, ""
            try:
                shutil.rmtree(RI_VENV, ignore_errors=True)
                subprocess.run([interp, "-m", "venv", str(RI_VENV)], check=True, capture_output=True,
                               timeout=120)
                out = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
                                     capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.SubprocessError) as exc:
                return None, f"cannot create the mPlane RI venv {RI_VENV}: {exc}"
            if out.returncode != 0:
                return None, f"pip install -r {requirements} failed: {out.stderr.strip()[-500:]}"
            marker.write_text(digest)
    return python, ""


# ---------------------------------------------------------------------------
# configuration files


def ri_certs(folder: Path, pki: TestPKI, name: str) -> Path:
    """``folder/<name>-certs.conf`` naming the suite certificate ``name`` (the RI splits
    each line on "= ", so the lines read exactly ``cert= PATH``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-certs.conf"
    path.write_text(f"cert= {pki.cert(name)}\nkey= {pki.key(name)}\nca-chain= {pki.ca_cert}\n")
    return path


def ri_conf_dir(folder: Path, users: Mapping[str, Sequence[str]],
                caps: Mapping[str, Sequence[str]]) -> Path:
    """``folder`` with an RI ``users.conf`` (``identity: role, role``) and ``caps.conf``
    (``label, component-identity: role, role``), for ``MPLANE_CONF_DIR``. The RI reads
    ``line[0]`` of every line, so there are no blank lines; ccnet reads the same format."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in (("users.conf", users), ("caps.conf", caps)):
        lines = [f"{key}: {', '.join(roles)}\n" for key, roles in table.items()]
        (folder / name).write_text("# written by tests/ri_support.py\n" + "".join(lines))
    return folder


def ri_tstat_caps(pki: TestPKI, component: str = "component", roles: Sequence[str] = ("guest",),
                  labels: Sequence[str] = RI_TSTAT_LABELS) -> dict[str, list[str]]:
    """caps.conf entries granting ``roles`` the RI tstat proxy's capabilities on ``component``."""
    ident = dotted(pki, component)
    return {f"{label}, {ident}": list(roles) for label in labels}


def ri_env(folder: Path, conf_dir: Path | None) -> dict[str, str]:
    """The environment of an RI process: its package on the path, an empty HOME (sec.py
    looks for users.conf in /etc/mplane, then $HOME, then $MPLANE_CONF_DIR)."""
    home = folder / "ri-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MPLANE_CONF_DIR", "NOTIFY_SOCKET")}
    env.update(PYTHONPATH=str(RI_DIR), HOME=str(home), TERM="dumb", PYTHONUNBUFFERED="1",
               PYTHONDONTWRITEBYTECODE="1")  # the peer folder is read-only
    if conf_dir is not None:
        env["MPLANE_CONF_DIR"] = str(conf_dir)
    return env


def _check_etc_mplane() -> None:
    for name in ("users.conf", "caps.conf"):
        if Path("/etc/mplane", name).exists():
            raise RuntimeError(f"/etc/mplane/{name} exists: the RI would read it instead of the test's")


def log_tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return text[-chars:]


# ---------------------------------------------------------------------------
# RI supervisor


def wait_tls(port: int, pki: TestPKI, proc: subprocess.Popen[Any] | None = None, log: Path | None = None,
             name: str = "client", host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Until ``host:port`` completes a mutual-TLS handshake with the suite certificate ``name``."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(pki.cert(name)), str(pki.key(name)))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {host}:{port} accepted TLS:\n"
                               + (log_tail(log) if log else ""))
        try:
            with socket.create_connection((host, port), timeout=2) as sock, \
                    ctx.wrap_socket(sock, server_hostname=host):
                return
        except ssl.SSLCertVerificationError:
            raise
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{host}:{port} did not accept TLS within {timeout}s ({last}):\n"
                       + (log_tail(log) if log else ""))


def start_ri_supervisor(python: Path, folder: Path, pki: TestPKI, port: int, *,
                        users: Mapping[str, Sequence[str]] | None = None,
                        caps: Mapping[str, Sequence[str]] | None = None,
                        name: str = "supervisor", wait: bool = True) -> subprocess.Popen[bytes]:
    """The RI supervisor (through ri_compat) on 127.0.0.1:``port``, log in
    ``folder/ri-supervisor.log``; returns once it accepts TLS (``wait``).

    Default authorisation: the suite's "client" has role guest and "admin" role admin,
    both may see and run the RI tstat proxy's capabilities on the suite's "component".
    Its stdin is a pipe kept open: the supervisor is a ``cmd`` shell and spins printing
    "Unknown syntax: EOF" once stdin is at EOF."""
    _check_etc_mplane()
    folder.mkdir(parents=True, exist_ok=True)
    if users is None:
        users = {dotted(pki, "client"): ["guest"], dotted(pki, "admin"): ["admin"]}
    if caps is None:
        caps = ri_tstat_caps(pki, roles=("guest", "admin"))
    conf_dir = ri_conf_dir(folder / "ri-supervisor-conf", users, caps)
    certs = ri_certs(folder, pki, name)
    log_path = folder / "ri-supervisor.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(python), "-u", "-m", "ri_compat", "mplane.supervisor", "-c", str(certs),
             "-s", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=str(folder),
            env=ri_env(folder, conf_dir))
    if wait:
        try:
            wait_tls(port, pki, proc, log_path)
        except BaseException:
            stop_process(proc)
            raise
    return proc


# ---------------------------------------------------------------------------
# RI tstat proxy (the RI component)


def ri_proxy_log(folder: Path) -> Path:
    return folder / "ri-tstat-proxy.log"


def start_ri_tstat_proxy(python: Path, folder: Path, pki: TestPKI, host: str, port: int, *,
                         name: str = "component", supervisor: str = "supervisor",
                         roles: Sequence[str] = ("guest",),
                         conf_dir: Path | None = None) -> subprocess.Popen[bytes]:
    """The RI tstat proxy registering with the supervisor at ``host:port`` (an IPv4
    address: the proxy refuses names), log in ``ri_proxy_log(folder)``.

    It runs on a copy of the RI's runtime.conf (it rewrites it per measurement). Its own
    authorisation (unless ``conf_dir`` is given): the supervisor certificate ``supervisor``
    (the proxy reads its identity from the TLS peer) gets ``roles``, and caps.conf grants
    those roles every tstat capability of this component, whose identity the proxy reads
    from the ``Subject:`` line of the text dump in its certificate file."""
    _check_etc_mplane()
    folder.mkdir(parents=True, exist_ok=True)
    if conf_dir is None:
        conf_dir = ri_conf_dir(folder / "ri-proxy-conf", {dotted(pki, supervisor): list(roles)},
                               ri_tstat_caps(pki, name, roles))
    runtime = folder / "runtime.conf"
    shutil.copyfile(RI_DIR / "conf" / "runtime.conf", runtime)
    runtime.chmod(0o644)
    certs = ri_certs(folder, pki, name)
    with open(ri_proxy_log(folder), "wb") as log:
        return subprocess.Popen(
            [str(python), "-u", "-m", "mplane.tstat_proxy", "-T", str(runtime), "-c", str(certs),
             "-d", host, "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(folder),
            env=ri_env(folder, conf_dir))


_OUTCOME = re.compile(r"Capability registration outcome:\n((?:.+\n)*)\n")


def wait_ri_registration(proc: subprocess.Popen[Any], folder: Path, timeout: float = 60.0,
                         count: int = 1) -> dict[str, str]:
    """The ``count``-th registration outcome the proxy printed, ``{label: "Ok" | "Failed (reason)"}``.

    Raises RuntimeError, with the log, when the supervisor refused the registration
    (the proxy prints the status and exits 1), the proxy exited, or nothing came in time."""
    log = ri_proxy_log(folder)
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        blocks = _OUTCOME.findall(text)
        if len(blocks) >= count:
            outcome = {}
            for line in blocks[count - 1].splitlines():
                label, _, status = line.partition(": ")
                outcome[label] = status
            return outcome
        if "Error registering capabilities" in text or proc.poll() is not None:
            try:
                proc.wait(5)  # it exits right after printing the refusal
            except subprocess.TimeoutExpired:
                pass
            text = log.read_text(errors="replace") if log.exists() else ""
            said = text.partition("Supervisor said: ")[2]
            reason = f"the supervisor answered {' '.join(said.split())[:300]}" if said else "no answer"
            raise RuntimeError(f"the RI tstat proxy did not register ({reason}; exit code {proc.poll()}):\n"
                               + log_tail(log))
        if time.monotonic() > deadline:
            raise RuntimeError(f"no registration outcome from the RI tstat proxy within {timeout}s:\n"
                               + log_tail(log))
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# RI client shell


class RIClientShell:
    """``python -u -m mplane.client -c client-certs.conf -d HOST -p PORT`` over pipes.

    ``command(text, answers)`` sends one shell line, answers ``runcap``'s ``|when| = `` and
    ``|param| NAME = `` questions in order from ``answers``, and returns what the shell
    printed up to its next ``|mplane| `` prompt (the questions included, the prompt not).
    Everything the shell prints also goes to ``folder/ri-client.log``. With pipes the
    shell does not echo what it reads, and input() writes its prompt to stdout."""

    def __init__(self, python: Path, folder: Path, pki: TestPKI, port: int, host: str = "127.0.0.1",
                 name: str = "client", timeout: float = 30.0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        certs = ri_certs(folder, pki, name)
        self.log_path = folder / "ri-client.log"
        self._log: IO[str] = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self._out = ""
        self._cond = threading.Condition()
        self._eof = False
        self.process = subprocess.Popen(
            [str(python), "-u", "-m", "mplane.client", "-c", str(certs), "-d", host, "-p", str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(folder),
            env=ri_env(folder, None))
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()
        try:
            self.intro = self._until_prompt(0, (), timeout, "start")
        except BaseException:
            self.close()
            raise

    def _reader(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            text = decoder.decode(chunk, final=not chunk)
            with self._cond:
                self._out += text
                if not self._log.closed:
                    self._log.write(text)
                    self._log.flush()
                if not chunk:
                    self._eof = True
                self._cond.notify_all()
            if not chunk:
                return

    @property
    def output(self) -> str:
        """Everything the shell printed so far."""
        with self._cond:
            return self._out

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def _until_prompt(self, start: int, answers: Sequence[str], timeout: float, what: str) -> str:
        pending = list(answers)
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = start
            while True:
                out = self._out[start:]
                if len(self._out) > seen:
                    seen = len(self._out)
                    if out.endswith(PROMPT):
                        if pending:
                            raise RuntimeError(f"RI client: {what!r} finished with answers left over "
                                               f"{pending}:\n{out}")
                        return out[: -len(PROMPT)]
                    if QUESTION.search(out):
                        if not pending:
                            raise RuntimeError(f"RI client: {what!r} asks a question no answer is left "
                                               f"for:\n{out}")
                        self._send(pending.pop(0))
                        continue
                if self._eof:
                    self.process.wait(5)
                    raise RuntimeError(f"RI client exited ({self.process.returncode}) during {what!r}:\n{out}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"RI client: no {PROMPT!r} prompt {timeout}s after {what!r}:\n{out}")
                self._cond.wait(left)

    def command(self, text: str, answers: Sequence[str] = (), timeout: float = 30.0) -> str:
        """Run one shell command; what it printed (see the class docstring)."""
        with self._cond:
            start = len(self._out)
            if self._eof:
                raise RuntimeError(f"RI client has exited ({self.process.poll()}): cannot run {text!r}")
            self._send(text)
        return self._until_prompt(start, answers, timeout, text)

    def close(self, timeout: float = 10.0) -> int:
        """End the shell (EOF on stdin, as ^D does), killing it if it lingers; its exit code."""
        if self.process.poll() is None and self.process.stdin is not None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._thread.join(5)  # the rest of its output, before the pipe is closed
        code = stop_process(self.process)
        with self._cond:
            self._log.close()
        return code

    def __enter__(self) -> RIClientShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# ccnet as the supervisor of RI peers


def start_ccnet_supervisor(folder: Path, pki: TestPKI, users: Mapping[str, Sequence[str]],
                           caps: Mapping[str, Sequence[str]], extra: str = "",
                           long_poll: float = 20.0) -> tuple[Daemon, int]:
    """A ccnet daemon (``twistd ccnet``) serving the supervisor on 127.0.0.1, an OS-chosen
    port, with the suite's "supervisor" certificate (its identity,
    IT.ccnet.Supervisors.supervisor, is what an RI component sees) and ``users`` /
    ``caps`` written in the RI format, which ccnet reads too. ``extra`` is appended to the
    ``[supervisor]`` section. Returns the daemon (stop it in cleanup) and the port."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = ri_conf_dir(folder / "conf", users, caps)
    ini = (f"[ccnet]\nstate-dir = {folder / 'var'}\n\n{tls_section(pki, 'supervisor')}\n"
           f"[supervisor]\nlisten = ssl:0:interface=127.0.0.1\nusers = {conf / 'users.conf'}\n"
           f"caps = {conf / 'caps.conf'}\nlong-poll = {long_poll:g}\n{extra}")
    daemon = start_daemon(ini, folder / "run")
    return daemon, daemon.ports["supervisor"]


# ---------------------------------------------------------------------------
# RI client library (mplane.client.HttpClient), scripted


RI_CLIENT_SCRIPT = r'''
import contextlib, io, json, sys, time
import mplane.client, mplane.model
certfile, url, label, when, timeout, interval = sys.argv[1:5] + [float(a) for a in sys.argv[5:7]]
out, log = {}, io.StringIO()
try:
    with contextlib.redirect_stdout(log):  # HttpClient prints every message it handles
        mplane.model.initialize_registry()
        client = mplane.client.HttpClient(True, url, certfile)
        client.retrieve_capabilities()
        out["capabilities"] = {k: [c.get_label() for c in v] for k, v in client._capabilities.items()}
        found = [(k, c) for k, v in client._capabilities.items() for c in v if c.get_label() == label]
        if not found:
            raise LookupError("no capability %r in GET /show/capability" % label)
        key, cap = found[0]
        # What ClientShell.do_runcap / fill_spec do, with `when` as the answer to "|when| = ".
        spec = mplane.model.Specification(capability=cap)
        spec.set_when(mplane.model.When(when))
        spec.set_single_values()
        spec.validate()
        msg = "{\"" + key + "\":" + mplane.model.unparse_json(spec) + "}"
        t0 = time.time()
        receipt = client.get_mplane_reply("/register/specification", msg)
        out["submitted"] = time.time() - t0
        if not isinstance(receipt, mplane.model.Receipt):
            raise RuntimeError("POST /register/specification answered %r" % (receipt,))
        client.handle_message(receipt)
        redemption = mplane.model.unparse_json(mplane.model.Redemption(receipt=receipt))
        res, redeems = None, 0
        while time.time() < t0 + timeout:
            res = client.get_mplane_reply("/show/result", redemption)
            redeems += 1
            if isinstance(res, (mplane.model.Result, mplane.model.Exception)):
                break
            time.sleep(interval)
        out["latency"] = time.time() - t0
        out["redeems"] = redeems
        out["kind"] = type(res).__name__
        out["result"] = mplane.model.unparse_json(res) if hasattr(res, "to_dict") else repr(res)
except BaseException as exc:
    out["error"] = "%s: %s" % (type(exc).__name__, exc)
    out["log"] = log.getvalue()[-3000:]
print("RESULT " + json.dumps(out))
'''


def run_ri_client(python: Path, folder: Path, pki: TestPKI, port: int, label: str, when: str,
                  host: str = "127.0.0.1", timeout: float = 30.0, interval: float = 0.1,
                  name: str = "client") -> dict[str, Any]:
    """The RI client library (blocking): GET /show/capability, POST ``{"<component>": spec}``
    to /register/specification as the RI shell's ``runcap`` does, then POST the redemption
    to /show/result every ``interval`` s until a Result or Exception (at most ``timeout`` s).

    The JSON the script reports: ``capabilities`` ({component: [labels]}), ``submitted``
    and ``latency`` (s after the POST of the specification), ``redeems``, ``kind``
    ("Result", "Exception", or "Receipt" when time ran out), ``result``; ``error`` and the
    tail of the library's output ``log`` when a step failed."""
    certs = ri_certs(folder, pki, name)
    args = [str(python), "-u", "-c", RI_CLIENT_SCRIPT, str(certs), f"https://{host}:{port}", label, when,
            str(timeout), str(interval)]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 60, cwd=str(folder),
                             env=ri_env(folder, None))
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"RI client script still running after {timeout + 60}s: {exc.stdout!r}") from None
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]
    raise RuntimeError(f"RI client script failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
