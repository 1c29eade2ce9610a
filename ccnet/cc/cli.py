"""``ccnet-cc``: operator tools for CC.

    ccnet-cc send echo.request '{"target": "x"}'
    ccnet-cc send echo.request '{}' --config /etc/ccnet/ccnet.ini   # its cc-socket and cms-* keys
    ccnet-cc send pub.infofile '{"filename": "info.1", "mtime": 0, "comp": "", "data": ""}' --blob info.1
    ccnet-cc listen pub --endpoint tcp://127.0.0.1:10001

``send`` talks to a CC server like any CC client (a plain DEALER, frames
``['', type, json, signature(, blob)]``) and prints the reply.  ``listen`` binds
a ROUTER (stand in for a remote CC: point a proxy's ``remote-cc`` at it) and
prints each message whose type matches PATTERN (``*``, ``pub``, ``pub.infofile``
with CC prefix semantics) as one JSON line.  These are standalone processes,
so they use blocking pyzmq, not the reactor.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import zmq

from ccnet.cc.config import DEFAULT_SOCKET, valid_zmq_endpoint
from ccnet.cc.config import parse as parse_cc_config
from ccnet.cc.crypto import CMSCodec, CryptoError
from ccnet.cc.message import ACK_FIELD, BodyError, CCMessage, Invalid, make_body, parse, valid_type
from ccnet.cc.routing import RouteTable
from ccnet.config import ConfigError, IniFile

__all__ = ["main"]

EXIT_OK, EXIT_ERROR_REPLY, EXIT_FAIL = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ccnet-cc", description="Send and watch CC messages.")
    sub = p.add_subparsers(dest="command", required=True)

    def crypto(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path,
                        help="ccnet ini: take cc-socket and the cms-* keys from its [cc]/[ccserver]")
        sp.add_argument("--keystore", type=Path, help="CMS keystore folder (NAME.crt, private/NAME.key)")
        sp.add_argument("--sign", metavar="NAME", help="sign as NAME (cms-sign)")
        sp.add_argument("--encrypt", metavar="NAME", help="encrypt to NAME (cms-encrypt, needs --sign)")
        sp.add_argument("--verify-ca", metavar="NAME", action="append", default=[],
                        help="verify signatures against CA NAME (cms-verify-ca)")
        sp.add_argument("--decrypt", metavar="NAME", help="decrypt as NAME (cms-decrypt)")

    send = sub.add_parser("send", help="send one message and print the reply")
    send.add_argument("type", help="message type, e.g. echo.request")
    send.add_argument("json", help="JSON object with the message fields (base fields are added)")
    send.add_argument("--blob", type=Path, help="file sent as the blob frame")
    send.add_argument("--endpoint", help=f"CC server (default: --config's cc-socket, else {DEFAULT_SOCKET})")
    send.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
    send.add_argument("--no-wait", action="store_true", help="publish only, do not wait for a reply")
    send.add_argument("--hostname", default=socket.gethostname(), help="hostname put into the body")
    crypto(send)

    listen = sub.add_parser("listen", help="bind a ROUTER and print matching messages")
    listen.add_argument("pattern", help="'*' or a dotted type prefix, as in [routes]")
    listen.add_argument("--endpoint", default="tcp://127.0.0.1:10001", help="where to bind")
    listen.add_argument("--count", type=int, default=0, help="exit after N matching messages")
    listen.add_argument("--reply", action="store_true", help="answer echo.request with echo.response")
    crypto(listen)
    return p


def _apply_config(args: argparse.Namespace) -> None:
    """Fill endpoint and keys from ``--config`` where not given on the command line."""
    if args.config is None:
        if getattr(args, "endpoint", "") is None:
            args.endpoint = DEFAULT_SOCKET
        return
    cfg = parse_cc_config(IniFile.load(args.config))
    if cfg is None:
        raise ValueError(f"{args.config}: no [cc] or [ccserver] section")
    if getattr(args, "endpoint", "") is None:
        args.endpoint = cfg.socket.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:").replace(
            "tcp://*:", "tcp://127.0.0.1:"
        )
    # Each flag wins over its own key; every key not given as a flag comes from the file.
    args.keystore = args.keystore or cfg.cms.keystore
    args.sign = args.sign or cfg.cms.sign
    args.encrypt = args.encrypt or cfg.cms.encrypt
    args.verify_ca = args.verify_ca or list(cfg.cms.verify_ca)
    args.decrypt = args.decrypt or cfg.cms.decrypt


def _codec(args: argparse.Namespace) -> CMSCodec:
    return CMSCodec(
        keystore=args.keystore,
        sign=args.sign,
        verify_ca=tuple(args.verify_ca),
        encrypt=args.encrypt,
        decrypt=args.decrypt,
    )


def _describe(msg: CCMessage, codec: CMSCodec) -> dict[str, Any]:
    """One message as a JSON-able dict; payload decoded/verified where possible."""
    out: dict[str, Any] = {
        "route": [r.hex() for r in msg.route],
        "type": msg.type,
        # An ENC1 envelope always holds a signed message (the format has no unsigned form).
        "signed": bool(msg.signature),
        "encrypted": msg.encrypted,
        "blob_bytes": None if msg.blob is None else len(msg.blob),
    }
    try:
        body, signer = codec.decode(msg, time.time())
    except (CryptoError, BodyError) as exc:
        out["body"] = None
        out["problem"] = str(exc)
    else:
        out["body"] = body
        if signer is not None:
            out["signer"] = signer.as_dict()
    return out


def _send(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not valid_type(args.type):
        err.write(f"ccnet-cc: {args.type!r} is not a CC message type\n")
        return EXIT_FAIL
    try:
        fields = json.loads(args.json)
    except ValueError as exc:
        err.write(f"ccnet-cc: JSON argument: {exc}\n")
        return EXIT_FAIL
    if not isinstance(fields, dict):
        err.write("ccnet-cc: JSON argument must be an object\n")
        return EXIT_FAIL
    blob = args.blob.read_bytes() if args.blob else None
    codec = _codec(args)
    if not args.no_wait:
        fields.setdefault(ACK_FIELD, True)  # we read the reply: acks and error replies welcome
    msg = codec.encode((), make_body(args.type, fields, args.hostname, time.time()), blob)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, int(args.timeout * 1000))
    try:
        sock.connect(args.endpoint)
        sock.send_multipart(msg.frames())
        if args.no_wait:
            return EXIT_OK
        if not sock.poll(int(args.timeout * 1000)):
            err.write(f"ccnet-cc: no reply from {args.endpoint} in {args.timeout:g} s\n")
            return EXIT_FAIL
        # A DEALER reply has an empty route; give it a dummy peer to parse as a ROUTER would.
        reply = parse([b"server", *sock.recv_multipart()])
    finally:
        sock.close(0)
        ctx.term()
    if isinstance(reply, Invalid):
        err.write(f"ccnet-cc: invalid reply: {reply.reason}\n")
        return EXIT_FAIL
    desc = _describe(reply, codec)
    desc.pop("route")
    out.write(json.dumps(desc, sort_keys=True) + "\n")
    return EXIT_ERROR_REPLY if reply.type == "error" or reply.type.startswith("error.") else EXIT_OK


def _listen(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.pattern != "*" and not valid_type(args.pattern):
        err.write(f"ccnet-cc: pattern {args.pattern!r} is not '*' or a dotted type\n")
        return EXIT_FAIL
    if not valid_zmq_endpoint(args.endpoint):
        err.write(f"ccnet-cc: {args.endpoint!r} is not a ZMQ endpoint\n")
        return EXIT_FAIL
    table = RouteTable.build([(args.pattern, ["out"])])
    codec = _codec(args)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 500)
    seen = 0
    try:
        sock.bind(args.endpoint)
        bound = sock.getsockopt(zmq.LAST_ENDPOINT)
        err.write(f"ccnet-cc: listening on {bound.decode() if isinstance(bound, bytes) else bound}\n")
        err.flush()
        while not args.count or seen < args.count:
            msg = parse(sock.recv_multipart())
            if isinstance(msg, Invalid):
                err.write(f"ccnet-cc: invalid message: {msg.reason}\n")
                continue
            if not table.lookup(msg.type):
                continue
            seen += 1
            desc = _describe(msg, codec)
            out.write(json.dumps(desc, sort_keys=True) + "\n")
            out.flush()
            if args.reply and msg.type == "echo.request" and desc["body"] is not None:
                body = desc["body"]
                rep = make_body(
                    "echo.response",
                    {"orig_hostname": body.get("hostname", ""), "orig_target": body.get("target", ""),
                     "orig_time": body.get("time", 0.0)},
                    socket.gethostname(),
                )
                sock.send_multipart(codec.encode(msg.route, rep).frames())
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        ctx.term()
    return EXIT_OK


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        _apply_config(args)
        if args.command == "send":
            return _send(args, out, err)
        return _listen(args, out, err)
    except (OSError, ValueError, zmq.ZMQError, ConfigError) as exc:
        err.write(f"ccnet-cc: {exc}\n")
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
