"""The answer sandbox: untrusted answer code runs alone in bubblewrap; the scorer only talks to it.

An answer to a code task (trimul, denoise) is model output written to win a reward, so it
runs in the OS sandbox of `sia.harness.bwrap` (new namespaces, a read-only view of the
interpreter, the system libraries and the venv's site-packages, a size-limited private
tmpfs, the episode seccomp filter: threads but no second process) with CPU, address-space,
file-size and thread rlimits, and nothing else: not sia's source, not the task folder, not
the scorer's memory (a pid namespace of its own). Its runner (`answer_runner.py`) gets
only the inputs the answer must transform, one call at a time over a pipe, and sends back
its outputs; the scorer, a trusted process that never loads the answer, computes the
reference and the metric from them. Because inputs are sent one call at a time and the
next is sent only once the previous output is back, an answer cannot compute the outputs of
later calls ahead of their timing; and the sandbox is stopped between exchanges, so it does
no work outside the round trips the scorer measures.

Every output frame is bounded (`AnswerSandbox.call`'s `max_bytes`), every wait has the
wall-clock deadline, and every way the sandbox can end (exit, signal, limit, deadline)
becomes `SandboxLost` with a failure kind, never a hang.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sia.harness.bwrap import EPISODE_DIR, code_sandbox_options, interpreter, require_bwrap
from sia.harness.sandbox import kill_session
from sia.harness.seccomp import episode_filter

RUNNER = Path(__file__).with_name("answer_runner.py")
RUNNER_PATH = "/sia/answer_runner.py"
HEADER_CAP = 1 << 16
TAIL = 600


class SandboxLost(Exception):
    """The sandbox can no longer answer: it exited, was killed, hit a limit or the deadline."""

    def __init__(self, failure: str, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


class CandidateRaised(Exception):
    """The answer's function raised inside the sandbox; the message is its `Type: text`."""


class UnusableOutput(Exception):
    """The answer's output could not be read as the task's kind of value; the message says why."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float
    cpu_s: int
    memory_mb: int
    file_mb: int = 64
    threads: int = 64


@dataclass(frozen=True)
class Reply:
    """One response frame: its header, its arrays' raw bytes, and the round trip the scorer saw."""

    header: dict[str, Any]
    payload: bytes
    round_trip_us: float


@dataclass
class CallLog:
    """Per call: the time the sandbox reported for the answer, and the scorer's round trip."""

    reported_us: list[float] = field(default_factory=list)
    round_trip_us: list[float] = field(default_factory=list)


def venv_site_packages() -> str:
    return os.path.realpath(sysconfig.get_paths()["purelib"])


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    encoded = json.dumps({**header, "nbytes": len(payload)}).encode()
    return struct.pack(">I", len(encoded)) + encoded + payload


def array_specs(arrays: list[tuple[str, str, tuple[int, ...], bytes]]) -> tuple[list[dict[str, Any]], bytes]:
    """Frame fields for named raw arrays: their specs, and their bytes back to back."""
    specs = [{"name": name, "dtype": dtype, "shape": list(shape), "size": len(data)}
             for name, dtype, shape, data in arrays]
    return specs, b"".join(data for *_, data in arrays)


class AnswerSandbox:
    """One sandboxed answer process, driven call by call; use as a context manager."""

    def __init__(self, kind: str, limits: SandboxLimits) -> None:
        self.kind = kind
        self.limits = limits
        self.log = CallLog()
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self._deadline = time.perf_counter() + limits.wall_s
        self._requests, self._responses, self._child = self._start()
        self._runner: int | None = None

    def _start(self) -> tuple[int, int, subprocess.Popen[bytes]]:
        bwrap = require_bwrap()
        python = interpreter()
        site = venv_site_packages()
        request_read, request_write = os.pipe()
        response_read, response_write = os.pipe()
        seccomp = os.memfd_create("seccomp")
        os.write(seccomp, episode_filter())
        os.lseek(seccomp, 0, os.SEEK_SET)
        limits = self.limits
        environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": EPISODE_DIR,
                       "TMPDIR": EPISODE_DIR, "PYTHONDONTWRITEBYTECODE": "1",
                       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                       "SIA_LIMITS": f"{limits.memory_mb * 2**20} {limits.cpu_s} "
                                     f"{limits.file_mb * 2**20} {limits.threads}"}
        options = code_sandbox_options(python, read_only=(site,), runner=RUNNER,
                                       runner_path=RUNNER_PATH, environment=environment,
                                       tmpfs_bytes=limits.file_mb * 2**20, seccomp_fd=seccomp)
        args = os.memfd_create("options")
        os.write(args, b"".join(a.encode() + b"\0" for a in options))
        os.lseek(args, 0, os.SEEK_SET)
        try:
            child = subprocess.Popen(
                [bwrap, "--args", str(args), python.executable, "-I", "-S", RUNNER_PATH, self.kind,
                 site, str(response_write)],
                env={"PATH": "/usr/bin:/bin"}, stdin=request_read, stdout=subprocess.DEVNULL,
                stderr=self._stderr, pass_fds=(response_write, seccomp, args), start_new_session=True)
        finally:
            for fd in (request_read, response_write, seccomp, args):
                os.close(fd)
        os.set_blocking(request_write, False)
        os.set_blocking(response_read, False)
        return request_write, response_read, child

    def __enter__(self) -> AnswerSandbox:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in (self._requests, self._responses):
            if fd >= 0:
                os.close(fd)
        self._requests = self._responses = -1
        self.close_child()
        self._stderr.close()

    # -- the channel

    def exchange(self, header: dict[str, Any], payload: bytes = b"", *,
                 max_bytes: int) -> Reply:
        """Send one request and wait for its one response (at most `max_bytes` of arrays).

        The round trip starts before the request's first byte is written: the sandbox cannot
        start on a request before then, whereas the write may return only after the sandbox,
        woken by its last byte, has run (and even finished) the call on this CPU. The
        sandbox is resumed inside the round trip and stopped once the reply is read, so
        none of its code (no thread it left running) runs outside the scorer's round trips.
        """
        frame = encode_frame(header, payload)
        started = time.perf_counter_ns()
        self._signal_runner(signal.SIGCONT)
        self._write(frame)
        (length,) = struct.unpack(">I", self._read(4))
        if length > HEADER_CAP:
            raise self._lost("incorrect", f"a response header of {length} bytes (limit {HEADER_CAP})")
        try:
            reply = json.loads(self._read(length))
            size = int(reply.get("nbytes", 0)) if isinstance(reply, dict) else -1
        except (ValueError, TypeError):
            raise self._lost("incorrect", "a response that is not a JSON object") from None
        if not 0 <= size <= max_bytes:
            raise self._lost("incorrect", f"an output of {size} bytes (limit {max_bytes})")
        data = self._read(size)
        round_trip_us = (time.perf_counter_ns() - started) / 1000.0
        self._signal_runner(signal.SIGSTOP)
        return Reply(reply, data, round_trip_us)

    def pin(self, cpus: set[int]) -> None:
        """Keep the runner on `cpus`: each thread it has, and so each it starts later.

        Call it between exchanges, with the runner stopped, so no thread appears meanwhile.
        """
        if self._runner is None:
            raise RuntimeError("pin a sandbox after its first exchange, which finds its runner")
        try:
            threads = [int(task.name) for task in Path(f"/proc/{self._runner}/task").iterdir()]
        except OSError:  # it ended: its next exchange says how
            return
        for thread in threads:
            try:
                os.sched_setaffinity(thread, cpus)
            except OSError:  # ended, or refused: it is timed where the scheduler puts it
                pass

    def send_end(self) -> None:
        self._signal_runner(signal.SIGCONT)
        try:
            self._write(encode_frame({"op": "end"}))
        except SandboxLost:
            pass

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait(self._requests, write=True)
            try:
                view = view[os.write(self._requests, view):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise self._lost_from_exit() from None

    def _read(self, count: int) -> bytes:
        chunks: list[bytes] = []
        while count:
            self._wait(self._responses, write=False)
            try:
                chunk = os.read(self._responses, min(count, 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                raise self._lost_from_exit()
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def _wait(self, fd: int, *, write: bool) -> None:
        left = self._deadline - time.perf_counter()
        if left <= 0:
            raise self._lost("timeout", f"no result within {self.limits.wall_s:g} s")
        ready = select.select([], [fd], [], left) if write else select.select([fd], [], [], left)
        if not any(ready):
            raise self._lost("timeout", f"no result within {self.limits.wall_s:g} s")

    def _signal_runner(self, number: signal.Signals) -> None:
        """Stop or resume the sandboxed runner: bwrap's one child, which cannot start others."""
        if self._child.poll() is not None:
            return
        if self._runner is None:
            children = Path(f"/proc/{self._child.pid}/task/{self._child.pid}/children")
            try:
                found = children.read_text().split()
            except OSError:  # bwrap ended in between
                return
            if not found:
                return
            self._runner = int(found[0])
        try:
            os.kill(self._runner, number)
        except ProcessLookupError:
            pass

    # -- endings

    def _lost(self, failure: str, detail: str) -> SandboxLost:
        self.close_child()
        return SandboxLost(failure, detail)

    def close_child(self) -> None:
        if self._child.returncode is None:
            kill_session(self._child.pid)
            self._child.wait()

    def _lost_from_exit(self) -> SandboxLost:
        """Why the sandbox stopped answering: its exit status, read as a limit where it is one."""
        try:
            code = self._child.wait(timeout=max(0.0, min(5.0, self._deadline - time.perf_counter())))
        except subprocess.TimeoutExpired:
            return self._lost("crash", "the answer closed its result channel and kept running")
        if code > 128:  # bwrap reports a command killed by signal N as exit 128 + N
            code = 128 - code
        self._stderr.seek(max(0, self._stderr.seek(0, os.SEEK_END) - TAIL))
        tail = self._stderr.read(TAIL).decode("utf-8", "replace").strip()
        if code == -signal.SIGXCPU:
            return SandboxLost("timeout", f"CPU limit of {self.limits.cpu_s} s exceeded")
        if "MemoryError" in tail or code in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT):
            return SandboxLost("memory", f"over the {self.limits.memory_mb} MB memory limit "
                                         f"(exit {code})")
        return SandboxLost("crash", f"evaluation process exited with {code}: {tail}")


def timing_problem(log: CallLog) -> str | None:
    """Why the answer's reported call times contradict the scorer's round trips, or None.

    The score uses the round trips alone; the reported times are a cross-check of them.
    A round trip starts before the request's first byte is written and ends after the
    reply's last byte is read, on the monotonic clock the runner reads around the call, so
    an honest call's reported time is never longer. One that is (or is negative, or not a
    number) means the runner lied or the measurement broke, and the speed cannot be trusted.
    """
    for reported, round_trip in zip(log.reported_us, log.round_trip_us, strict=True):
        if not 0.0 <= reported < 1e12:
            return "a reported call time is negative or not a number"
        if reported > round_trip:
            return (f"a call reported {reported:.1f} us, longer than the {round_trip:.1f} us "
                    f"round trip the scorer measured around it")
    return None
