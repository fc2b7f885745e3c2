"""Run one episode of a harness in a sandboxed child, and say how it ended.

Two sandboxes, chosen per run (`RunConfig.sandbox`):

* `bwrap` (the default) — the OS boundary of `sia.harness.bwrap`: namespaces, a
  read-only view of the interpreter only, a size-limited tmpfs as the private directory,
  the seccomp filter of `sia.harness.seccomp` (one process, so its limits cannot be
  multiplied), and the gateway's Unix socket as the only way out. Nothing is written on
  the host on the harness's behalf but its stdout and stderr, to unlinked files. Episodes
  are forked from one warm sandbox per harness (`sia.harness.forkserver`), each with
  namespaces and files of its own, which saves each the ~20 ms of CPU an interpreter takes
  to start; a machine that cannot (probed once) gives each episode a sandbox of its own.
* `process` — the weaker fallback a user must choose explicitly: a child process in a
  private temp dir (deleted after) with rlimits and the runner's audit hook, which is
  best effort (a harness running as the user can get around it).

Both can show the harness the task's public examples (`Task.public_examples_jsonl`: train
samples with their labels): a read-only file whose path is in SIA_TRAIN_EXAMPLES, absent with
the variable when there are none. Under bwrap it is bound read-only from a memfd; in the
process sandbox it is a mode-0444 copy in the private dir (root can still write its own copy,
which dies with the episode).

Both give the child a wall-clock limit (its whole session, and under bwrap its whole pid
namespace, is killed on expiry), CPU, address-space and file-size rlimits, no stdin, and
an environment built from nothing: no API keys, tokens, proxies or sia settings. Every
way a harness can fail becomes an `EpisodeOutcome` with a status and a reason; nothing it
does can raise into the caller.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from sia.harness import forkserver
from sia.harness.bwrap import (
    EPISODE_DIR,
    EXAMPLES_PATH,
    MODEL_SOCKET,
    interpreter,
    require_bwrap,
    sandbox_command,
    sandbox_options,
)
from sia.harness.contract import MAX_ANSWER_CHARS, validate_harness
from sia.harness.seccomp import episode_filter

RUNNER = Path(__file__).with_name("runner.py")
EXAMPLES_VARIABLE = "SIA_TRAIN_EXAMPLES"
"""The environment variable naming the public examples file (the contract harnesses build on)."""
KILL_GRACE_S = 5.0
"""How long a fork server has to report an episode it was told to kill."""
RESULT_CAP = 8 * MAX_ANSWER_CHARS + 4096
"""Bytes of the result channel kept: a JSON-escaped answer at the size limit fits."""

Status = Literal["ok", "crash", "timeout", "memory", "malformed", "invalid_harness"]
Isolation = Literal["bwrap", "process"]
ISOLATIONS: tuple[Isolation, ...] = ("bwrap", "process")


class Limits(BaseModel):
    """Per-episode resource limits (defaults: 30 s wall, 30 s CPU, 1 GiB address space).

    `file_mb` bounds each file the harness writes and, under bwrap, its whole private
    directory; `threads` bounds the tasks of the bwrap sandbox's user (the kernel exempts
    host root; not applied in the process sandbox, where the count would include every
    process of the user). Without it, threads are bounded by the address space their
    stacks take.
    """

    model_config = ConfigDict(frozen=True)

    wall_s: float = 30.0
    cpu_s: int = 30
    memory_mb: int = 1024
    file_mb: int = 64
    threads: int = 64


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


def scrubbed_environment(home: str, model_socket: str | None, limits: Limits,
                         threads: int, examples_path: str | None = None) -> dict[str, str]:
    """What the harness sees: nothing inherited but a minimal PATH and locale, and
    SIA_TRAIN_EXAMPLES only when the episode has an examples file.

    SIA_LIMITS and SIA_MODEL_SOCKET are read and removed by the runner, which applies the
    limits to itself first (a `preexec_fn` would do it earlier, but is unsafe in a
    threaded parent).
    """
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home,
           "TMPDIR": home, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
           "SIA_LIMITS": f"{limits.memory_mb * 2**20} {limits.cpu_s} {limits.file_mb * 2**20} "
                         f"{threads}"}
    if model_socket:
        env["SIA_MODEL_SOCKET"] = model_socket
    if examples_path:
        env[EXAMPLES_VARIABLE] = examples_path
    return env


def run_episode(source: str, sample: dict[str, Any], *, model_socket: Path | None,
                limits: Limits = DEFAULT_LIMITS, isolation: Isolation = "bwrap",
                examples: bytes | None = None) -> EpisodeOutcome:
    """Run `source`'s `solve(sample, model)` in a sandboxed child; never raises for harness faults.

    `model_socket` is the episode's gateway socket (`ModelGateway.open_episode`), or None
    when the harness gets no model. `examples` is the public examples file's content
    (`Task.public_examples_jsonl`); None or empty gives no file and no SIA_TRAIN_EXAMPLES.
    Under bwrap the episode is forked from its harness's warm sandbox (`sia.harness.forkserver`)
    where this machine allows it, else it gets a sandbox of its own. Raises `SandboxUnavailable`
    (before running anything) when `isolation` is bwrap and this machine cannot provide it.
    """
    problems = validate_harness(source)
    if problems:
        return EpisodeOutcome(status="invalid_harness", error="; ".join(problems)[:500])
    if isolation == "bwrap":
        require_bwrap()
        reason = forking_unavailable_reason()
        if reason is not None:
            _warn_once(reason)
        else:
            try:
                return run_forked(source, sample, model_socket=model_socket, limits=limits,
                                  examples=examples)
            except forkserver.ServerGone:
                pass  # no server for it now (the probe found one could start): a sandbox of its own
    start = _bwrap_child if isolation == "bwrap" else _process_child
    read_end, write_end = os.pipe()
    try:
        with captured("stdout") as stdout, captured("stderr") as stderr:
            started = time.perf_counter()
            with start(source, sample, examples or None, model_socket, limits, write_end, stdout,
                       stderr) as child:
                os.close(write_end)
                write_end = -1
                ended = _supervise(child, read_end, started + limits.wall_s)
            return _outcome(ended, stdout, stderr, time.perf_counter() - started, limits)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def captured(name: str) -> IO[bytes]:
    """A file for the child's stdout or stderr, in memory: every episode makes two and drops
    them at once, churn that a disk filesystem pays for (ext4's inode allocator reads each
    recently deleted inode it passes over: after a few thousand episodes, a third of sia's CPU
    went there). The child's RLIMIT_FSIZE (`Limits.file_mb`) bounds each."""
    return os.fdopen(os.memfd_create(name, os.MFD_CLOEXEC), "w+b")


def run_forked(source: str, sample: dict[str, Any], *, model_socket: Path | None, limits: Limits,
               examples: bytes | None,
               servers: forkserver.ForkServers = forkserver.SERVERS) -> EpisodeOutcome:
    """One episode forked from the warm sandbox of `source` (started on first use).

    Raises `forkserver.ServerGone` when no server for it can be started or the episode's
    walls could not be put up (before any of its harness ran: `run_episode` then gives it a
    sandbox of its own); an episode whose server ends under it is a crash that says so.
    """
    environment = scrubbed_environment(EPISODE_DIR, None, limits, limits.threads)
    server = servers.acquire(source, environment, model_socket.parent if model_socket else None)
    read_end, write_end = os.pipe()
    try:
        with captured("stdout") as stdout, captured("stderr") as stderr:
            started = time.perf_counter()
            try:
                job_id, job = server.start(result_fd=write_end, stdout=stdout, stderr=stderr,
                                           sample=json.dumps(sample).encode("utf-8"),
                                           examples=examples or None, model_socket=model_socket)
            finally:
                os.close(write_end)
            try:
                ended = _supervise_job(server, job_id, job, read_end, started + limits.wall_s)
            finally:
                server.forget(job_id)
            if not job.started and not ended.timed_out and ended.lost is None:
                raise forkserver.ServerGone(f"the episode was not walled off: {forkserver.tail(stderr)[-500:]}")
            return _outcome(ended, stdout, stderr, time.perf_counter() - started, limits)
    finally:
        os.close(read_end)
        servers.release(server)


def forking_unavailable_reason() -> str | None:
    """Why episodes cannot be forked from a warm sandbox here (None when they can): probed
    once per process with a real episode, so a kernel that refuses a namespace or mount the
    episodes need is found before any harness runs, and episodes fall back to a sandbox each.
    The first batch's episodes all ask at once; one probes while the others wait."""
    with _PROBING:
        return _probe()


_PROBING = threading.Lock()


@functools.cache
def _probe() -> str | None:
    try:
        outcome = run_forked("def solve(sample, model):\n    return sample['probe']\n",
                             {"probe": "forked"}, model_socket=None, limits=DEFAULT_LIMITS,
                             examples=b'{"id": "x"}\n', servers=forkserver.ForkServers(idle=0))
    except forkserver.ServerGone as exc:
        return str(exc)
    if outcome.status != "ok" or outcome.answer != "forked":
        return f"a probe episode ended {outcome.status}: {outcome.error} {outcome.stderr_tail[-300:]}"
    return None


@functools.cache
def _warn_once(reason: str) -> None:
    logging.getLogger(__name__).warning(
        "episodes get a bubblewrap sandbox each (about 25 ms of CPU more per episode): they "
        "cannot be forked from a warm sandbox here: %s", reason)


class _Ended(NamedTuple):
    """What a finished child left: its report, exit code, the kernel's accounting of it."""

    reported: bytes
    code: int
    cpu_s: float
    max_rss_mb: float
    timed_out: bool
    lost: str | None = None


def _outcome(ended: _Ended, stdout: IO[bytes], stderr: IO[bytes], wall_s: float,
             limits: Limits) -> EpisodeOutcome:
    stderr_tail = forkserver.tail(stderr)
    measures: dict[str, Any] = {"stdout_tail": forkserver.tail(stdout), "stderr_tail": stderr_tail,
                                "wall_s": round(wall_s, 3), "cpu_s": round(ended.cpu_s, 3),
                                "max_rss_mb": round(ended.max_rss_mb, 1)}
    if ended.timed_out:
        return EpisodeOutcome(status="timeout", error=f"no answer within {limits.wall_s:g} s",
                              **measures)
    if ended.lost is not None:
        return EpisodeOutcome(status="crash", error=ended.lost[:500], **measures)
    try:
        outcome = json.loads(ended.reported)
        status, answer, error = outcome["status"], outcome.get("answer"), outcome.get("error")
        EpisodeOutcome(status=status, answer=answer, error=error)
        measures.update(_reported_usage(outcome, measures))
    except (ValueError, KeyError, TypeError, AttributeError):
        code = ended.code
        if code > 128:  # bwrap's report of a command killed by signal N, and the runner's
            code = 128 - code  # own exit on SIGXCPU, are exit 128 + N
        return EpisodeOutcome(**_died(code, stderr_tail, limits), **measures)
    return EpisodeOutcome(status=status, answer=answer, error=error, **measures)


def _reported_usage(outcome: dict[str, Any], measured: dict[str, Any]) -> dict[str, float]:
    """The runner's own CPU time and peak memory, where they exceed what `wait4` saw.

    bwrap hands back its command's exit status without the kernel's accounting of it, so
    under bwrap the runner's report is the only measure of the harness's own use. It is
    the harness's word, used only for display: nothing decides on it.
    """
    usage = {}
    for name in ("cpu_s", "max_rss_mb"):
        value = outcome.get(name)
        if isinstance(value, (int, float)) and 0 <= value < 1e9:
            usage[name] = round(max(float(value), measured[name]), 3 if name == "cpu_s" else 1)
    return usage


@contextmanager
def _process_child(source: str, sample: dict[str, Any], examples: bytes | None,
                   model_socket: Path | None, limits: Limits, result_fd: int, stdout: IO[bytes],
                   stderr: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """The weaker sandbox: a child process in a private temp dir that is deleted after."""
    home = Path(tempfile.mkdtemp(prefix="sia-episode-"))
    try:
        (home / "harness.py").write_text(source, encoding="utf-8")
        (home / "sample.json").write_text(json.dumps(sample), encoding="utf-8")
        examples_path = None
        if examples is not None:
            examples_path = str(home / Path(EXAMPLES_PATH).name)
            descriptor = os.open(examples_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(examples)
        yield subprocess.Popen(
            [sys.executable, "-I", "-S", str(RUNNER), str(home / "harness.py"),
             str(home / "sample.json"), str(result_fd)],
            cwd=home, env=scrubbed_environment(str(home), str(model_socket) if model_socket else None,
                                               limits, 0, examples_path),
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, pass_fds=(result_fd,),
            start_new_session=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def _bwrap_child(source: str, sample: dict[str, Any], examples: bytes | None,
                 model_socket: Path | None, limits: Limits, result_fd: int, stdout: IO[bytes],
                 stderr: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """The bubblewrap sandbox. bwrap itself gets only PATH for environment and only the
    descriptors it reads (the harness, the sample, the filter, the examples, its options)
    besides the result channel, so nothing of sia's reaches the sandbox even through bwrap."""
    bwrap = require_bwrap()
    fds: list[int] = []

    def memfd(name: str, data: bytes) -> int:
        fds.append(forkserver.memfd(name, data))
        return fds[-1]

    try:
        harness_fd = memfd("harness", source.encode("utf-8"))
        sample_fd = memfd("sample", json.dumps(sample).encode("utf-8"))
        seccomp_fd = memfd("seccomp", episode_filter())
        examples_fd = memfd("examples", examples) if examples is not None else None
        environment = scrubbed_environment(EPISODE_DIR, MODEL_SOCKET if model_socket else None, limits,
                                           limits.threads, EXAMPLES_PATH if examples is not None else None)
        python = interpreter()
        options = sandbox_options(python, runner=RUNNER, model_socket=model_socket,
                                  environment=environment, tmpfs_bytes=limits.file_mb * 2**20,
                                  harness_fd=harness_fd, sample_fd=sample_fd, seccomp_fd=seccomp_fd,
                                  examples_fd=examples_fd)
        options_fd = memfd("options", b"".join(a.encode() + b"\0" for a in options))
        child = subprocess.Popen([bwrap, "--args", str(options_fd), *sandbox_command(python, result_fd)],
                                 env={"PATH": "/usr/bin:/bin"},
                                 stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                 pass_fds=(result_fd, *fds), start_new_session=True)
    finally:
        for fd in fds:
            os.close(fd)
    yield child


def _supervise(child: subprocess.Popen[bytes], read_end: int, deadline: float) -> _Ended:
    """Collect the result channel while waiting for the child, killing its session at `deadline`.

    A pidfd wakes the wait the moment the child exits: under bwrap the channel stays open in
    bwrap's own processes until then, so waiting for its end alone would add a polling delay
    to every episode.
    """
    exited = os.pidfd_open(child.pid) if hasattr(os, "pidfd_open") else None
    try:
        chunks, kept, timed_out = _watch(read_end, deadline, exited, lambda: os.waitid(
            os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None)
    finally:
        if exited is not None:
            os.close(exited)
    kill_session(child.pid)
    _, status, usage = os.wait4(child.pid, 0)
    _drain(read_end, chunks, kept)
    child.returncode = os.waitstatus_to_exitcode(status)
    return _Ended(b"".join(chunks), child.returncode, usage.ru_utime + usage.ru_stime,
                  usage.ru_maxrss / 1024, timed_out)


def _supervise_job(server: forkserver.ForkServer, job_id: str, job: forkserver.Job,
                   read_end: int, deadline: float) -> _Ended:
    """`_supervise` for an episode of a fork server: the server reports its end, and kills it
    at `deadline` when asked."""
    chunks, kept, timed_out = _watch(read_end, deadline, job.wake, lambda: job.ended)
    if not job.ended:
        server.kill(job_id)
        select.select([job.wake], [], [], KILL_GRACE_S)
    _drain(read_end, chunks, kept)
    if not job.ended and not timed_out:
        return _Ended(b"", -1, 0.0, 0.0, False, "the episode's fork server did not report its end")
    return _Ended(b"".join(chunks), job.code if job.code is not None else -1, job.cpu_s,
                  job.max_rss_mb, timed_out, None if timed_out else job.lost)


def _watch(read_end: int, deadline: float, wake: int | None,
           finished: Callable[[], bool]) -> tuple[list[bytes], int, bool]:
    """Read the result channel until `finished()` or `deadline` (then the third value is True).

    The channel is read while the child runs (a large answer would otherwise fill the pipe and
    hang the child) and never waited on after the child is gone (a grandchild that kept the
    pipe open cannot stall the caller); `wake` is a descriptor that becomes readable when the
    child ends (without it, the wait polls).
    """
    chunks: list[bytes] = []
    kept = 0
    channel_open = True
    os.set_blocking(read_end, False)
    while True:
        if channel_open:
            kept, channel_open = _drain(read_end, chunks, kept)
        if finished():
            return chunks, kept, False
        now = time.perf_counter()
        if now >= deadline:
            return chunks, kept, True
        # A channel at its end is always readable: watching it would spin until the exit.
        watched = ([read_end] if channel_open else []) + ([] if wake is None else [wake])
        select.select(watched, [], [], min(0.02 if wake is None else 1.0, deadline - now))


def _drain(fd: int, chunks: list[bytes], kept: int) -> tuple[int, bool]:
    """Read what is available without blocking; keep at most RESULT_CAP bytes.

    Returns the bytes kept and whether the channel is still open (no end of file yet).
    """
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return kept, True
        if not data:
            return kept, False
        if kept < RESULT_CAP:
            chunks.append(data[: RESULT_CAP - kept])
            kept += len(chunks[-1])


def kill_session(pid: int) -> None:
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
