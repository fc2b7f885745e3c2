"""A search's candidates, each explored on its own fork of the run.

The `candidate` effect forks the run just after the candidates were proposed, with
`search.explore` set to the candidate's index, and drives that branch until its dev
score: the branch adopts the candidate, runs one generation and stops. Its events stay in
its own log (so `sia tree` and `sia show` can open it), and every effect it ran is in the
shared cache, so when the parent adopts the same candidate it replays them for free.

The branch's id is derived from the parent's and the candidate's place, so a run killed
while a candidate is explored resumes that same branch instead of starting it again.
"""

from __future__ import annotations

from typing import Protocol

from sia.core.effect_models import CandidateRequest, CandidateResult
from sia.core.events.types import Usage
from sia.core.reducers.state import LoopState
from sia.effects.base import EffectContext, EffectResult


class Branches(Protocol):
    """What exploring a candidate needs from the runtime that runs the search."""

    def exists(self, run_id: str) -> bool: ...

    def branch(self, parent_run_id: str, at: int, overrides: dict[str, str], run_id: str) -> str: ...

    def drive_branch(self, run_id: str) -> LoopState: ...


def branch_id(run_id: str, request: CandidateRequest) -> str:
    return f"{run_id}~g{request.generation}r{request.round}c{request.index}"


class CandidateHandler:
    kind = "candidate"

    def __init__(self, branches: Branches) -> None:
        self.branches = branches

    def run(self, request: CandidateRequest, ctx: EffectContext) -> EffectResult:
        child = branch_id(ctx.run_id, request)
        if not self.branches.exists(child):
            self.branches.branch(ctx.run_id, request.fork_seq, {"search.explore": str(request.index)}, child)
        state = self.branches.drive_branch(child)
        own = state.ledger.own
        usage = Usage(tokens_in=own.tokens_in, tokens_out=own.tokens_out, dollars=own.dollars,
                      wall_s=own.wall_s, gpu_s=own.gpu_s)
        episodes = state.ledger.own_by_kind.get("episode")
        ran = episodes.effects - episodes.cache_hits if episodes else 0
        explored = state.current
        if state.status != "completed" or explored is None or explored.index != request.generation + 1:
            reason = state.error or state.stop_reason or f"the branch ended {state.status}"
            return EffectResult(CandidateResult(run_id=child, score=None, episodes=ran, error=reason), usage)
        return EffectResult(CandidateResult(
            run_id=child, score=explored.score, rewards=explored.rewards, harness_hash=explored.harness_hash,
            adapter_hash=explored.adapter_hash, episodes=ran), usage)
