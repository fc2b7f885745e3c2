"""Local training: each job runs in its own process (`python -m sia.train.job JOB_DIR`).

The child is started in a new session, so a crash, Ctrl-C or `kill -9` of the process
that submitted it does not stop it, and a crash of the child (out of memory, a torch
abort) cannot take the run down: `wait` turns it into a clear `TrainingFailed` carrying
the tail of the child's stderr.

One job id ↔ at most one process. The child holds an exclusive `flock` on
`JOB_DIR/lock` for its whole life; `submit` takes that lock *before* spawning and hands
the locked file to the child (`pass_fds`), so there is no window in which the job is
unlocked while it runs. The kernel drops the lock when the child dies (even by SIGKILL),
so a lock that can be taken means "nobody is training this job". `submit` and liveness
probes serialise on `JOB_DIR/submit.lock`, so two submitters cannot both see the job as
idle and both start it.

Submitting a job that is DONE returns its manifest at once; submitting a job that is
running re-attaches to its process; submitting a job whose process died resumes it
from its checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sia.train.job import EXIT_LOCKED, JobError, Manifest, acquire_job_lock, atomic_write, load_manifest
from sia.train.spec import TrainingSpec

BACKEND = "local"


class TrainingFailed(RuntimeError):
    """The job's process ended without finishing the job."""

    def __init__(self, job_id: str, returncode: int | None, stderr_tail: str) -> None:
        how = "was killed or exited" if returncode is None else (
            f"was killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}")
        super().__init__(f"training job {job_id[:12]} {how} without finishing"
                         + (f"; last lines of its stderr:\n{stderr_tail}" if stderr_tail else ""))
        self.job_id = job_id
        self.returncode = returncode
        self.stderr_tail = stderr_tail


@dataclass
class TrainHandle:
    job_id: str
    job_dir: Path
    pid: int | None
    started: bool
    """True if this `submit` started a process; False if it re-attached or found it DONE."""
    manifest: Manifest | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def call_id(self) -> str:
        """What to record in TrainingJobSubmitted: `attach(call_id)` finds the job again."""
        return self.job_id

    @property
    def done(self) -> bool:
        return self.manifest is not None


class LocalTrainer:
    backend = BACKEND

    def __init__(self, root: Path, *, python: str | None = None,
                 env: dict[str, str] | None = None, poll_s: float = 0.1) -> None:
        self.root = Path(root)
        self.python = python or sys.executable
        self.env = dict(env or {})
        self.poll_s = poll_s

    # -- paths ---------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        if len(job_id) != 64 or any(c not in "0123456789abcdef" for c in job_id):
            raise JobError(f"not a job id: {job_id!r}")
        return self.root / "jobs" / job_id

    @contextmanager
    def _submit_lock(self, job_dir: Path) -> Iterator[None]:
        fd = os.open(job_dir / "submit.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _running(self, job_dir: Path) -> bool:
        """Is some process holding the job lock? Call under the submit lock."""
        fd = acquire_job_lock(job_dir)
        if fd is None:
            return True
        os.close(fd)
        return False

    @staticmethod
    def _pid(job_dir: Path) -> int | None:
        try:
            return int((job_dir / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    # -- API -----------------------------------------------------------------------

    def submit(self, spec: TrainingSpec, inputs: dict[str, Any]) -> TrainHandle:
        """Start the job (or find it DONE, or re-attach to its live process).

        `inputs`: {"model_dir": path, "init_adapter_dir": path | None, "data_path": path}.
        """
        job_id = spec.job_id
        job_dir = self.job_dir(job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        manifest = load_manifest(job_dir)
        if manifest is not None:
            return TrainHandle(job_id, job_dir, None, started=False, manifest=manifest)
        with self._submit_lock(job_dir):
            manifest = load_manifest(job_dir)
            if manifest is not None:
                return TrainHandle(job_id, job_dir, None, started=False, manifest=manifest)
            lock = acquire_job_lock(job_dir)
            if lock is None:  # alive: re-attach, never a second process
                return TrainHandle(job_id, job_dir, self._pid(job_dir), started=False)
            try:
                self._write_job_files(job_dir, spec, inputs)
                process = self._spawn(job_dir, lock)
            finally:
                os.close(lock)  # the child holds the same open file, hence the lock
            atomic_write(job_dir / "pid", f"{process.pid}\n")
            return TrainHandle(job_id, job_dir, process.pid, started=True, process=process)

    def attach(self, job_id: str) -> TrainHandle | None:
        """The job's handle if it is DONE or running; None if it must be submitted again."""
        job_dir = self.job_dir(job_id)
        if not job_dir.is_dir():
            return None
        manifest = load_manifest(job_dir)
        if manifest is not None:
            return TrainHandle(job_id, job_dir, None, started=False, manifest=manifest)
        with self._submit_lock(job_dir):
            if self._running(job_dir):
                return TrainHandle(job_id, job_dir, self._pid(job_dir), started=False)
        manifest = load_manifest(job_dir)
        if manifest is not None:
            return TrainHandle(job_id, job_dir, None, started=False, manifest=manifest)
        return None

    def wait(self, handle: TrainHandle, on_progress: Callable[[dict[str, Any]], None] | None = None,
             *, timeout: float | None = None) -> Manifest:
        """Follow the job to its end, calling `on_progress` with each metrics.jsonl record."""
        if handle.manifest is not None:
            return handle.manifest
        job_dir = handle.job_dir
        deadline = None if timeout is None else time.monotonic() + timeout
        offset = 0
        while True:
            offset = self._tail(job_dir / "metrics.jsonl", offset, on_progress)
            manifest = load_manifest(job_dir)
            if manifest is not None:
                self._reap(handle)
                handle.manifest = manifest
                return manifest
            if self._exited(handle):
                self._tail(job_dir / "metrics.jsonl", offset, on_progress)
                manifest = load_manifest(job_dir)
                if manifest is not None:
                    handle.manifest = manifest
                    return manifest
                returncode = handle.process.returncode if handle.process is not None else None
                if returncode == EXIT_LOCKED:
                    raise JobError(f"job {handle.job_id[:12]}: another process holds its lock")
                raise TrainingFailed(handle.job_id, returncode, self.stderr_tail(job_dir))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"training job {handle.job_id[:12]} still running after {timeout}s")
            time.sleep(self.poll_s)

    def run(self, spec: TrainingSpec, inputs: dict[str, Any],
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> Manifest:
        return self.wait(self.submit(spec, inputs), on_progress)

    def run_effect(self, spec: TrainingSpec, inputs: dict[str, Any], ctx: Any,
                   on_progress: Callable[[dict[str, Any]], None] | None = None) -> Manifest:
        """Run inside a `train` effect handler (`ctx`: sia.effects.base.EffectContext).

        First attempt: submit and `ctx.report` TrainingJobSubmitted (call_id = job_id) at
        once. A resumed attempt (`ctx.call_id` recorded) re-attaches to the live process or
        the DONE job, and submits again (resuming from the checkpoint) only if neither.
        """
        from sia.core.events.types import TrainingJobSubmitted

        handle = self.attach(ctx.call_id) if ctx.call_id is not None else None
        if handle is None:
            handle = self.submit(spec, inputs)
            if ctx.call_id is None:
                ctx.report(TrainingJobSubmitted(effect_id=ctx.effect_id, job_id=spec.job_id,
                                                backend=self.backend, call_id=handle.call_id))
        return self.wait(handle, on_progress)

    @staticmethod
    def stderr_tail(job_dir: Path, lines: int = 30) -> str:
        try:
            text = (job_dir / "stderr.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    # -- internals -----------------------------------------------------------------

    def _write_job_files(self, job_dir: Path, spec: TrainingSpec, inputs: dict[str, Any]) -> None:
        spec_path = job_dir / "spec.json"
        if not spec_path.is_file():
            atomic_write(spec_path, spec.to_json())
        init = inputs.get("init_adapter_dir")
        atomic_write(job_dir / "inputs.json", json.dumps({
            "model_dir": str(Path(inputs["model_dir"]).resolve()),
            "init_adapter_dir": str(Path(init).resolve()) if init else None,
            "data_path": str(Path(inputs["data_path"]).resolve()),
        }, sort_keys=True))

    def _spawn(self, job_dir: Path, lock_fd: int) -> subprocess.Popen[bytes]:
        from sia.store.redact import secret_names

        # The trainer needs no key: keys stay out of the child and so out of its stderr.log.
        env = {name: value for name, value in os.environ.items()
               if name not in secret_names(os.environ)} | self.env
        source_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
        log = open(job_dir / "stderr.log", "ab")
        try:
            log.write(f"--- sia.train.job starting at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            log.flush()
            return subprocess.Popen(
                [self.python, "-m", "sia.train.job", str(job_dir), "--lock-fd", str(lock_fd)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(lock_fd,),
                start_new_session=True, env=env, cwd=job_dir)
        finally:
            log.close()

    def _exited(self, handle: TrainHandle) -> bool:
        if handle.process is not None:
            return handle.process.poll() is not None
        with self._submit_lock(handle.job_dir):
            return not self._running(handle.job_dir)

    @staticmethod
    def _reap(handle: TrainHandle) -> None:
        if handle.process is not None:
            try:
                handle.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    @staticmethod
    def _tail(path: Path, offset: int, on_progress: Callable[[dict[str, Any]], None] | None) -> int:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return offset
        end = data.rfind(b"\n")
        if end < 0:
            return offset
        if on_progress is not None:
            for line in data[: end + 1].splitlines():
                if line.strip():
                    try:
                        on_progress(json.loads(line))
                    except ValueError:
                        continue
        return offset + end + 1
