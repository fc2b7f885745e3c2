"""Runs one harness in a sandboxed child process (stdlib only: it starts with `python -I -S`).

Protocol: argv = [harness.py, sample.json, result_fd]; the model gateway's Unix socket is
in the environment as SIA_MODEL_SOCKET and the limits as SIA_LIMITS ("memory_bytes cpu_s
file_bytes threads", threads 0 for no cap), which the runner applies to itself before any harness code is
loaded. The result goes to a dedicated file descriptor, never to stdout, so a harness that
prints garbage cannot forge its answer.

The same runner serves both sandboxes. Under bubblewrap the namespaces and the seccomp
filter are the boundary and the audit hook only turns a forbidden act into a clear
error; in the process sandbox the audit hook is all there is (best effort: PEP 578 says
it is no security boundary).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import resource
import signal
import socket
import sys
import traceback
from types import CodeType

MAX_ANSWER = 100_000
MAX_FILES = 256
"""Open files and sockets: each pipe or socket pins kernel buffers that no rlimit counts."""


class ModelError(RuntimeError):
    """The gateway refused or failed a call (budget spent, bad parameters, backend error)."""


def post_unix(socket_path: str, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    """One HTTP/1.1 POST over the gateway's Unix socket (the sandbox has no network to speak
    TCP on), closed after the answer; returns its status and body.

    Written out rather than taken from http.client, whose import (with the email package
    that parses its headers) is about 20 ms of CPU in every episode's child, a third of it.
    """
    head = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    chunks = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(head + body)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    status_line, _, rest = b"".join(chunks).partition(b"\r\n")
    fields = status_line.split(maxsplit=2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        raise ModelError("the model gateway closed the connection without an HTTP answer")
    return int(fields[1]), rest.partition(b"\r\n\r\n")[2]


def __getattr__(name: str) -> object:
    """`UnixConnection`, http.client over a Unix socket, for code outside the sandbox (tests);
    defined on first use, so that the runner itself never imports http.client."""
    if name != "UnixConnection":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def __init__(self, path: str, timeout: float) -> None:
            super().__init__("localhost", timeout=timeout)
            self.socket_path = path

        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(self.socket_path)

    globals()[name] = UnixConnection
    return UnixConnection


class Model:
    """The harness's only way to the target model: an OpenAI-compatible endpoint on a Unix socket."""

    def __init__(self, socket_path: str | None) -> None:
        self._socket = socket_path or None

    def _post(self, path: str, body: dict) -> dict:
        if self._socket is None:
            raise RuntimeError("no model endpoint is available to this episode")
        status, data = post_unix(self._socket, "/v1" + path, json.dumps(body).encode(), timeout=120)
        if status != 200:
            try:
                message = json.loads(data)["error"]["message"]
            except Exception:  # noqa: BLE001 - any unreadable error body falls back to the status
                message = f"HTTP {status}"
            raise ModelError(f"model call failed with HTTP {status}: {message}")
        return json.loads(data)

    def complete(self, prompt: str, *, max_tokens: int = 64, temperature: float = 1.0,
                 stop: str | list[str] | None = None, n: int = 1) -> str | list[str]:
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "n": n}
        if stop:
            body["stop"] = stop
        texts = [c["text"] for c in sorted(self._post("/completions", body)["choices"],
                                           key=lambda c: c.get("index", 0))]
        return texts[0] if n == 1 else texts

    def chat(self, messages: list[dict], **params: object) -> str:
        body = {"messages": messages, **params}
        return self._post("/chat/completions", body)["choices"][0]["message"]["content"]


def limit_self() -> None:
    """Apply the episode's limits; they bind everything this process becomes (exec keeps them).

    RLIMIT_NPROC counts tasks per user; under bubblewrap that user exists only in the
    sandbox's user namespace (and the seccomp filter already forbids a second process), so
    it caps threads. The kernel does not apply it to host root, which a filter cannot fix.
    """
    memory, cpu, size, threads = (int(x) for x in os.environ.pop("SIA_LIMITS").split())
    signal.signal(signal.SIGXCPU, _out_of_cpu)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_FILES, MAX_FILES))
    if threads:
        resource.setrlimit(resource.RLIMIT_NPROC, (threads, threads))


def _out_of_cpu(signum: int, frame: object) -> None:
    """Exit as if killed by SIGXCPU: as pid 1 of a pid namespace (under bwrap) the runner
    would otherwise ignore the kernel's soft-limit signal and die only at the hard limit,
    by a SIGKILL that says nothing about why."""
    os._exit(128 + signal.SIGXCPU)


FORBIDDEN_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                    "os.fork", "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym",
                    "ctypes.cdata", "socket.bind")


@functools.cache
def system_roots() -> tuple[str, ...]:
    """The directories outside the private one a harness may open files in (the standard
    library, system configuration). Cached: a fork server computes them once for all its
    episodes, sparing each the import of sysconfig and its configuration data (~1 ms)."""
    import sysconfig

    paths = sysconfig.get_paths()
    return tuple(os.path.realpath(p) + os.sep for p in {
        paths["stdlib"], paths["platstdlib"], "/etc", "/dev", "/proc/self", "/usr/share/zoneinfo"})


def confine(private_dir: str, model_socket: str | None) -> None:
    """From here on, files open only inside the private directory, the standard library
    and system configuration, no process can be started, and sockets connect only to the
    model gateway.

    An audit hook cannot be removed once added, but Python code can rewrite the hook's
    own code (tests/hostile_harness.py does), so it is no wall: it gives an honest harness
    a clear PermissionError where the OS sandbox would give a bare errno, and it is all
    the process sandbox has.
    """
    allowed = (os.path.realpath(private_dir) + os.sep, *system_roots())
    devices = ("/dev/null", "/dev/urandom", "/dev/random")

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            path = args[0].decode() if isinstance(args[0], bytes) else args[0]
            real = os.path.realpath(path)
            if real in devices or (real + os.sep).startswith(allowed):
                return
            raise PermissionError(f"the sandbox does not allow opening {path}")
        if event == "socket.connect" and args[1] != model_socket:
            raise PermissionError(f"the sandbox does not allow connecting to {args[1]!r}")
        if event.startswith(FORBIDDEN_EVENTS):
            raise PermissionError(f"the sandbox does not allow {event}")

    sys.addaudithook(hook)


def main(compiled: CodeType | None = None) -> None:
    """Run the episode named by argv; `compiled` is the harness already compiled from that
    file's source (a fork server compiles it once for all its episodes)."""
    limit_self()
    sys.dont_write_bytecode = True  # -I ignores PYTHONDONTWRITEBYTECODE
    harness_path, sample_path, result_fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = os.fdopen(result_fd, "w")
    del sys.argv[1:]

    def report(**outcome: object) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        outcome.update(cpu_s=usage.ru_utime + usage.ru_stime, max_rss_mb=usage.ru_maxrss / 1024)
        result.write(json.dumps(outcome))
        result.close()

    with open(sample_path, encoding="utf-8") as handle:
        sample = json.load(handle)
    model_socket = os.environ.pop("SIA_MODEL_SOCKET", None)
    confine(os.path.dirname(os.path.abspath(harness_path)), model_socket)
    try:
        spec = importlib.util.spec_from_file_location("harness", harness_path)
        assert spec is not None and spec.loader is not None, "a .py path always has a loader"
        module = importlib.util.module_from_spec(spec)
        if compiled is None:
            spec.loader.exec_module(module)
        else:
            exec(compiled, module.__dict__)  # noqa: S102 - the harness's own module body
        solve = module.solve
    except BaseException as exc:  # noqa: BLE001 - whatever loading raises is the harness's fault
        traceback.print_exc()
        return report(status="invalid_harness", error=f"{type(exc).__name__}: {exc}"[:500])
    try:
        answer = solve(sample, Model(model_socket))
    except MemoryError:
        return report(status="memory", error="MemoryError")
    except BaseException as exc:  # noqa: BLE001 - whatever solve raises is recorded
        traceback.print_exc()
        return report(status="crash", error=f"{type(exc).__name__}: {exc}"[:500])
    if not isinstance(answer, str):
        return report(status="malformed", error=f"solve returned {type(answer).__name__}, not str")
    if len(answer) > MAX_ANSWER:
        return report(status="malformed", error=f"answer of {len(answer)} chars is over {MAX_ANSWER}")
    return report(status="ok", answer=answer)


if __name__ == "__main__":
    main()
