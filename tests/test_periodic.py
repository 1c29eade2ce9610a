"""Periodic jobs keep their schedule through failures (on a Clock)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from ccnet.periodic import every


class EveryTests(unittest.TestCase):
    def test_a_raising_or_failing_round_is_counted_and_the_next_one_runs(self) -> None:
        clock = task.Clock()
        calls: list[float] = []
        failures: dict[str, int] = {}

        def job() -> Any:
            calls.append(clock.seconds())
            if len(calls) == 1:
                raise RuntimeError("database down")
            if len(calls) == 2:
                return defer.fail(OSError("disk full"))
            return None

        loop = every(clock, 5.0, "cleanup", job, failures=failures)
        self.addCleanup(loop.stop)
        clock.advance(5)
        clock.advance(5)
        self.assertTrue(loop.running)
        self.assertEqual(calls, [0.0, 5.0, 10.0])
        self.assertEqual(failures, {"cleanup": 2})

    def test_coroutine_jobs_are_awaited(self) -> None:
        clock = task.Clock()
        failures: dict[str, int] = {}

        async def job() -> None:
            raise ValueError("bad row")

        loop = every(clock, 1.0, "expiry", job, failures=failures)
        self.addCleanup(loop.stop)
        clock.advance(1)
        self.assertEqual(failures, {"expiry": 2})
        self.assertTrue(loop.running)
