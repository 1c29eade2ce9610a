"""Waits between the attempts of a reconnect or retry loop: one policy for every such loop."""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.application.internet import backoffPolicy

__all__ = ["Backoff"]


class Backoff:
    """Waits that double from ``initial`` up to ``maximum``, each spread at random.

    The growth is Twisted's ``backoffPolicy`` (the one ``ClientService`` reconnects with).
    Its own jitter adds up to one second, which at 30 s steps still brings every component
    that lost the same supervisor back in one burst; so each wait is drawn instead from the
    upper half of its step ("equal jitter"): never longer than the step, never under half.
    """

    def __init__(self, initial: float, maximum: float, factor: float = 2.0,
                 rng: Callable[[], float] = random.random) -> None:
        self._step = backoffPolicy(initial, maximum, factor, jitter=lambda: 0.0)
        self._random = rng
        #: Failures since the last success.
        self.failures = 0

    def next_delay(self) -> float:
        """How long to wait after one more failure."""
        step = self._step(self.failures)
        self.failures += 1
        return step * (1.0 + self._random()) / 2.0

    def reset(self) -> None:
        """After a success: the next failure waits about ``initial`` again."""
        self.failures = 0
