"""`sia report`: a PNG and a self-contained HTML page for a run and its forks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.cli import sia, sia_json
from tests.test_cli_ops import feedback_boundary


def test_report_covers_the_run_and_its_forks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = sia(home, "run", "--task", "toy", "--max-gen", "3", "--quiet").stdout.split()[-1]
    fork = sia(home, "fork", run, "--at", str(feedback_boundary(home, run)),
               "--set", "feedback.force=update_weights:dpo").stdout.split()[-1]
    sia(home, "resume", fork, "--quiet")
    out = tmp_path / "report"
    sia(home, "report", run, "-o", str(out))
    png, page = out / f"{run}.png", out / f"{run}.html"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = page.read_text(encoding="utf-8")
    assert "data:image/png;base64," in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert run in text and fork in text and f"forked from {run}" in text
    assert "update_weights" in text and "dpo" in text and "generation 0 → 1" in text
    decisions = sia_json(home, "audit", fork)
    assert all(d["rationale"].replace("&", "&amp;")[:20] in text for d in decisions)
    assert "<th>provider</th>" in text
    assert all(f"<td>{d['provider']}</td>" in text for d in decisions)


def _family(home: Path) -> tuple[str, str, list[Any]]:
    from sia.interface.report import branches
    from sia.store.sqlite import SqliteEventStore

    run = sia(home, "run", "--task", "toy", "--max-gen", "3", "--quiet").stdout.split()[-1]
    fork = sia(home, "fork", run, "--at", str(feedback_boundary(home, run)),
               "--set", "feedback.force=update_weights:dpo").stdout.split()[-1]
    sia(home, "resume", fork, "--quiet")
    store = SqliteEventStore.open_home(home)
    try:
        return run, fork, branches(store, run)
    finally:
        store.close()


def test_plot_names_each_branch_rings_best_behind_markers_and_lists_only_used_kinds(tmp_path: Path) -> None:
    from sia.interface.report import draw

    run, fork, family = _family(tmp_path / "home")
    figure = draw(family)
    axes = figure.axes[0]
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels[:2] == [f"{run} (root run)", f"{fork} (fork of {run} at seq {family[1].state.fork_seq})"]
    assert "weight update" in labels and "best generation" in labels
    assert "stop" not in labels  # no run stopped itself: no legend entry for it
    lines = axes.get_lines()
    rings = [line for line in lines if line.get_marker() == "o" and line.get_markersize() == 17]
    weights = [line for line in lines if line.get_marker() == "^"]
    assert rings and weights and max(r.get_zorder() for r in rings) < min(w.get_zorder() for w in weights)
    fork_line = next(line for line in lines if line.get_label() == labels[1])
    assert fork_line.get_linestyle() == "--"
    shared = family[1].shared_generations
    assert min(fork_line.get_xdata()) == shared - 1  # starts where it leaves the parent
    assert axes.get_ylim() == (-0.02, 1.02) and "full range, 0 to 1" in axes.get_ylabel()


def test_score_range_is_the_full_unit_range_for_bounded_scores_and_says_so_otherwise() -> None:
    from sia.interface.report import score_range

    low, high, label = score_range([0.0, 0.01])
    assert (low, high) == (-0.02, 1.02) and "0 to 1" in label
    low, high, label = score_range([1.2, 3.4])
    assert low < 1.2 and high > 3.4 and "scaled to the data, 1.200 to 3.400" in label


def test_html_shows_readable_values_and_the_sandbox(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = sia(home, "run", "--task", "toy", "--max-gen", "3", "--quiet").stdout.split()[-1]
    sia(home, "report", run, "-o", str(tmp_path / "report"))
    text = (tmp_path / "report" / f"{run}.html").read_text(encoding="utf-8")
    assert not re.search(r"<td>(True|False|None)</td>", text)
    assert not re.search(r"<td>-?\d+\.\d{5,}</td>", text)  # 0.09375 is shown as 0.094
    assert "<td>yes</td>" in text and "<th>elapsed_s</th>" in text and "<th>effect_s</th>" in text
    sandbox = sia_json(home, "show", run)["config"]["sandbox"]
    assert f"harnesses ran in the {sandbox} sandbox" in text
