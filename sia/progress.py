"""Live progress of a run in the terminal: generation, episodes, score, spend."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sia.events.envelope import StoredEvent
from sia.reducers.state import LoopState
from sia.views import generation_rows


class LiveProgress:
    """An observer for Runtime: redraws one status line per committed batch."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live = Live(Text(""), console=console, refresh_per_second=8, transient=True)

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, state: LoopState, events: list[StoredEvent]) -> None:
        self._live.update(status_line(state))


def status_line(state: LoopState) -> Text:
    current = state.current
    total = len(state.task.dev_ids) if state.task else 0
    done = len(current.episodes) if current else 0
    spend = state.ledger.total
    parts = [
        f"gen {state.generation if state.generation is not None else '-'}",
        f"episodes {done}/{total}",
        f"score {current.score:.3f}" if current and current.score is not None else "score -",
        f"best {state.best_score:.3f}@{state.best_generation}" if state.best_score is not None else "best -",
        f"{spend.tokens} tok",
        f"${spend.dollars:.4f}",
        f"gpu {spend.gpu_s:.0f}s",
        f"pending {len(state.pending)}",
    ]
    return Text(" · ".join(parts), style="bold cyan")


def summary_table(state: LoopState) -> Table:
    table = Table(title=f"run {state.run_id} — {state.status}"
                  + (f" ({state.stop_reason})" if state.stop_reason else ""))
    for column in ("gen", "harness", "adapter", "dev score", "decision", "algorithm",
                   "tokens", "$", "wall s", "gpu s"):
        table.add_column(column, justify="right" if column in ("dev score", "tokens", "$", "wall s", "gpu s") else "left")
    for row in generation_rows(state):
        score = "-" if row["dev_score"] is None else f"{row['dev_score']:.3f}" + (" ★" if row["best"] else "")
        table.add_row(str(row["generation"]), row["harness"], row["adapter"], score,
                      row["decision"] or "-", row["algorithm"] or "-", str(row["tokens"]),
                      f"{row['dollars']:.4f}", f"{row['wall_s']:.1f}", f"{row['gpu_s']:.0f}")
    return table
