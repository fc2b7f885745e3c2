"""`decide` is versioned: a run keeps the version it was recorded with, so logs recorded by an
older `decide` keep replaying, and a log from a newer one is refused with its version named."""

from __future__ import annotations

import json
from pathlib import Path

from sia.core.decide import DECIDER_VERSION, decide
from sia.core.events.mapper import MAPPER
from sia.core.events.types import RunConfig, RunCreated, TaskIdentity
from sia.core.reducers.loop import evolve_unrecorded, fold
from sia.core.reducers.state import LoopState
from tests.cli import sia, sia_json

REPLAY = Path(__file__).resolve().parent.parent / "replay"
V1_RUN = REPLAY / "wordcat-wh-decider-v1.jsonl"
"""A mode-WH wordcat run recorded by the milestone-1 decider (before versioning): its
Feedback requests name no train rollouts, which version 2 adds."""


def test_the_v1_log_would_diverge_under_todays_transitions(tmp_path: Path) -> None:
    """The recorded v1 file is a real test: deciding it with version 2 changes its requests."""
    home = tmp_path / "home"
    run_id = sia(home, "import", str(V1_RUN)).stdout.split()[-1]
    from sia.store.sqlite import SqliteEventStore

    store = SqliteEventStore.open_home(home)
    try:
        recorded = [MAPPER.decode(e) for e in store.read(run_id)]
    finally:
        store.close()
    first_feedback = next(i for i, r in enumerate(recorded)
                          if getattr(r.event, "kind", None) == "feedback")
    state = fold(recorded[:first_feedback])
    assert state.decider_version == 1
    request = recorded[first_feedback].event.request
    assert "rollouts" not in request
    as_v2 = decide(state._replace(decider_version=2))
    asked = next(e for e in as_v2 if getattr(e, "kind", None) == "feedback")
    assert "rollouts" in asked.request and asked.request != request
    assert decide(state)[-1].request == request


def test_a_log_recorded_by_the_older_decider_replays(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_id = sia(home, "import", str(V1_RUN)).stdout.split()[-1]
    report = sia_json(home, "replay", run_id, "--check")["check"]
    assert report["ok"] and report["decisions_checked"] >= 5


def test_new_runs_record_the_current_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_id = sia(home, "run", "--task", "toy", "--max-gen", "1", "--quiet").stdout.split()[-1]
    created = json.loads(sia(home, "log", run_id, "--type", "RunCreated", "--json").stdout)
    assert created["payload"]["decider_version"] == DECIDER_VERSION


def test_a_run_from_a_newer_decider_is_refused_naming_the_version(tmp_path: Path) -> None:
    newer = RunCreated(config=RunConfig(task="toy"), task=TaskIdentity(name="toy", task_hash="t",
                                                                       dev_ids=("a",)),
                       decider_version=DECIDER_VERSION + 1)
    state = evolve_unrecorded(LoopState(), newer, 1, "future")
    try:
        decide(state)
    except Exception as exc:  # noqa: BLE001 - the type and message are what is tested
        assert type(exc).__name__ == "UnknownDeciderVersion"
        assert (f"recorded by decider version {DECIDER_VERSION + 1}; this sia decides with "
                f"version {DECIDER_VERSION}") in str(exc)
    else:
        raise AssertionError("a newer decider version was decided")
