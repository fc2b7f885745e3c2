"""`replay --check`: prove a recorded run is what today's pure code would have done.

Walking the log in order, at every event `decide` is responsible for, it re-runs
`decide` on the state folded so far and demands the recorded batch, event for event;
at every effect outcome it re-runs `interpret` on the recorded result and demands the
recorded domain events. Effect results themselves are taken from the log (they are the
recorded nondeterminism), so no handler runs. The hash chain is verified first.
"""

from __future__ import annotations

from dataclasses import dataclass

from sia.core.decide import decide
from sia.core.events.mapper import MAPPER, RecordedEvent
from sia.core.events.types import (
    BaseEvent,
    EffectCompleted,
    EffectFailed,
    EffectRequested,
    GenerationCompleted,
    GenerationStarted,
    HarnessEdited,
    RolledBack,
    RunCompleted,
    RunFailed,
    RunForked,
    TrainingNoSignal,
)
from sia.core.interpret import ResultInvalid, interpret, interpret_failure
from sia.core.reducers.loop import evolve
from sia.core.reducers.state import LoopState
from sia.store.base import EventStore

DECIDED = (GenerationStarted, EffectRequested, HarnessEdited, RolledBack, GenerationCompleted,
           RunCompleted, RunFailed, TrainingNoSignal)


@dataclass(frozen=True)
class Divergence:
    seq: int
    source: str
    expected: str
    recorded: str

    def describe(self) -> str:
        return (f"seq {self.seq}: {self.source} diverges from the log\n"
                f"  expected: {self.expected}\n  recorded: {self.recorded}")


@dataclass(frozen=True)
class CheckReport:
    run_id: str
    events: int
    decisions_checked: int
    outcomes_checked: int
    state: LoopState
    divergence: Divergence | None

    @property
    def ok(self) -> bool:
        return self.divergence is None


def summarize(event: BaseEvent | None) -> str:
    if event is None:
        return "(nothing)"
    if isinstance(event, EffectRequested):
        return f"EffectRequested kind={event.kind} request_hash={event.request_hash}"
    return f"{event.type} {MAPPER.encode(event).payload[:160]}"


def _same(a: BaseEvent, b: BaseEvent) -> bool:
    return a.type == b.type and MAPPER.encode(a).payload == MAPPER.encode(b).payload


def check_run(store: EventStore, run_id: str, upto: int | None = None) -> CheckReport:
    store.verify(run_id)
    recorded = [MAPPER.decode(e) for e in store.read(run_id, upto=upto)]
    state = LoopState()
    decisions = outcomes = 0
    expected: list[BaseEvent] = []
    source = ""

    def diverged(at: RecordedEvent | None, want: BaseEvent | None) -> CheckReport:
        seq = at.seq if at else state.seq + 1
        return CheckReport(run_id, len(recorded), decisions, outcomes, state,
                           Divergence(seq, source, summarize(want),
                                      summarize(at.event if at else None)))

    for item in recorded:
        event = item.event
        if isinstance(event, RunForked):
            expected = []  # a fork may end its parent's batch early; the rest is not its history
        if not expected:
            if isinstance(event, DECIDED):
                source, expected = "decide", decide(state)
                decisions += 1
                if not expected:
                    return diverged(item, None)
            elif isinstance(event, (EffectCompleted, EffectFailed)):
                source = f"interpret({event.kind})"
                try:
                    expected = _outcome_events(state, event)
                except ResultInvalid as exc:
                    return diverged(item, RunFailed(error=f"interpret rejects the result: {exc}"))
                outcomes += 1
        if expected:
            want = expected.pop(0)
            if not _same(want, event):
                return diverged(item, want)
        state = evolve(state, item)
    if expected and source == "decide" and upto is None:
        return diverged(None, expected[0])
    return CheckReport(run_id, len(recorded), decisions, outcomes, state, None)


def _outcome_events(state: LoopState, event: EffectCompleted | EffectFailed) -> list[BaseEvent]:
    """The effect's own event followed by what `interpret` derives from it."""
    pending = state.pending.get(event.effect_id)
    if pending is None:
        return [event]
    if isinstance(event, EffectFailed):
        if event.will_retry:
            return [event]
        return [event, *interpret_failure(event.kind, event.effect_id, pending.request, event.error)]
    return [event, *interpret(event.kind, event.effect_id, pending.request, event.result)]
