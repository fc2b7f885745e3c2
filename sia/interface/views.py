"""Read models for the CLI, the report and the dashboard: pure functions from folded state
(and stored events' stamps) to plain JSON-ready dicts.

`show`, `runs`, `audit` and `diff` print these, as tables or as `--json`; keeping them
pure makes the interface contract testable without a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sia.core.events.envelope import StoredEvent
from sia.core.events.types import AgentStepRecorded, AnswerRefused, BaseEvent, EffectRequested
from sia.core.reducers.state import Generation, LoopState, Spend, outcome_hash, state_hash, to_jsonable


def short(sha: str | None, n: int = 10) -> str:
    return sha[:n] if sha else "-"


def show(state: LoopState) -> dict[str, Any]:
    config = state.config
    return {
        "run_id": state.run_id,
        "seq": state.seq,
        "state_hash": state_hash(state),
        "outcome_hash": outcome_hash(state),
        "status": state.status,
        "task": config.task if config else None,
        "mode": config.mode if config else None,
        "parent_run_id": state.parent_run_id,
        "fork_seq": state.fork_seq,
        "overrides": dict(state.overrides),
        "generation": state.generation,
        "best_generation": state.best_generation,
        "best_score": state.best_score,
        "dev_scores": list(state.dev_scores),
        "harness_hash": state.harness_hash,
        "adapter_hash": state.adapter_hash,
        "pending_effects": [
            {"effect_id": p.effect_id, "kind": p.kind, "seq": p.seq, "attempts": p.attempts}
            for p in sorted(state.pending.values(), key=lambda p: p.seq)
        ],
        "decisions": [
            {"generation": d.generation, "action": d.action, "algorithm": d.algorithm,
             "rationale": d.rationale}
            for d in state.decisions
        ],
        "stop_reason": state.stop_reason,
        "error": state.error,
        "ledger": to_jsonable(state.ledger),
        "config": config.model_dump(mode="json") if config else None,
        "sandbox": sandbox_of(state),
        "test_score": state.test.score if state.test else None,
        "test": to_jsonable(state.test) if state.test else None,
        "search": [to_jsonable(r) for g in state.generations for r in g.rounds],
    }


def search_tree(state: LoopState) -> list[str]:
    """The run as an archive: each generation, its search rounds, every candidate's branch
    and dev score, and the path the run took (what `sia tree` and the report draw)."""
    config = state.config
    lines = [f"{state.run_id}  {state.status}"
             + (f"  (search: {config.search.candidates} candidates, parents {config.search.parents})"
                if config and config.search.candidates > 1 else "")]
    for generation in state.generations:
        best = "  ★ best" if generation.index == state.best_generation else ""
        adapter = short(generation.adapter_hash) if generation.adapter_hash else "base"
        lines.append(f"gen {generation.index}  dev {_score(generation.score)}  harness "
                     f"{short(generation.harness_hash)}  adapter {adapter}{best}")
        for search in generation.rounds:
            lines.append(f"│ round {search.round}: {search.reason or 'exploring'}")
            for index, candidate in enumerate(search.candidates):
                outcome = search.outcome(index)
                last = index == len(search.candidates) - 1
                what = candidate.action + (f"({candidate.plan.algorithm})" if candidate.plan else "")
                origin = "" if candidate.parent_generation is None else f" from gen {candidate.parent_generation}"
                mark = "  ← adopted" if search.chosen == index else ""
                score = "…" if outcome is None else ("failed" if outcome.score is None else _score(outcome.score))
                branch = f"  [{outcome.run_id}]" if outcome is not None and outcome.run_id else ""
                lines.append(f"│ {'└' if last else '├'}─ c{index} {what}{origin}  dev {score}{mark}{branch}")
        if generation.decision is not None and not generation.rounds:
            lines.append(f"│ → {generation.decision.action}"
                         + (f"({generation.decision.algorithm})" if generation.decision.algorithm else ""))
    if state.test is not None:
        lines.append(f"test {_score(state.test.score)} on {state.test.n} held-out samples "
                     f"(gen {state.test.generation}, measured once)")
    return lines


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def sandbox_of(state: LoopState) -> str | None:
    """How harnesses of this run are isolated ("bwrap" | "process"), when the config says."""
    return getattr(state.config, "sandbox", None) if state.config else None


def run_row(run_id: str, state: LoopState) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "parent_run_id": state.parent_run_id,
        "fork_seq": state.fork_seq,
        "task": state.config.task if state.config else None,
        "status": state.status,
        "generations": sum(1 for g in state.generations if g.completed),
        "best_dev_score": state.best_score,
        "events": state.seq,
        "explores_candidate": state.config.search.explore if state.config else None,
    }


def generation_rows(state: LoopState,
                    elapsed: Mapping[int, float] | None = None) -> list[dict[str, Any]]:
    """One row per generation. `elapsed_s` is wall-clock time from the generation's start
    to its last event (None when unknown); `effect_s` sums the wall time of its effects,
    which run concurrently, so it can exceed the elapsed time."""
    elapsed = elapsed or {}
    return [
        {
            "generation": g.index,
            "harness": short(g.harness_hash),
            "adapter": short(g.adapter_hash),
            "dev_score": g.score,
            "best": g.index == state.best_generation,
            "decision": g.decision.action if g.decision else None,
            "algorithm": g.decision.algorithm if g.decision else None,
            "tokens": g.spend.tokens,
            "dollars": round(g.spend.dollars, 6),
            "elapsed_s": None if g.index not in elapsed else round(elapsed[g.index], 3),
            "effect_s": round(g.spend.wall_s, 3),
            "gpu_s": round(g.spend.gpu_s, 3),
        }
        for g in state.generations
    ]


def _instant(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


class ElapsedClock:
    """Wall-clock time per generation, folded from stored events' `recorded_at` stamps.

    A generation runs from its GenerationStarted to the last event before the next one
    starts (its decision, edit or training included). Time between RunPaused and the next
    event is not counted, so a run left paused overnight does not show a day-long
    generation; nor is the gap before a fork's RunForked (the parent's last event may be
    days older). Only stamps are read: nothing here decides anything.
    """

    def __init__(self) -> None:
        self.elapsed: dict[int, float] = {}
        self._generation: int | None = None
        self._last: float | None = None
        self._paused = False

    def add(self, event: StoredEvent) -> None:
        now = _instant(event.recorded_at)
        if event.type == "GenerationStarted":
            self._generation = json.loads(event.payload)["generation"]
            self.elapsed.setdefault(self._generation, 0.0)
        elif (self._generation is not None and self._last is not None and not self._paused
              and event.type != "RunForked"):
            self.elapsed[self._generation] += max(0.0, now - self._last)
        self._paused = event.type == "RunPaused"
        self._last = now


def generation_elapsed(events: Iterable[StoredEvent]) -> dict[int, float]:
    """Seconds of wall-clock time per generation index (see ElapsedClock)."""
    clock = ElapsedClock()
    for event in events:
        clock.add(event)
    return clock.elapsed


def score_series(run_id: str, state: LoopState, shared_generations: int) -> dict[str, Any]:
    """A branch's dev scores for a chart, named by what the run is. A fork keeps only its
    points from its last inherited scored generation on (`shared_generations` were scored
    before it forked), so its line starts where it leaves its parent's, not under it."""
    points: list[dict[str, Any]] = [
        {"generation": g.index, "score": g.score, "best": g.index == state.best_generation,
         "action": g.decision.action if g.decision else None}
        for g in state.generations if g.score is not None]
    if state.parent_run_id is not None:
        points = [p for p in points if p["generation"] >= max(0, shared_generations - 1)]
    origin = (f"fork of {state.parent_run_id} at seq {state.fork_seq}"
              if state.parent_run_id else "root run")
    return {"run_id": run_id, "label": f"{run_id} ({origin})", "fork": state.parent_run_id is not None,
            "points": points}


def scored_generations(state: LoopState) -> int:
    return sum(1 for g in state.generations if g.score is not None)


def _next_score(state: LoopState, generation: Generation) -> float | None:
    following = [g for g in state.generations if g.index == generation.index + 1]
    return following[0].score if following else None


def audit_rows(state: LoopState) -> list[dict[str, Any]]:
    rows = []
    for g in state.generations:
        d = g.decision
        if d is None:
            continue
        after = _next_score(state, g)
        rows.append({
            "generation": g.index,
            "seq": d.seq,
            "action": d.action,
            "algorithm": d.algorithm,
            "recommended_algorithm": d.recommended_algorithm,
            "rationale": d.rationale,
            "provider": d.provider,
            "forced": d.forced,
            "rollback_to": d.rollback_to,
            "evidence": {"digest_hash": d.digest_hash, "summary": d.digest_summary,
                         "episodes": list(d.evidence)},
            "score_before": g.score,
            "score_after": after,
            "delta": None if after is None or g.score is None else round(after - g.score, 6),
        })
    return rows


def refusals_by_generation(events: Iterable[BaseEvent]) -> dict[int, list[dict[str, Any]]]:
    """The Feedback Agent's refused answers of each generation, in attempt order."""
    generation_of: dict[str, int] = {}
    refused: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        if isinstance(event, EffectRequested) and event.kind == "feedback":
            generation_of[event.effect_id] = event.request["generation"]
        elif isinstance(event, AnswerRefused) and event.effect_id in generation_of:
            refused.setdefault(generation_of[event.effect_id], []).append(
                {"attempt": event.attempt, "problems": list(event.problems)})
    return refused


def investigations_by_generation(events: Iterable[BaseEvent]) -> dict[int, list[AgentStepRecorded]]:
    """The journaled steps of each generation's Feedback effects (every round's, in order)."""
    generation_of: dict[str, int] = {}
    steps: dict[int, list[AgentStepRecorded]] = {}
    for event in events:
        if isinstance(event, EffectRequested) and event.kind == "feedback":
            generation_of[event.effect_id] = event.request["generation"]
        elif isinstance(event, AgentStepRecorded) and event.effect_id in generation_of:
            steps.setdefault(generation_of[event.effect_id], []).append(event)
    return steps


def spend_dict(spend: Spend) -> dict[str, Any]:
    return {**spend._asdict(), "tokens": spend.tokens}


def branch_spend(state: LoopState) -> dict[str, Any]:
    total, own = state.ledger.total, state.ledger.own
    inherited = Spend(
        tokens_in=total.tokens_in - own.tokens_in, tokens_out=total.tokens_out - own.tokens_out,
        dollars=total.dollars - own.dollars, wall_s=total.wall_s - own.wall_s,
        gpu_s=total.gpu_s - own.gpu_s, effects=total.effects - own.effects,
        cache_hits=total.cache_hits - own.cache_hits, failures=total.failures - own.failures,
    )
    return {"total": spend_dict(total), "own": spend_dict(own), "inherited": spend_dict(inherited)}
