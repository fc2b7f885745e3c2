"""Run one episode of a harness in a subprocess with limits, and say how it ended.

The child gets a wall-clock limit (its whole session is killed on expiry), CPU,
address-space and file-size rlimits, a private temp dir as home and cwd (deleted after),
no stdin, and a scrubbed environment: no API keys, tokens, proxies or sia settings, only
the model endpoint it may use. Every way a harness can fail becomes an `EpisodeOutcome`
with a status and a reason; nothing it does can raise into the caller.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from sia.harness.contract import MAX_ANSWER_CHARS, validate_harness

RUNNER = Path(__file__).with_name("runner.py")
TAIL = 4096
RESULT_CAP = 8 * MAX_ANSWER_CHARS + 4096
"""Bytes of the result channel kept: a JSON-escaped answer at the size limit fits."""

Status = Literal["ok", "crash", "timeout", "memory", "malformed", "invalid_harness"]


class Limits(BaseModel):
    """Per-episode resource limits (defaults: 30 s wall, 30 s CPU, 1 GiB address space)."""

    model_config = ConfigDict(frozen=True)

    wall_s: float = 30.0
    cpu_s: int = 30
    memory_mb: int = 1024
    file_mb: int = 64


DEFAULT_LIMITS = Limits()


class EpisodeOutcome(BaseModel):
    """How one harness run ended; `error` is a short reason, the traceback is in `stderr_tail`."""

    model_config = ConfigDict(frozen=True)

    status: Status
    answer: str | None = None
    error: str | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0


def scrubbed_environment(home: Path, model_url: str | None, limits: Limits) -> dict[str, str]:
    """What the harness sees: nothing inherited but a minimal PATH and locale.

    SIA_LIMITS is read and removed by the runner, which applies the limits to itself
    first (a `preexec_fn` would do it earlier, but is unsafe in a threaded parent).
    """
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(home),
           "TMPDIR": str(home), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
           "SIA_LIMITS": f"{limits.memory_mb * 2**20} {limits.cpu_s} {limits.file_mb * 2**20}"}
    if model_url:
        env["SIA_MODEL_URL"] = model_url
    return env


def _tail(path: Path) -> str:
    """The last TAIL bytes of a log file, without reading the rest of it."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - TAIL))
            return handle.read(TAIL).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def run_episode(source: str, sample: dict[str, Any], *, model_url: str | None,
                limits: Limits = DEFAULT_LIMITS) -> EpisodeOutcome:
    """Run `source`'s `solve(sample, model)` in a sandboxed child; never raises for harness faults.

    `model_url` is the episode's gateway base URL (`ModelGateway.open_episode`), or None
    when the harness gets no model.
    """
    problems = validate_harness(source)
    if problems:
        return EpisodeOutcome(status="invalid_harness", error="; ".join(problems)[:500])
    home = Path(tempfile.mkdtemp(prefix="sia-episode-"))
    try:
        return _run(source, sample, home, model_url, limits)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run(source: str, sample: dict[str, Any], home: Path, model_url: str | None,
         limits: Limits) -> EpisodeOutcome:
    (home / "harness.py").write_text(source, encoding="utf-8")
    (home / "sample.json").write_text(json.dumps(sample), encoding="utf-8")
    read_end, write_end = os.pipe()
    started = time.perf_counter()
    try:
        with (home / "stdout").open("wb") as stdout, (home / "stderr").open("wb") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-I", "-S", str(RUNNER), str(home / "harness.py"),
                 str(home / "sample.json"), str(write_end)],
                cwd=home, env=scrubbed_environment(home, model_url, limits),
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, pass_fds=(write_end,),
                start_new_session=True,
            )
    finally:
        os.close(write_end)
    try:
        reported, code, usage, timed_out = _supervise(child, read_end, started + limits.wall_s)
    finally:
        os.close(read_end)
    measures = {"stdout_tail": _tail(home / "stdout"), "stderr_tail": _tail(home / "stderr"),
                "wall_s": round(time.perf_counter() - started, 3),
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    if timed_out:
        return EpisodeOutcome(status="timeout", error=f"no answer within {limits.wall_s:g} s",
                              **measures)
    try:
        outcome = json.loads(reported)
        status, answer, error = outcome["status"], outcome.get("answer"), outcome.get("error")
        EpisodeOutcome(status=status, answer=answer, error=error)
    except (ValueError, KeyError, TypeError):
        return EpisodeOutcome(**_died(code, measures["stderr_tail"], limits), **measures)
    return EpisodeOutcome(status=status, answer=answer, error=error, **measures)


def _supervise(child: subprocess.Popen[bytes], read_end: int,
               deadline: float) -> tuple[bytes, int, Any, bool]:
    """Collect the result channel while waiting for the child, killing its session at `deadline`.

    The channel is read while the child runs (a large answer would otherwise fill the
    pipe and hang the child) and never waited on after the child is gone (a grandchild
    that kept the pipe open cannot stall the caller).
    """
    chunks: list[bytes] = []
    kept = 0
    timed_out = False
    os.set_blocking(read_end, False)
    while True:
        kept = _drain(read_end, chunks, kept)
        if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        if time.perf_counter() >= deadline:
            timed_out = True
            break
        select.select([read_end], [], [], 0.02)
    _kill_session(child.pid)
    _, status, usage = os.wait4(child.pid, 0)
    _drain(read_end, chunks, kept)
    child.returncode = os.waitstatus_to_exitcode(status)
    return b"".join(chunks), child.returncode, usage, timed_out


def _drain(fd: int, chunks: list[bytes], kept: int) -> int:
    """Read what is available without blocking; keep at most RESULT_CAP bytes."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return kept
        if not data:
            return kept
        if kept < RESULT_CAP:
            chunks.append(data[: RESULT_CAP - kept])
            kept += len(chunks[-1])


def _kill_session(pid: int) -> None:
    """Kill the child's whole session (its process group): helpers it started die with it.

    Called before the child is reaped, so its (zombie) pid still owns the group id and
    the signal cannot reach a process that reused the number.
    """
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _died(code: int, stderr: str, limits: Limits) -> dict[str, Any]:
    """Why a child ended without reporting: a limit, a signal, or an exit."""
    if code == -signal.SIGXCPU:
        return {"status": "timeout", "error": f"CPU limit of {limits.cpu_s} s exceeded"}
    if "MemoryError" in stderr or code in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT):
        return {"status": "memory",
                "error": f"killed near the {limits.memory_mb} MB memory limit (exit {code})"}
    return {"status": "crash", "error": f"the harness process exited {code} without an answer"}
