"""`sia report RUN`: a PNG and a self-contained HTML page for a run and its forks.

The plot shows dev score per generation for every branch, each named in the legend (a
fork dashed, drawn from where it leaves its parent), each decision marked by its kind
(edit, weights, stop) and the best generation ringed behind its marker. Scores within
0..1 are drawn on that whole range. The page embeds the plot and
adds, per branch, the generations, the audit table and the harness diffs. Nothing is
fetched: styles are inline and the image is a data URL, so the page can be mailed.
"""

from __future__ import annotations

import base64
import difflib
import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sia.core.reducers.state import LoopState
from sia.interface.views import (
    audit_rows,
    generation_elapsed,
    generation_rows,
    sandbox_of,
    score_series,
    scored_generations,
    search_tree,
)
from sia.runtime.loop import load_state
from sia.store.base import EventStore

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MARKERS = {"edit_harness": ("o", "harness edit"), "update_weights": ("^", "weight update"),
           "stop": ("s", "stop")}


@dataclass(frozen=True)
class Branch:
    run_id: str
    state: LoopState
    shared_generations: int = 0
    """Scored generations the run inherited from its parent (0 for a root run)."""


def branches(store: EventStore, run_id: str) -> list[Branch]:
    """The run, then every run forked from it (directly or through other forks)."""
    family = [run_id]
    for run in store.list_runs():
        if run.run_id != run_id and run_id in {r.run_id for r in store.chain(run.run_id)[1:]}:
            family.append(run.run_id)
    result = []
    for member in family:
        state = load_state(store, member)
        shared = 0
        if state.parent_run_id is not None and state.fork_seq is not None:
            shared = scored_generations(load_state(store, state.parent_run_id, upto=state.fork_seq))
        result.append(Branch(member, state, shared))
    return result


def score_range(scores: list[float]) -> tuple[float, float, str]:
    """The y-axis limits and its label. Scores within 0..1 are drawn on that whole range,
    so a gain from 0.000 to 0.010 looks as small as it is; other scores are scaled to the
    data, and the label says so."""
    if all(0.0 <= s <= 1.0 for s in scores):
        return -0.02, 1.02, "dev score (full range, 0 to 1)"
    low, high = min(scores), max(scores)
    pad = (high - low) * 0.05 or 0.5
    return low - pad, high + pad, f"dev score (axis scaled to the data, {low:.3f} to {high:.3f})"


def draw(family: list[Branch]) -> Figure:
    """The score plot of a run and its forks (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(8, 4.8), dpi=110)
    used: set[str] = set()
    handles: list[Line2D] = []
    scores: list[float] = []
    for index, branch in enumerate(family):
        series = score_series(branch.run_id, branch.state, branch.shared_generations)
        points = series["points"]
        color = f"C{index % 10}"
        xs, ys = [p["generation"] for p in points], [p["score"] for p in points]
        scores += ys
        line, = axes.plot(xs, ys, "--" if series["fork"] else "-", color=color, linewidth=1.8,
                          alpha=0.9, zorder=2 + index, label=series["label"])
        handles.append(line)
        for p in points:
            if p["best"]:
                used.add("best")
                axes.plot(p["generation"], p["score"], "o", markersize=17, markerfacecolor="none",
                          markeredgecolor="goldenrod", markeredgewidth=2.2, zorder=1)
            if p["action"] is not None:
                used.add(p["action"])
                marker, _ = MARKERS[p["action"]]
                axes.plot(p["generation"], p["score"], marker, color=color, markersize=8,
                          markeredgecolor="white", zorder=10 + index)
    for action, (marker, label) in MARKERS.items():
        if action in used:
            handles.append(Line2D([], [], linestyle="none", marker=marker, color="gray", label=label))
    if "best" in used:
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                              markeredgecolor="goldenrod", markeredgewidth=2, label="best generation"))
    low, high, label = score_range(scores or [0.0])
    axes.set_ylim(low, high)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("generation")
    axes.set_ylabel(label)
    axes.set_title(f"sia run {family[0].run_id} and its forks")
    axes.grid(alpha=0.3)
    axes.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
                frameon=False)
    figure.tight_layout()
    return figure


def plot(family: list[Branch], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = draw(family)
    figure.savefig(path)
    plt.close(figure)


def cell(column: str, value: object) -> str:
    """A value as a reader wants it: yes/no, three decimals (four for dollars), – for none."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if column == "dollars" else (f"{value:+.3f}" if column == "delta" else f"{value:.3f}")
    return str(value)


def _table(rows: list[dict[str, object]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(c, row.get(c)))}</td>" for c in columns) + "</tr>"
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
         "th{background:#f3f3f3}.note{color:#666;font-size:12px}pre{background:#f8f8f8;padding:1em;overflow-x:auto;font-size:12px}")


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
        sandbox = sandbox_of(state)
        sections.append(
            f"<h2>{html.escape(branch.run_id)}</h2><p>{origin}; status {html.escape(state.status)}"
            f"{' — ' + html.escape(state.stop_reason) if state.stop_reason else ''}"
            f"{'; harnesses ran in the ' + html.escape(sandbox) + ' sandbox' if sandbox else ''}</p>"
            "<h3>Generations</h3>"
            + _table(generation_rows(state, generation_elapsed(store.read(branch.run_id))),
                     ["generation", "harness", "adapter", "dev_score", "best", "decision", "algorithm",
                      "tokens", "dollars", "elapsed_s", "effect_s", "gpu_s"])
            + "<p class='note'>elapsed_s: wall-clock time of the generation; effect_s: the sum of its "
              "effects' own durations (they run concurrently, so it can be larger).</p>"
            + "<h3>Decisions</h3>"
            + _table(audit, ["generation", "provider", "action", "algorithm", "recommended_algorithm", "forced",
                             "rollback_to", "rationale", "evidence", "score_before", "delta"])
            + "<h3>Archive</h3><pre>" + html.escape("\n".join(search_tree(state))) + "</pre>"
            + "<h3>Harness diffs</h3>" + _harness_diffs(store, state)
        )
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sia report {html.escape(run_id)}"
            f"</title><style>{STYLE}</style></head><body><h1>sia report: {html.escape(run_id)}</h1>"
            f"<img alt='dev score per generation' src='data:image/png;base64,{image}'>"
            + "".join(sections) + "</body></html>")
    page_path = out_dir / f"{run_id}.html"
    page_path.write_text(page, encoding="utf-8")
    return png, page_path
