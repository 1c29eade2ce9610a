"""Run the trial suite and end with the plain line CI reads: ``N passed, N failed, N skipped``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    targets = argv or ["tests"]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("CCNET_TEST_PG_DSN", "postgresql://postgres@127.0.0.1/test")
    trial = Path(sys.executable).parent / "trial"
    cmd = [str(trial), "--temp-directory=_trial_temp", *targets]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line)
        del tail[:-50]
    code = proc.wait()
    counts = {"successes": 0, "failures": 0, "errors": 0, "skips": 0, "expectedFailures": 0,
              "unexpectedSuccesses": 0}
    summary = next((line for line in reversed(tail) if re.match(r"^(PASSED|FAILED) \(", line)), None)
    if summary:
        for key, value in re.findall(r"(\w+)=(\d+)", summary):
            counts[key] = int(value)
    elif code == 0:
        code = 1  # no summary means trial did not run the suite
    passed = counts["successes"] + counts["expectedFailures"]
    failed = counts["failures"] + counts["errors"] + counts["unexpectedSuccesses"]
    if summary is None:
        failed = max(failed, 1)
    print(f"{passed} passed, {failed} failed, {counts['skips']} skipped")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
