"""Wall-clock stamps for stored events: recorded, hashed, never read to decide anything."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
