"""Scoring answers that are code (trimul kernels, denoisers) in a separate, limited process.

For the code tasks a harness's answer is the source of a Python module defining one
function (`custom_kernel(x, mask, weights)` for trimul, `denoise(train_counts)` for
denoise); a fenced ```python block inside the answer is taken when there is one. The
answer is untrusted model output, so it is never executed in the caller: a child process
(`python -m sia.tasks.code_answers`) with a wall clock (its whole session is killed),
CPU-time and address-space rlimits, a private temporary directory and a minimal
environment (no API keys) compiles it and calls the existing evaluator
(`sia.tasks.trimul.evaluate` or `sia.tasks.denoise.evaluate`). Every ending is a
`(reward, failure kind, detail)` result, never an exception: syntax_error, import_error,
no_function, incorrect (checked and rejected by the evaluator), timeout, crash.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _environment(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(home),
            "TMPDIR": str(home), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run_isolated(kind: str, answer: str, config: dict[str, Any], *, wall_s: float = 60.0,
                 cpu_s: int = 60, memory_mb: int = 2048) -> CodeOutcome:
    """Score `answer` for task `kind` in a limited child process; never raises for the answer."""
    if kind not in EVALUATORS:
        raise ValueError(f"unknown code task {kind!r}; known: {', '.join(EVALUATORS)}")
    try:  # compiling is safe here and spares a process start for answers that are not Python
        compile(extract_code(answer), "<answer>", "exec")
    except (SyntaxError, ValueError) as error:
        return CodeOutcome(0.0, "syntax_error", f"{type(error).__name__}: {error}")
    home = Path(tempfile.mkdtemp(prefix="sia-code-answer-"))
    try:
        request, result = home / "request.json", home / "result.json"
        request.write_text(json.dumps({"kind": kind, "answer": answer, "config": config,
                                       "limits": [cpu_s, memory_mb]}), encoding="utf-8")
        with (home / "stderr").open("wb") as stderr:
            child = subprocess.Popen([sys.executable, "-m", "sia.tasks.code_answers", str(request),
                                      str(result)], cwd=home, env=_environment(home),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=stderr, start_new_session=True)
            try:
                code = child.wait(timeout=wall_s)
            except subprocess.TimeoutExpired:
                _kill_session(child)
                return CodeOutcome(0.0, "timeout", f"no result within {wall_s:g} s")
        try:
            outcome = json.loads(result.read_text(encoding="utf-8"))
            return CodeOutcome(float(outcome["reward"]), outcome["failure"], outcome["detail"])
        except (OSError, ValueError, KeyError, TypeError):
            tail = (home / "stderr").read_bytes()[-600:].decode("utf-8", "replace").strip()
            return CodeOutcome(0.0, "crash", f"evaluation process exited with {code}: {tail}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _kill_session(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def _child(request_path: str, result_path: str) -> None:
    import resource

    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    Path(request_path).unlink()
    cpu_s, memory_mb = request["limits"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    started = time.perf_counter()
    try:
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
