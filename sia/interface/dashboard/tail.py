"""Folds kept warm for the dashboard: each run's state advanced by its new events only.

A page view or a live update reads `store.read(run_id, after=seq)` from where the last
one stopped, never the whole log again. The first look at a run starts from its newest
snapshot (tens of milliseconds at 100k events); what needs every event (elapsed time
per generation, refused answers, counts per type) is a second, lazy fold that the page
asks for after its first paint.

All store access goes through one lock: the store's single SQLite connection is shared
by the server's worker threads.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sia.core.events.envelope import StoredEvent
from sia.core.events.mapper import MAPPER
from sia.core.reducers.loop import evolve
from sia.core.reducers.state import LoopState
from sia.interface.dashboard.pages import EpisodeRef
from sia.interface.views import ElapsedClock
from sia.runtime.loop import load_state
from sia.store.base import EventStore, RunRecord

T = TypeVar("T")
TIMELINE_CHUNK = 5000
"""Events read per hold of the store lock when a timeline catches up (~40 ms of reading)."""


@dataclass
class Timeline:
    """What only a pass over every event gives: stamps, refusals, counts per type."""

    seq: int = 0
    clock: ElapsedClock = field(default_factory=ElapsedClock)
    refused: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    investigations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    """Each generation's journaled Feedback steps (turns and tool calls), in order."""
    types: Counter[str] = field(default_factory=Counter)
    episodes: dict[str, EpisodeRef] = field(default_factory=dict)
    first_stamp: str | None = None
    last_stamp: str | None = None
    _feedback_generation: dict[str, int] = field(default_factory=dict)

    def add(self, event: StoredEvent) -> None:
        self.seq = event.seq
        self.types[event.type] += 1
        self.clock.add(event)
        self.first_stamp = self.first_stamp or event.recorded_at
        self.last_stamp = event.recorded_at
        # canonical JSON has no spaces: a substring test skips decoding 99% of requests
        if event.type == "EffectRequested" and '"kind":"feedback"' in event.payload:
            payload = json.loads(event.payload)
            self._feedback_generation[payload["effect_id"]] = payload["request"]["generation"]
        elif event.type == "EpisodeRecorded":
            payload = json.loads(event.payload)
            self.episodes[payload["episode_id"]] = EpisodeRef(
                event.seq, payload["generation"], payload["sample_id"], payload["status"])
        elif event.type == "AnswerRefused":
            payload = json.loads(event.payload)
            generation = self._feedback_generation.get(payload["effect_id"])
            if generation is not None:
                self.refused.setdefault(generation, []).append(
                    {"attempt": payload["attempt"], "problems": list(payload["problems"]),
                     "seq": event.seq})
        elif event.type == "AgentStepRecorded":
            payload = json.loads(event.payload)
            generation = self._feedback_generation.get(payload["effect_id"])
            if generation is not None:
                self.investigations.setdefault(generation, []).append(
                    {"index": payload["index"], "kind": payload["kind"], "name": payload["name"],
                     "summary": payload["summary"], "usage": payload["usage"], "seq": event.seq})


@dataclass
class RunTail:
    run_id: str
    state: LoopState
    timeline: Timeline | None = None


class Tails:
    """Warm folds of every run a page has looked at, advanced on demand."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._timeline_lock = threading.Lock()
        self._tails: dict[str, RunTail] = {}

    @contextmanager
    def locked(self) -> Iterator[EventStore]:
        """The store, for exclusive use (read everything you need before leaving)."""
        with self._lock:
            yield self.store

    def read(self, reader: Callable[[EventStore], T]) -> T:
        with self._lock:
            return reader(self.store)

    def runs(self) -> list[RunRecord]:
        with self._lock:
            return self.store.list_runs()

    def last_seq(self, run_id: str) -> int:
        with self._lock:
            return self.store.last_seq(run_id)

    def state(self, run_id: str) -> LoopState:
        """The run's state at its newest committed event."""
        with self._lock:
            tail = self._tails.get(run_id)
            if tail is None:
                self.store.get_run(run_id)
                tail = self._tails[run_id] = RunTail(run_id, load_state(self.store, run_id))
                return tail.state
            state = tail.state
            for event in self.store.read(run_id, after=state.seq):
                state = evolve(state, MAPPER.decode(event))
            tail.state = state
            return state

    def timeline(self, run_id: str) -> Timeline:
        """The run's timeline up to its newest committed event. The first pass over a long
        log reads it in chunks, letting other requests use the store in between."""
        with self._timeline_lock:
            with self._lock:
                self.state(run_id)
                tail = self._tails[run_id]
                timeline = tail.timeline or Timeline()
                last = self.store.last_seq(run_id)
            while timeline.seq < last:
                with self._lock:
                    for event in self.store.read(run_id, after=timeline.seq,
                                                 upto=min(last, timeline.seq + TIMELINE_CHUNK)):
                        timeline.add(event)
            tail.timeline = timeline
            return timeline
