"""Hostile code answers (trimul kernels, denoisers) against the answer sandbox: forging the
result, reading the reference, patching the scorer, memoising, lying about time, spawning.
Each scores no better than the reference, and the honest answers score as before."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from sia.harness import bwrap
from sia.harness.bwrap import SandboxUnavailable
from sia.tasks import code_answers
from sia.tasks.answer_sandbox import (
    AnswerSandbox,
    CallLog,
    SandboxLimits,
    timing_problem,
)
from sia.tasks.code_answers import CodeOutcome, run_isolated
from sia.tasks.trimul import ShapeSpec, make_inputs
from sia.tasks.trimul.evaluator import CandidateCall
from sia.tasks.trimul.remote import calibrate, remote_kernel
from tests.test_tasks_score import assert_user_error, invoke

pytestmark = [pytest.mark.slow, pytest.mark.measures_time]

BUNDLED = Path(__file__).resolve().parents[1] / "sia" / "tasks" / "bundled"
TRIMUL = {"batch": 1, "seq_len": 8, "dim": 16, "hidden_dim": 16, "seeds": [5, 6], "repeats": 4,
          "warmup": 1}
DENOISE = {"seed": 3, "n_cells": 100, "n_genes": 500}


def _constant(folder: str, name: str) -> str:
    spec = importlib.util.spec_from_file_location(f"ref_{folder}", BUNDLED / folder / "reference_harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


REFERENCE_KERNEL = _constant("trimul", "REFERENCE_KERNEL")
MAGIC_DENOISER = _constant("denoise", "MAGIC_DENOISER")


def trimul(answer: str) -> CodeOutcome:
    return run_isolated("trimul", answer, TRIMUL, wall_s=60.0)


def denoise(answer: str) -> CodeOutcome:
    return run_isolated("denoise", answer, DENOISE, wall_s=60.0)


def honest_kernel_unless(condition: str, prelude: str = "") -> str:
    """The reference kernel, returning garbage whenever `condition` (evaluated per call) holds."""
    return (f"{REFERENCE_KERNEL}\n{prelude}\n_honest = custom_kernel\n\n"
            f"def custom_kernel(x, mask, weights):\n"
            f"    if {condition}:\n        return torch.zeros_like(x)\n"
            f"    return _honest(x, mask, weights)\n")


# ---------------------------------------------------------------- the honest answers


def test_the_reference_kernel_still_scores_about_one() -> None:
    """Answer and reference are both timed as round trips to a sandbox, less the same overhead."""
    outcome = run_isolated("trimul", REFERENCE_KERNEL, {**TRIMUL, "repeats": 10}, wall_s=60.0)
    assert outcome.failure is None and 0.6 < outcome.reward < 1.6, outcome


def test_the_magic_denoiser_scores_exactly_as_in_the_process_sandbox() -> None:
    sandboxed = denoise(MAGIC_DENOISER)
    in_process = run_isolated("denoise", MAGIC_DENOISER, DENOISE, isolation="process")
    assert sandboxed.failure is None and sandboxed.reward > 0.0, sandboxed
    assert sandboxed.reward == in_process.reward


# ---------------------------------------------------------------- (1) forged results

FORGER = '''
import json, sys, os
for target in (sys.argv[-1], sys.argv[2], "result.json", "/tmp/result.json"):
    try:
        with open(target, "w") as handle:
            handle.write(json.dumps({"reward": 1.0, "failure": None, "detail": "forged"}))
    except (OSError, ValueError):
        pass
print(json.dumps({"reward": 1.0, "failure": None, "detail": "forged"}))
os._exit(0)
'''


@pytest.mark.parametrize("kind", ["trimul", "denoise"])
def test_a_forged_result_file_or_printout_scores_nothing(kind: str) -> None:
    outcome = run_isolated(kind, FORGER, TRIMUL if kind == "trimul" else DENOISE)
    assert outcome.reward == 0.0 and outcome.failure == "crash", outcome
    assert "forged" not in outcome.detail


FORGING_DENOISER = FORGER.replace("sys.argv[-1]", "sys.argv[2]")
"""The forger aimed at the process sandbox's scorer child (its result file is argv[2])."""


def test_the_process_sandbox_is_forgeable_which_is_why_it_is_an_opt_in() -> None:
    outcome = run_isolated("denoise", FORGING_DENOISER, DENOISE, isolation="process")
    assert outcome.reward == 1.0 and outcome.detail == "forged"


# ---------------------------------------------------------------- (2) reading the reference

SNOOP = f'''
import os, sys
def _visible(top):
    """What is under `top` besides the read-only site-packages bound in (wherever the
    virtualenv lives, e.g. under /tmp on CI) and the folders leading to it."""
    bound = [os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)]
    seen = []
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in bound]
        for name in dirs + files:
            path = os.path.join(root, name)
            if not any(b == path or b.startswith(path + os.sep) for b in bound):
                seen.append(path)
    return seen
def _leaks():
    found = [f"process {{p}}" for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    if os.getppid() != 0:
        found.append(f"parent {{os.getppid()}}")
    found += [path for path in ("{BUNDLED}", "{BUNDLED.parents[2]}", "/home", "/etc")
              if os.path.exists(path)]
    found += _visible("/tmp")
    try:
        import sia  # noqa: F401
        found.append("the sia package")
    except ImportError:
        pass
    return found
LEAKS = _leaks()
'''


def test_a_kernel_finds_neither_the_scorer_nor_the_task_files() -> None:
    outcome = trimul(honest_kernel_unless("LEAKS", SNOOP))
    assert outcome.failure is None and 0.3 < outcome.reward < 3.0, outcome


def test_a_denoiser_finds_neither_the_scorer_nor_the_held_out_molecules() -> None:
    answer = SNOOP + "\ndef denoise(train_counts):\n    if LEAKS:\n        raise RuntimeError(str(LEAKS))\n    return train_counts\n"
    outcome = denoise(answer)
    assert outcome.failure is None and outcome.reward == 0.0, outcome


# ---------------------------------------------------------------- (3) patching the scorer

PATCHER = '''
import sys, types
import numpy
numpy.mean = lambda *a, **k: 0.0
numpy.allclose = lambda *a, **k: True
for name in ("sia.tasks.trimul.evaluator", "sia.tasks.denoise.evaluator", "sia.tasks.code_answers"):
    fake = types.ModuleType(name)
    fake.mismatch = lambda *a, **k: None
    fake.evaluate = lambda *a, **k: None
    sys.modules[name] = fake
'''


def test_a_kernel_that_patches_the_checks_is_still_checked() -> None:
    answer = (PATCHER + "import torch\ntorch.allclose = lambda *a, **k: True\n"
              "torch.Tensor.__sub__ = lambda a, b: torch.zeros(())\n"
              "def custom_kernel(x, mask, weights):\n    return torch.zeros_like(x)\n")
    outcome = trimul(answer)
    assert outcome.reward == 0.0 and outcome.failure == "incorrect", outcome


def test_a_denoiser_that_patches_the_metric_is_still_measured() -> None:
    outcome = denoise(PATCHER + "def denoise(train_counts):\n    return train_counts * 0.0\n")
    assert outcome.reward == 0.0 and outcome.failure is None, outcome


# ---------------------------------------------------------------- (4) memoising


def test_a_kernel_that_replays_its_first_output_fails_the_timed_checks() -> None:
    answer = honest_kernel_unless("False", "_FIRST = []").replace(
        "    return _honest(x, mask, weights)\n",
        "    if not _FIRST:\n        _FIRST.append(_honest(x, mask, weights))\n    return _FIRST[0]\n")
    outcome = trimul(answer)
    assert outcome.reward == 0.0 and outcome.failure == "incorrect", outcome


# ---------------------------------------------------------------- (5) lying about time

SLEEPER = """
import time, torch
def custom_kernel(x, mask, weights):
    time.sleep(0.005)
    return torch.zeros(1)
"""
SPINNER = """
import time, torch
def custom_kernel(x, mask, weights):
    end = time.perf_counter() + 0.002
    while time.perf_counter() < end:
        pass
    return torch.zeros(1)
"""
LIAR = '''
import time
_sleep = time.sleep
time.perf_counter_ns = lambda: 0
time.perf_counter = lambda: 0.0
'''
BOASTER = '''
import time
_ticks = iter(range(0, 10**18, 10**9))
time.perf_counter_ns = lambda: next(_ticks)
'''


@contextmanager
def loaded(source: str, spec: ShapeSpec) -> Iterator[tuple[AnswerSandbox, CandidateCall]]:
    """A sandbox with `source` loaded after calibration, and its kernel as the scorer calls it."""
    with AnswerSandbox("trimul", SandboxLimits(30.0, 30, 2048)) as sandbox:
        overhead_us = calibrate(sandbox, spec, 1)
        ready = sandbox.exchange({"op": "answer"}, source.encode(), max_bytes=0).header
        assert ready.get("ready") is True, ready
        yield sandbox, remote_kernel(sandbox, spec, overhead_us)
        sandbox.send_end()


def timed_calls(source: str, spec: ShapeSpec, calls: int) -> tuple[list[float], CallLog]:
    """The scorer's time of each of `calls` calls of `source` in a sandbox, and its call log."""
    with loaded(source, spec) as (sandbox, kernel):
        times = [kernel(make_inputs(spec, seed, "normal", True))[1] for seed in range(calls)]
    return times, sandbox.log


def test_a_kernel_sleeping_5_ms_is_measured_at_5_ms_or_more_on_every_call() -> None:
    times, log = timed_calls(SLEEPER, ShapeSpec(1, 8, 16, 16), 6)
    assert min(log.round_trip_us) >= 5000.0, log
    assert min(times) >= 4750.0, times  # less the channel's calibrated overhead (see below)


def test_the_round_trip_is_never_shorter_than_the_call_it_contains() -> None:
    """The regression test of round trips shorter than the compute inside them.

    With the scorer and the sandbox on one CPU, writing a request's last byte woke the
    sandbox, which could run a CPU-bound call to its end before the write returned; a clock
    started after the write missed the compute of about half the calls (here, with a request
    bigger than a pipe's buffer, the old measurement put a round trip under 2 ms in each of
    three runs).
    """
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        times, log = timed_calls(SPINNER, ShapeSpec(1, 32, 32, 32), 12)
    finally:
        os.sched_setaffinity(0, cpus)
    # The regression lost about half of each call; a virtual machine's clock was seen to put
    # one 2 ms spin inside a 1999.6 us round trip, so allow it 1 %.
    assert min(log.round_trip_us) >= 1980.0, log
    assert all(trip >= reported for trip, reported in zip(log.round_trip_us, log.reported_us)), log
    assert timing_problem(log) is None
    # A scored time is its round trip less the channel's overhead, calibrated by echoes before
    # the calls (0.06-0.12 ms here), which can be slower than the warm channel that carries them:
    # so a 2 ms call may score 1.9 ms. The regression scored about half of it.
    assert min(times) >= 1500.0, times


TICKER = """
import threading, time, torch
_ticks = []
def _tick():
    while True:
        _ticks.append(1)
        time.sleep(0.001)
threading.Thread(target=_tick, daemon=True).start()
def custom_kernel(x, mask, weights):
    count = len(_ticks)
    _ticks.clear()
    return torch.tensor([float(count)])
"""


def test_no_thread_of_the_answer_runs_between_its_calls() -> None:
    spec = ShapeSpec(1, 8, 16, 16)
    with loaded(TICKER, spec) as (_, kernel):
        kernel(make_inputs(spec, 1, "normal", True))
        time.sleep(0.2)
        ticks, _ = kernel(make_inputs(spec, 2, "normal", True))
    assert isinstance(ticks, torch.Tensor) and float(ticks[0]) < 20, ticks


def test_a_slow_kernel_that_reports_no_time_scores_no_better_than_its_real_speed() -> None:
    """The reward is the reference's runtime over the answer's as the scorer measured it.

    Both runtimes vary with the machine's load (the reference measured 572 us and 3289 us in
    two runs), so the test checks what holds under any load: the liar's measured runtime
    includes its 5 ms sleep, and its reward is computed from that runtime, not its report.
    """
    liar = trimul(honest_kernel_unless("_sleep(0.005)", LIAR))
    assert liar.failure is None, liar
    runtime_us, reference_us = measured_us(liar)
    assert runtime_us >= 4750.0, liar  # its 5 ms sleep less the channel's calibrated overhead
    assert liar.reward == pytest.approx(reference_us / runtime_us, rel=1e-3), liar


def measured_us(outcome: CodeOutcome) -> tuple[float, float]:
    """The answer's and the reference's runtimes the scorer measured, as its detail states them."""
    found = re.match(r"([0-9.]+) us vs reference ([0-9.]+) us", outcome.detail)
    assert found is not None, outcome
    return float(found.group(1)), float(found.group(2))


def test_a_slow_kernel_that_tells_the_truth_scores_below_the_reference() -> None:
    outcome = trimul(honest_kernel_unless("time.sleep(0.005)", "import time"))
    assert outcome.failure is None and outcome.reward < 0.5, outcome


def test_a_kernel_reporting_more_time_than_its_round_trip_fails_the_timing_check() -> None:
    outcome = trimul(honest_kernel_unless("False", BOASTER))
    assert outcome.reward == 0.0 and outcome.failure == "timing", outcome
    assert "longer than the" in outcome.detail and "round trip the scorer measured" in outcome.detail


@pytest.mark.parametrize(("reported", "round_trip", "problem"), [
    ([100.0, 200.0], [150.0, 200.0], None),
    ([100.0, 201.0], [150.0, 200.0], "a call reported 201.0 us, longer than the 200.0 us round trip"),
    ([-1.0], [150.0], "negative or not a number"),
    ([math.nan], [150.0], "negative or not a number"),
])
def test_timing_problem_rejects_reported_times_the_round_trips_contradict(
        reported: list[float], round_trip: list[float], problem: str | None) -> None:
    found = timing_problem(CallLog(reported, round_trip))
    assert found == problem if problem is None else problem in (found or ""), found


# ---------------------------------------------------------------- (6) spawning processes

SPAWNER = '''
import os, subprocess
def _spawned():
    try:
        subprocess.run(["/bin/true"], check=False)
        return True
    except OSError:
        pass
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:
        os._exit(0)
    return True
SPAWNED = _spawned()
'''


def test_a_kernel_cannot_start_a_process() -> None:
    outcome = trimul(honest_kernel_unless("SPAWNED", SPAWNER))
    assert outcome.failure is None and 0.3 < outcome.reward < 3.0, outcome


def test_a_denoiser_cannot_start_a_process() -> None:
    answer = SPAWNER + "\ndef denoise(train_counts):\n    if SPAWNED:\n        raise RuntimeError('spawned')\n    return train_counts\n"
    outcome = denoise(answer)
    assert outcome.failure is None and outcome.reward == 0.0, outcome


# ---------------------------------------------------------------- bounded outputs, refusal


def test_an_oversized_output_is_refused_unread() -> None:
    outcome = denoise("import numpy as np\ndef denoise(train_counts):\n    return np.zeros((3000, 3000))\n")
    assert outcome.reward == 0.0 and outcome.failure == "incorrect" and "bytes (limit" in outcome.detail


def test_without_bubblewrap_code_answers_are_refused_unless_process_was_chosen(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bwrap, "unavailable_reason", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(SandboxUnavailable, match="bubblewrap \\(bwrap\\) is not installed"):
        run_isolated("denoise", MAGIC_DENOISER, DENOISE)
    module = tmp_path / "denoiser.py"
    module.write_text("def denoise(train_counts):\n    return train_counts\n", encoding="utf-8")
    assert_user_error(invoke("score", "denoise", "--answer", str(module)),
                      "cannot isolate harness code: bubblewrap (bwrap) is not installed")
    assert_user_error(invoke("score", "denoise", "--answer", str(module), "--sandbox", "docker"),
                      "--sandbox 'docker' is not a sandbox")
    weaker = invoke("score", "denoise", "--answer", str(module), "--split", "dev", "--sandbox", "process")
    assert weaker.exit_code == 0 and "answered    2 of 2" in weaker.stdout, weaker.output
    assert code_answers.chosen_isolation() == "bwrap", "the command's choice ended with its evaluation"


def test_a_choice_of_isolation_reaches_its_own_evaluations_only() -> None:
    """A run wired with `sandbox = "process"` once left every later code answer of its process
    in the weaker sandbox (11 red-team tests failed on the xdist worker that ran it first)."""
    inside = threading.Event()
    seen: list[str] = []

    def other_run() -> None:
        inside.wait(10)
        seen.append(code_answers.chosen_isolation())

    with code_answers.answers_isolated_by("process"):
        thread = threading.Thread(target=other_run)
        thread.start()
        inside.set()
        thread.join(10)
        assert code_answers.chosen_isolation() == "process"
        forged = run_isolated("denoise", FORGING_DENOISER, DENOISE)
    assert seen == ["bwrap"] and code_answers.chosen_isolation() == "bwrap"
    assert forged.detail == "forged", "inside the block, the weaker sandbox was used"
    after = run_isolated("denoise", FORGING_DENOISER, DENOISE)
    assert after.reward == 0.0 and after.detail != "forged", "after it, bwrap again"
    with pytest.raises(ValueError, match="unknown isolation 'docker'"), \
            code_answers.answers_isolated_by("docker"):  # type: ignore[arg-type]
        pass


def test_the_evaluate_handler_scores_code_answers_in_its_runs_sandbox(tmp_path: Path) -> None:
    """The loop's evaluation of a code task runs its answers where the run's `sandbox` says:
    the forger that wins in the process sandbox scores nothing under bwrap."""
    from sia.core.effect_models import EvaluateRequest, EvaluateResult
    from sia.effects.base import EffectContext
    from sia.effects.evaluate import EvaluateHandler
    from sia.store.blobs import MemoryBlobStore
    from sia.tasks.loader import load_task

    task = load_task("denoise")
    asked = EvaluateRequest(task="denoise", task_hash="-", generation=0,
                            predictions=tuple((sample, FORGING_DENOISER) for sample in task.ids("dev")))
    ctx = EffectContext(run_id="r", effect_id="e", kind="evaluate", seed=0, attempt=1,
                        blobs=MemoryBlobStore(), home=tmp_path)
    weaker = EvaluateHandler(task, isolation="process").run(asked, ctx).result
    default = EvaluateHandler(task).run(asked, ctx).result
    assert isinstance(weaker, EvaluateResult) and isinstance(default, EvaluateResult)
    assert set(weaker.rewards) == {1.0} and set(default.rewards) == {0.0}
    assert code_answers.chosen_isolation() == "bwrap"
