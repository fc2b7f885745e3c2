"""Read models for the CLI: pure functions from folded state to plain JSON-ready dicts.

`show`, `runs`, `audit` and `diff` print these, as tables or as `--json`; keeping them
pure makes the interface contract testable without a terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sia.events.types import AnswerRefused, BaseEvent, EffectRequested
from sia.reducers.state import Generation, LoopState, Spend, state_hash, to_jsonable


def short(sha: str | None, n: int = 10) -> str:
    return sha[:n] if sha else "-"


def show(state: LoopState) -> dict[str, Any]:
    config = state.config
    return {
        "run_id": state.run_id,
        "seq": state.seq,
        "state_hash": state_hash(state),
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
    }


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
    }


def generation_rows(state: LoopState) -> list[dict[str, Any]]:
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
            "wall_s": round(g.spend.wall_s, 3),
            "gpu_s": round(g.spend.gpu_s, 3),
        }
        for g in state.generations
    ]


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
