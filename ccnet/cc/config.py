"""CC server configuration: ``[cc]`` (or the original ``[ccserver]``), ``[routes]``
and every handler section the routes name.

Key names are the original ccserver ones, so an existing ini ports over with at
most the section renamed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from ccnet.cc.handlers import HandlerLookupError, resolve_handler
from ccnet.cc.message import DEFAULT_MAX_BODY
from ccnet.cc.routing import BUILTIN_HANDLER_ROLES, ROLES, RouteError, RouteTable, role_error
from ccnet.config import ConfigError, IniFile, SectionReader

__all__ = [
    "ZMQ_ENDPOINT_HELP",
    "parse_handler",
    "valid_zmq_endpoint",
    "zmq_endpoint",
    "CCConfig", "ZmqOptions", "CMSOptions", "HandlerSpec", "parse", "parse_zmq", "DEFAULT_SOCKET",
    "UpstreamTask", "parse_upstream_tasks"]

DEFAULT_SOCKET = "tcp://127.0.0.1:10000"
#: Messages per peer waiting for ZMQ (``send-queue``): a client keeping up to this
#: many requests in flight beyond ``zmq_hwm`` loses no reply.
DEFAULT_SEND_QUEUE = 10000
#: Bytes of all peers' waiting messages (``send-queue-bytes``).
DEFAULT_SEND_QUEUE_BYTES = 64 * 1024 * 1024
#: Bytes of requests whose handlers have not finished (``max-pending-bytes``);
#: beyond it the ROUTER stops reading until they finish.
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024

#: skytools/ccserver keys that ccnet accepts but does not need (twistd owns
#: logging and the pid file of the process).
IGNORED_KEYS = (
    "logfile",
    "use_skylog",
    "skylog_locations",
    "loop_delay",
    "syslog",
    "syslog_ident",
    "syslog_name",
    "infofile",
    "infofile-level",
)

_ZMQ_ENDPOINT = re.compile(
    r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):(\d{1,5}|\*)|ipc://\S+|inproc://\S+)$"
)


@dataclass(frozen=True)
class ZmqOptions:
    """zmq_* keys (original names and defaults)."""

    nthreads: int = 1
    linger: int = 500
    hwm: int = 100
    rcvbuf: int = 0
    sndbuf: int = 0
    tcp_keepalive: int = 1
    tcp_keepalive_intvl: int = 15
    tcp_keepalive_idle: int = 240
    tcp_keepalive_cnt: int = 4
    #: ZMQ_MAXMSGSIZE: a larger frame makes libzmq close the connection (0 = no limit).
    maxmsgsize: int = 2 * DEFAULT_MAX_BODY


#: Seconds a signed message's ``time`` may be from now when ``cms-verify-ca`` is set and
#: ``cms-time-window`` is not (a replay cache refuses a signature seen within it).
DEFAULT_TIME_WINDOW = 300.0


@dataclass(frozen=True)
class CMSOptions:
    """cms-* keys; names are keystore entries (``NAME.crt``, ``private/NAME.key``)."""

    keystore: Path | None = None
    sign: str | None = None
    verify_ca: tuple[str, ...] = ()
    encrypt: str | None = None
    decrypt: str | None = None
    time_window: float = 0.0
    #: CRL files checked for signers (``cms-crl``; the daemon falls back to ``[tls] crl``).
    crl: tuple[Path, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.sign or self.verify_ca or self.encrypt or self.decrypt)


@dataclass(frozen=True)
class HandlerSpec:
    section: str
    handler: str  # as written in the config
    factory: Any  # provides ICCHandlerFactory
    options: Any


@dataclass(frozen=True)
class CCConfig:
    path: Path
    section: str
    socket: str
    role: str | None
    stats_period: float
    cc_stats: int
    error_replies: bool
    max_body: int
    job_name: str
    pidfile: Path | None
    zmq: ZmqOptions
    cms: CMSOptions
    routes: RouteTable
    handlers: tuple[HandlerSpec, ...] = ()
    ignored: tuple[str, ...] = ()
    #: The original's task sections (``[cc.task.sample]``), for the taskrunner.
    upstream_tasks: tuple[UpstreamTask, ...] = ()
    #: error-replies = always: answer senders that did not opt in with "ack" too.
    error_replies_to_all: bool = False
    #: Bounds of the ROUTER's queue for messages ZMQ cannot take yet.
    send_queue: int = DEFAULT_SEND_QUEUE
    send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES
    #: Stop reading while handlers hold more request bytes than this.
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES

    def handler(self, section: str) -> HandlerSpec:
        for spec in self.handlers:
            if spec.section == section:
                return spec
        raise KeyError(section)


#: An original-CC task section: named after the task's Python module (``[cc.task.sample]``).
_TASK_SECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")


@dataclass(frozen=True)
class UpstreamTask:
    """One ``[package.module]`` section: the original taskrunner runs a task whose
    ``task_handler`` names a section of its ini as ``python -m <module> -d <ini>``."""

    module: str
    #: Run the task as this user (``sudo -n -u USER``), the original's ``sudo`` key.
    sudo: str | None = None
    #: The section's other keys: the task's own options (it reads the ini itself).
    options: tuple[tuple[str, str], ...] = ()


#: Keys that make a section a handler or daemon section, never a task's.
_NOT_TASK_KEYS = ("handler", "plugin", "module", "script")


def parse_upstream_tasks(ini: IniFile) -> dict[str, UpstreamTask]:
    """Every section named like a Python module that is not a handler or daemon section.

    The original CC keeps its task configuration in the ccserver's ini (its
    taskrunner runs only tasks with a section there); ccnet accepts those sections
    and its taskrunner runs them the same way."""
    tasks: dict[str, UpstreamTask] = {}
    for name in ini.section_names():
        if not _TASK_SECTION.match(name):
            continue
        sect = ini.section(name)
        if any(sect.has(k) for k in _NOT_TASK_KEYS):
            continue
        sudo = sect.get_str("sudo", "") or None
        options = tuple(sorted((k, sect.get_str(k)) for k in sect.keys() if k != "sudo"))
        tasks[name] = UpstreamTask(name, sudo, options)
    return tasks


ZMQ_ENDPOINT_HELP = "a ZMQ endpoint such as tcp://127.0.0.1:10000 (port * = any free port)"


def valid_zmq_endpoint(value: str) -> bool:
    return bool(_ZMQ_ENDPOINT.match(value))


def zmq_endpoint(sect: SectionReader, key: str, default: Any) -> str:
    value = sect.get_str(key, default)
    if value is not None and not valid_zmq_endpoint(value):
        raise sect.error(key, ZMQ_ENDPOINT_HELP, value)
    return value


def parse_zmq(sect: SectionReader, base: ZmqOptions | None = None) -> ZmqOptions:
    """Read zmq_* keys; missing ones come from ``base`` (the server's)."""
    b = base or ZmqOptions()
    return ZmqOptions(
        nthreads=sect.get_int("zmq_nthreads", b.nthreads, minimum=1),
        linger=sect.get_int("zmq_linger", b.linger, minimum=-1),
        hwm=sect.get_int("zmq_hwm", b.hwm, minimum=1),
        rcvbuf=sect.get_size("zmq_rcvbuf", b.rcvbuf),
        sndbuf=sect.get_size("zmq_sndbuf", b.sndbuf),
        tcp_keepalive=sect.get_int("zmq_tcp_keepalive", b.tcp_keepalive, minimum=-1),
        tcp_keepalive_intvl=sect.get_int("zmq_tcp_keepalive_intvl", b.tcp_keepalive_intvl),
        tcp_keepalive_idle=sect.get_int("zmq_tcp_keepalive_idle", b.tcp_keepalive_idle),
        tcp_keepalive_cnt=sect.get_int("zmq_tcp_keepalive_cnt", b.tcp_keepalive_cnt),
        maxmsgsize=sect.get_size("zmq_maxmsgsize", b.maxmsgsize),
    )


def _positive_size(sect: SectionReader, key: str, default: int) -> int:
    value = sect.get_size(key, default)
    if value < 1:
        raise sect.error(key, "a size of at least 1 byte", sect.get_str(key))
    return value


def _parse_cms(sect: SectionReader, ini: IniFile) -> CMSOptions:
    keystore = sect.get_path("cms-keystore", None)
    sign = sect.get_str("cms-sign", "") or None
    verify_ca = tuple(sect.get_list("cms-verify-ca", []))
    encrypt = sect.get_str("cms-encrypt", "") or None
    decrypt = sect.get_str("cms-decrypt", "") or None
    # Signed messages must be fresh: bounded by default once signatures are checked
    # (an explicit 0 is the original's unlimited behaviour).
    window = sect.get_float("cms-time-window", DEFAULT_TIME_WINDOW if verify_ca else 0.0, minimum=0)
    crl = tuple(ini.resolve(p) for p in sect.get_list("cms-crl", []))
    opts = CMSOptions(keystore, sign, verify_ca, encrypt, decrypt, window, crl)
    if not opts.enabled:
        return opts
    if keystore is None:
        raise sect.error("cms-keystore", "a keystore folder when any cms-* key is set")
    if not keystore.is_dir():
        raise sect.error("cms-keystore", "an existing folder", str(keystore))
    if encrypt and not sign:
        raise sect.error("cms-encrypt", "cms-sign as well: encrypted messages must be signed")
    if decrypt and not verify_ca:
        raise sect.error("cms-decrypt", "cms-verify-ca as well: decrypted messages must be verified")

    def need(key: str, rel: str) -> None:
        if not (keystore / rel).is_file():  # type: ignore[operator]
            raise sect.error(key, f"a readable {rel} in the keystore", str(keystore / rel))  # type: ignore[operator]

    for key, name in (("cms-sign", sign), ("cms-decrypt", decrypt)):
        if name:
            need(key, f"{name}.crt")
            need(key, f"private/{name}.key")
    if encrypt:
        need("cms-encrypt", f"{encrypt}.crt")
    for name in verify_ca:
        need("cms-verify-ca", f"{name}.crt")
    from ccnet.cc.crypto import key_problem, load_crls

    for key, name, use in (("cms-sign", sign, "sign"), ("cms-encrypt", encrypt, "encrypt"),
                           ("cms-decrypt", decrypt, "decrypt")):
        if not name:
            continue
        path = keystore / f"{name}.crt"
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError:
            raise sect.error(key, f"a PEM certificate in {path}") from None
        problem = key_problem(cert, use)
        if problem is not None:
            raise sect.error(key, problem, f"{name} ({path})")
    for path in crl:
        try:
            load_crls([path])
        except (OSError, ValueError):
            raise sect.error("cms-crl", "readable PEM or DER CRL files", str(path)) from None
    return opts


def parse(ini: IniFile) -> CCConfig | None:
    """Parse the CC part of the config; ``None`` when neither [cc] nor [ccserver] exists."""
    present = [s for s in ("cc", "ccserver") if ini.has_section(s)]
    if not present:
        return None
    if len(present) > 1:
        raise ini.error("ccserver", None, "either [cc] or [ccserver], not both")
    name = present[0]
    sect = ini.section(name)
    socket = zmq_endpoint(sect, "cc-socket", DEFAULT_SOCKET)
    role_raw = sect.get_str("cc-role", "") or None
    if role_raw is not None and role_raw not in ROLES:
        raise sect.error("cc-role", "local or remote (unset = insecure, everything allowed)", role_raw)
    job_name = sect.get_str("job_name", ini.path.stem if ini.path.suffix else "ccserver")
    pidfile = sect.get_path("pidfile", None)
    stats_period = sect.get_float("stats-period", 30.0, minimum=0)
    cc_stats = sect.get_int("cc-stats", 1, minimum=0)
    # yes: error replies to senders that opted in ("ack": true); always: to every sender
    # with a route (ccnet before 2026-11); no: never (the original's silent drops).
    if sect.has("error-replies") and sect.get_str("error-replies").lower() == "always":
        error_replies, error_replies_to_all = True, True
    else:
        try:
            error_replies, error_replies_to_all = sect.get_bool("error-replies", True), False
        except ConfigError:
            raise sect.error("error-replies", "yes, always or no", sect.get_str("error-replies")) from None
    max_body = sect.get_size("max-body-size", DEFAULT_MAX_BODY)
    # A single frame over twice max-body-size is refused by libzmq itself.
    zmq_opts = parse_zmq(sect, ZmqOptions(maxmsgsize=2 * max_body))
    send_queue = sect.get_int("send-queue", DEFAULT_SEND_QUEUE, minimum=1)
    send_queue_bytes = _positive_size(sect, "send-queue-bytes", DEFAULT_SEND_QUEUE_BYTES)
    max_pending = _positive_size(sect, "max-pending-bytes", DEFAULT_MAX_PENDING_BYTES)
    cms = _parse_cms(sect, ini)
    ignored = tuple(k for k in IGNORED_KEYS if sect.has(k))
    for k in ignored:
        sect.get_str(k)
    sect.finish()

    routes = _parse_routes(ini)
    cc = CCConfig(
        path=ini.path,
        section=name,
        socket=socket,
        role=role_raw,
        stats_period=stats_period,
        cc_stats=cc_stats,
        error_replies=error_replies,
        max_body=max_body,
        job_name=job_name,
        pidfile=pidfile,
        zmq=zmq_opts,
        cms=cms,
        routes=routes,
        ignored=ignored,
        error_replies_to_all=error_replies_to_all,
        send_queue=send_queue,
        send_queue_bytes=send_queue_bytes,
        max_pending_bytes=max_pending,
    )
    specs = [parse_handler(ini, section, cc) for section in routes.sections()]
    tasks = parse_upstream_tasks(ini)
    return replace(cc, handlers=tuple(specs), upstream_tasks=tuple(tasks.values()))


def _parse_routes(ini: IniFile) -> RouteTable:
    if not ini.has_section("routes"):
        return RouteTable(())
    sect = ini.section("routes")
    pairs = []
    for key in sect.keys():
        sections = sect.get_list(key)
        if not sections:
            raise sect.error(key, "one or more handler section names")
        for s in sections:
            if not ini.has_section(s):
                raise sect.error(key, f"handler sections that exist; no section [{s}]")
        pairs.append((key, sections))
    try:
        table = RouteTable.build(pairs)
    except RouteError as exc:
        raise sect.error(None, str(exc)) from None
    sect.finish()
    return table


def parse_handler(ini: IniFile, section: str, cc: CCConfig) -> HandlerSpec:
    sect = ini.section(section)
    # Legacy 'plugin =' wins over 'handler =' as in the original ccserver.
    key = "plugin" if sect.has("plugin") else "handler"
    if sect.has("plugin") and sect.has("handler"):
        sect.get_str("handler")
    name = sect.get_str(key)
    try:
        factory = resolve_handler(name)
    except HandlerLookupError as exc:
        raise sect.error(key, f"a known handler ({exc})", name) from None
    short = getattr(factory, "handler_name", name)
    allowed = getattr(factory, "cc_roles", BUILTIN_HANDLER_ROLES.get(short, frozenset(ROLES)))
    problem = role_error(cc.role, section, short, allowed)
    if problem is not None:
        raise ConfigError(ini.path, section, key, problem)
    options = factory.parse_config(sect, ini, cc)
    sect.finish()
    return HandlerSpec(section, name, factory, options)
