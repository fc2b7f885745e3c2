"""Issue B's crash acceptance: `kill -9` a real `sia run` anywhere, `sia resume`, same end.

The deterministic handlers append each finished execution to a counter file, so the tests
can prove that no effect whose completion was committed ever runs again. The runs and
resumes are processes of their own (they are what is killed); the commands that read the
log and check the end state (`log`, `show`, `verify`, `replay --check`) run in this process,
through the same CLI, as a process start costs more than the command itself.
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
from typer.testing import CliRunner

from sia.interface.cli import app
from sia.runtime.failpoints import POINTS
from tests.cli import SIA, sia

pytestmark = pytest.mark.slow

RUN = ["run", "--task", "toy", "--max-gen", "4", "--quiet", "--run-id", "crashy", "--concurrency", "3"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uncrashed run's final state, and how many effects it executes."""
    home = tmp_path_factory.mktemp("reference")
    counter = home / "counter"
    sia(home, *RUN, env={"SIA_EFFECT_COUNTER": str(counter)})
    return {**shown(home), "executions": executions(counter).total()}


def sia_in_process(home: Path, *args: str) -> str:
    """What `sia ARGS` prints on stdout, run in this process; a failing command fails the test."""
    result = CliRunner().invoke(app, list(args), env={"SIA_HOME": str(home)}, catch_exceptions=False)
    assert result.exit_code == 0, f"sia {' '.join(args)} exited {result.exit_code}:\n{result.stderr}"
    return result.stdout


def shown(home: Path) -> dict:
    return json.loads(sia_in_process(home, "show", "crashy", "--json"))


def executions(counter: Path) -> Counter[str]:
    if not counter.exists():
        return Counter()
    return Counter(line.split()[0] for line in counter.read_text().splitlines())


def recorded(home: Path) -> list[dict]:
    return [json.loads(line) for line in sia_in_process(home, "log", "crashy", "--json").splitlines()]


def settled(log: list[dict]) -> list[str]:
    """Effect ids whose outcome is committed, in commit order."""
    return [e["payload"]["effect_id"] for e in log if e["type"] == "EffectCompleted"
            or (e["type"] == "EffectFailed" and not e["payload"]["will_retry"])]


def pending(log: list[dict]) -> set[str]:
    requested = {e["payload"]["effect_id"] for e in log if e["type"] == "EffectRequested"}
    return requested - set(settled(log))


def request_batches(log: list[dict]) -> int:
    """Committed `decide` batches that requested effects: each ends in one unbroken block of
    EffectRequested, and no effect outcome is ever an EffectRequested."""
    types = [e["type"] for e in log]
    return sum(1 for i, t in enumerate(types)
               if t == "EffectRequested" and (i == 0 or types[i - 1] != "EffectRequested"))


def assert_killed_at(point: str, nth: int, log: list[dict], counter: Path) -> None:
    """The log (and the effect counter) as they can only be after a kill at `point`'s nth reach."""
    last = log[-1]["type"]
    assert last not in ("RunCompleted", "RunFailed"), f"the run ended ({last}): no kill landed"
    if point == "before_request_commit":
        assert request_batches(log) == nth - 1 and not pending(log)
    elif point == "after_request_commit":
        assert request_batches(log) == nth and last == "EffectRequested" and pending(log)
    elif point == "after_execution":
        ran = executions(counter)
        assert len(settled(log)) <= nth - 1 < ran.total()
        assert set(ran) - set(settled(log)), "every executed effect was committed"
    elif point == "mid_batch":
        assert pending(log) and last != "EffectRequested"
        assert len(settled(log)) - (request_batches(log) - 1) == nth
    else:
        raise AssertionError(f"no check for crash point {point}")


def resume_and_compare(home: Path, counter: Path, reference: dict) -> None:
    """Resume after a kill: the resume must do the rest of the work, and none of it twice."""
    log = recorded(home)
    before = set(settled(log))
    ran_before = executions(counter)
    sia(home, "resume", "crashy", "--quiet", env={"SIA_EFFECT_COUNTER": str(counter)})
    final = shown(home)
    assert final["state_hash"] == reference["state_hash"]
    assert final["seq"] == reference["seq"] > len(log)
    ran_after = executions(counter) - ran_before
    assert ran_after.total() > 0, "the resume executed no effect"
    rerun = {effect for effect in before if ran_after[effect]}
    assert not rerun, f"completed effects ran again after resume: {rerun}"
    assert sia_in_process(home, "verify", "crashy").startswith("ok:")
    assert sia_in_process(home, "replay", "crashy", "--check").startswith("ok:")


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("nth", [1, 3])
def test_kill_at_every_effect_boundary_then_resume(point: str, nth: int, tmp_path: Path,
                                                   reference: dict) -> None:
    home, counter = tmp_path / "home", tmp_path / "counter"
    env = {"SIA_CRASH_AT": f"{point}:{nth}", "SIA_EFFECT_COUNTER": str(counter)}
    crashed = sia(home, *RUN, env=env, check=False)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert_killed_at(point, nth, recorded(home), counter)
    resume_and_compare(home, counter, reference)


LEFT_FOR_RESUME = 12
"""Effects the second kill leaves undone at least (a generation's episodes and more), so it
lands while the run still has work: a kill after the last commit would test no resume."""


def kill_after(process: subprocess.Popen[bytes], counter: Path, target: int, jitter: float) -> None:
    """SIGKILL `process` `jitter` seconds after the `target`-th effect execution, and prove
    it was still running: a kill that lands after the run ended would test nothing."""
    while executions(counter).total() < target:
        assert process.poll() is None, f"the run ended before {target} effects ran"
        time.sleep(0.005)
    time.sleep(jitter)
    assert process.poll() is None, f"the run ended within {jitter:.3f}s of effect {target}"
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


@pytest.mark.parametrize("seed", range(8))
def test_random_time_kills_then_resume(seed: int, tmp_path: Path, reference: dict) -> None:
    home, counter = tmp_path / "home", tmp_path / "counter"
    rng = random.Random(seed)
    env = {**os.environ, "SIA_HOME": str(home), "SIA_EFFECT_COUNTER": str(counter)}
    last = reference["executions"] - LEFT_FOR_RESUME
    for args, latest in ((RUN, last // 2), (["resume", "crashy", "--quiet"], last)):
        ran = executions(counter).total()
        target = rng.randint(ran + 1, max(ran + 1, latest))
        process = subprocess.Popen([*SIA, *args], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        kill_after(process, counter, target, rng.uniform(0.0, 0.01))
    resume_and_compare(home, counter, reference)


def test_two_resumes_at_once_one_proceeds_the_other_is_refused(tmp_path: Path, reference: dict) -> None:
    home = tmp_path / "home"
    crashed = sia(home, *RUN, env={"SIA_CRASH_AT": "after_request_commit:2"}, check=False)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    log = recorded(home)
    assert request_batches(log) == 2 and pending(log)
    env = {**os.environ, "SIA_HOME": str(home)}
    slow = ("import time, sia.effects.deterministic as d\n"
            "real = d.DeterministicEpisode.run\n"
            "def run(self, request, ctx):\n    time.sleep(0.3)\n    return real(self, request, ctx)\n"
            "d.DeterministicEpisode.run = run\n"
            "import sys; sys.argv = ['sia', 'resume', 'crashy', '--quiet']\n"
            "from sia.interface.cli import entrypoint; entrypoint()\n")
    first = subprocess.Popen([sys.executable, "-c", slow], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    second = sia(home, "resume", "crashy", "--quiet", check=False)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 1
    assert "is being driven by" in second.stderr and "error:" in second.stderr
    assert shown(home)["state_hash"] == reference["state_hash"]
    assert sia_in_process(home, "verify", "crashy").startswith("ok:")
