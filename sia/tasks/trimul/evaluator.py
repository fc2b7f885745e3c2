"""Checking and timing a candidate TriMul kernel against the reference.

Re-implemented from gpu-mode/reference-kernels `problems/bioml/trimul/eval.py` (its
"leaderboard" mode), `task.yml` (the test and benchmark cases) and `utils.py`
(`make_match_reference(ref_kernel, rtol=2e-2, atol=2e-2)`, `verbose_allclose`). A candidate
is correct when, on every test case, its output has the reference's shape and
`|got - want| <= atol + rtol * |want|` elementwise with NaN/±inf where the reference has
them. As upstream's leaderboard does, every timed call (warm-up included) gets fresh inputs
drawn from a new seed (the case's seed plus 13 per call) and its output is checked again,
so a kernel that memoises outputs gains nothing: a cached answer to other inputs fails the
check, and a cache that misses only adds its own cost. Timing differs from upstream on
purpose: upstream reports the mean of CUDA-event timings; here each timed call runs the
candidate and the reference, each first in turn, on the same fresh inputs (so drift in
machine load hits both) and takes the median, which is robust on a shared 2-core CPU. On CPU
everything runs with one intra-op thread by default (`cpu_threads=1`): with torch's default
of one thread per core, any other process on the machine makes a tiny kernel's latency jump
by orders of magnitude from thread contention, which would swamp the comparison.

Reward is the speedup over the reference, `reference_runtime_us / runtime_us` (geometric
means over the timed cases): 1.0 matches the reference, above 1 is faster, and any
failure (exception, wrong shape or type, mismatch, also on a timed call) gives 0 with a
reason, never an exception. A hanging candidate is not interrupted here; the harness's wall
clock is.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sia.tasks.answer_sandbox import CandidateRaised, SandboxLost
from sia.tasks.trimul.reference import (
    Distribution,
    ShapeSpec,
    TrimulInputs,
    make_inputs,
    trimul_reference,
)

Kernel = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]

RTOL = 2e-2
ATOL = 2e-2

CPU_SPECS = (
    ShapeSpec(batch=1, seq_len=16, dim=32, hidden_dim=32),
    ShapeSpec(batch=1, seq_len=32, dim=32, hidden_dim=32),
)
"""Default sizes on CPU: small enough that a full evaluation takes well under a second."""

DEFAULT_SEEDS = (9371, 1092)

VARIANTS: tuple[tuple[Distribution, bool], ...] = (
    ("normal", False),
    ("normal", True),
    ("cauchy", False),
    ("cauchy", True),
)
"""(distribution, masked) combinations every correctness spec is checked under."""


@dataclass(frozen=True)
class TrimulCase:
    """One generated problem: its size, seed, input distribution and whether it is masked."""

    shape: ShapeSpec
    seed: int
    distribution: Distribution
    masked: bool

    def label(self) -> str:
        return f"{self.shape.label()}-seed{self.seed}-{self.distribution}-{'masked' if self.masked else 'nomask'}"


def _upstream(
    seqlen: int, bs: int, dim: int, hiddendim: int, seed: int, nomask: bool, distribution: Distribution
) -> TrimulCase:
    """A case written in the benchmark's own spec terms (`nomask` is the negation of masked)."""
    return TrimulCase(ShapeSpec(bs, seqlen, dim, hiddendim), seed, distribution, not nomask)


GPU_TEST_CASES = (
    _upstream(32, 1, 128, 128, 9371, True, "normal"),
    _upstream(32, 1, 128, 128, 1092, False, "normal"),
    _upstream(64, 2, 256, 128, 2291, True, "normal"),
    _upstream(64, 2, 256, 128, 210284, False, "normal"),
    _upstream(128, 1, 768, 128, 81934, True, "normal"),
    _upstream(256, 1, 128, 128, 1932, True, "normal"),
    _upstream(256, 1, 128, 128, 10432, False, "normal"),
    _upstream(768, 2, 128, 128, 731, True, "normal"),
    _upstream(1024, 1, 384, 128, 53121, False, "normal"),
    _upstream(1024, 1, 768, 128, 31, True, "normal"),
    _upstream(1024, 1, 768, 128, 4921, False, "normal"),
    _upstream(32, 1, 128, 128, 937321, True, "cauchy"),
    _upstream(64, 2, 256, 128, 2291, True, "cauchy"),
    _upstream(128, 1, 768, 128, 8134, True, "cauchy"),
    _upstream(256, 1, 128, 128, 932, True, "cauchy"),
    _upstream(768, 2, 128, 128, 31, True, "cauchy"),
    _upstream(1024, 1, 384, 128, 5321, False, "cauchy"),
    _upstream(1024, 1, 768, 128, 491, False, "cauchy"),
)
"""The benchmark's `tests` list, all 18 in upstream order (`problems/bioml/trimul/task.yml`),
used only on CUDA."""

GPU_BENCHMARK_CASES = (
    _upstream(256, 2, 128, 128, 9371, True, "normal"),
    _upstream(768, 1, 128, 128, 381, True, "cauchy"),
    _upstream(256, 2, 384, 128, 2301, False, "normal"),
    _upstream(512, 1, 128, 128, 12819, True, "normal"),
    _upstream(1024, 1, 128, 128, 381, True, "cauchy"),
    _upstream(768, 1, 384, 128, 481, False, "normal"),
    _upstream(1024, 1, 384, 128, 23291, True, "normal"),
)
"""The benchmark's `benchmarks` list (same file as `GPU_TEST_CASES`), used only on CUDA."""

TIMED_SEED_STEP = 13
"""Upstream's leaderboard mode adds 13 to the case's seed before every timed call."""


@dataclass(frozen=True)
class CaseTiming:
    """Median wall time of the candidate and the reference on one timed case."""

    case: str
    runtime_us: float
    reference_runtime_us: float


@dataclass(frozen=True)
class TrimulResult:
    """Outcome of one evaluation; `reason` says why when `correct` is False.

    `checked_cases` counts the un-timed checks (every correctness case, then each timed
    case once); `checked_calls` counts the timed calls whose fresh output was checked too.
    """

    correct: bool
    runtime_us: float | None
    reference_runtime_us: float | None
    reward: float
    reason: str | None
    device: str
    checked_cases: int
    timings: tuple[CaseTiming, ...] = ()
    checked_calls: int = 0


def correctness_cases(specs: Sequence[ShapeSpec], seeds: Sequence[int]) -> list[TrimulCase]:
    """Every spec under every seed and every (distribution, masked) variant."""
    return [TrimulCase(spec, seed, dist, masked) for spec in specs for seed in seeds for dist, masked in VARIANTS]


def timing_cases(specs: Sequence[ShapeSpec], seed: int) -> list[TrimulCase]:
    """One masked, normally distributed case per spec: the mask path is the general one."""
    return [TrimulCase(spec, seed, "normal", True) for spec in specs]


def mismatch(received: object, expected: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> str | None:
    """Why `received` does not match `expected` (upstream's `verbose_allclose` rule), or None."""
    if not isinstance(received, torch.Tensor):
        return f"returned {type(received).__name__}, expected a torch.Tensor"
    if tuple(received.shape) != tuple(expected.shape):
        return f"returned shape {tuple(received.shape)}, expected {tuple(expected.shape)}"
    if not (received.is_floating_point() or received.is_complex()):
        return f"returned dtype {received.dtype}, expected a floating-point tensor"
    got = received.detach().to(device=expected.device, dtype=torch.float32)
    want = expected.to(torch.float32)
    bad = (got - want).abs() > atol + rtol * want.abs()
    bad |= torch.isnan(got) ^ torch.isnan(want)
    bad |= torch.isposinf(got) ^ torch.isposinf(want)
    bad |= torch.isneginf(got) ^ torch.isneginf(want)
    count = int(bad.sum())
    if count == 0:
        return None
    first = tuple(int(i) for i in torch.nonzero(bad)[0])
    return (
        f"{count} of {bad.numel()} elements outside rtol={rtol}, atol={atol}; "
        f"first at {first}: got {float(got[first]):.6g}, expected {float(want[first]):.6g}"
    )


def _clone(inputs: TrimulInputs) -> TrimulInputs:
    return TrimulInputs(inputs.x.clone(), inputs.mask.clone(), {k: v.clone() for k, v in inputs.weights.items()})


def _describe(error: BaseException) -> str:
    if isinstance(error, CandidateRaised):
        return str(error)
    return f"{type(error).__name__}: {error}"


def timed_seed(case_seed: int, call: int) -> int:
    """Seed of the fresh inputs of a case's `call`-th timed call (0-based, warm-up first)."""
    return case_seed + TIMED_SEED_STEP * (call + 1)


def _timed(kernel: Kernel, inputs: TrimulInputs, on_cuda: bool) -> tuple[Any, float]:
    """(output, wall time in µs) of one call."""
    if on_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter_ns()
    output = kernel(inputs.x, inputs.mask, inputs.weights)
    if on_cuda:
        torch.cuda.synchronize()
    return output, (time.perf_counter_ns() - start) / 1000.0


CandidateCall = Callable[[TrimulInputs], tuple[Any, float]]
"""Runs the candidate on inputs it may modify: (output, µs the call took). In this process
(`in_process`) or in a sandbox (`sia.tasks.code_answers`), whose raising candidate surfaces
as `CandidateRaised`."""


def in_process(candidate: Kernel, on_cuda: bool) -> CandidateCall:
    """Calls `candidate` here, without autograd, timed around the call."""
    def call(inputs: TrimulInputs) -> tuple[Any, float]:
        with torch.no_grad():
            return _timed(candidate, inputs, on_cuda)
    return call


class _TimingFailure(Exception):
    """The candidate raised or returned a wrong output on a timed call."""


def _time_case(candidate: CandidateCall, reference: CandidateCall, case: TrimulCase, repeats: int,
               warmup: int, rtol: float, atol: float, device: str) -> CaseTiming:
    """Median candidate and reference times over `repeats` timed calls after `warmup`, every
    call on fresh inputs whose candidate output is checked against the reference's.

    The candidate runs first on even calls and second on odd ones: on a busy CPU the second
    of two back-to-back calls was slower, which would otherwise favour one of them."""
    candidate_us: list[float] = []
    reference_us: list[float] = []
    for call in range(warmup + repeats):
        seed = timed_seed(case.seed, call)
        inputs = make_inputs(case.shape, seed, case.distribution, case.masked, device=device)
        given = _clone(inputs)
        where = f"{case.label()}: timed call {call} (seed {seed})"
        if call % 2:
            expected, reference_spent = reference(inputs)
        try:
            received, spent = candidate(given)
        except SandboxLost:
            raise
        except Exception as error:
            raise _TimingFailure(f"{where}: candidate raised {_describe(error)}") from error
        if not call % 2:
            expected, reference_spent = reference(inputs)
        problem = mismatch(received, expected, rtol, atol)
        if problem is not None:
            raise _TimingFailure(f"{where}: {problem}")
        if call >= warmup:
            candidate_us.append(spent)
            reference_us.append(reference_spent)
    return CaseTiming(case.label(), statistics.median(candidate_us), statistics.median(reference_us))


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(max(v, 1e-3)) for v in values) / len(values))


def evaluate(
    candidate: Kernel,
    specs: Sequence[ShapeSpec] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    repeats: int = 30,
    warmup: int = 5,
    rtol: float = RTOL,
    atol: float = ATOL,
    device: str | None = None,
    cpu_threads: int | None = 1,
) -> TrimulResult:
    """Check `candidate` on every case, then time it against the reference.

    With `specs=None` the sizes are `CPU_SPECS` (checked under `seeds` x `VARIANTS`,
    timed on one case per spec), or on CUDA the benchmark's own test and benchmark lists.
    `cpu_threads` sets torch's intra-op threads for the evaluation on CPU (restored
    after); None leaves them as they are.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return evaluate_calls(in_process(candidate, device.startswith("cuda")), specs, seeds, repeats,
                          warmup, rtol, atol, device, cpu_threads)


def evaluate_calls(
    candidate: CandidateCall,
    specs: Sequence[ShapeSpec] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    repeats: int = 30,
    warmup: int = 5,
    rtol: float = RTOL,
    atol: float = ATOL,
    device: str = "cpu",
    cpu_threads: int | None = 1,
    reference: CandidateCall | None = None,
) -> TrimulResult:
    """`evaluate` for a candidate reached through `CandidateCall` (e.g. in a sandbox).

    `reference` gives the reference's output and time for every call the candidate gets,
    the same calls in the same order; by default it runs here, timed as `in_process` times
    the candidate (the sandboxed scorer passes the reference run in a sandbox of its own, so
    both are warmed and timed the same way). `SandboxLost` from a call propagates: it is the
    sandbox's ending, not the candidate's answer.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if not seeds:
        raise ValueError("need at least one seed")
    on_cuda = device.startswith("cuda")
    threads_before = torch.get_num_threads()
    if cpu_threads is not None and not on_cuda:
        torch.set_num_threads(cpu_threads)
    try:
        return _evaluate(candidate, reference or in_process(trimul_reference, on_cuda), specs, seeds,
                         repeats, warmup, rtol, atol, device, on_cuda)
    finally:
        torch.set_num_threads(threads_before)


def _evaluate(
    candidate: CandidateCall,
    reference: CandidateCall,
    specs: Sequence[ShapeSpec] | None,
    seeds: Sequence[int],
    repeats: int,
    warmup: int,
    rtol: float,
    atol: float,
    device: str,
    on_cuda: bool,
) -> TrimulResult:
    if specs is None and on_cuda:
        to_check, to_time = list(GPU_TEST_CASES), list(GPU_BENCHMARK_CASES)
    else:
        chosen = CPU_SPECS if specs is None else tuple(specs)
        to_check, to_time = correctness_cases(chosen, seeds), timing_cases(chosen, seeds[0])

    def failure(reason: str, checked: int) -> TrimulResult:
        return TrimulResult(False, None, None, 0.0, reason, device, checked)

    checked = 0
    for case in [*to_check, *to_time]:
        inputs = make_inputs(case.shape, case.seed, case.distribution, case.masked, device=device)
        expected, _ = reference(inputs)
        given = _clone(inputs)
        try:
            received, _ = candidate(given)
        except SandboxLost:
            raise
        except Exception as error:  # a crashing candidate is a recorded failure, not a crash
            return failure(f"{case.label()}: candidate raised {_describe(error)}", checked)
        problem = mismatch(received, expected, rtol, atol)
        if problem is not None:
            return failure(f"{case.label()}: {problem}", checked)
        checked += 1

    try:
        timings = [_time_case(candidate, reference, case, repeats, warmup, rtol, atol, device)
                   for case in to_time]
    except _TimingFailure as error:
        return failure(str(error), checked)
    runtime_us = _geomean([t.runtime_us for t in timings])
    reference_us = _geomean([t.reference_runtime_us for t in timings])
    return TrimulResult(
        correct=True,
        runtime_us=runtime_us,
        reference_runtime_us=reference_us,
        reward=reference_us / runtime_us,
        reason=None,
        device=device,
        checked_cases=checked,
        timings=tuple(timings),
        checked_calls=len(to_time) * (warmup + repeats),
    )
