"""The bubblewrap sandbox an episode runs in: what it can see, and whether this machine has it.

Each episode gets new user, pid, ipc, uts, cgroup and network namespaces, a root that
holds only what `python -I -S` needs (the interpreter, its standard library without
site-packages, and the system's shared libraries, all read-only), a fresh `/proc` of its
own pid namespace, a minimal read-only `/dev` (so no `/dev/shm` to share or fill), and
one writable place: `/episode`, a size-limited tmpfs that vanishes with the sandbox. When the
task makes labels public, `/episode/train_examples.jsonl` holds its public examples: mode
0444, bound read-only (a write fails, the file cannot be removed or renamed) from bwrap's own
memory, so it takes none of the tmpfs's room.
The model gateway is a Unix socket bound in at `/sia/model.sock`; the network namespace
has nothing else (not even the host's loopback). Nothing of sia's home, the task folder
or the user's home exists inside. The harness runs as uid 65534 with no capabilities,
in a new session (no terminal to inject keystrokes into), as pid 1 of its pid namespace
(`--as-pid-1`: no bwrap reaper beside it, so the only process it can see, trace or read
the memory of is itself), and the whole namespace dies with it when sia kills bwrap
(`--die-with-parent`).

The options travel through a file descriptor (`--args`), so bwrap's command line, which
the host's process list shows to every user, names no gateway socket.

A fork server (`fork_server_options`, `sia.harness.zygote`) gets the same view, and makes
the same one again for each episode it forks: its own namespaces, /episode, /proc and socket,
but the network namespace, which its episodes share (the seccomp filter leaves them no socket
to meet on).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

EPISODE_DIR = "/episode"
MODEL_SOCKET = "/sia/model.sock"
RUNNER_PATH = "/sia/runner.py"
EXAMPLES_PATH = f"{EPISODE_DIR}/train_examples.jsonl"
"""Inside the episode directory, where the runner's audit hook lets a harness open files."""
SANDBOX_UID = 65534
LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")

FIX = ("install bubblewrap (apt-get install bubblewrap), allow unprivileged user namespaces "
       "(sysctl kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000), or run "
       "harnesses in the weaker process sandbox with --set sandbox=process")


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot isolate an episode on this machine; the message says why and how to fix it."""


@dataclass(frozen=True)
class Interpreter:
    """The files `python -I -S` needs, as host paths (the sandbox shows them at the same paths)."""

    executable: str
    stdlib: str
    site_packages: tuple[str, ...]
    shared_library: str | None


@functools.cache
def interpreter() -> Interpreter:
    """The real (non-venv) interpreter running sia, which the sandbox runs too."""
    executable = os.path.realpath(sys.executable)
    paths = sysconfig.get_paths()
    stdlib = os.path.realpath(paths["stdlib"])
    hidden = tuple(p for p in {os.path.realpath(os.path.join(stdlib, "site-packages")),
                               os.path.realpath(os.path.join(stdlib, "dist-packages"))}
                   if os.path.isdir(p))
    library = None
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
        candidate = os.path.join(sysconfig.get_config_var("LIBDIR") or "", name or "")
        if name and os.path.isfile(candidate):
            library = os.path.realpath(candidate)
    return Interpreter(executable, stdlib, hidden, library)


def _libraries() -> list[str]:
    """Shared-library directories, bound read-only; symlinked ones (merged /usr) stay links."""
    arguments: list[str] = []
    for directory in LIBRARY_DIRS:
        if os.path.islink(directory):
            arguments += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            arguments += ["--ro-bind", directory, directory]
    return arguments


def sandbox_command(python: Interpreter, result_fd: int) -> list[str]:
    """What bwrap runs inside: the runner, on the files `sandbox_options` puts in place."""
    return [python.executable, "-I", "-S", RUNNER_PATH, f"{EPISODE_DIR}/harness.py",
            f"{EPISODE_DIR}/sample.json", str(result_fd)]


def _isolated_interpreter(python: Interpreter, uid: int = SANDBOX_UID,
                          capabilities: tuple[str, ...] = ()) -> list[str]:
    """The namespaces, identity and read-only interpreter view every sandbox here shares.

    `capabilities` are kept (in the sandbox's user namespace only) by the fork server, which
    makes each episode's namespaces and mounts. It runs as uid 0 there: for any other uid bwrap
    nests a second user namespace, under which the sandbox's mounts are locked and an episode
    could not mount a /proc of its own.
    """
    added = [argument for name in capabilities for argument in ("--cap-add", name)]
    arguments = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--unshare-net", "--unshare-cgroup-try", "--uid", str(uid),
                 "--gid", str(uid), "--hostname", "sandbox", "--die-with-parent",
                 "--as-pid-1", "--new-session", "--cap-drop", "ALL", *added, *_libraries(),
                 "--ro-bind", python.executable, python.executable,
                 "--ro-bind", python.stdlib, python.stdlib]
    if python.shared_library and not python.shared_library.startswith(LIBRARY_DIRS):
        arguments += ["--ro-bind", python.shared_library, python.shared_library]
    for hidden in python.site_packages:
        arguments += ["--tmpfs", hidden, "--remount-ro", hidden]
    return arguments


def _environment_and_filter(environment: dict[str, str], seccomp_fd: int) -> list[str]:
    arguments = ["--clearenv"]
    for name, value in environment.items():
        arguments += ["--setenv", name, value]
    return [*arguments, "--seccomp", str(seccomp_fd)]


def sandbox_options(python: Interpreter, *, runner: Path, model_socket: Path | None,
                    environment: dict[str, str], tmpfs_bytes: int, harness_fd: int,
                    sample_fd: int, seccomp_fd: int, examples_fd: int | None = None) -> list[str]:
    """bwrap's options for one episode: the namespaces and the view (the command follows).

    `examples_fd` holds the task's public examples, bound read-only at EXAMPLES_PATH.
    """
    arguments = [*_isolated_interpreter(python),
                 "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                 "--ro-bind", str(runner), RUNNER_PATH]
    if model_socket is not None:
        arguments += ["--ro-bind", str(model_socket), MODEL_SOCKET]
    arguments += ["--size", str(tmpfs_bytes), "--tmpfs", EPISODE_DIR,
                  "--file", str(harness_fd), f"{EPISODE_DIR}/harness.py",
                  "--file", str(sample_fd), f"{EPISODE_DIR}/sample.json"]
    if examples_fd is not None:
        arguments += ["--perms", "0444", "--ro-bind-data", str(examples_fd), EXAMPLES_PATH]
    arguments += ["--chdir", EPISODE_DIR, "--remount-ro", "/"]
    return [*arguments, *_environment_and_filter(environment, seccomp_fd)]


FORK_SERVER_PATH = "/sia/zygote.py"
FORK_SERVER_LAYOUT = "/sia/layout.json"
GATEWAY_DIR = "/sia/gateway"
EPISODE_FILTER_PATH = "/sia/episode.bpf"
FORK_SERVER_CAPABILITIES = ("CAP_SYS_ADMIN", "CAP_SETFCAP")


def fork_server_options(python: Interpreter, *, runner: Path, server: Path,
                        gateway_dir: Path | None, environment: dict[str, str], harness_fd: int,
                        episode_filter_fd: int, empty_fd: int, layout_fd: int,
                        seccomp_fd: int) -> list[str]:
    """bwrap's options for a fork server (`sia.harness.zygote`): an episode's view, plus the
    server beside the runner, its layout and the episodes' seccomp filter as files (not on
    its command line, which the host shows every user), the gateway's directory
    at GATEWAY_DIR (each episode binds its own socket from it at MODEL_SOCKET, on the empty
    placeholder, and hides the rest) and /sia read-only. Each episode mounts its own
    /episode and /proc over the server's."""
    arguments = [*_isolated_interpreter(python, 0, FORK_SERVER_CAPABILITIES),
                 "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                 "--tmpfs", "/sia", "--ro-bind", str(runner), RUNNER_PATH,
                 "--ro-bind", str(server), FORK_SERVER_PATH,
                 "--file", str(episode_filter_fd), EPISODE_FILTER_PATH,
                 "--file", str(layout_fd), FORK_SERVER_LAYOUT,
                 "--file", str(empty_fd), MODEL_SOCKET]
    arguments += (["--ro-bind", str(gateway_dir), GATEWAY_DIR] if gateway_dir is not None
                  else ["--dir", GATEWAY_DIR])
    arguments += ["--remount-ro", "/sia", "--tmpfs", EPISODE_DIR,
                  "--file", str(harness_fd), f"{EPISODE_DIR}/harness.py",
                  "--chdir", EPISODE_DIR, "--remount-ro", "/"]
    return [*arguments, *_environment_and_filter(environment, seccomp_fd)]


def code_sandbox_options(python: Interpreter, *, read_only: tuple[str, ...], runner: Path,
                         runner_path: str, environment: dict[str, str], tmpfs_bytes: int,
                         seccomp_fd: int) -> list[str]:
    """bwrap's options for running untrusted answer code (`sia.tasks.answer_sandbox`).

    The same namespaces, identity and read-only interpreter view as an episode, plus the
    host directories `read_only` (the venv's site-packages, for torch and numpy) at their
    own paths, and no gateway socket; the answer's inputs arrive on a pipe, not as files.
    """
    arguments = _isolated_interpreter(python)
    for directory in read_only:
        arguments += ["--ro-bind", directory, directory]
    arguments += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                  "--ro-bind", str(runner), runner_path,
                  "--size", str(tmpfs_bytes), "--tmpfs", EPISODE_DIR,
                  "--chdir", EPISODE_DIR, "--remount-ro", "/"]
    return [*arguments, *_environment_and_filter(environment, seccomp_fd)]


@functools.cache
def bwrap_path() -> str | None:
    return shutil.which("bwrap", path="/usr/local/bin:/usr/bin:/bin")


@functools.cache
def unavailable_reason() -> str | None:
    """Why an episode cannot be isolated here (None when it can); probed once per process.

    The probe starts a real sandbox with every namespace the episodes use, so a kernel
    that refuses user namespaces (or a container that forbids them) is found up front.
    """
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux, and this is {sys.platform}"
    from sia.harness.seccomp import UnsupportedMachine, episode_filter

    try:
        episode_filter()
    except UnsupportedMachine as exc:
        return str(exc)
    executable = bwrap_path()
    if executable is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [executable, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-net", "--unshare-cgroup-try", "--die-with-parent", "--new-session",
             "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
    try:
        result = subprocess.run(probe, check=False, capture_output=True, text=True, timeout=20,
                                env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not start: {exc}"
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        return f"bubblewrap cannot create the sandbox's namespaces ({detail})"
    return None


def require_bwrap() -> str:
    """bwrap's path, or SandboxUnavailable with one line saying why and how to fix it."""
    reason = unavailable_reason()
    if reason is not None:
        raise SandboxUnavailable(f"cannot isolate harness code: {reason}; to fix it, {FIX}")
    path = bwrap_path()
    assert path is not None
    return path
