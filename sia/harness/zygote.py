"""The fork server inside one bubblewrap sandbox: a warm interpreter that forks one child per
episode, each child walled off from its siblings before any harness code runs.

Starting a fresh interpreter costs every episode about 20 ms of CPU, which caps a 2-core
machine near 50 episodes a second however slow the model is. Here one interpreter per harness
imports the runner once; an episode costs a fork and a few system calls.

Each episode is forked into a pid namespace made for it alone (it is pid 1 there; the server
returns its own later children to its own namespace), enters new mount and ipc namespaces
and, before loading the harness:

* mounts its own size-capped tmpfs on /episode (the harness, the sample and the public
  examples are copied in, the examples bound read-only over themselves: the same layout as a
  sandbox of its own), and a /proc that shows
  its pid namespace only (`subset=pid`: no /proc/sys or other global files);
* binds its own gateway socket at /sia/model.sock and hides the gateway directory (every
  episode's socket) under an empty read-only tmpfs;
* enters a user namespace of its own as uid 65534 (so RLIMIT_NPROC counts its threads alone),
  which leaves it no capability where the sandbox's mounts and namespaces live; drops the
  capabilities of the new namespace too, and installs the episode's seccomp filter (no second
  process, no unshare, setns, mount, ptrace, ..., and no socket but a Unix stream client's)
  on top of the server's.

So an episode cannot see, signal or trace a sibling (each is alone in its pid namespace), share
memory with one (its ipc namespace), meet one on a socket (the episodes share the server's
network namespace, which has loopback alone, but the filter lets none of them listen or make
any socket other than a Unix stream client: see `sia.harness.seccomp`), or read or write a
sibling's files (each /episode is a different tmpfs, and nothing else is writable). What the
server's memory holds is inherited by every episode, so it holds the harness and nothing of
any sample: an episode's files arrive as descriptors that only the episode reads.

Protocol on the control socket (SOCK_SEQPACKET, JSON messages): the host sends
`{"run": id, "socket": name|null, "examples": bool}` with the descriptors result, stdout,
stderr, sample[, examples] and `{"kill": id}`; the server answers `{"ready": true}` once, then
`{"exit": id, "code": n, "started": bool, "cpu_s": s, "max_rss_mb": m}` per episode (the
kernel's accounting; `started` false when it ended before its walls were up).
The host closing the socket ends the server, and with it (the sandbox's pid 1) every episode.

Runs as `python -I -S /sia/zygote.py CONTROL_FD LAYOUT` (LAYOUT: a JSON file naming the episode
directory, the model socket, the gateway directory, the episodes' filter and the public
examples' file, as `sia.harness.bwrap` places them) with uid 0 and CAP_SYS_ADMIN and CAP_SETFCAP
in the sandbox's user namespace (needed to make the namespaces and mounts above, and to map
uid 65534 onto it); no harness code ever runs with them.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import select
import signal
import socket
import sys
from types import CodeType, ModuleType
from typing import NamedTuple

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
CLONE_NEWIPC = 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
CAPABILITY_VERSION_3 = 0x20080522
SANDBOX_UID = 65534
PAGE = 4096
MAX_FDS = 8
WARM_MODULES = ("collections", "math", "random", "re", "string", "itertools", "functools")
"""Standard modules harnesses commonly import, imported once here instead of per episode."""

libc = ctypes.CDLL(None, use_errno=True)


class Setup(NamedTuple):
    """What every episode of this server shares: where things go, the harness, the filter."""

    layout: dict[str, str]
    runner: ModuleType
    harness: bytes
    compiled: CodeType | None
    """The harness compiled once here (compiling runs none of it); None if it does not compile,
    so that each episode reports why as a sandbox of its own would."""
    program: bytes
    file_bytes: int


class _CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapabilityData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _FilterProgram(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(source: str, target: str, kind: str | None, flags: int, data: str | None = None) -> None:
    _check(libc.mount(source.encode(), target.encode(), kind.encode() if kind else None,
                      ctypes.c_ulong(flags), data.encode() if data else None),
           f"mount {kind or 'bind'} on {target}")


def _write(path: str, data: bytes, mode: int = 0o600) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
    finally:
        os.close(descriptor)


def _read_all(descriptor: int) -> bytes:
    chunks = []
    while chunk := os.read(descriptor, 1 << 20):
        chunks.append(chunk)
    os.close(descriptor)
    return b"".join(chunks)


def _enter_own_user_namespace() -> None:
    """Become uid 65534 of a user namespace of its own, with no capabilities anywhere."""
    _check(libc.unshare(CLONE_NEWUSER), "unshare user namespace")
    _write("/proc/self/setgroups", b"deny")
    _write("/proc/self/uid_map", f"{SANDBOX_UID} 0 1".encode())
    _write("/proc/self/gid_map", f"{SANDBOX_UID} 0 1".encode())
    none = (_CapabilityData * 2)()
    _check(libc.capset(ctypes.byref(_CapabilityHeader(CAPABILITY_VERSION_3, 0)), none), "capset")


def _install_filter(program: bytes) -> None:
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _FilterProgram(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def _close_all_but(keep: set[int]) -> None:
    low = 3
    for descriptor in sorted(keep | {1 << 20}):
        if descriptor >= low:
            os.closerange(low, descriptor)
            low = descriptor + 1


def _episode(job: dict, fds: list[int], walls_up: int, setup: Setup) -> None:
    """Wall the episode off (see the module's docstring), then hand over to the runner."""
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare namespaces")
    os.setsid()  # its own session (and no terminal), as bwrap's --new-session gives a sandbox
    result, stdout, stderr, sample = fds[:4]
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    home, model_socket, gateway = (setup.layout[k] for k in ("episode_dir", "model_socket",
                                                             "gateway_dir"))
    examples = _read_all(fds[4]) if job.get("examples") else b""
    room = setup.file_bytes + len(examples) + PAGE  # the examples take none of the episode's room
    _mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, f"size={room},mode=0755")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "subset=pid")
    if job.get("socket"):
        name = os.path.basename(str(job["socket"]))
        own = os.open(os.path.join(gateway, name), os.O_PATH)
        _mount(f"/proc/self/fd/{own}", model_socket, None, MS_BIND)
        os.close(own)
        os.environ["SIA_MODEL_SOCKET"] = model_socket  # the server's has neither variable
    _mount("tmpfs", gateway, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    _write(f"{home}/harness.py", setup.harness, 0o644)
    _write(f"{home}/sample.json", _read_all(sample), 0o644)
    if job.get("examples"):
        _write(setup.layout["examples"], examples, 0o444)
        _mount(setup.layout["examples"], setup.layout["examples"], None, MS_BIND)
        _mount("none", setup.layout["examples"], None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.environ["SIA_TRAIN_EXAMPLES"] = setup.layout["examples"]
    _enter_own_user_namespace()
    null = os.open("/dev/null", os.O_RDONLY)
    for source, target in ((null, 0), (stdout, 1), (stderr, 2)):
        os.dup2(source, target)
        os.close(source)
    os.chdir(home)
    _install_filter(setup.program)
    os.write(walls_up, b"1")
    os.close(walls_up)
    sys.argv = [setup.layout["runner"], f"{home}/harness.py", f"{home}/sample.json", str(result)]
    setup.runner.main(setup.compiled)


class Server:
    """The loop: start episodes on request, kill them on request, report each one's end."""

    def __init__(self, control: socket.socket, setup: Setup) -> None:
        self.control, self.setup = control, setup
        self.episodes: dict[int, tuple[str, int, int]] = {}  # pidfd -> (job id, pid, walled)
        self.by_job: dict[str, int] = {}
        self.own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY)

    def send(self, message: dict) -> None:
        self.control.send(json.dumps(message).encode())

    def serve(self) -> None:
        self.send({"ready": True})
        while True:
            readable, _, _ = select.select([self.control.fileno(), *self.episodes], [], [])
            for ready in readable:
                if ready == self.control.fileno():
                    if not self.receive():
                        return
                else:
                    self.reap(ready)

    def receive(self) -> bool:
        message, fds, _, _ = socket.recv_fds(self.control, 65536, MAX_FDS)
        if not message:
            return False
        job = json.loads(message)
        if "kill" in job:
            pid = self.by_job.get(str(job["kill"]))
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            return True
        self.start(job, fds)
        return True

    def start(self, job: dict, fds: list[int]) -> None:
        """Fork the episode into a pid namespace of its own (made for this fork alone: the
        server's children go back to its own namespace right after). The episode says on a
        pipe of its own, which it closes before any harness code runs, that its walls are up:
        an episode that ends without saying so is reported as not started (sia's failure,
        not the harness's), and nothing the harness does can say it for it."""
        job_id = str(job["run"])
        walled, walls_up = os.pipe()
        try:
            _check(libc.unshare(CLONE_NEWPID), "unshare pid namespace")
            pid = os.fork()
        except OSError as exc:
            os.close(walled)
            os.close(walls_up)
            self.not_started(job_id, fds, exc)
            return
        if pid == 0:
            code = 70
            try:
                os.close(walled)
                _close_all_but({*fds, walls_up})
                _episode(job, fds, walls_up, self.setup)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported as the episode's failure
                os.write(2 if fds[2] < 0 else fds[2],
                         f"sia: the episode's sandbox could not be set up: {exc}\n".encode())
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):
                        pass
                os._exit(code)
        os.close(walls_up)
        _check(libc.setns(self.own_pid_namespace, CLONE_NEWPID), "return to own pid namespace")
        for descriptor in fds:
            os.close(descriptor)
        handle = os.pidfd_open(pid)
        self.episodes[handle] = (job_id, pid, walled)
        self.by_job[job_id] = pid

    def not_started(self, job_id: str, fds: list[int], exc: OSError) -> None:
        if len(fds) > 2:
            os.write(fds[2], f"sia: the episode could not be started: {exc}\n".encode())
        for descriptor in fds:
            os.close(descriptor)
        self.send({"exit": job_id, "code": 70, "cpu_s": 0.0, "max_rss_mb": 0.0, "started": False})

    def reap(self, handle: int) -> None:
        job, pid, walled = self.episodes.pop(handle)
        self.by_job.pop(job, None)
        os.close(handle)
        _, status, usage = os.wait4(pid, 0)
        os.set_blocking(walled, False)
        try:
            started = os.read(walled, 1) == b"1"
        except BlockingIOError:
            started = False
        os.close(walled)
        self.send({"exit": job, "code": os.waitstatus_to_exitcode(status), "started": started,
                   "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024})


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    with open(sys.argv[2], encoding="utf-8") as handle:
        layout = json.load(handle)
    del sys.argv[1:]
    with open(f"{layout['episode_dir']}/harness.py", "rb") as handle:
        harness = handle.read()
    with open(layout["filter"], "rb") as handle:
        program = handle.read()
    for name in WARM_MODULES:
        __import__(name)
    for name in ("mount", "capset", "prctl"):  # looked up here, not in every episode
        getattr(libc, name)
    runner = _load(layout["runner"])
    runner.system_roots()
    try:
        compiled = compile(harness, f"{layout['episode_dir']}/harness.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        compiled = None
    Server(control, Setup(layout, runner, harness, compiled,
                          program, int(os.environ["SIA_LIMITS"].split()[2]))).serve()


def _load(path: str) -> ModuleType:
    """The runner, imported once here (-I leaves this file's directory off sys.path)."""
    spec = importlib.util.spec_from_file_location("runner", path)
    assert spec is not None and spec.loader is not None, "a .py path always has a loader"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
