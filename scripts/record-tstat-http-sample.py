#!/usr/bin/env python3
"""Record the tstat probe's HTTP sample from a real HTTP exchange on loopback.

tstat does not run on our build machines, so the ``log_http_complete`` sample shipped in
``ccnet/mplane/probes/tstat/sample/`` is recorded here instead: curl talks to a small
twisted.web server on 127.0.0.1 (keep-alive, a redirect, a byte range, a 404, a POST);
the server notes what crossed each connection (addresses, ports, times, the request and
response header fields tstat extracts) and the script lays those values out in tstat
3.x's ``log_http_complete`` layout (tab-separated; ``http_full_url = 2``; no DNS name, so
``fqdn`` is ``-``). Nothing is invented: every value is what this exchange carried.

    python3 scripts/record-tstat-http-sample.py > ccnet/mplane/probes/tstat/sample/log_http_complete
"""

from __future__ import annotations

import subprocess
import sys
import time

from twisted.internet import reactor, threads
from twisted.web import resource, server

ROWS: list[list[str]] = []


def _h(request: server.Request, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode() if value else "-"


class Recorder(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        peer = request.getClientAddress()
        host = request.getHost()
        ends = [peer.host, str(peer.port), host.host, str(host.port)]
        ROWS.append(ends + [f"{time.time():.6f}", request.method.decode(), _h(request, b"host"), "-",
                            request.uri.decode(), _h(request, b"referer"), _h(request, b"user-agent"),
                            _h(request, b"cookie"), _h(request, b"dnt")])
        path = request.path.decode()
        body = b""
        if path == "/old":
            request.setResponseCode(302)
            request.setHeader(b"location", f"http://{host.host}:{host.port}/index.html".encode())
        elif path == "/index.html":
            body = b"<html><body>ccnet tstat sample</body></html>\n"
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.addCookie(b"session", b"4f1c2a", path=b"/")
        elif path == "/video.mp4":
            full = bytes(range(256)) * 160
            first, last = 0, 1023
            request.setResponseCode(206)
            request.setHeader(b"content-type", b"video/mp4")
            request.setHeader(b"content-range", f"bytes {first}-{last}/{len(full)}".encode())
            body = full[first:last + 1]
        elif path == "/api/submit" and request.method == b"POST":
            request.setResponseCode(201)
            request.setHeader(b"content-type", b"application/json")
            body = b'{"accepted": true}\n'
        else:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain")
            body = b"not found\n"
        request.setHeader(b"content-length", str(len(body)).encode())
        request.setHeader(b"server", b"TwistedWeb")
        headers = request.responseHeaders
        location = headers.getRawHeaders(b"location", [b"-"])[0].decode()
        cookie = request.cookies[0].decode() if request.cookies else "-"
        ROWS.append(ends + [f"{time.time():.6f}", "HTTP", str(request.code), str(len(body)),
                            headers.getRawHeaders(b"content-type", [b"-"])[0].decode(), "TwistedWeb",
                            headers.getRawHeaders(b"content-range", [b"-"])[0].decode(), location, cookie])
        return body


def _curl(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    ua = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    # One keep-alive connection: page, redirect (followed), range request.
    subprocess.run(["curl", "-s", "-A", ua, "-e", f"{base}/", "-H", "DNT: 1",
                    f"{base}/index.html", "-L", f"{base}/old",
                    "-r", "0-1023", f"{base}/video.mp4"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["curl", "-s", f"{base}/favicon.ico"], check=False, stdout=subprocess.DEVNULL)
    subprocess.run(["curl", "-s", "-A", "ccnet-sample/1.0", "-H", "Content-Type: application/json",
                    "-b", "session=4f1c2a", "--data", '{"probe": "tstat"}', f"{base}/api/submit"], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    port = reactor.listenTCP(0, server.Site(Recorder()), interface="127.0.0.1").getHost().port
    d = threads.deferToThread(_curl, port)
    d.addBoth(lambda r: (reactor.stop(), r)[1])
    reactor.run()
    for row in ROWS:
        sys.stdout.write("\t".join(row) + "\n")


if __name__ == "__main__":
    main()
