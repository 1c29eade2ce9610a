"""The ROUTER's bounded send queue (pure): order per peer, bounds, drops with a reason."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from ccnet.cc.sendqueue import (
    BYTES_FULL,
    CLOSING,
    FULL,
    GONE,
    PEER_FULL,
    PEER_GONE,
    SENT,
    SendQueue,
)


def msg(peer: bytes, n: int, size: int = 10) -> list[bytes]:
    return [peer, b"", b"echo.response", b"%d" % n + b"x" * (size - len(b"%d" % n))]


class SendQueueTests(TestCase):
    def test_flush_sends_in_order_per_peer_and_skips_a_full_peer(self) -> None:
        q = SendQueue(per_peer=10, max_bytes=10_000)
        for i in range(3):
            self.assertIsNone(q.push(msg(b"A", i)))
            self.assertIsNone(q.push(msg(b"B", i)))
        sent: list[list[bytes]] = []

        def send(frames: list[bytes]) -> int:
            if frames[0] == b"A":
                return FULL  # A's pipe is at its HWM: B must not wait behind it
            sent.append(frames)
            return SENT

        self.assertEqual(q.flush(send), [])
        self.assertEqual(sent, [msg(b"B", i) for i in range(3)])
        self.assertTrue(q.waiting(b"A"))
        self.assertFalse(q.waiting(b"B"))
        self.assertEqual(q.messages, 3)
        self.assertEqual(q.flush(lambda f: SENT), [])
        self.assertFalse(q)
        self.assertEqual((q.messages, q.bytes), (0, 0))

    def test_per_peer_bound_drops_newest_with_reason(self) -> None:
        q = SendQueue(per_peer=2, max_bytes=10_000)
        self.assertIsNone(q.push(msg(b"A", 0)))
        self.assertIsNone(q.push(msg(b"A", 1)))
        self.assertEqual(q.push(msg(b"A", 2)), PEER_FULL)
        self.assertIsNone(q.push(msg(b"B", 0)))  # another peer is not affected
        self.assertEqual(q.peak, 3)

    def test_byte_bound_covers_all_peers(self) -> None:
        one = sum(len(f) for f in msg(b"A", 0, size=100))
        q = SendQueue(per_peer=100, max_bytes=2 * one)
        self.assertIsNone(q.push(msg(b"A", 0, size=100)))
        self.assertIsNone(q.push(msg(b"B", 0, size=100)))
        self.assertEqual(q.push(msg(b"C", 0, size=100)), BYTES_FULL)
        self.assertEqual(q.bytes, 2 * one)

    def test_gone_peer_loses_its_whole_queue_as_dropped(self) -> None:
        q = SendQueue(per_peer=10, max_bytes=10_000)
        for i in range(3):
            q.push(msg(b"A", i))
        q.push(msg(b"B", 0))
        dropped = q.flush(lambda f: GONE if f[0] == b"A" else SENT)
        self.assertEqual(dropped, [(msg(b"A", i), PEER_GONE) for i in range(3)])
        self.assertFalse(q)

    def test_clear_reports_everything_as_closing(self) -> None:
        q = SendQueue(per_peer=10, max_bytes=10_000)
        q.push(msg(b"A", 0))
        q.push(msg(b"B", 0))
        self.assertEqual(sorted(r for _, r in q.clear()), [CLOSING, CLOSING])
        self.assertEqual((q.messages, q.bytes, bool(q)), (0, 0, False))

    @settings(max_examples=200, deadline=None)
    @given(ops=st.lists(st.tuples(st.sampled_from([b"A", b"B", b"C"]), st.integers(1, 50),
                                  st.sampled_from([SENT, FULL, GONE])), max_size=60),
           per_peer=st.integers(1, 5), max_bytes=st.integers(50, 400))
    def test_every_message_is_sent_queued_or_dropped_never_lost(
        self, ops: list[tuple[bytes, int, int]], per_peer: int, max_bytes: int
    ) -> None:
        q = SendQueue(per_peer, max_bytes)
        sent = dropped = 0
        last_sent: dict[bytes, int] = {}
        for n, (peer, size, outcome) in enumerate(ops):
            if q.push(msg(peer, n, size)) is not None:
                dropped += 1

            def send(frames: list[bytes], outcome: int = outcome) -> int:
                nonlocal sent
                if outcome == SENT:
                    sent += 1
                    seq = int(frames[3].rstrip(b"x"))
                    self.assertGreater(seq, last_sent.get(frames[0], -1))  # order per peer
                    last_sent[frames[0]] = seq
                return outcome

            dropped += len(q.flush(send))
            self.assertLessEqual(q.bytes, max_bytes)
            self.assertEqual(q.bytes, sum(sum(len(f) for f in m) for d in q._peers.values() for m in d))
        self.assertEqual(len(ops), sent + dropped + q.messages)
