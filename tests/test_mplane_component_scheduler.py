"""The scheduler honours temporal scopes: start, end, period, repeat, now, future (task.Clock)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer

from ccnet.mplane.model import Envelope, ExceptionMessage, Message, Statement, When, render_time
from ccnet.mplane.probes import IProbe, ProbeError, ProbeRun, make_result
from ccnet.mplane.scheduler import DONE, FAILED, Scheduler

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC).timestamp()
CAP = Statement("capability", label="fake", when=When.parse("past ... future"), results=["delay.twoway.icmp.count"])


@implementer(IProbe)
class FakeProbe:
    """Counts one sample per period of the run until the run's end or an interrupt."""

    name = "fake"

    def __init__(self, clock: task.Clock, fail: bool = False) -> None:
        self.clock = clock
        self.fail = fail
        self.runs: list[tuple[float, float | None]] = []

    def capabilities(self) -> list[Statement]:
        return [CAP]

    def run(self, spec: Statement, capability: Statement, run: ProbeRun) -> defer.Deferred[Any]:
        if self.fail:
            raise ProbeError("no route to host")
        self.runs.append((self.clock.seconds(), run.duration))
        d: defer.Deferred[Any] = defer.Deferred()
        start = run.now()

        def done(_: Any) -> Any:
            samples = int((self.clock.seconds() - start.timestamp()) / (run.period or 1)) + 1
            d.callback(make_result(spec, [[samples]], start, run.now()))
        if run.duration is not None and run.duration == 0:
            self.clock.callLater(0, done, None)
        else:
            run.interrupted.addCallback(done)
        return d


def spec(when: str) -> Statement:
    return Statement("specification", label="fake", when=When.parse(when), results=["delay.twoway.icmp.count"],
                     token=f"tok-{when}")


class SchedulerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.replies: list[tuple[Message, bool]] = []
        self.sched = Scheduler(self.clock, lambda job, msg, final: self.replies.append((msg, final)))
        self.probe = FakeProbe(self.clock)

    def submit(self, when: str) -> Any:
        return self.sched.submit(spec(when), CAP, self.probe, "client")

    def test_now_plus_duration_starts_at_once_and_ends_after_the_duration(self) -> None:
        job = self.submit("now + 5s / 1s")
        self.clock.advance(0)
        self.assertEqual(self.probe.runs, [(T0, 5.0)])
        self.clock.advance(4.9)
        self.assertEqual(self.replies, [])
        self.clock.advance(0.1)
        (msg, final), = self.replies
        self.assertTrue(final)
        self.assertEqual(job.state, DONE)
        self.assertEqual(msg.kind, "result")
        self.assertEqual(msg.token, "tok-now + 5s / 1s")
        self.assertEqual(msg.resultvalues, [["6"]])

    def test_absolute_start_in_the_future_waits_for_it(self) -> None:
        start = datetime.fromtimestamp(T0 + 60, UTC)
        end = datetime.fromtimestamp(T0 + 70, UTC)
        self.submit(f"{render_time(start)} ... {render_time(end)}")
        self.clock.advance(59)
        self.assertEqual(self.probe.runs, [])
        self.clock.advance(1)
        self.assertEqual(self.probe.runs, [(T0 + 60, 10.0)])
        self.clock.advance(10)
        self.assertEqual(len(self.replies), 1)

    def test_now_until_future_runs_until_interrupted(self) -> None:
        job = self.submit("now ... future / 1s")
        self.clock.advance(0)
        self.clock.advance(3600)
        self.assertEqual(self.replies, [])
        self.sched.interrupt(job.token)
        (msg, final), = self.replies
        self.assertEqual(msg.kind, "result")
        self.assertEqual(msg.resultvalues, [["3601"]])

    def test_scope_that_already_ended_is_an_exception(self) -> None:
        a = render_time(datetime.fromtimestamp(T0 - 60, UTC))
        b = render_time(datetime.fromtimestamp(T0 - 50, UTC))
        reply = self.submit(f"{a} ... {b}")
        self.assertIsInstance(reply, ExceptionMessage)
        self.assertIn("already ended", reply.message)

    def test_interrupt_before_the_start_answers_with_an_exception(self) -> None:
        start = render_time(datetime.fromtimestamp(T0 + 60, UTC))
        job = self.submit(f"{start} + 10s")
        self.sched.interrupt(job.token)
        self.clock.advance(120)
        self.assertEqual(self.probe.runs, [])
        (msg, final), = self.replies
        self.assertIsInstance(msg, ExceptionMessage)
        self.assertEqual(job.state, FAILED)

    def test_same_token_gets_the_same_job(self) -> None:
        a = self.submit("now + 5s / 1s")
        b = self.submit("now + 5s / 1s")
        self.assertIs(a, b)
        self.clock.advance(0)
        self.assertEqual(len(self.probe.runs), 1)

    def test_repeated_scope_runs_each_subscope_and_reports_a_growing_envelope(self) -> None:
        job = self.submit("repeat now + 30s / 10s { now + 2s / 1s }")
        self.clock.advance(0)
        self.clock.pump([1] * 40)
        starts = [t - T0 for t, _ in self.probe.runs]
        # The scope ends at 30 s: a run starting there would end outside it.
        self.assertEqual(starts, [0, 10, 20])
        partial = [m for m, final in self.replies if not final]
        self.assertEqual([len(m.contents) for m in partial], [1, 2, 3])
        final_msg, final = self.replies[-1]
        self.assertTrue(final)
        self.assertIsInstance(final_msg, Envelope)
        self.assertEqual(len(final_msg.contents), 3)
        self.assertTrue(final_msg.when.is_definite())
        self.assertEqual(job.state, DONE)

    def test_probe_error_becomes_an_mplane_exception(self) -> None:
        self.probe.fail = True
        job = self.submit("now + 1s / 1s")
        self.clock.advance(0)
        (msg, final), = self.replies
        self.assertIsInstance(msg, ExceptionMessage)
        self.assertEqual(msg.message, "no route to host")
        self.assertEqual(msg.token, job.token)
