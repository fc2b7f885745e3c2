"""`sia audit --rejudge PROVIDER`: ask another feedback provider the recorded questions.

Each Feedback decision is re-asked in a fork of the run taken just before its feedback
request, with `feedback=PROVIDER`: the fork's state is exactly what the original
provider saw, the request goes through the normal effect machinery (recorded, cached,
replayable), and the fork is paused right after the new decision. Agreement compares
action and algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sia.core.config import apply_overrides
from sia.core.events.mapper import MAPPER
from sia.core.events.types import EffectRequested
from sia.runtime.loop import Runtime, load_state


@dataclass(frozen=True)
class Rejudgement:
    generation: int
    fork_run_id: str
    original: tuple[str, str | None]
    rejudged: tuple[str, str | None] | None

    @property
    def agrees(self) -> bool:
        return self.original == self.rejudged


def feedback_request_seqs(runtime: Runtime, run_id: str) -> dict[int, int]:
    """generation → seq of the EffectRequested that asked for its feedback."""
    seqs: dict[int, int] = {}
    for stored in runtime.store.read(run_id):
        if stored.type == "EffectRequested":
            event = MAPPER.decode(stored).event
            assert isinstance(event, EffectRequested)
            if event.kind == "feedback":
                seqs.setdefault(int(event.request["generation"]), stored.seq)
    return seqs


def rejudge(runtime: Runtime, run_id: str, provider: str) -> list[Rejudgement]:
    state = load_state(runtime.store, run_id)
    assert state.config is not None
    overrides = {"feedback": provider}
    config = apply_overrides(state.config, overrides)
    seqs = feedback_request_seqs(runtime, run_id)
    results = []
    for decision in state.decisions:
        at = seqs[decision.generation] - 1
        fork = runtime.fork(run_id, at, config, overrides,
                            run_id=f"{run_id}.rejudge-{provider.replace(':', '-')}-g{decision.generation}")
        forked = runtime.drive(fork, max_batches=1)
        runtime.pause(fork, f"rejudge of generation {decision.generation} complete")
        again = forked.current.decision if forked.current else None
        results.append(Rejudgement(
            generation=decision.generation, fork_run_id=fork,
            original=(decision.action, decision.algorithm),
            rejudged=(again.action, again.algorithm) if again else None,
        ))
    return results


def summary(results: list[Rejudgement]) -> dict[str, Any]:
    agreed = sum(r.agrees for r in results)
    return {"decisions": len(results), "agreed": agreed,
            "agreement": agreed / len(results) if results else None}
