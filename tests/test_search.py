"""Search: candidates per generation explored on their own forks, a keep-best gate, the archive."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sia.core.decide import choose, pareto_parents
from sia.core.events.mapper import MAPPER
from sia.core.events.types import Candidate, CandidateChosen, RunConfig, SearchConfig
from sia.core.reducers.state import CandidateRecord, Generation, LoopState, SearchRound
from sia.effects.base import EffectContext, EffectResult, HandlerRegistry
from sia.effects.deterministic import deterministic_registry, toy_task
from sia.runtime.loop import Runtime, load_state
from sia.runtime.replay import check_run
from sia.store.memory import MemoryEventStore
from tests.conftest import toy_config


def searching(candidates: int = 4, **changes: Any) -> RunConfig:
    return toy_config(search=SearchConfig(candidates=candidates), **changes)


def runtime_for(store: MemoryEventStore, registry: HandlerRegistry | None = None) -> Runtime:
    return Runtime(store, registry or deterministic_registry(), home=Path("/nonexistent"),
                   sleep=lambda s: None, concurrency=4)


def events_of(store: MemoryEventStore, run_id: str) -> list[Any]:
    return [MAPPER.decode(r).event for r in store.read(run_id)]


def test_each_candidate_is_explored_on_its_own_fork_and_the_best_is_adopted() -> None:
    store = MemoryEventStore()
    runtime = runtime_for(store)
    runtime.create(searching(max_generations=3), toy_task(), run_id="run")
    state = runtime.drive("run")
    assert state.status == "completed", state.error
    events = events_of(store, "run")
    proposed = [e for e in events if e.type == "CandidatesProposed"]
    evaluated = [e for e in events if e.type == "CandidateEvaluated"]
    chosen = [e for e in events if e.type == "CandidateChosen"]
    assert proposed and all(len(p.candidates) == 4 for p in proposed)
    assert len(evaluated) == 4 * len(proposed) and len(chosen) == len(proposed)
    branches = {e.run_id for e in evaluated}
    assert all(store.get_run(b).parent_run_id == "run" for b in branches)
    for e in evaluated:
        branch = load_state(store, e.run_id)
        assert branch.status == "completed" and branch.current is not None
        assert branch.current.score == e.score and branch.config is not None
        assert branch.config.search.explore == e.index
    # the keep-best gate: a generation only ever follows a strictly better candidate
    scores = [g.score for g in state.generations]
    assert all(b is not None and a is not None and b > a for a, b in zip(scores, scores[1:]))
    for c in chosen:
        if c.index is not None:
            adopted = next(e for e in evaluated if (e.generation, e.round, e.index) == (c.generation, c.round, c.index))
            assert state.generations[c.generation + 1].score == adopted.score
    assert check_run(store, "run").ok


def test_the_adopted_candidate_is_replayed_from_the_cache_not_run_again() -> None:
    store = MemoryEventStore()
    calls: Counter[str] = Counter()
    registry = deterministic_registry()
    inner = registry.handlers["episode"]

    class Counted:
        kind = "episode"

        def run(self, request: Any, ctx: EffectContext) -> EffectResult:
            calls[ctx.effect_id] += 1
            return inner.run(request, ctx)

    registry.register(Counted())
    runtime_for(store, registry).create(searching(max_generations=2), toy_task(), run_id="run")
    runtime_for(store, registry).drive("run")
    assert calls and max(calls.values()) == 1, "no episode effect ran twice"
    hits = [e for e in events_of(store, "run") if e.type == "EffectCompleted" and e.cached_from]
    assert any(e.kind == "episode" for e in hits), "the parent's adopted generation came from the cache"


def test_a_round_whose_candidates_do_not_beat_the_incumbent_keeps_it() -> None:
    incumbent = Generation(0, "h0", None, score=0.5, rewards=(1.0, 0.0), completed=True)
    round_ = SearchRound(0, 10, "builtin", "", (Candidate(action="edit_harness", rationale="a", harness_hash="h1"),
                                                  Candidate(action="edit_harness", rationale="b", harness_hash="h2")),
                         outcomes=(CandidateRecord(0, "c0", 0.5, (), "h1", None, 2, None),
                                   CandidateRecord(1, "c1", 0.25, (), "h2", None, 2, None)))
    state = LoopState(generations=(incumbent,), best_generation=0, best_score=0.5)
    kept = choose(state, incumbent, round_)
    assert isinstance(kept, CandidateChosen) and kept.index is None
    assert "no candidate beat the incumbent's 0.5000" in kept.reason
    better = round_._replace(outcomes=round_.outcomes[:1] + (CandidateRecord(1, "c1", 0.75, (), "h2", None, 2, None),))
    assert choose(state, incumbent, better).index == 1


def test_the_pareto_front_keeps_every_generation_best_on_some_sample() -> None:
    from sia.core.events.types import TaskIdentity

    task = TaskIdentity(name="t", task_hash="h", dev_ids=("a", "b", "c"))
    gens = (Generation(0, "h0", None, rewards=(1.0, 0.0, 0.0), completed=True, score=1 / 3),
            Generation(1, "h1", None, rewards=(0.0, 1.0, 1.0), completed=True, score=2 / 3),
            Generation(2, "h2", None, rewards=(0.0, 1.0, 0.0), completed=True, score=1 / 3))
    assert pareto_parents(LoopState(task=task, generations=gens)) == (0, 1)


def test_a_search_stops_once_its_incumbent_is_good_enough() -> None:
    """The same search as above, told that the score its first adopted candidate reaches is
    good enough: it explores no further round or generation."""
    store = MemoryEventStore()
    runtime_for(store).create(searching(max_generations=3), toy_task(), run_id="full")
    full = runtime_for(store).drive("full")
    first_adopted = full.generations[1].score
    assert first_adopted is not None and len(full.generations) == 3
    enough = toy_config(search=SearchConfig(candidates=4, good_enough=first_adopted), max_generations=3)
    runtime_for(store).create(enough, toy_task(), run_id="run")
    state = runtime_for(store).drive("run")
    assert state.status == "completed" and len(state.generations) == 2
    assert state.stop_reason == f"good enough: the incumbent's dev score {first_adopted:.4f} >= {first_adopted:g}"
    proposed = [e for e in events_of(store, "run") if e.type == "CandidatesProposed"]
    assert len(proposed) == 1
    assert check_run(store, "run").ok
