"""`sia report`: a PNG and a self-contained HTML page for a run and its forks."""

from __future__ import annotations

from pathlib import Path

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
