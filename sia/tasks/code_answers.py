"""Scoring answers that are code (trimul kernels, denoisers): the answer runs sandboxed, the
metric is computed by a trusted scorer.

For the code tasks a harness's answer is the source of a Python module defining one
function (`custom_kernel(x, mask, weights)` for trimul, `denoise(train_counts)` for
denoise); a fenced ```python block inside the answer is taken when there is one. The
answer is untrusted model output written to win a reward, so it never runs in the caller.
A trusted scorer child (`python -m sia.tasks.code_answers`, with a wall clock, CPU-time and
address-space rlimits, a private temporary directory and a minimal environment) computes
inputs, reference and metric, and under the default isolation, `bwrap`, it never loads the
answer: the answer runs alone in the bubblewrap sandbox of `sia.tasks.answer_sandbox`,
receives only the inputs it must transform (never reference outputs, held-out molecules or
scorer state) and sends back outputs the scorer checks. So an answer cannot forge the
result file, read the reference, or patch the checks: none of them is in its process.

trimul's timing is the scorer's own: each timed call's time is the round trip the scorer
measures around it (from before the request's first byte is written to after the reply's
last byte is read) less the channel's overhead, the fastest round trip of echoes of the
same byte sizes, sent before any kernel is loaded. The reference kernel is timed the same
way, less the same overhead, in a second answer sandbox of its own that runs only the
scorer's reference code and gets the same calls as the answer, interleaved with them. The
scorer and both sandboxes are kept on one CPU while they are calibrated and timed: across
CPUs, where the scheduler happened to put each sandbox made the same kernel up to 35%
slower in one than in the other. So an honest reference scores about 1.0 against itself
(0.88-1.15 in 90 runs on 2 CPUs, against 0.63-2.54 in 70 before). Every timed call gets
fresh inputs (sent only once the previous output is back) and its output is checked in the
scorer. A sandbox is stopped whenever no exchange with it is in flight, so no thread an
answer leaves running works between its calls or competes with the reference's. What the kernel
reports about its own time does not count; it is a cross-check: a reported time longer
than the round trip around it cannot be honest, and fails the answer with `timing`
(`answer_sandbox.timing_problem`).

`process` isolation, the weaker opt-in of runs recorded with `sandbox = "process"`, runs
the answer inside the scorer child as before: an answer there can forge its result. It is
chosen per evaluation, never per process: `answers_isolated_by` sets it for the code that
scores inside its block, in that thread only (the evaluate and held-out test handlers, from
their run's `sandbox`; `sia tasks score --sandbox`).

Every ending is a `(reward, failure kind, detail)` result, never an exception: syntax_error,
import_error, no_function, incorrect (checked and rejected), timing, timeout, memory, crash.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sia.harness.bwrap import require_bwrap
from sia.harness.sandbox import ISOLATIONS, Isolation, kill_session
from sia.tasks.answer_sandbox import (
    AnswerSandbox,
    SandboxLimits,
    SandboxLost,
    timing_problem,
)

SCORER_STARTUP_S = 15.0
"""Wall time the scorer child gets beyond the answer's own limit: its imports and the reference."""

_isolation: ContextVar[Isolation] = ContextVar("sia_code_answer_isolation", default="bwrap")

FUNCTION_OF = {"trimul": "custom_kernel", "denoise": "denoise"}
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class CodeOutcome:
    reward: float
    failure: str | None
    detail: str = ""


def extract_code(answer: str) -> str:
    """The first fenced code block of the answer, or the whole answer when it has none."""
    match = _FENCE.search(answer)
    return match.group(1) if match else answer


def _compile(source: str, function: str) -> tuple[Any, CodeOutcome | None]:
    try:
        code = compile(source, "<answer>", "exec")
    except (SyntaxError, ValueError) as error:
        return None, CodeOutcome(0.0, "syntax_error", f"{type(error).__name__}: {error}")
    namespace: dict[str, Any] = {"__name__": "answer"}
    try:
        exec(code, namespace)  # noqa: S102 - this child process exists to run it
    except MemoryError:
        raise
    except Exception as error:
        return None, CodeOutcome(0.0, "import_error", f"{type(error).__name__}: {error}")
    candidate = namespace.get(function)
    if not callable(candidate):
        return None, CodeOutcome(0.0, "no_function", f"the answer defines no function `{function}`")
    return candidate, None


def _evaluate_trimul(candidate: Any, config: dict[str, Any]) -> CodeOutcome:
    from sia.tasks.trimul import ShapeSpec, evaluate

    spec = ShapeSpec(int(config["batch"]), int(config["seq_len"]), int(config["dim"]),
                     int(config["hidden_dim"]))
    result = evaluate(candidate, specs=[spec], seeds=tuple(config.get("seeds", (9371, 1092))),
                      repeats=int(config.get("repeats", 10)), warmup=int(config.get("warmup", 2)),
                      device="cpu")
    if not result.correct:
        return CodeOutcome(0.0, "incorrect", result.reason or "")
    return CodeOutcome(result.reward, None,
                       f"{result.runtime_us:.1f} us vs reference {result.reference_runtime_us:.1f} us")


def _evaluate_denoise(candidate: Any, config: dict[str, Any]) -> CodeOutcome:
    from sia.tasks.denoise import SimulationParams, evaluate

    params = SimulationParams(n_cells=int(config.get("n_cells", 300)),
                              n_genes=int(config.get("n_genes", 2000)))
    result = evaluate(candidate, int(config["seed"]), params)
    if not result.ok:
        return CodeOutcome(0.0, "incorrect", result.reason or "")
    return CodeOutcome(result.reward, None, f"mse_norm {result.mse_norm:.4f} (no denoising "
                       f"{result.identity_mse:.4f}, bound {result.bound_mse:.4f})")


EVALUATORS = {"trimul": _evaluate_trimul, "denoise": _evaluate_denoise}


def evaluate_in_process(kind: str, answer: str, config: dict[str, Any]) -> CodeOutcome:
    """Compile and score an answer here (what the child does); callers want `run_isolated`."""
    candidate, failed = _compile(extract_code(answer), FUNCTION_OF[kind])
    if failed is not None:
        return failed
    return EVALUATORS[kind](candidate, config)


def _current_cpu() -> int | None:
    """The CPU this thread runs on now (`/proc/thread-self/stat`'s `processor`), or None."""
    try:
        return int(Path("/proc/thread-self/stat").read_text().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


@contextmanager
def _on_one_cpu(*sandboxes: AnswerSandbox) -> Iterator[None]:
    """Keep this thread and `sandboxes` on the one CPU this thread runs on, inside the block.

    trimul's speedup compares round trips to two sandboxes, and where the scheduler put
    each (the scorer's CPU or the other) changed the same kernel's round trip by up to 35%.
    On one CPU the scorer reaches both the same way; it waits while a sandbox runs, so
    sharing the CPU takes no time from a call.
    """
    before = os.sched_getaffinity(0)
    cpu = _current_cpu()
    chosen = {cpu if cpu in before else min(before)}
    os.sched_setaffinity(0, chosen)
    try:
        for sandbox in sandboxes:
            sandbox.pin(chosen)
        yield
    finally:
        os.sched_setaffinity(0, before)


def _sandboxed_trimul(sandbox: AnswerSandbox, source: str, config: dict[str, Any]) -> CodeOutcome:
    from sia.tasks.trimul import ShapeSpec, evaluate_calls
    from sia.tasks.trimul.reference import reference_kernel_source
    from sia.tasks.trimul.remote import calibrate, remote_kernel

    spec = ShapeSpec(int(config["batch"]), int(config["seq_len"]), int(config["dim"]),
                     int(config["hidden_dim"]))
    seeds = tuple(config.get("seeds", (9371, 1092)))
    with AnswerSandbox("trimul", sandbox.limits) as reference_sandbox:
        for each in (sandbox, reference_sandbox):  # both up (importing in parallel), then pinned
            calibrate(each, spec, seeds[0])
        with _on_one_cpu(sandbox, reference_sandbox):
            overhead_us = min(calibrate(sandbox, spec, seeds[0]),
                              calibrate(reference_sandbox, spec, seeds[0]))
            if _load_in(reference_sandbox, reference_kernel_source()) is not None:
                raise RuntimeError("the reference kernel did not load in its sandbox")
            failed = _load_in(sandbox, source)
            if failed is not None:
                return failed
            result = evaluate_calls(remote_kernel(sandbox, spec, overhead_us), specs=[spec],
                                    seeds=seeds, repeats=int(config.get("repeats", 10)),
                                    warmup=int(config.get("warmup", 2)), device="cpu",
                                    reference=remote_kernel(reference_sandbox, spec, overhead_us))
        reference_sandbox.send_end()
    if not result.correct:
        return CodeOutcome(0.0, "incorrect", result.reason or "")
    problem = timing_problem(sandbox.log)
    if problem is not None:
        return CodeOutcome(0.0, "timing", problem)
    return CodeOutcome(result.reward, None,
                       f"{result.runtime_us:.1f} us vs reference {result.reference_runtime_us:.1f} us")


def _sandboxed_denoise(sandbox: AnswerSandbox, source: str, config: dict[str, Any]) -> CodeOutcome:
    from sia.tasks.denoise.remote import remote_denoiser

    failed = _load_in(sandbox, source)
    if failed is not None:
        return failed
    return _evaluate_denoise(remote_denoiser(sandbox), config)


SANDBOXED = {"trimul": _sandboxed_trimul, "denoise": _sandboxed_denoise}


def _load_in(sandbox: AnswerSandbox, source: str) -> CodeOutcome | None:
    """Send the answer's source; the sandbox compiles and runs it and says whether it is usable."""
    reply = sandbox.exchange({"op": "answer"}, source.encode("utf-8"), max_bytes=0).header
    if reply.get("ready") is True:
        return None
    failure = reply.get("failure")
    if failure not in ("syntax_error", "import_error", "no_function", "memory"):
        return CodeOutcome(0.0, "crash", "the sandbox answered the answer's loading with nonsense")
    return CodeOutcome(0.0, failure, str(reply.get("detail", ""))[:2000])


def evaluate_sandboxed(kind: str, answer: str, config: dict[str, Any],
                       limits: SandboxLimits) -> CodeOutcome:
    """Score an answer run in the answer sandbox (what the scorer child does under bwrap)."""
    try:
        with AnswerSandbox(kind, limits) as sandbox:
            outcome = SANDBOXED[kind](sandbox, extract_code(answer), config)
            sandbox.send_end()
            return outcome
    except SandboxLost as lost:
        return CodeOutcome(0.0, lost.failure, lost.detail)


def _environment(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(home),
            "TMPDIR": str(home), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@contextmanager
def answers_isolated_by(isolation: Isolation) -> Iterator[None]:
    """Code answers scored inside this block, in this thread, run in `isolation` (`bwrap`
    outside any block): a run's choice reaches its own evaluations and no one else's."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"unknown isolation {isolation!r}; known: {', '.join(ISOLATIONS)}")
    token = _isolation.set(isolation)
    try:
        yield
    finally:
        _isolation.reset(token)


def chosen_isolation() -> Isolation:
    return _isolation.get()


def run_isolated(kind: str, answer: str, config: dict[str, Any], *, wall_s: float = 60.0,
                 cpu_s: int = 60, memory_mb: int = 2048,
                 isolation: Isolation | None = None) -> CodeOutcome:
    """Score `answer` for task `kind`; never raises for the answer.

    `isolation` defaults to `chosen_isolation()`. Under bwrap, raises `SandboxUnavailable`
    (one line: why, and how to fix it) before running anything when this machine cannot
    give the sandbox.
    """
    if kind not in EVALUATORS:
        raise ValueError(f"unknown code task {kind!r}; known: {', '.join(EVALUATORS)}")
    isolation = isolation or chosen_isolation()
    if isolation == "bwrap":
        require_bwrap()
    try:  # compiling is safe here and spares a process start for answers that are not Python
        compile(extract_code(answer), "<answer>", "exec")
    except (SyntaxError, ValueError) as error:
        return CodeOutcome(0.0, "syntax_error", f"{type(error).__name__}: {error}")
    home = Path(tempfile.mkdtemp(prefix="sia-code-answer-"))
    try:
        request, result = home / "request.json", home / "result.json"
        request.write_text(json.dumps({"kind": kind, "answer": answer, "config": config,
                                       "limits": [wall_s, cpu_s, memory_mb],
                                       "isolation": isolation}), encoding="utf-8")
        with (home / "stderr").open("wb") as stderr:
            child = subprocess.Popen([sys.executable, "-m", "sia.tasks.code_answers", str(request),
                                      str(result)], cwd=home, env=_environment(home),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=stderr, start_new_session=True)
            try:
                code = child.wait(timeout=wall_s + (SCORER_STARTUP_S if isolation == "bwrap" else 0))
            except subprocess.TimeoutExpired:
                kill_session(child.pid)
                child.wait()
                return CodeOutcome(0.0, "timeout", f"no result within {wall_s:g} s")
        try:
            outcome = json.loads(result.read_text(encoding="utf-8"))
            return CodeOutcome(float(outcome["reward"]), outcome["failure"], outcome["detail"])
        except (OSError, ValueError, KeyError, TypeError):
            tail = (home / "stderr").read_bytes()[-600:].decode("utf-8", "replace").strip()
            return CodeOutcome(0.0, "crash", f"evaluation process exited with {code}: {tail}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _child(request_path: str, result_path: str) -> None:
    import resource

    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    Path(request_path).unlink()
    wall_s, cpu_s, memory_mb = request["limits"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    started = time.perf_counter()
    try:
        if request["isolation"] == "bwrap":
            outcome = evaluate_sandboxed(request["kind"], request["answer"], request["config"],
                                         SandboxLimits(wall_s, cpu_s, memory_mb))
        else:
            outcome = evaluate_in_process(request["kind"], request["answer"], request["config"])
    except MemoryError:
        outcome = CodeOutcome(0.0, "memory", f"over the {memory_mb} MB memory limit")
    except Exception as error:  # the evaluator itself failed on this answer
        outcome = CodeOutcome(0.0, "crash", f"{type(error).__name__}: {error}")
    detail = f"{outcome.detail} [{time.perf_counter() - started:.2f} s]".strip()
    Path(result_path).write_text(json.dumps({"reward": outcome.reward, "failure": outcome.failure,
                                             "detail": detail[:2000]}), encoding="utf-8")


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
