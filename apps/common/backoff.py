"""The waits between retries: the gateway's and the consumer's reconnections to the broker, and the
consumer's writes during a store outage."""

from __future__ import annotations

import time

# A connection that lasted this long had been working: the next reconnection is quick again.
WORKED_FOR = 30.0


class Backoff:
    """Waits that double from ``first`` up to ``cap``, back to ``first`` after ``reset()``."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first

    def after_connection(self, opened: float) -> float:
        """The wait before reconnecting once a connection attempt made at ``opened`` (``time.monotonic()``)
        is over: from ``first`` again if the connection had lasted ``WORKED_FOR`` seconds."""
        if time.monotonic() - opened > WORKED_FOR:
            self.reset()
        return self.next()
