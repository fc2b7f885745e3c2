"""Issue B's crash acceptance: `kill -9` a real `sia run` anywhere, `sia resume`, same end.

The deterministic handlers append each finished execution to a counter file, so the tests
can prove that no effect whose completion was committed ever runs again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sia.failpoints import POINTS
from tests.cli import SIA, sia, sia_json

RUN = ["run", "--task", "toy", "--max-gen", "4", "--quiet", "--run-id", "crashy", "--concurrency", "3"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("reference")
    sia(home, *RUN)
    return sia_json(home, "show", "crashy")


def executions(counter: Path) -> Counter[str]:
    if not counter.exists():
        return Counter()
    return Counter(line.split()[0] for line in counter.read_text().splitlines())


def committed_completions(home: Path) -> set[str]:
    log = sia(home, "log", "crashy", "--json").stdout.splitlines()
    return {json.loads(line)["payload"]["effect_id"] for line in log
            if json.loads(line)["type"] == "EffectCompleted"}


def exists(home: Path) -> bool:
    return any(run["run_id"] == "crashy" for run in sia_json(home, "runs"))


def resume_and_compare(home: Path, counter: Path, reference: dict) -> None:
    before = committed_completions(home) if exists(home) else set()
    ran_before = executions(counter)
    if not exists(home):
        sia(home, *RUN, env={"SIA_EFFECT_COUNTER": str(counter)})
    else:
        sia(home, "resume", "crashy", "--quiet", env={"SIA_EFFECT_COUNTER": str(counter)})
    final = sia_json(home, "show", "crashy")
    assert final["state_hash"] == reference["state_hash"]
    assert final["seq"] == reference["seq"]
    ran_after = executions(counter) - ran_before
    rerun = {effect for effect in before if ran_after[effect]}
    assert not rerun, f"completed effects ran again after resume: {rerun}"
    assert sia(home, "verify", "crashy").returncode == 0
    assert sia(home, "replay", "crashy", "--check").returncode == 0


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("nth", [1, 3])
def test_kill_at_every_effect_boundary_then_resume(point: str, nth: int, tmp_path: Path,
                                                   reference: dict) -> None:
    home, counter = tmp_path / "home", tmp_path / "counter"
    env = {"SIA_CRASH_AT": f"{point}:{nth}", "SIA_EFFECT_COUNTER": str(counter)}
    crashed = sia(home, *RUN, env=env, check=False)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resume_and_compare(home, counter, reference)


@pytest.mark.parametrize("seed", range(8))
def test_random_time_kills_then_resume(seed: int, tmp_path: Path, reference: dict) -> None:
    home, counter = tmp_path / "home", tmp_path / "counter"
    rng = random.Random(seed)
    env = {**os.environ, "SIA_HOME": str(home), "SIA_EFFECT_COUNTER": str(counter)}
    for _ in range(2):
        args = ["resume", "crashy", "--quiet"] if exists(home) else RUN
        process = subprocess.Popen([*SIA, *args], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    resume_and_compare(home, counter, reference)


def test_two_resumes_at_once_one_proceeds_the_other_is_refused(tmp_path: Path, reference: dict) -> None:
    home = tmp_path / "home"
    sia(home, *RUN, env={"SIA_CRASH_AT": "after_request_commit:2"}, check=False)
    env = {**os.environ, "SIA_HOME": str(home)}
    slow = ("import time, sia.effects.deterministic as d\n"
            "real = d.DeterministicEpisode.run\n"
            "def run(self, request, ctx):\n    time.sleep(0.3)\n    return real(self, request, ctx)\n"
            "d.DeterministicEpisode.run = run\n"
            "import sys; sys.argv = ['sia', 'resume', 'crashy', '--quiet']\n"
            "from sia.cli import entrypoint; entrypoint()\n")
    first = subprocess.Popen([sys.executable, "-c", slow], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    second = sia(home, "resume", "crashy", "--quiet", check=False)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 1
    assert "is being driven by" in second.stderr and "error:" in second.stderr
    assert sia_json(home, "show", "crashy")["state_hash"] == reference["state_hash"]
    assert sia(home, "verify", "crashy").returncode == 0
