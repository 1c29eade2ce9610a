"""``SyncRPCClient``: the same API as :class:`ccnet.rpc.RPCClient` for scripts, on requests.

::

    from ccnet.rpc import SyncRPCClient
    client = SyncRPCClient("https://host:8443/Framework/Notebook",
                           cert="client.crt", key="client.key", ca="ca.crt")
    print(client.whoami())                   # {"OK": True, "Value": {...}}
    client.receiveFile("copy.dat", "big.dat")

No reactor is involved: each call blocks until the reply (or the timeout).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import requests

from ccnet.rpc.clientcore import (
    DEFAULT_TIMEOUT,
    RETRY_STATUSES,
    RPCClientBase,
    decode_reply,
)
from ccnet.rpc.codec import JCodec
from ccnet.rpc.result import S_ERROR, S_OK

__all__ = ["SyncRPCClient"]

_CHUNK = 64 * 1024


class SyncRPCClient(RPCClientBase):
    """A blocking DIRAC-style RPC client with URL failover and a keep-alive session."""

    def __init__(
        self,
        url_or_urls: str | Iterable[str],
        *,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        ca: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 30.0,
        clientVO: str | None = None,  # noqa: N803 (DIRAC keyword)
        extraCredentials: Any = None,  # noqa: N803 (DIRAC keyword)
        codec: JCodec | None = None,
    ) -> None:
        super().__init__(url_or_urls, ca=ca, timeout=timeout, clientVO=clientVO,
                         extraCredentials=extraCredentials, codec=codec)
        self.connect_timeout = connect_timeout
        self._session = requests.Session()
        # Passed on every call: a session-level verify loses to $REQUESTS_CA_BUNDLE.
        self._verify = str(ca)
        self._cert: str | tuple[str, str] | None = None
        if cert is not None:
            # A proxy file holds chain and key together: requests takes it as one path.
            self._cert = (str(cert), str(key)) if key is not None else str(cert)

    def executeRPC(self, method: str, *args: Any) -> dict[str, Any]:  # noqa: N802
        """Call ``method(*args)``; return S_OK/S_ERROR."""
        return self._call(method, self._fields(method, args, raw=False), None)

    def receiveFile(self, dest: str | Path | IO[bytes], *args: Any) -> dict[str, Any]:  # noqa: N802
        """``streamToClient(*args)`` streamed into ``dest`` (path or binary file object)."""
        return self._call("streamToClient", self._fields("streamToClient", args, raw=True), dest)


    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SyncRPCClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


    def _call(self, method: str, fields: dict[str, str], dest: str | Path | IO[bytes] | None) -> dict[str, Any]:
        problems: list[str] = []
        for url in self.rotation.candidates():
            try:
                response = self._session.post(
                    url,
                    data=fields,
                    timeout=(self.connect_timeout, self.timeout),
                    stream=True,
                    verify=self._verify,
                    cert=self._cert,
                )
            except (requests.exceptions.ConnectionError, requests.exceptions.SSLError) as exc:
                if isinstance(exc, requests.exceptions.SSLError) or _not_sent(exc):
                    self.rotation.ban(url)
                    problems.append(f"{url}: {exc}")
                    continue
                return S_ERROR(errno.ECONNABORTED, f"{method} on {url}: {exc}")
            except requests.exceptions.Timeout:
                return S_ERROR(errno.ETIMEDOUT, f"{method} on {url}: no reply in {self.timeout} s")
            except requests.exceptions.RequestException as exc:
                return S_ERROR(errno.EIO, f"{method} on {url}: {exc}")
            with response:
                if response.status_code in RETRY_STATUSES:
                    self.rotation.ban(url)
                    problems.append(f"{url}: HTTP {response.status_code}")
                    continue
                self.rotation.succeeded(url)
                content_type = response.headers.get("content-type", "")
                if dest is not None and response.status_code == 200 and not content_type.startswith(
                    "application/json"
                ):
                    return _save(response, dest, url)
                return decode_reply(response.status_code, response.content, url, method, self.codec)
        return S_ERROR(errno.ECONNREFUSED, "cannot reach any URL: " + "; ".join(problems))


def _not_sent(exc: requests.exceptions.ConnectionError) -> bool:
    # urllib3 wraps connect failures as NewConnectionError / MaxRetryError(ConnectTimeout...);
    # anything else (connection reset mid-reply) may have reached the server.
    text = repr(exc)
    return any(
        marker in text
        for marker in ("NewConnectionError", "ConnectTimeout", "NameResolutionError", "Connection refused")
    )


def _save(response: requests.Response, dest: str | Path | IO[bytes], url: str) -> dict[str, Any]:
    own = isinstance(dest, (str, Path))
    handle: IO[bytes] = open(dest, "wb") if own else dest  # type: ignore[arg-type,assignment]  # noqa: SIM115
    written = 0
    try:
        for chunk in response.iter_content(_CHUNK):
            handle.write(chunk)
            written += len(chunk)
    except requests.exceptions.RequestException as exc:
        return S_ERROR(errno.EIO, f"download from {url} interrupted after {written} bytes: {exc}")
    finally:
        if own:
            handle.close()
    return S_OK(written)
