"""The waits between retries (broker reconnections, writes during a store outage)."""

from __future__ import annotations

import time

from common.backoff import WORKED_FOR, Backoff


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_reset() -> None:
    backoff = Backoff(0.5, 5.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_after_a_failed_connection_the_wait_grows_and_after_a_working_one_it_starts_again() -> None:
    backoff = Backoff(0.5, 10.0)
    now = time.monotonic()
    assert [backoff.after_connection(now) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff.after_connection(now - WORKED_FOR - 1) == 0.5
    assert backoff.after_connection(time.monotonic()) == 1.0
