"""TriMul: the reference is correct, wrong kernels are rejected with a reason, faster scores higher."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from sia.tasks.trimul import (
    GPU_BENCHMARK_CASES,
    GPU_TEST_CASES,
    TIMED_SEED_STEP,
    ShapeSpec,
    TrimulInputs,
    correctness_cases,
    evaluate,
    evaluate_calls,
    in_process,
    make_inputs,
    mismatch,
    module_from_weights,
    timed_seed,
    trimul_reference,
)
from sia.tasks.trimul.reference import reference_kernel_source

SMALL = (ShapeSpec(batch=1, seq_len=12, dim=16, hidden_dim=16),)
"""A size at which even the Python-loop candidate is checked in well under a second."""


def gated_halves(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor], use_mask: bool = True):
    x = F.layer_norm(x, (x.shape[-1],), w["norm.weight"], w["norm.bias"])
    m = mask.unsqueeze(-1) if use_mask else torch.ones_like(mask).unsqueeze(-1)
    left = F.linear(x, w["left_proj.weight"]) * m * torch.sigmoid(F.linear(x, w["left_gate.weight"]))
    right = F.linear(x, w["right_proj.weight"]) * m * torch.sigmoid(F.linear(x, w["right_gate.weight"]))
    return x, left, right


def finish(x: torch.Tensor, out: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    out = F.layer_norm(out, (out.shape[-1],), w["to_out_norm.weight"], w["to_out_norm.bias"])
    return F.linear(out * torch.sigmoid(F.linear(x, w["out_gate.weight"])), w["to_out.weight"])


def fused_bmm_kernel(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """Correct and lean: one fused projection for all five maps, the triangle sum as one bmm."""
    b, n, _, c = x.shape
    h = w["left_proj.weight"].shape[0]
    x = F.layer_norm(x, (c,), w["norm.weight"], w["norm.bias"])
    stacked = torch.cat([w["left_proj.weight"], w["right_proj.weight"], w["left_gate.weight"],
                         w["right_gate.weight"], w["out_gate.weight"]])
    lp, rp, lg, rg, og = F.linear(x, stacked).split(h, dim=-1)
    m = mask.unsqueeze(-1)
    left = (lp * m * torch.sigmoid(lg)).permute(0, 3, 1, 2).reshape(b * h, n, n)
    right = (rp * m * torch.sigmoid(rg)).permute(0, 3, 1, 2).reshape(b * h, n, n)
    out = torch.bmm(left, right.transpose(1, 2)).reshape(b, h, n, n).permute(0, 2, 3, 1)
    out = F.layer_norm(out, (h,), w["to_out_norm.weight"], w["to_out_norm.bias"])
    return F.linear(out * torch.sigmoid(og), w["to_out.weight"])


def loop_kernel(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """Correct but slow: the triangle sum one (i, j) pair at a time in Python."""
    xn, left, right = gated_halves(x, mask, w)
    b, n = x.shape[0], x.shape[1]
    out = torch.zeros(b, n, n, left.shape[-1])
    for i in range(n):
        for j in range(n):
            out[:, i, j] = (left[:, i] * right[:, j]).sum(dim=1)
    return finish(xn, out, w)


def incoming_kernel(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """Wrong: the incoming update, out_ij = sum_k a_ki b_kj."""
    xn, left, right = gated_halves(x, mask, w)
    return finish(xn, torch.einsum("bkid,bkjd->bijd", left, right), w)


def unmasked_kernel(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """Wrong: ignores the mask (right on unmasked inputs only)."""
    xn, left, right = gated_halves(x, mask, w, use_mask=False)
    return finish(xn, torch.einsum("bikd,bjkd->bijd", left, right), w)


def test_reference_matches_the_upstream_module() -> None:
    inputs = make_inputs(ShapeSpec(2, 8, 16, 8), seed=3, distribution="cauchy", masked=True)
    with torch.no_grad():
        module_out = module_from_weights(inputs.weights)(inputs.x, inputs.mask)
    assert torch.equal(trimul_reference(inputs.x, inputs.mask, inputs.weights), module_out)
    assert module_out.shape == (2, 8, 8, 16)


def test_inputs_are_deterministic_and_distributed_as_specified() -> None:
    spec = ShapeSpec(1, 16, 32, 32)
    first, again = make_inputs(spec, 5, "normal", True), make_inputs(spec, 5, "normal", True)
    assert torch.equal(first.x, again.x) and torch.equal(first.mask, again.mask)
    assert all(torch.equal(first.weights[k], again.weights[k]) for k in first.weights)
    assert not torch.equal(first.x, make_inputs(spec, 6, "normal", True).x)
    assert set(first.mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(make_inputs(spec, 5, "normal", False).mask, torch.ones(1, 16, 16))
    assert abs(float(first.x.std()) - 1.0) < 0.05
    cauchy = make_inputs(spec, 5, "cauchy", False).x
    # Cauchy(0, 2): median |x| is the scale, 2; the tails are far heavier than normal.
    assert abs(float(cauchy.abs().median()) - 2.0) < 0.15
    assert float(cauchy.abs().max()) > 1000.0


@pytest.mark.measures_time
def test_reference_scores_as_correct() -> None:
    result = evaluate(trimul_reference)
    assert result.correct and result.reason is None
    assert result.checked_cases == 2 * 2 * 4 + 2  # 2 specs x 2 seeds x 4 variants + 2 timed
    assert result.runtime_us is not None and result.reference_runtime_us is not None
    assert 0.5 < result.reward < 2.0  # the reference against itself, allowing for timer noise


def test_incoming_update_is_rejected() -> None:
    result = evaluate(incoming_kernel, specs=SMALL, repeats=1, warmup=0)
    assert not result.correct and result.reward == 0.0 and result.runtime_us is None
    assert result.reason is not None and "nomask" in result.reason and "outside rtol=0.02" in result.reason


def test_missing_mask_is_rejected_on_the_first_masked_case() -> None:
    result = evaluate(unmasked_kernel, specs=SMALL, repeats=1, warmup=0)
    assert not result.correct and result.reward == 0.0
    assert result.checked_cases == 1  # passes normal/nomask, fails normal/masked
    assert result.reason is not None and result.reason.startswith("B1-N12-C16-H16-seed9371-normal-masked")


def test_raising_and_misshapen_candidates_are_recorded_failures() -> None:
    def raises(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        raise RuntimeError("kernel launch failed")

    crashed = evaluate(raises, specs=SMALL, repeats=1, warmup=0)
    assert not crashed.correct and crashed.reason is not None
    assert "candidate raised RuntimeError: kernel launch failed" in crashed.reason

    truncated = evaluate(lambda x, m, w: trimul_reference(x, m, w)[..., :-1], specs=SMALL, repeats=1, warmup=0)
    assert truncated.reason is not None
    assert "returned shape (1, 12, 12, 15), expected (1, 12, 12, 16)" in truncated.reason

    not_tensor = evaluate(lambda x, m, w: trimul_reference(x, m, w).tolist(), specs=SMALL, repeats=1, warmup=0)
    assert not_tensor.reason is not None and "returned list, expected a torch.Tensor" in not_tensor.reason


def test_tolerance_rule() -> None:
    want = torch.tensor([1.0, -2.0, float("nan"), float("inf")])
    assert mismatch(want.clone(), want) is None
    assert mismatch(want + torch.tensor([0.039, -0.059, 0.0, 0.0]), want) is None  # within 0.02 + 0.02|want|
    reason = mismatch(want + torch.tensor([0.041, 0.0, 0.0, 0.0]), want)
    assert reason is not None and reason.startswith("1 of 4 elements")
    assert mismatch(torch.tensor([1.0, -2.0, 0.0, float("inf")]), want) is not None  # NaN expected


@pytest.mark.measures_time
def test_faster_correct_kernel_earns_higher_reward_than_slow_one() -> None:
    fast = evaluate(fused_bmm_kernel, specs=SMALL, repeats=15, warmup=2)
    slow = evaluate(loop_kernel, specs=SMALL, repeats=3, warmup=1)
    assert fast.correct and slow.correct
    assert fast.runtime_us is not None and slow.runtime_us is not None
    assert slow.runtime_us > 5 * fast.runtime_us
    # Each reward divides by the reference's runtime measured in that evaluation, which
    # varies by up to 2x from one evaluation to the next on a shared machine.
    assert fast.reward > 2 * slow.reward


def test_gpu_case_lists_mirror_the_benchmark() -> None:
    # problems/bioml/trimul/task.yml: 18 tests (11 normal, 7 Cauchy; 7 at N=768 or 1024) and 7 benchmarks.
    assert len(GPU_TEST_CASES) == 18 and len(GPU_BENCHMARK_CASES) == 7
    assert sum(case.distribution == "cauchy" for case in GPU_TEST_CASES) == 7
    assert [case.shape.seq_len for case in GPU_TEST_CASES].count(1024) == 5
    last = GPU_TEST_CASES[-1]
    assert (last.shape.seq_len, last.shape.dim, last.seed, last.masked, last.distribution) == (
        1024, 768, 491, True, "cauchy")  # upstream: nomask False
    assert GPU_BENCHMARK_CASES[1].distribution == "cauchy" and GPU_BENCHMARK_CASES[1].shape.seq_len == 768
    assert all(case.shape.hidden_dim == 128 for case in (*GPU_TEST_CASES, *GPU_BENCHMARK_CASES))
    assert len(correctness_cases(SMALL, seeds=(1, 2, 3))) == 12


# ---------------------------------------------------------------- memoising kernels gain nothing


def content_memo_kernel() -> object:
    """Memoises its output by a cheap fingerprint of the inputs (what scored 34x and 66x when
    every timed call reused the same tensors)."""
    cache: dict[tuple, torch.Tensor] = {}

    def kernel(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        key = (tuple(x.shape), float(x.sum()), float(mask.sum()), float(w["to_out.weight"].sum()))
        if key not in cache:
            cache[key] = trimul_reference(x, mask, w)
        return cache[key]

    return kernel


def address_memo_kernel() -> object:
    """Memoises by the input's memory address: a freed and reallocated tensor can land at the
    same address, so on fresh inputs it sometimes returns an answer to other inputs."""
    cache: dict[tuple, torch.Tensor] = {}

    def kernel(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        key = (x.data_ptr(), tuple(x.shape))
        if key not in cache:
            cache[key] = trimul_reference(x, mask, w)
        return cache[key]

    return kernel


def stale_after_checks_kernel() -> object:
    """Right on the un-timed checks, then returns the answer of its last check: caught only
    if timed calls are checked too."""
    calls = {"n": 0, "last": None}

    def kernel(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] <= 2 * 4 + 1 or calls["last"] is None:  # 2 seeds x 4 variants + 1 timed case
            calls["last"] = trimul_reference(x, mask, w)
        return calls["last"]

    return kernel


def test_timed_calls_use_fresh_seeds() -> None:
    assert [timed_seed(100, call) for call in range(3)] == [113, 126, 139] and TIMED_SEED_STEP == 13


@pytest.mark.measures_time
def test_memoising_kernels_score_no_better_than_the_reference() -> None:
    for make in (content_memo_kernel, address_memo_kernel):
        result = evaluate(make(), specs=SMALL, repeats=10, warmup=2)  # type: ignore[arg-type]
        assert result.reward < 1.5, (make.__name__, result)  # the reference itself scores about 1
        if result.correct:
            assert result.checked_calls == 12


def test_a_stale_answer_on_a_timed_call_is_caught() -> None:
    result = evaluate(stale_after_checks_kernel(), specs=SMALL, repeats=3, warmup=1)  # type: ignore[arg-type]
    assert not result.correct and result.reward == 0.0
    assert result.reason is not None and "timed call 0 (seed 9384)" in result.reason
    assert "outside rtol=0.02" in result.reason


def test_the_reference_kernel_source_computes_the_reference() -> None:
    namespace: dict[str, object] = {}
    exec(compile(reference_kernel_source(), "<reference>", "exec"), namespace)  # noqa: S102
    inputs = make_inputs(SMALL[0], 7, "normal", True)
    kernel = namespace["custom_kernel"]
    assert callable(kernel)
    with torch.no_grad():
        assert torch.equal(kernel(inputs.x, inputs.mask, inputs.weights),
                           trimul_reference(inputs.x, inputs.mask, inputs.weights))


def test_the_given_reference_gets_every_call_the_candidate_gets_and_sets_its_time() -> None:
    seen: dict[str, list[float]] = {"candidate": [], "reference": []}

    def recorded(name: str, spent_us: float):
        timed = in_process(trimul_reference, on_cuda=False)

        def call(inputs: TrimulInputs) -> tuple[object, float]:
            seen[name].append(float(inputs.x.sum()))
            return timed(inputs)[0], spent_us
        return call

    result = evaluate_calls(recorded("candidate", 300.0), specs=SMALL, seeds=(3,), repeats=3, warmup=1,
                            reference=recorded("reference", 600.0))
    assert result.correct and seen["candidate"] == seen["reference"], result
    assert len(seen["candidate"]) == result.checked_cases + result.checked_calls
    assert result.timings[0].reference_runtime_us == 600.0 and abs(result.reward - 2.0) < 1e-9
