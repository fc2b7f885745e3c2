"""The clocks a store can be given: the system clock by default, a manual one in tests."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from sia.store.clock import SYSTEM_CLOCK, Clock, ManualClock
from sia.store.memory import MemoryEventStore


def test_system_clock_reads_the_wall_clock_in_utc() -> None:
    before = time.time()
    stamp, seconds = SYSTEM_CLOCK.now(), SYSTEM_CLOCK.seconds()
    after = time.time()
    assert before <= seconds <= after
    parsed = datetime.fromisoformat(stamp)
    assert parsed.tzinfo == timezone.utc
    assert before - 1 <= parsed.timestamp() <= after + 1
    assert isinstance(SYSTEM_CLOCK, Clock)


def test_default_store_stamps_with_the_system_clock() -> None:
    before = time.time()
    store = MemoryEventStore()
    store.create_run("a", [])
    created = datetime.fromisoformat(store.get_run("a").created_at).timestamp()
    assert before - 1 <= created <= time.time() + 1


def test_manual_clock_moves_only_when_advanced() -> None:
    clock = ManualClock(start_s=0.0)
    assert clock.now() == "1970-01-01T00:00:00.000000+00:00" and clock.now() == clock.now()
    clock.advance(1.5)
    assert clock.seconds() == 1.5
    assert clock.now() == "1970-01-01T00:00:01.500000+00:00"
    with pytest.raises(ValueError, match="does not run backwards"):
        clock.advance(-1)
    assert clock.seconds() == 1.5
    assert isinstance(clock, Clock)
