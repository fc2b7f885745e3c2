"""How tests/conftest.py schedules the suite under pytest-xdist: a `measures_time` test runs while
no other test does, the other tests side by side, and the longest modules are handed out first."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_early_processes import run_pytest

TURNS = """
import json
import time

import pytest


def record(name):
    began = time.time()
    time.sleep(0.4)
    with open({log!r}, "a") as log:
        log.write(json.dumps([name, began, time.time()]) + "\\n")


@pytest.mark.measures_time
def test_timed():
    record("timed")


@pytest.mark.parametrize("index", range(8))
def test_other(index):
    record(f"other-{{index}}")
"""


def test_a_test_that_measures_time_runs_alone_and_the_others_in_parallel(tmp_path: Path) -> None:
    log = tmp_path / "intervals.jsonl"
    module = tmp_path / "test_turns.py"
    module.write_text(TURNS.format(log=str(log)), encoding="utf-8")
    result = run_pytest(tmp_path, "-q", "-n", "2", "--dist", "load", module)
    assert result.returncode == 0 and "9 passed" in result.stdout, result.stdout[-2000:]
    intervals = {name: (began, ended) for name, began, ended in map(json.loads, log.read_text().splitlines())}
    timed = intervals.pop("timed")

    def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    assert not any(overlap(timed, other) for other in intervals.values()), (timed, intervals)
    others = list(intervals.values())
    assert any(overlap(a, b) for i, a in enumerate(others) for b in others[i + 1:]), others


def test_the_longest_modules_are_handed_out_first(tmp_path: Path) -> None:
    log = tmp_path / "order.txt"
    for name in ("test_aaa.py", "test_main_job.py", "test_zzz.py"):
        (tmp_path / name).write_text(f"def test_it():\n    open({str(log)!r}, 'a').write({name!r} + '\\n')\n",
                                     encoding="utf-8")
    result = run_pytest(tmp_path, "-q", "-n", "1", "--dist", "loadfile", tmp_path)
    assert result.returncode == 0 and "3 passed" in result.stdout, result.stdout[-2000:]
    assert log.read_text().split() == ["test_main_job.py", "test_aaa.py", "test_zzz.py"]
