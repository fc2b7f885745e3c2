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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

RUNNER = Path(__file__).with_name("runner.py")
TAIL = 4096

Status = Literal["ok", "crash", "timeout", "memory", "malformed", "invalid_harness"]


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True)

    wall_s: float = 30.0
    cpu_s: int = 30
    memory_mb: int = 1024
    file_mb: int = 64


class EpisodeOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Status
    answer: str | None = None
    error: str | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    wall_s: float = 0.0


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
    data = path.read_bytes() if path.exists() else b""
    return data[-TAIL:].decode("utf-8", "replace")


def run_episode(source: str, sample: dict[str, Any], *, model_url: str | None,
                limits: Limits = Limits()) -> EpisodeOutcome:
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
    with (home / "stdout").open("wb") as stdout, (home / "stderr").open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", str(RUNNER), str(home / "harness.py"),
             str(home / "sample.json"), str(write_end)],
            cwd=home, env=scrubbed_environment(home, model_url, limits), stdin=subprocess.DEVNULL,
            stdout=stdout, stderr=stderr, pass_fds=(write_end,), start_new_session=True,
        )
    os.close(write_end)
    timed_out = False
    try:
        child.wait(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    with os.fdopen(read_end, encoding="utf-8", errors="replace") as result:
        reported = result.read()
    wall = time.perf_counter() - started
    tails = {"stdout_tail": _tail(home / "stdout"), "stderr_tail": _tail(home / "stderr"),
             "wall_s": round(wall, 3)}
    if timed_out:
        return EpisodeOutcome(status="timeout", error=f"no answer within {limits.wall_s:g} s", **tails)
    try:
        outcome = json.loads(reported)
    except json.JSONDecodeError:
        return EpisodeOutcome(**_died(child.returncode, tails["stderr_tail"], limits), **tails)
    return EpisodeOutcome(status=outcome["status"], answer=outcome.get("answer"),
                          error=outcome.get("error"), **tails)


def _died(code: int, stderr: str, limits: Limits) -> dict[str, Any]:
    """Why a child ended without reporting: a limit, a signal, or an exit."""
    if code == -signal.SIGXCPU:
        return {"status": "timeout", "error": f"CPU limit of {limits.cpu_s} s exceeded"}
    if "MemoryError" in stderr or code in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT):
        return {"status": "memory",
                "error": f"killed near the {limits.memory_mb} MB memory limit (exit {code})"}
    return {"status": "crash", "error": f"the harness process exited {code} without an answer"}
