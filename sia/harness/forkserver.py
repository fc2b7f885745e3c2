"""Episodes forked from a warm sandbox: one bubblewrap fork server per harness (`sia.harness.zygote`).

A sandbox of its own per episode starts a fresh interpreter each time, about 20 ms of CPU that
no model latency hides once episodes run concurrently. A `ForkServer` starts the sandbox and
its interpreter once per (harness, limits, gateway) and forks each episode from it, walled off
from its siblings by namespaces of its own (the zygote's docstring says how and what that
fences); an episode then costs a few milliseconds.

The server is sia's code, but it shares a sandbox with harness code, so nothing it is sent
says more than an episode may know: a job is an id, the name of the episode's own gateway
socket and descriptors (result pipe, stdout, stderr, sample, examples) that only that episode
opens. Servers are kept per key while in use and a few more while idle (`IDLE_SERVERS`),
and each is spawned from a thread of its own that lives as long as it does, because bwrap's
`--die-with-parent` follows the spawning thread.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sia.harness.bwrap import (
    EPISODE_DIR,
    EPISODE_FILTER_PATH,
    EXAMPLES_PATH,
    FORK_SERVER_LAYOUT,
    FORK_SERVER_PATH,
    GATEWAY_DIR,
    MODEL_SOCKET,
    RUNNER_PATH,
    fork_server_options,
    interpreter,
    require_bwrap,
)
from sia.harness.seccomp import episode_filter, fork_server_filter

RUNNER = Path(__file__).with_name("runner.py")
SERVER = Path(__file__).with_name("zygote.py")
IDLE_SERVERS = 4
START_TIMEOUT_S = 20.0
KILL_GRACE_S = 5.0
TAIL = 4096


class ServerGone(RuntimeError):
    """The fork server ended (or never started), or could not wall an episode off before its
    harness ran; the message holds the last words."""


def memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding `data`, positioned at its start."""
    fd = os.memfd_create(name)
    try:
        rest = memoryview(data)
        while rest:
            rest = rest[os.write(fd, rest):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Job:
    """One episode sent to a server; `wake` becomes readable when its end is known.

    Told its end only under the server's lock and while the server still holds it, since
    the episode's thread closes `wake` (under that lock) the moment it sees the end."""

    wake: int = field(default_factory=lambda: os.eventfd(0, os.EFD_CLOEXEC))
    code: int | None = None
    started: bool = True
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    lost: str | None = None

    def end(self, code: int | None, cpu_s: float = 0.0, max_rss_mb: float = 0.0,
            lost: str | None = None, started: bool = True) -> None:
        self.code, self.cpu_s, self.max_rss_mb, self.lost = code, cpu_s, max_rss_mb, lost
        self.started = started
        os.eventfd_write(self.wake, 1)

    @property
    def ended(self) -> bool:
        return self.code is not None or self.lost is not None


class ForkServer:
    """One sandbox running the fork server for one harness; `start` sends it an episode."""

    def __init__(self, source: str, environment: dict[str, str], gateway_dir: Path | None) -> None:
        self._control, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._gone: str | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed as the server ends (_live)
        self.users = 0
        self.pid: int | None = None
        """bwrap's pid on the host, once started (the server runs as its child)."""
        self._thread = threading.Thread(target=self._live, args=(source, environment, gateway_dir),
                                         name="sia-fork-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._gone is not None:
            self.close()
            raise ServerGone(self._gone or f"the fork server did not start within {START_TIMEOUT_S:g} s")

    def start(self, *, result_fd: int, stdout: IO[bytes], stderr: IO[bytes], sample: bytes,
              examples: bytes | None, model_socket: Path | None) -> tuple[str, Job]:
        """Send one episode; returns its id and the job its end will be reported on."""
        job_id, job = str(next(self._ids)), Job()
        fds = [memfd("sample", sample)] + ([memfd("examples", examples)] if examples is not None
                                            else [])
        message = json.dumps({"run": job_id, "examples": examples is not None,
                              "socket": model_socket.name if model_socket else None}).encode()
        try:
            with self._lock:
                if self._gone is not None:
                    raise ServerGone(self._gone)
                self._jobs[job_id] = job
                try:
                    socket.send_fds(self._control, [message],
                                    [result_fd, stdout.fileno(), stderr.fileno(), *fds])
                except OSError as exc:
                    del self._jobs[job_id]
                    raise ServerGone(f"the fork server stopped taking episodes: {exc}") from None
        finally:
            for fd in fds:
                os.close(fd)
        return job_id, job

    def kill(self, job_id: str) -> None:
        with self._lock:
            if self._gone is None:
                try:
                    self._control.send(json.dumps({"kill": job_id}).encode())
                except OSError:
                    pass

    def forget(self, job_id: str) -> None:
        """Drop a finished (or abandoned) job; its end can no longer be reported."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is not None:
                os.close(job.wake)

    @property
    def alive(self) -> bool:
        return self._gone is None

    def close(self) -> None:
        """End the server and every episode it runs (it exits when its control socket closes)."""
        try:
            self._control.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(timeout=10)

    def _live(self, source: str, environment: dict[str, str], gateway_dir: Path | None) -> None:
        """Spawn the sandbox, then relay its reports until it ends: on this thread, which
        lives as long as the sandbox, since bwrap dies with the thread that spawned it."""
        try:
            child = self._spawn(source, environment, gateway_dir)
            self.pid = child.pid
        except Exception as exc:  # noqa: BLE001 - any failure to start is the server's end
            self._control.close()
            self._stderr.close()
            self._end(f"the fork server could not start: {type(exc).__name__}: {exc}")
            return
        try:
            while True:
                message = self._control.recv(65536)
                if not message:
                    break
                report = json.loads(message)
                if report.get("ready"):
                    self._ready.set()
                    continue
                with self._lock:  # held while the job is told: `forget` closes its wake-up
                    job = self._jobs.get(str(report["exit"]))
                    if job is not None:
                        job.end(int(report["code"]), float(report["cpu_s"]),
                                float(report["max_rss_mb"]), started=bool(report["started"]))
        except (OSError, ValueError, KeyError) as exc:
            self._end(f"the fork server's reports broke off: {exc}")
        finally:
            self._control.close()
            try:  # the server exits once its control socket is closed, and bwrap after it
                code = child.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            self._end(f"the fork server exited {code}: {tail(self._stderr)}".strip())
            self._stderr.close()

    def _spawn(self, source: str, environment: dict[str, str],
               gateway_dir: Path | None) -> subprocess.Popen[bytes]:
        bwrap = require_bwrap()
        python = interpreter()
        fds: list[int] = []
        layout = json.dumps({"episode_dir": EPISODE_DIR, "model_socket": MODEL_SOCKET,
                             "gateway_dir": GATEWAY_DIR, "filter": EPISODE_FILTER_PATH,
                             "runner": RUNNER_PATH, "examples": EXAMPLES_PATH})
        try:
            for name, data in (("harness", source.encode("utf-8")), ("episode-filter", episode_filter()),
                               ("empty", b""), ("layout", layout.encode()),
                               ("seccomp", fork_server_filter())):
                fds.append(memfd(name, data))
            harness_fd, episode_filter_fd, empty_fd, layout_fd, seccomp_fd = fds
            options = fork_server_options(python, runner=RUNNER, server=SERVER,
                                          gateway_dir=gateway_dir, environment=environment,
                                          harness_fd=harness_fd, episode_filter_fd=episode_filter_fd,
                                          empty_fd=empty_fd, layout_fd=layout_fd, seccomp_fd=seccomp_fd)
            fds.append(memfd("options", b"".join(a.encode() + b"\0" for a in options)))
            control = self._theirs.fileno()
            return subprocess.Popen([bwrap, "--args", str(fds[-1]), python.executable, "-I", "-S",
                                     FORK_SERVER_PATH, str(control), FORK_SERVER_LAYOUT],
                                    env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                                    stdout=self._stderr, stderr=self._stderr,
                                    pass_fds=(control, *fds), start_new_session=True)
        finally:
            for fd in fds:
                os.close(fd)
            self._theirs.close()

    def _end(self, reason: str) -> None:
        with self._lock:
            if self._gone is None:
                self._gone = reason
            for job in self._jobs.values():
                if not job.ended:
                    job.end(None, lost=reason)
        self._ready.set()


def tail(handle: IO[bytes]) -> str:
    """The last TAIL bytes of a log file, without reading the rest of it."""
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - TAIL))
    return handle.read(TAIL).decode("utf-8", "replace")


class ForkServers:
    """The servers of this process, by (harness, environment, gateway directory)."""

    def __init__(self, idle: int = IDLE_SERVERS) -> None:
        self.idle = idle
        self._servers: OrderedDict[tuple[str, str, str], ForkServer] = OrderedDict()
        self._starting: dict[tuple[str, str, str], threading.Event] = {}
        self._lock = threading.Lock()

    def acquire(self, source: str, environment: dict[str, str],
                gateway_dir: Path | None) -> ForkServer:
        """The live server for this key, started on first use: by one caller while the
        others wait for it (32 episodes arriving at once would otherwise start 32 sandboxes)."""
        key = (source, json.dumps(environment, sort_keys=True), str(gateway_dir))
        while True:
            with self._lock:
                server = self._servers.get(key)
                if server is not None and server.alive:
                    self._servers.move_to_end(key)
                    server.users += 1
                    return server
                starting = self._starting.get(key)
                if starting is None:
                    starting = self._starting[key] = threading.Event()
                    break
            starting.wait()
        try:
            fresh = ForkServer(source, environment, gateway_dir)
        except BaseException:
            with self._lock:
                del self._starting[key]
            starting.set()
            raise
        with self._lock:
            self._servers[key] = fresh
            fresh.users += 1
            del self._starting[key]
            retired = self._retire()
        starting.set()
        for idle in retired:
            idle.close()
        return fresh

    def release(self, server: ForkServer) -> None:
        with self._lock:
            server.users -= 1
            retired = self._retire()
        for idle in retired:
            idle.close()

    def _retire(self) -> list[ForkServer]:
        """Drop dead servers and the least recently used idle ones beyond `idle`."""
        retired = []
        for key, server in list(self._servers.items()):
            if not server.alive and server.users == 0:
                retired.append(self._servers.pop(key))
        idle = [key for key, server in self._servers.items() if server.users == 0]
        for key in idle[: max(0, len(idle) - self.idle)]:
            retired.append(self._servers.pop(key))
        return retired

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), OrderedDict()
        for server in servers:
            server.close()


SERVERS = ForkServers()
