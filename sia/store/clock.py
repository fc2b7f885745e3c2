"""The clock a store reads: stamps for what it records, seconds for when a lease runs out.

A store never reads time itself; it is handed a `Clock` (the system clock by default), so a
test can drive lease expiry and `recorded_at` stamps by hand instead of sleeping. Stamps
are recorded and hashed, never read to decide anything; lease seconds are wall-clock
epoch seconds, not monotonic ones, because another process compares them through the store.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> str:
        """An ISO 8601 UTC stamp, for `recorded_at` and `created_at`."""
        ...

    def seconds(self) -> float:
        """Epoch seconds, for lease expiry."""
        ...


def _stamp(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="microseconds")


class SystemClock:
    """The machine's wall clock."""

    def now(self) -> str:
        return datetime.now(timezone.utc).isoformat(timespec="microseconds")

    def seconds(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to: `advance` it past a lease's ttl to expire it."""

    def __init__(self, start_s: float = 1_767_225_600.0) -> None:
        self._seconds = start_s

    def now(self) -> str:
        return _stamp(self._seconds)

    def seconds(self) -> float:
        return self._seconds

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not run backwards (asked to advance {seconds}s)")
        self._seconds += seconds
