"""Live progress of a run in the terminal: generation, episodes, phases, score, spend.

The status line counts dev episodes (the score's denominator) apart from training
rollouts. Long phases that commit no events show their own steps:

- a local training job: its `metrics.jsonl` (one line per step, with loss) is followed
  from the moment its TrainingJobSubmitted is committed until its effect completes;
- anything else (building the tiny model, say) reports through the `sia.progress`
  logger, so the layers below never import the interface: a record with `phase`, `step`,
  `total` and optionally `loss` attributes, e.g.

      logging.getLogger("sia.progress").info("build", extra={
          "phase": "build tiny model", "step": 12, "total": 200, "loss": 3.1})

Tables pick their columns by the width they are printed at: a piped or narrow terminal
drops the least useful columns and says which, instead of cutting headers to `harn…`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sia.core.decide import rollout_ids
from sia.core.events.envelope import StoredEvent
from sia.core.reducers.state import LoopState
from sia.interface.views import ElapsedClock, generation_rows

PROGRESS_LOGGER = "sia.progress"
"""The logger long phases report their steps to (see the module docstring)."""


@dataclass(frozen=True)
class PhaseStep:
    """Where a long phase is: step `step` of `total` (None when unknown), last loss."""

    phase: str
    step: int
    total: int | None
    loss: float | None

    def describe(self) -> str:
        count = f"{self.step}/{self.total}" if self.total else f"step {self.step}"
        loss = f" loss {self.loss:.4g}" if self.loss is not None else ""
        return f"{self.phase} {count}{loss}"


def phase_step(record: logging.LogRecord) -> PhaseStep | None:
    """The step a `sia.progress` log record reports, or None if it is not one."""
    phase, step = getattr(record, "phase", None), getattr(record, "step", None)
    if not isinstance(phase, str) or not isinstance(step, int):
        return None
    total, loss = getattr(record, "total", None), getattr(record, "loss", None)
    return PhaseStep(phase, step, total if isinstance(total, int) else None,
                     float(loss) if isinstance(loss, (int, float)) else None)


class _PhaseHandler(logging.Handler):
    def __init__(self, progress: LiveProgress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        step = phase_step(record)
        if step is not None:
            self.progress.phase(step)


class JobTail(threading.Thread):
    """Follows a local training job's `metrics.jsonl`, reporting each step it appends."""

    def __init__(self, job_dir: Path, report: Callable[[PhaseStep], None], poll_s: float = 0.25) -> None:
        super().__init__(name=f"sia-job-tail-{job_dir.name[:8]}", daemon=True)
        self.job_dir, self.report, self.poll_s = job_dir, report, poll_s
        self.stopped = threading.Event()
        self.phase = "train"

    def run(self) -> None:
        offset = 0
        while True:
            finished = self.stopped.is_set() or (self.job_dir / "DONE").exists()
            offset = self._read(offset)
            if finished:
                return
            self.stopped.wait(self.poll_s)

    def _read(self, offset: int) -> int:
        if self.phase == "train":
            try:
                spec = json.loads((self.job_dir / "spec.json").read_text(encoding="utf-8"))
                self.phase = f"train {spec['algorithm']}"
            except (OSError, ValueError, KeyError, TypeError):
                pass
        try:
            with open(self.job_dir / "metrics.jsonl", "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return offset
        end = data.rfind(b"\n")
        for line in data[: end + 1].splitlines():
            try:
                record = json.loads(line)
                step = PhaseStep(self.phase, int(record["step"]), record.get("total_steps"),
                                 record.get("loss"))
            except (ValueError, KeyError, TypeError):
                continue
            self.report(step)
        return offset + end + 1


class LiveProgress:
    """An observer for Runtime: one status line per committed batch, plus one line per
    long phase in flight (model build, training) with its own step count and loss."""

    def __init__(self, console: Console, home: Path | None = None) -> None:
        """`home`: the SIA_HOME whose local training jobs are followed (None: none are)."""
        self.console = console
        self.home = home
        self._live = Live(Text(""), console=console, refresh_per_second=8, transient=True)
        self._state: LoopState | None = None
        self._phases: dict[str, PhaseStep] = {}
        self._handler = _PhaseHandler(self)
        self._jobs: dict[str, JobTail] = {}
        self._lock = threading.Lock()
        self.clock = ElapsedClock()

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        logger = logging.getLogger(PROGRESS_LOGGER)
        logger.addHandler(self._handler)
        logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(PROGRESS_LOGGER).removeHandler(self._handler)
        for tail in list(self._jobs.values()):
            self._stop_job(tail)
        self._live.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, state: LoopState, events: list[StoredEvent]) -> None:
        self._state = state
        for event in events:
            self.clock.add(event)
            if event.type == "TrainingJobSubmitted":
                self._follow_job(json.loads(event.payload))
            elif event.type in ("EffectCompleted", "EffectFailed"):
                effect_id = json.loads(event.payload)["effect_id"]
                if effect_id in self._jobs:
                    self._stop_job(self._jobs.pop(effect_id))
        if any(e.type == "GenerationStarted" for e in events):
            with self._lock:
                self._phases.clear()
        self._redraw()

    def _follow_job(self, submitted: dict[str, object]) -> None:
        from sia.train.local import BACKEND, LocalTrainer

        if self.home is None or submitted.get("backend") != BACKEND:
            return
        effect_id, job_id = str(submitted["effect_id"]), str(submitted["job_id"])
        if effect_id not in self._jobs:
            tail = JobTail(LocalTrainer(self.home / "train").job_dir(job_id), self.phase)
            self._jobs[effect_id] = tail
            tail.start()

    def _stop_job(self, tail: JobTail) -> None:
        tail.stopped.set()
        tail.join(timeout=2)
        with self._lock:
            self._phases.pop(tail.phase, None)

    def phase(self, step: PhaseStep) -> None:
        """Show a long phase's progress; a phase that reaches its total leaves the display."""
        with self._lock:
            if step.total is not None and step.step >= step.total:
                self._phases.pop(step.phase, None)
            else:
                self._phases[step.phase] = step
        self._redraw()

    def renderable(self) -> Group:
        with self._lock:
            phases = list(self._phases.values())
        lines = [status_line(self._state)] if self._state is not None else []
        lines += [Text(f"  {p.describe()}", style="cyan") for p in phases]
        return Group(*lines)

    def _redraw(self) -> None:
        self._live.update(self.renderable())


def status_line(state: LoopState) -> Text:
    current = state.current
    dev_ids = set(state.task.dev_ids) if state.task else set()
    episodes = current.episodes if current else ()
    dev_done = sum(1 for e in episodes if e.sample_id in dev_ids)
    spend = state.ledger.total
    parts = [
        f"gen {state.generation if state.generation is not None else '-'}",
        f"dev episodes {dev_done}/{len(dev_ids)}",
    ]
    rollouts = rollout_ids(state, current.index) if current and state.config and state.task else ()
    if rollouts:
        done = sum(1 for e in episodes if e.sample_id not in dev_ids)
        parts.append(f"train rollouts {done}/{len(rollouts)}")
    parts += [
        f"score {current.score:.3f}" if current and current.score is not None else "score -",
        f"best {state.best_score:.3f}@{state.best_generation}" if state.best_score is not None else "best -",
        f"{spend.tokens} tok",
        f"${spend.dollars:.4f}",
        f"gpu {spend.gpu_s:.0f}s",
        f"pending {len(state.pending)}",
    ]
    return Text(" · ".join(parts), style="bold cyan")


@dataclass(frozen=True)
class Column:
    """A table column: `priority` 0 is kept longest; `flexible` columns wrap their text
    and need only `min_width` characters, the others their widest cell."""

    header: str
    priority: int
    right: bool = False
    flexible: bool = False
    min_width: int = 16


CELL_OVERHEAD = 3
"""A rich box table spends one border and two padding characters per column."""


def fit_columns(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[int]:
    """Indices of the columns that fit in `width` characters with whole headers, dropping
    the lowest-priority (highest number) columns first; the first column always stays."""
    def need(i: int) -> int:
        column = columns[i]
        widest = max([len(column.header)] + [len(r[i]) for r in rows])
        return (max(len(column.header), min(widest, column.min_width)) if column.flexible
                else widest) + CELL_OVERHEAD

    kept = list(range(len(columns)))
    for i in sorted(range(1, len(columns)), key=lambda i: (-columns[i].priority, -i)):
        if sum(need(k) for k in kept) + 1 <= width:
            break
        kept.remove(i)
    return kept


def fitted_table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]],
                 width: int) -> Table:
    """A table of the columns that fit `width`; the caption names the ones left out."""
    kept = fit_columns(columns, rows, width)
    hidden = [c.header for i, c in enumerate(columns) if i not in kept]
    caption = (f"hidden at width {width}: {', '.join(hidden)} (widen the terminal or use --json)"
               if hidden else None)
    table = Table(title=title, caption=caption)
    for i in kept:
        column = columns[i]
        table.add_column(column.header, justify="right" if column.right else "left",
                         overflow="fold" if column.flexible else "ellipsis",
                         min_width=len(column.header), no_wrap=not column.flexible)
    for row in rows:
        table.add_row(*(row[i] for i in kept))
    return table


GENERATION_COLUMNS = (
    Column("gen", 0), Column("dev score", 0, right=True), Column("decision", 1),
    Column("algorithm", 2), Column("elapsed s", 2, right=True), Column("$", 3, right=True),
    Column("tokens", 4, right=True), Column("harness", 5), Column("adapter", 5),
    Column("effect s", 6, right=True), Column("gpu s", 6, right=True),
)


def summary_table(state: LoopState, elapsed: Mapping[int, float] | None = None,
                  width: int = 200) -> Table:
    """Generations of a run. "elapsed s" is wall-clock time per generation; "effect s" sums
    its effects' own durations (concurrent effects overlap, so it can be larger)."""
    rows = []
    for row in generation_rows(state, elapsed):
        score = "-" if row["dev_score"] is None else f"{row['dev_score']:.3f}" + (" ★" if row["best"] else "")
        rows.append([str(row["generation"]), score, row["decision"] or "-", row["algorithm"] or "-",
                     "-" if row["elapsed_s"] is None else f"{row['elapsed_s']:.1f}",
                     f"{row['dollars']:.4f}", str(row["tokens"]), row["harness"], row["adapter"],
                     f"{row['effect_s']:.1f}", f"{row['gpu_s']:.0f}"])
    title = (f"run {state.run_id} — {state.status}"
             + (f" ({state.stop_reason})" if state.stop_reason else ""))
    return fitted_table(title, GENERATION_COLUMNS, rows, width)
