"""A task written the way markokr/cc's ``cc.task.sample`` works (ccnet's own test code).

Run as the original taskrunner runs tasks: ``python -m tests.upstream_task_sample -d
<ini>`` with ``{"task": ..., "signature": ...}`` on stdin.  Like ``cc.task.CCTask``:
``cmd = crash-launch`` fails before daemonizing (exit 1); otherwise it daemonizes
(``-d``: the launcher exits 0 at once), connects a DEALER to ``[ccserver]
cc-socket`` of the ini and sends ``task.reply.<uid>`` messages with the fields of
``cc.reqs.TaskReplyMessage``: three ``feedback`` {i}, then ``finished``; ``cmd =
crash-run`` sends ``failed`` instead.  ``[tests.upstream_task_sample] marker`` (a
path), when set, gets the task id written to it, so tests see the task's own
section is read.
"""

from __future__ import annotations

import configparser
import json
import os
import socket
import sys
import time
from typing import Any

import zmq


def _frames(req: str, **fields: Any) -> list[bytes]:
    body = {"req": req, "time": time.time(), "hostname": socket.gethostname(), "blob_hash": ""}
    body.update(fields)
    return [b"", req.encode(), json.dumps(body).encode(), b""]


def main(argv: list[str]) -> int:
    daemonize = "-d" in argv
    ini_path = [a for a in argv if a != "-d"][0]
    info = json.loads(sys.stdin.read())
    task = info["task"]
    print(f"got task: {task['task_id']}")
    if task.get("cmd") == "crash-launch":
        print("launch failed")
        return 1
    ini = configparser.RawConfigParser()
    ini.read(ini_path)
    endpoint = ini.get("ccserver", "cc-socket").replace("tcp://*:", "tcp://127.0.0.1:")
    marker = ini.get("tests.upstream_task_sample", "marker", fallback="")
    sys.stdout.flush()
    if daemonize and os.fork() > 0:
        return 0
    if daemonize:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    uid = task["req"].split(".")[2]
    common = {"handler": task["task_handler"], "task_id": task["task_id"]}
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    try:
        if marker:
            with open(marker, "w") as handle:
                handle.write(task["task_id"])
        if task.get("cmd") == "crash-run":
            sock.send_multipart(_frames(f"task.reply.{uid}", status="failed", feedback={}, **common))
            return 1
        for i in range(3):
            sock.send_multipart(_frames(f"task.reply.{uid}", status="feedback", feedback={"i": i}, **common))
        sock.send_multipart(_frames(f"task.reply.{uid}", status="finished", feedback={}, **common))
        return 0
    finally:
        sock.close()
        ctx.term()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
