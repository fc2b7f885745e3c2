"""The dashboard's read side without a browser: warm folds advance by new events only,
the timeline reads in chunks, pages are shaped right."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sia.core.events.envelope import StoredEvent
from sia.effects.deterministic import deterministic_registry, toy_task
from sia.interface.dashboard import tail as tail_module
from sia.interface.dashboard.pages import event_page, family_ids, lineage
from sia.interface.dashboard.tail import Tails
from sia.interface.views import audit_rows, score_series, scored_generations
from sia.runtime.loop import Runtime, load_state
from sia.store.base import RunRecord
from sia.store.memory import MemoryEventStore
from tests.conftest import toy_config


class CountingStore(MemoryEventStore):
    """A real in-memory store that remembers which ranges were read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int, int | None]] = []

    def read(self, run_id: str, after: int = 0, upto: int | None = None) -> Iterator[StoredEvent]:
        self.reads.append((after, upto))
        return super().read(run_id, after, upto)


def test_a_warm_fold_reads_only_the_events_committed_since(tmp_path: Path) -> None:
    store = CountingStore()
    runtime = Runtime(store, deterministic_registry(), home=tmp_path, concurrency=2)
    run_id = runtime.create(toy_config(max_generations=3), toy_task())
    runtime.drive(run_id, max_batches=3)
    tails = Tails(store)
    first = tails.state(run_id)
    runtime.drive(run_id)
    store.reads.clear()
    final = tails.state(run_id)
    assert store.reads == [(first.seq, None)]
    assert final.seq == store.last_seq(run_id) > first.seq
    assert final == load_state(store, run_id)


def test_the_timeline_catches_up_in_chunks_and_then_only_reads_new_events(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tail_module, "TIMELINE_CHUNK", 10)
    store = CountingStore()
    runtime = Runtime(store, deterministic_registry(), home=tmp_path, concurrency=2)
    run_id = runtime.create(toy_config(max_generations=3), toy_task())
    runtime.drive(run_id)
    tails = Tails(store)
    tails.state(run_id)
    store.reads.clear()
    timeline = tails.timeline(run_id)
    last = store.last_seq(run_id)
    assert store.reads == [(last, None)] + [(i, min(i + 10, last)) for i in range(0, last, 10)]
    assert timeline.seq == last and sum(timeline.types.values()) == last
    assert set(timeline.clock.elapsed) == {0, 1, 2}
    cited = {e for row in audit_rows(tails.state(run_id)) for e in row["evidence"]["episodes"]}
    assert cited and cited <= set(timeline.episodes)
    store.reads.clear()
    tails.timeline(run_id)
    assert store.reads == [(last, None)]  # nothing new: only the (empty) catch-up of the state


def test_event_pages_continue_after_the_last_row_and_filter_by_type(tmp_path: Path) -> None:
    store = MemoryEventStore()
    runtime = Runtime(store, deterministic_registry(), home=tmp_path, concurrency=2)
    run_id = runtime.create(toy_config(max_generations=2), toy_task())
    runtime.drive(run_id)
    first = event_page(store.read(run_id), frozenset(), 10)
    assert [e["seq"] for e in first["events"]] == list(range(1, 11)) and first["next_after"] == 10
    rest = event_page(store.read(run_id, after=10), frozenset(), 10_000)
    assert rest["next_after"] is None and rest["events"][-1]["seq"] == store.last_seq(run_id)
    decided = event_page(store.read(run_id), frozenset({"FeedbackDecided"}), 10)
    assert {e["type"] for e in decided["events"]} == {"FeedbackDecided"} and decided["next_after"] is None


def test_lineage_marks_the_path_and_a_fork_draws_from_where_it_leaves(tmp_path: Path) -> None:
    records = [RunRecord("root", None, None, "1"), RunRecord("a", "root", 30, "2"),
               RunRecord("b", "a", 60, "3"), RunRecord("c", "root", 40, "4")]
    tree = lineage(records, "b")
    assert tree["path"] == ["root", "a", "b"]
    assert family_ids(tree) == ["root", "a", "c", "b"]
    assert [child["on_path"] for child in tree["root"]["children"]] == [True, False]

    store = MemoryEventStore()
    runtime = Runtime(store, deterministic_registry(), home=tmp_path, concurrency=2)
    parent = runtime.create(toy_config(max_generations=3), toy_task())
    runtime.drive(parent)
    at = next(e.seq for e in store.read(parent) if e.type == "GenerationCompleted")
    fork = runtime.fork(parent, at, toy_config(max_generations=3), {})
    runtime.drive(fork)
    shared = scored_generations(load_state(store, parent, upto=at))
    series = score_series(fork, load_state(store, fork), shared)
    assert shared == 1 and series["fork"] and series["points"][0]["generation"] == 0
    assert series["label"] == f"{fork} (fork of {parent} at seq {at})"


def test_the_episode_view_shows_calls_tokens_logprobs_reward_and_the_stderr_tail() -> None:
    from sia.core.events.types import TaskIdentity
    from sia.core.reducers.state import Episode, Generation, LoopState
    from sia.interface.dashboard.pages import STDERR_TAIL, episode_page

    task = TaskIdentity(name="t", task_hash="h", dev_ids=("a", "b"))
    state = LoopState(config=toy_config(mode="H"), task=task,
                      generations=(Generation(0, "h0", None, score=0.5, rewards=(0.0, 1.0), completed=True),))
    trajectory = {"sample_id": "b", "outcome": {"status": "ok", "answer": "x", "stderr_tail": "\n".join(
        f"line {i}" for i in range(100))}, "calls": [{"index": 0, "endpoint": "completions", "status": 200,
        "prompts": ["Classify: horse"], "generations": [{"text": "animal", "prompt_token_ids": [1, 2, 3],
        "token_ids": [7, 8], "logprobs": [-0.1, -0.2], "finish_reason": "stop"}]}]}
    view = episode_page(state, 0, Episode("e", "b", "ok", "animal", "t", None), trajectory,
                        {"id": "b", "question": "horse?"}, None)
    assert view["reward"] == 1.0 and view["split"] == "dev" and view["sample"]["question"] == "horse?"
    call = view["calls"][0]
    assert call["prompts"] == ["Classify: horse"]
    assert call["generations"] == [{"text": "animal", "prompt_tokens": 3, "completion_tokens": 2,
                                    "logprobs": [-0.1, -0.2], "finish_reason": "stop"}]
    assert view["stderr_tail"] == [f"line {i}" for i in range(100 - STDERR_TAIL, 100)]
    assert "stderr_tail" not in view["outcome"] and view["outcome"]["answer"] == "x"


def test_the_timeline_gathers_each_decisions_investigation_under_its_generation() -> None:
    from sia.core.events.envelope import seal
    from sia.core.events.mapper import MAPPER
    from sia.core.events.types import AgentStepRecorded, EffectRequested, Usage
    from sia.interface.dashboard.tail import Timeline

    asked = EffectRequested(effect_id="f1", kind="feedback", request={"generation": 2}, request_hash="h")
    steps = [AgentStepRecorded(effect_id="f1", index=i, kind=kind, name=name, blob_hash=f"b{i}", summary=f"step {i}",
                               usage=Usage(tokens_in=10 * i))
             for i, (kind, name) in enumerate([("turn", "claude-sonnet-4-6"), ("tool", "read_episode")])]
    elsewhere = AgentStepRecorded(effect_id="m0", index=0, kind="turn", name="m", blob_hash="b", summary="meta")
    timeline, prev = Timeline(), "0" * 64
    for seq, event in enumerate([asked, *steps, elsewhere], start=1):
        stored = seal(MAPPER.encode(event), "run", seq, prev, "2026-12-01T00:00:00Z")
        timeline.add(stored)
        prev = stored.hash
    assert [(s["kind"], s["name"], s["summary"]) for s in timeline.investigations[2]] == [
        ("turn", "claude-sonnet-4-6", "step 0"), ("tool", "read_episode", "step 1")]
    assert list(timeline.investigations) == [2], "a step of a non-feedback effect belongs to no decision"
