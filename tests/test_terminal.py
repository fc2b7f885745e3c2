"""The terminal as a new user meets it: the status line's counts, phase progress, tables at
any width, and elapsed time per generation apart from effect-seconds."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rich.console import Console

from sia.core.events.envelope import StoredEvent
from sia.core.events.types import RunConfig, TaskIdentity
from sia.core.reducers.state import Episode, Generation, LoopState
from sia.interface.progress import (
    PROGRESS_LOGGER,
    Column,
    LiveProgress,
    fit_columns,
    status_line,
)
from sia.interface.views import generation_elapsed
from tests.cli import sia, sia_json


def _episode(sample_id: str) -> Episode:
    return Episode(f"ep-{sample_id}", sample_id, "ok", "answer", None, None)


def test_status_line_counts_dev_episodes_apart_from_train_rollouts() -> None:
    task = TaskIdentity(name="t", task_hash="h", dev_ids=("d1", "d2", "d3"),
                        train_ids=("t1", "t2", "t3", "t4"), rollouts_per_generation=2)
    generation = Generation(0, "harness", None, episodes=tuple(
        _episode(s) for s in ("d1", "d2", "t1", "t2")))
    state = LoopState(run_id="r", config=RunConfig(task="t", mode="WH"), task=task,
                      generations=(generation,))
    line = status_line(state).plain
    assert "dev episodes 2/3" in line and "train rollouts 2/2" in line
    harness_only = state._replace(config=RunConfig(task="t", mode="H"))
    assert "rollouts" not in status_line(harness_only).plain


def test_long_phases_show_their_own_steps_and_loss_through_the_progress_logger() -> None:
    console = Console(record=True, width=120, force_terminal=False)
    progress = LiveProgress(console)
    logger = logging.getLogger(PROGRESS_LOGGER)
    with progress:
        logger.info("build", extra={"phase": "build tiny model", "step": 3, "total": 200})
        logger.info("train", extra={"phase": "train grpo", "step": 12, "total": 40, "loss": 0.731})
        logger.info("not a step")  # records without phase/step are ignored
        text = "".join(segment.text for segment in console.render(progress.renderable()))
        assert "build tiny model 3/200" in text and "train grpo 12/40 loss 0.731" in text
        logger.info("build", extra={"phase": "build tiny model", "step": 200, "total": 200})
        text = "".join(segment.text for segment in console.render(progress.renderable()))
        assert "build tiny model" not in text and "train grpo" in text  # a finished phase leaves
    assert progress._handler not in logger.handlers


def test_tables_choose_columns_by_width_instead_of_cutting_headers(tmp_path: Path) -> None:
    columns = [Column("gen", 0), Column("harness", 5), Column("dev score", 0), Column("decision", 1)]
    rows = [["0", "6b3fa2d843", "0.375", "edit_harness"]]
    assert fit_columns(columns, rows, 200) == [0, 1, 2, 3]
    assert fit_columns(columns, rows, 40) == [0, 2, 3]  # harness goes first
    assert fit_columns(columns, rows, 5) == [0]
    home = tmp_path / "home"
    run = sia(home, "run", "--task", "toy", "--max-gen", "3", "--quiet").stdout.split()[-1]
    for args in (["show", run], ["audit", run], ["runs"]):
        out = sia(home, *args, env={"COLUMNS": "60"}).stdout
        headers = [line for line in out.splitlines() if line.startswith("┃")]
        assert headers and not any("…" in line for line in headers), out
        assert "hidden at width 60:" in out and all(len(line) <= 60 for line in out.splitlines()), out
    wide = sia(home, "show", run, env={"COLUMNS": "200"}).stdout
    assert "hidden" not in wide and "harness" in wide and "gpu s" in wide


def _event(seq: int, type_: str, at: float, **payload: object) -> StoredEvent:
    stamp = (datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=at)).isoformat()
    return StoredEvent("r", seq, type_, 1, json.dumps(payload), "p", "h", stamp)


def test_elapsed_per_generation_skips_pauses_and_is_shown_apart_from_effect_seconds(tmp_path: Path) -> None:
    events = [_event(1, "GenerationStarted", 0, generation=0), _event(2, "EpisodeRecorded", 10),
              _event(3, "RunPaused", 12), _event(4, "RunResumed", 1000), _event(5, "EpisodeRecorded", 1005),
              _event(6, "GenerationStarted", 1006, generation=1), _event(7, "GenerationCompleted", 1010)]
    assert generation_elapsed(events) == {0: 17.0, 1: 4.0}
    forked = [_event(1, "GenerationStarted", 0, generation=0), _event(2, "EpisodeRecorded", 5),
              _event(3, "RunForked", 500), _event(4, "EpisodeRecorded", 503)]
    assert generation_elapsed(forked) == {0: 8.0}  # the parent's prefix, then the fork's own time
    home = tmp_path / "home"
    run = sia(home, "run", "--task", "toy", "--max-gen", "3", "--quiet").stdout.split()[-1]
    log = [json.loads(line) for line in sia(home, "log", run, "--json").stdout.splitlines()]
    span = (datetime.fromisoformat(log[-1]["recorded_at"])
            - datetime.fromisoformat(log[0]["recorded_at"])).total_seconds()
    out = sia(home, "show", run).stdout
    header = next(line for line in out.splitlines() if "elapsed s" in line)
    cells = [c.strip() for c in header.split("┃")]
    elapsed_at, effect_at = cells.index("elapsed s"), cells.index("effect s")
    rows = [[c.strip() for c in line.split("│")] for line in out.splitlines() if line.startswith("│")]
    elapsed = [float(r[elapsed_at]) for r in rows]
    effect = [float(r[effect_at]) for r in rows]
    assert sum(elapsed) <= span + 0.1  # wall-clock time never exceeds the run's own
    ledger = sia_json(home, "show", run)["ledger"]["total"]["wall_s"]
    assert span < sum(effect) <= ledger + 0.1  # concurrent effects overlap; the rest is the Meta Agent


def test_serve_on_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = sia(tmp_path / "home", "serve", "--port", str(port), check=False, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_local_training_job_shows_its_steps_and_loss_until_its_effect_completes(tmp_path: Path) -> None:
    job_id = "ab" * 32
    job_dir = tmp_path / "home" / "train" / "jobs" / job_id
    job_dir.mkdir(parents=True)
    (job_dir / "spec.json").write_text(json.dumps({"algorithm": "grpo"}), encoding="utf-8")
    progress = LiveProgress(Console(record=True, width=120), home=tmp_path / "home")

    def shown() -> str:
        return "".join(s.text for s in progress.console.render(progress.renderable()))

    def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)

    with progress:
        progress(LoopState(run_id="r"), [_event(9, "TrainingJobSubmitted", 0, effect_id="e1", job_id=job_id,
                                                backend="local", call_id=None)])
        with (job_dir / "metrics.jsonl").open("a", encoding="utf-8") as metrics:
            metrics.write(json.dumps({"step": 3, "total_steps": 10, "loss": 0.5, "attempt": 1}) + "\n")
            metrics.flush()
            until(lambda: "train grpo 3/10 loss 0.5" in shown())
            assert "train grpo 3/10 loss 0.5" in shown()
            metrics.write('{"step": 4, "total_st')  # a line being written is not read yet
            metrics.flush()
            time.sleep(0.4)
            assert "train grpo 3/10" in shown()
        progress(LoopState(run_id="r"), [_event(10, "EffectCompleted", 1, effect_id="e1")])
        assert "train grpo" not in shown()
    assert not any(t.name.startswith("sia-job-tail") for t in threading.enumerate())
