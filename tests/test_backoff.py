"""``ccnet.backoff``: the one wait policy of every reconnect and retry loop."""

from __future__ import annotations

from typing import Any

import zmq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from zmq.utils.monitor import recv_monitor_message

from ccnet.backoff import Backoff
from ccnet.cc.config import ZmqOptions
from ccnet.cc.transport import RECONNECT_IVL_MAX_MS, dealer, make_factory


class BackoffTests(unittest.TestCase):
    def test_steps_double_from_initial_up_to_maximum(self) -> None:
        backoff = Backoff(0.5, 30, rng=lambda: 1.0)  # the top of each step
        self.assertEqual([backoff.next_delay() for _ in range(9)], [0.5, 1, 2, 4, 8, 16, 30, 30, 30])

    def test_each_wait_is_drawn_in_the_upper_half_of_its_step(self) -> None:
        backoff = Backoff(0.5, 30, rng=lambda: 0.0)
        self.assertEqual([backoff.next_delay() for _ in range(8)], [0.25, 0.5, 1, 2, 4, 8, 15, 15])

    def test_reset_after_a_success_starts_again_from_the_first_step(self) -> None:
        backoff = Backoff(2, 30, rng=lambda: 1.0)
        for _ in range(5):
            backoff.next_delay()
        backoff.reset()
        self.assertEqual((backoff.next_delay(), backoff.failures), (2, 1))

    def test_peers_failing_together_do_not_retry_in_step(self) -> None:
        # 100 components that lost the same supervisor, at their fifth failure (8 s step).
        waits = []
        for _ in range(100):
            backoff = Backoff(0.5, 30)
            waits.append([backoff.next_delay() for _ in range(5)][-1])
        self.assertTrue(all(4 <= w <= 8 for w in waits), waits)
        self.assertGreater(len({round(w, 2) for w in waits}), 50)


class ZmqReconnectBackoffTests(unittest.TestCase):
    """ZeroMQ reconnects by itself: ccnet's sockets make libzmq back off, not retry every 100 ms."""

    timeout = 30

    def test_a_dealer_to_a_peer_that_is_down_retries_ever_more_slowly(self) -> Any:
        from tests.support import free_port

        factory = make_factory(reactor, ZmqOptions())
        self.addCleanup(factory.shutdown)
        sock = dealer(factory, ZmqOptions(), lambda frames: None)
        monitor = sock.socket.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED)
        sock.connect(f"tcp://127.0.0.1:{free_port()}")  # nobody listens there

        def retries() -> list[int]:
            # libzmq reports each retry with the interval it waits before the next one.
            seen: list[int] = []
            while len(seen) < 7 and monitor.poll(10_000):
                seen.append(int(recv_monitor_message(monitor)["value"]))
            return seen

        def check(seen: list[int]) -> None:
            monitor.close(linger=0)
            self.assertEqual(len(seen), 7, seen)
            # 100 ms doubling up to 5 s (plus up to one base interval of jitter): 6.4 s capped.
            steps = [min(100 * 2**i, RECONNECT_IVL_MAX_MS) for i in range(7)]
            self.assertTrue(all(step <= ms <= step + 100 for step, ms in zip(steps, seen, strict=True)), seen)

        return deferToThread(retries).addCallback(check)
