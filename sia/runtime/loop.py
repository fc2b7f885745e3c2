"""The runtime: load events → fold → decide → commit → execute effects → commit results.

This is the imperative shell around the pure core. Its rules:

* `EffectRequested` is committed before a handler runs; `EffectCompleted` (with the
  events `interpret` derives from the result) after, in one transaction per effect.
* Effects of one batch run concurrently on a bounded pool, but their outcomes are
  committed in request order, so the log does not depend on which finished first.
* On start (run or resume) pending effects are settled first: a handler re-attaches to an
  external job by its recorded id, or runs again; a completed effect never runs again.
* Transient failures are retried with backoff, each failed attempt recorded (with the
  effect's outcome, so the log's order stays deterministic).
* One live driver per run, by lease; Ctrl-C records RunPaused.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from sia.core.config import apply_overrides
from sia.core.decide import DECIDER_VERSION, decide
from sia.core.effect_models import parse_request
from sia.core.events.canonical import canonical_json
from sia.core.events.envelope import StoredEvent
from sia.core.events.mapper import MAPPER
from sia.core.events.types import (
    BaseEvent,
    EffectCompleted,
    EffectFailed,
    RunConfig,
    RunCreated,
    RunForked,
    RunPaused,
    RunResumed,
    TaskIdentity,
    Usage,
)
from sia.core.interpret import ResultInvalid, interpret, interpret_failure
from sia.core.reducers.loop import evolve, fold
from sia.core.reducers.snapshot import REDUCER_VERSION, decode_state, encode_state
from sia.core.reducers.state import LoopState, PendingEffect
from sia.effects.base import (
    EffectContext,
    EffectError,
    HandlerRegistry,
    TransientEffectError,
)
from sia.runtime.failpoints import Failpoints
from sia.runtime.search import CandidateHandler
from sia.store.base import CacheEntry, EventStore, LeaseHeld, Snapshot, UnknownRun, new_holder
from sia.store.home import sia_home

CacheMode = Literal["off", "read", "readwrite"]
Observer = Callable[[LoopState, list[StoredEvent]], None]


def new_run_id(task: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{task.replace('/', '-')}-{stamp}-{secrets.token_hex(3)}"


def default_backoff(attempt: int, retry_after: float | None) -> float:
    """Honour the server's retry-after; otherwise exponential from 0.5 s, capped at 30 s."""
    if retry_after is not None:
        return max(0.0, retry_after)
    return min(30.0, 0.5 * 2 ** (attempt - 1))


SNAPSHOT_EVERY = 5000
"""Events between snapshots; below this a run folds from scratch in milliseconds anyway."""


def load_state(store: EventStore, run_id: str, upto: int | None = None) -> LoopState:
    """Fold a run, starting from its newest valid snapshot when there is one."""
    state, after = LoopState(), 0
    snapshot = store.latest_snapshot(run_id, REDUCER_VERSION, upto)
    if snapshot is not None:
        event = store.event_at(run_id, snapshot.seq)
        if event is not None and event.hash == snapshot.last_hash:
            state, after = decode_state(snapshot.body), snapshot.seq
    return fold((MAPPER.decode(e) for e in store.read(run_id, after=after, upto=upto)), state)


def save_snapshot(store: EventStore, run_id: str, state: LoopState) -> None:
    store.put_snapshot(Snapshot(run_id, state.seq, REDUCER_VERSION, state.last_hash,
                                encode_state(state)))


@dataclass
class Runtime:
    store: EventStore
    registry: HandlerRegistry
    concurrency: int = 4
    cache: CacheMode = "readwrite"
    home: Path = field(default_factory=sia_home)
    observer: Observer | None = None
    failpoints: Failpoints = field(default_factory=Failpoints)
    lease_ttl_s: float = 30.0
    backoff: Callable[[int, float | None], float] = default_backoff
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._state = LoopState()
        self._run_id = ""
        self._snapshot_seq = 0
        if "candidate" not in self.registry.handlers:
            self.registry.register(CandidateHandler(self))

    # ---------------------------------------------------------------- a search's branches

    def exists(self, run_id: str) -> bool:
        try:
            self.store.get_run(run_id)
        except UnknownRun:
            return False
        return True

    def branch(self, parent_run_id: str, at: int, overrides: dict[str, str], run_id: str) -> str:
        """Fork `parent_run_id` after `at` with `overrides` applied to its configuration there."""
        state = load_state(self.store, parent_run_id, at)
        assert state.config is not None
        return self.fork(parent_run_id, at, apply_overrides(state.config, overrides), overrides, run_id)

    def drive_branch(self, run_id: str) -> LoopState:
        """Drive a branch to its end with a runtime of its own (this one is busy with the
        parent), sharing this one's handlers, store, cache and concurrency."""
        state = load_state(self.store, run_id)
        candidates = state.config.search.candidates if state.config else 1
        nested = replace(self, registry=self.registry.borrowed(), observer=None,
                         concurrency=max(1, self.concurrency // max(1, candidates)))
        return nested.drive(run_id)

    # ---------------------------------------------------------------- starting runs

    def create(self, config: RunConfig, task: TaskIdentity, run_id: str | None = None) -> str:
        run_id = run_id or new_run_id(config.task)
        self.store.create_run(run_id, [MAPPER.encode(RunCreated(config=config, task=task,
                                                                decider_version=DECIDER_VERSION))])
        return run_id

    def fork(self, parent_run_id: str, at: int, config: RunConfig,
             overrides: dict[str, str], run_id: str | None = None) -> str:
        """A new run on the parent's first `at` events, shared by reference.

        Any seq will do. A fork between an effect's outcome and the events derived from it
        asks for that effect again and is served its recorded result from the cache.
        """
        run_id = run_id or new_run_id(config.task)
        event = RunForked(parent_run_id=parent_run_id, fork_seq=at, overrides=overrides,
                          config=config)
        self.store.create_run(run_id, [MAPPER.encode(event)], parent_run_id=parent_run_id,
                              fork_seq=at)
        return run_id

    # ---------------------------------------------------------------- driving

    def drive(self, run_id: str, max_batches: int | None = None) -> LoopState:
        """Advance the run until it ends, or until `max_batches` are decided and settled."""
        holder = new_holder()
        self.store.acquire_lease(run_id, holder, self.lease_ttl_s)
        heartbeat = _Heartbeat(self.store, run_id, holder, self.lease_ttl_s)
        heartbeat.start()
        self._run_id, self._state, self._snapshot_seq = run_id, LoopState(), 0
        try:
            self._state = load_state(self.store, run_id)
            self._snapshot_seq = self._state.seq
            if self._state.status == "paused":
                self._append([RunResumed(reason="resume")])
            batches = 0
            while True:
                heartbeat.check()
                if self._state.pending:
                    self._settle_pending()
                    continue
                if max_batches is not None and batches >= max_batches:
                    break
                events = decide(self._state)
                if not events:
                    break
                self.failpoints.reach("before_request_commit")
                self._append(events)
                self.failpoints.reach("after_request_commit")
                batches += 1
        except KeyboardInterrupt:
            # The interrupt may land between a commit and the fold of what it committed.
            self._state = load_state(self.store, run_id)
            if self._state.status == "running":
                self._append([RunPaused(reason="interrupted (Ctrl-C)")])
            raise
        finally:
            heartbeat.stop()
            self.registry.close()
            if self._state.seq - self._snapshot_seq >= SNAPSHOT_EVERY // 5:
                save_snapshot(self.store, run_id, self._state)
            self.store.release_lease(run_id, holder)
        return self._state

    @property
    def state(self) -> LoopState:
        return self._state

    def pause(self, run_id: str, reason: str) -> None:
        """Record that a run stops here on purpose (resume continues it)."""
        self._run_id = run_id
        self._state = load_state(self.store, run_id)
        if self._state.status == "running":
            self._append([RunPaused(reason=reason)])

    def _append(self, events: list[BaseEvent]) -> list[StoredEvent]:
        with self._lock:
            stored = self.store.append(
                self._run_id, [MAPPER.encode(e) for e in events], expected_last_seq=self._state.seq
            )
            for event in stored:
                self._state = evolve(self._state, MAPPER.decode(event))
            if self._state.seq - self._snapshot_seq >= SNAPSHOT_EVERY:
                save_snapshot(self.store, self._run_id, self._state)
                self._snapshot_seq = self._state.seq
            if self.observer:
                self.observer(self._state, stored)
            return stored

    # ---------------------------------------------------------------- effects

    def _settle_pending(self) -> None:
        pending = sorted(self._state.pending.values(), key=lambda p: p.seq)
        max_attempts = self._state.config.max_effect_attempts if self._state.config else 3
        workers = max(1, min(self.concurrency, len(pending)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sia-effect") as pool:
            futures = [pool.submit(self._execute, p, max_attempts) for p in pending]
            try:
                for index, (effect, future) in enumerate(zip(pending, futures)):
                    events = future.result()
                    self._remember(effect, events)
                    self._append(events)
                    if index < len(pending) - 1:
                        self.failpoints.reach("mid_batch")
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _remember(self, effect: PendingEffect, events: list[BaseEvent]) -> None:
        """Put a freshly executed result into the shared cache (never a cache hit's copy),
        before its events are appended: a kill between the two leaves a result this run
        finds again on resume (and records as its own), never a completion the cache lacks,
        which a search's parent would then run a second time."""
        if self.cache != "readwrite":
            return
        for event in events:
            if isinstance(event, EffectCompleted) and event.cached_from is None:
                self.store.cache_put(CacheEntry(
                    key=effect.effect_id, kind=effect.kind,
                    effect_id=effect.effect_id, run_id=self._run_id,
                    result=canonical_json(event.result),
                    usage=canonical_json(event.usage.model_dump(mode="json")),
                ))

    def _execute(self, effect: PendingEffect, max_attempts: int) -> list[BaseEvent]:
        """Run one effect to its outcome; returns the events to commit for it."""
        if self.cache != "off":
            # Effect ids are content-addressed (`effect_id_for`), so the id is the cache key:
            # the same request on any branch, in any run of this home, is one entry.
            hit = self.store.cache_get(effect.effect_id)
            if hit is not None and hit.run_id == self._run_id:  # executed here, killed before its append
                return self._outcome(effect, json.loads(hit.result), Usage.model_validate_json(hit.usage))
            if hit is not None:
                return self._outcome(effect, json.loads(hit.result), Usage(), cached_from=hit.effect_id)
        events: list[BaseEvent] = []
        attempt = effect.attempts
        handler = None
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                handler = handler or self.registry.get(effect.kind)
                result = handler.run(parse_request(effect.kind, effect.request),
                                     self._context(effect, attempt))
            except TransientEffectError as exc:
                wall = Usage(wall_s=time.perf_counter() - started)
                if attempt < max_attempts:
                    delay = self.backoff(attempt, exc.retry_after)
                    events.append(EffectFailed(effect_id=effect.effect_id, kind=effect.kind,
                                               error=str(exc), attempt=attempt, will_retry=True,
                                               retry_in_s=delay, usage=wall))
                    self.sleep(delay)
                    continue
                return events + self._failure(effect, f"{exc} (after {attempt} attempts)",
                                              attempt, wall)
            except Exception as exc:  # a handler's bug is this effect's failure, not the run's
                wall = Usage(wall_s=time.perf_counter() - started)
                message = str(exc) if isinstance(exc, EffectError) else f"{type(exc).__name__}: {exc}"
                return events + self._failure(effect, message, attempt, wall)
            self.failpoints.reach("after_execution")
            usage = result.usage
            if usage.wall_s == 0.0:
                usage = usage.model_copy(update={"wall_s": time.perf_counter() - started})
            return events + self._outcome(effect, result.result.record(), usage, attempt=attempt)

    def _outcome(self, effect: PendingEffect, recorded: dict[str, Any], usage: Usage,
                 cached_from: str | None = None, attempt: int = 1) -> list[BaseEvent]:
        """Events for a result, interpreted after redaction: `interpret` then sees exactly
        what the log will hold, which is what `replay --check` re-interprets."""
        value = self.store.redactor.redact_data(recorded)
        try:
            derived = interpret(effect.kind, effect.effect_id, effect.request, value)
        except ResultInvalid as exc:
            return self._failure(effect, str(exc), attempt, usage)
        completed = EffectCompleted(effect_id=effect.effect_id, kind=effect.kind, result=value,
                                    usage=usage, cached_from=cached_from)
        return [completed, *derived]

    def _failure(self, effect: PendingEffect, error: str, attempt: int,
                 usage: Usage) -> list[BaseEvent]:
        error = self.store.redactor.redact(error)
        failed = EffectFailed(effect_id=effect.effect_id, kind=effect.kind, error=error,
                              attempt=attempt, will_retry=False, usage=usage)
        return [failed, *interpret_failure(effect.kind, effect.effect_id, effect.request, error)]

    def _context(self, effect: PendingEffect, attempt: int) -> EffectContext:
        return EffectContext(
            run_id=self._run_id, effect_id=effect.effect_id, kind=effect.kind,
            seed=int(effect.request.get("seed", 0)), attempt=attempt, blobs=self.store.blobs,
            home=self.home, job_id=effect.job_id, call_id=effect.call_id,
            journal=self._state.pending.get(effect.effect_id, effect).steps,  # an earlier attempt's too
            report=lambda event: self._append([event]),
        )


class _Heartbeat:
    """Renews the run's lease in the background; a lost lease stops the driver."""

    def __init__(self, store: EventStore, run_id: str, holder: str, ttl_s: float) -> None:
        self._store, self._run_id, self._holder, self._ttl = store, run_id, holder, ttl_s
        self._stop = threading.Event()
        self._lost: LeaseHeld | None = None
        self._thread = threading.Thread(target=self._beat, name="sia-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            try:
                self._store.acquire_lease(self._run_id, self._holder, self._ttl)
            except LeaseHeld as exc:
                self._lost = exc
                return
            except Exception:
                continue

    def check(self) -> None:
        if self._lost is not None:
            raise self._lost

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
