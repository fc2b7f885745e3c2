"""`sia report RUN`: a PNG and a self-contained HTML page for a run and its forks.

The plot shows dev score per generation for every branch, each decision marked by its
kind (edit, weights, stop) and the best generation starred. The page embeds the plot and
adds, per branch, the generations, the audit table and the harness diffs. Nothing is
fetched: styles are inline and the image is a data URL, so the page can be mailed.
"""

from __future__ import annotations

import base64
import difflib
import html
from dataclasses import dataclass
from pathlib import Path

from sia.reducers.state import LoopState
from sia.runtime import load_state
from sia.store.base import EventStore
from sia.views import audit_rows, generation_rows

MARKERS = {"edit_harness": ("o", "harness edit"), "update_weights": ("^", "weight update"),
           "stop": ("s", "stop")}


@dataclass(frozen=True)
class Branch:
    run_id: str
    state: LoopState


def branches(store: EventStore, run_id: str) -> list[Branch]:
    """The run, then every run forked from it (directly or through other forks)."""
    family = [run_id]
    for run in store.list_runs():
        if run.run_id != run_id and run_id in {r.run_id for r in store.chain(run.run_id)[1:]}:
            family.append(run.run_id)
    return [Branch(r, load_state(store, r)) for r in family]


def plot(family: list[Branch], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    for branch in reversed(family):  # the root last, on top of the prefix its forks share
        generations = [g for g in branch.state.generations if g.score is not None]
        xs, ys = [g.index for g in generations], [g.score for g in generations]
        line, = axes.plot(xs, ys, "-", linewidth=1.6, label=branch.run_id, alpha=0.9)
        for g in generations:
            if g.decision is not None:
                marker, _ = MARKERS[g.decision.action]
                axes.plot(g.index, g.score, marker, color=line.get_color(), markersize=8)
        best = branch.state.best_generation
        if best is not None and best < len(branch.state.generations):
            axes.plot(best, branch.state.generations[best].score, "*", color="gold",
                      markersize=18, markeredgecolor="black", zorder=5)
    for marker, label in MARKERS.values():
        axes.plot([], [], marker, color="gray", label=label)
    axes.plot([], [], "*", color="gold", markeredgecolor="black", markersize=12, label="best")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("generation")
    axes.set_ylabel("dev score")
    axes.set_title(f"sia run {family[0].run_id} and its forks")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _table(rows: list[dict[str, object]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if row.get(c) is None else str(row.get(c)))}</td>"
                         for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _harness_diffs(store: EventStore, state: LoopState) -> str:
    parts = []
    for before, after in zip(state.generations, state.generations[1:]):
        if before.harness_hash == after.harness_hash:
            continue
        old = store.blobs.get_text(before.harness_hash).splitlines()
        new = store.blobs.get_text(after.harness_hash).splitlines()
        diff = "\n".join(difflib.unified_diff(old, new, f"gen {before.index}", f"gen {after.index}",
                                              lineterm=""))
        parts.append(f"<h4>generation {before.index} → {after.index}</h4><pre>{html.escape(diff)}</pre>")
    return "".join(parts) or "<p>The harness never changed.</p>"


STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
         "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
         "th{background:#f3f3f3}pre{background:#f8f8f8;padding:1em;overflow-x:auto;font-size:12px}")


def write_report(store: EventStore, run_id: str, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    family = branches(store, run_id)
    png = out_dir / f"{run_id}.png"
    plot(family, png)
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    sections = []
    for branch in family:
        state = branch.state
        origin = (f"forked from {html.escape(state.parent_run_id or '')} at seq {state.fork_seq}"
                  if state.parent_run_id else "root run")
        audit = [{**row, "evidence": f"{row['evidence']['digest_hash'] or '-'} {row['evidence']['summary']}"}
                 for row in audit_rows(state)]
        sections.append(
            f"<h2>{html.escape(branch.run_id)}</h2><p>{origin}; status {html.escape(state.status)}"
            f"{' — ' + html.escape(state.stop_reason) if state.stop_reason else ''}</p>"
            "<h3>Generations</h3>"
            + _table(generation_rows(state), ["generation", "harness", "adapter", "dev_score", "best",
                                              "decision", "algorithm", "tokens", "dollars", "wall_s",
                                              "gpu_s"])
            + "<h3>Decisions</h3>"
            + _table(audit, ["generation", "provider", "action", "algorithm", "recommended_algorithm", "forced",
                             "rollback_to", "rationale", "evidence", "score_before", "delta"])
            + "<h3>Harness diffs</h3>" + _harness_diffs(store, state)
        )
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sia report {html.escape(run_id)}"
            f"</title><style>{STYLE}</style></head><body><h1>sia report: {html.escape(run_id)}</h1>"
            f"<img alt='dev score per generation' src='data:image/png;base64,{image}'>"
            + "".join(sections) + "</body></html>")
    page_path = out_dir / f"{run_id}.html"
    page_path.write_text(page, encoding="utf-8")
    return png, page_path
