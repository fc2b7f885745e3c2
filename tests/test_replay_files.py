"""Invariant 3: `replay --check` passes on every recorded run in replay/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import sia, sia_json

FILES = sorted((Path(__file__).parent.parent / "replay").glob("*.jsonl"))


def test_there_are_recorded_runs() -> None:
    assert len(FILES) >= 3


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_recorded_run_replays_identically(path: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_id = sia(home, "import", str(path)).stdout.strip().splitlines()[-1]
    result = sia(home, "replay", run_id, "--check")
    assert "hash chain verified" in result.stdout
    report = sia_json(home, "replay", run_id, "--check")["check"]
    assert report["ok"] and report["decisions_checked"] > 0 and report["outcomes_checked"] > 0
