"""``ccnet-rpc``: call one RPC method from the shell and print the JSON reply.

::

    ccnet-rpc https://host:8443/Framework/Notebook set '"colour"' '"blue"' \\
        --cert client.crt --key client.key --ca ca.crt

Each argument after the method is JSON (``'"text"'``, ``42``, ``'[1, 2]'``); an argument
that is not valid JSON is passed as a plain string.  Exit status 0 for S_OK, 1 otherwise.

Two commands manage a DIRAC Configuration/Server without a DIRAC install::

    ccnet-rpc https://host:8443/Configuration/Server cs-dump -o current.cfg   # getCompressedData, decoded
    ccnet-rpc https://host:8443/Configuration/Server cs-commit current.cfg    # commitNewData

Edit the dumped file and commit it: it carries the version it was dumped at, so a commit
made after someone else's is refused (dump again and redo the edit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ccnet.rpc.clientcore import DEFAULT_TIMEOUT
from ccnet.rpc.codec import encode

__all__ = ["main"]

CS_DUMP = "cs-dump"
CS_COMMIT = "cs-commit"


def _argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ccnet-rpc",
        description="Call a DIRAC-style HTTPS RPC method and print the S_OK/S_ERROR reply as JSON.",
    )
    p.add_argument("url", help="service URL(s), comma separated: https://host:8443/System/Component")
    p.add_argument("method", help="exported method name, e.g. ping or whoami")
    p.add_argument("args", nargs="*", help="JSON arguments (non-JSON text is sent as a string)")
    p.add_argument("--cert", default=os.environ.get("X509_USER_CERT") or os.environ.get("X509_USER_PROXY"),
                   help="client certificate or proxy file (default $X509_USER_CERT / $X509_USER_PROXY)")
    p.add_argument("--key", default=os.environ.get("X509_USER_KEY"),
                   help="private key (omit when it is inside --cert)")
    p.add_argument("--ca", default=os.environ.get("X509_CERT_DIR"), required=not os.environ.get("X509_CERT_DIR"),
                   help="CA bundle file or folder (default $X509_CERT_DIR)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for the reply")
    p.add_argument("--vo", help="clientVO to send")
    p.add_argument("--output", "-o", help="with streamToClient: save the streamed file here; "
                   "with cs-dump: write the configuration here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    from ccnet.rpc.syncclient import SyncRPCClient

    try:
        client = SyncRPCClient(
            options.url, cert=options.cert, key=options.key, ca=options.ca,
            timeout=options.timeout, clientVO=options.vo,
        )
    except (OSError, ValueError) as exc:
        print(f"ccnet-rpc: {exc}", file=sys.stderr)
        return 2
    if options.method in (CS_DUMP, CS_COMMIT):
        with client:
            return _configuration(client, options)
    args = [_argument(a) for a in options.args]
    if options.output and options.method != "streamToClient":
        print("ccnet-rpc: --output goes with the streamToClient and cs-dump methods", file=sys.stderr)
        return 2
    with client:
        if options.output:
            result = client.receiveFile(options.output, *args)
        else:
            result = client.executeRPC(options.method, *args)
    print(json.dumps(json.loads(encode(result)), indent=2, sort_keys=True))
    return 0 if result.get("OK") else 1


def _configuration(client: Any, options: argparse.Namespace) -> int:
    """cs-dump / cs-commit against a Configuration/Server."""
    from ccnet.rpc.cs import core

    if options.method == CS_DUMP:
        if options.args:
            print("ccnet-rpc: cs-dump takes no argument", file=sys.stderr)
            return 2
        result = client.executeRPC("getCompressedData")
        if result.get("OK"):
            try:
                text = core.decode_commit(result["Value"])
            except core.CfgError as exc:
                print(f"ccnet-rpc: the server sent {exc}", file=sys.stderr)
                return 1
            if options.output:
                with open(options.output, "w", encoding="utf-8") as handle:
                    handle.write(text)
            else:
                sys.stdout.write(text)
            return 0
    else:
        if len(options.args) != 1:
            print("ccnet-rpc: cs-commit takes one argument, the cfg file to commit", file=sys.stderr)
            return 2
        try:
            with open(options.args[0], encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"ccnet-rpc: {exc}", file=sys.stderr)
            return 2
        result = client.executeRPC("commitNewData", core.encode_commit(text))
    print(json.dumps(json.loads(encode(result)), indent=2, sort_keys=True))
    return 0 if result.get("OK") else 1


if __name__ == "__main__":
    sys.exit(main())
