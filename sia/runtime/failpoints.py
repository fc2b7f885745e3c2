"""Named crash points for crash-injection tests (`SIA_CRASH_AT=point:n`).

At the n-th time the runtime reaches `point`, the process SIGKILLs itself: nothing is
flushed, no handler runs, exactly like `kill -9`. Unset, it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = (
    "before_request_commit",
    "after_request_commit",
    "after_execution",
    "mid_batch",
)


class Failpoints:
    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get("SIA_CRASH_AT", "") if spec is None else spec
        self._armed: dict[str, int] = {}
        for item in filter(None, spec.split(",")):
            point, _, count = item.partition(":")
            if point not in POINTS:
                raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
            self._armed[point] = int(count or 1)
        self._seen: Counter[str] = Counter()

    def reach(self, point: str) -> None:
        if point in self._armed:
            self._seen[point] += 1
            if self._seen[point] == self._armed[point]:
                os.kill(os.getpid(), signal.SIGKILL)
