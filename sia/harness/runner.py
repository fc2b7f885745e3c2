"""Runs one harness in a sandboxed child process (stdlib only: it starts with `python -I -S`).

Protocol: argv = [harness.py, sample.json, result_fd]; the model's base URL is in the
environment as SIA_MODEL_URL and the limits as SIA_LIMITS ("memory_bytes cpu_s file_bytes"),
which the runner applies to itself before any harness code is loaded. The result goes to a
dedicated file descriptor, never to stdout, so a harness that prints garbage cannot forge
its answer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import traceback
import urllib.error
import urllib.request

MAX_ANSWER = 100_000


class ModelError(RuntimeError):
    """The gateway refused or failed a call (budget spent, bad parameters, backend error)."""


class Model:
    """The harness's only way to the target model: an OpenAI-compatible endpoint."""

    def __init__(self, base_url: str | None) -> None:
        self._base = base_url.rstrip("/") if base_url else None

    def _post(self, path: str, body: dict) -> dict:
        if self._base is None:
            raise RuntimeError("no model endpoint is available to this episode")
        request = urllib.request.Request(self._base + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except Exception:  # noqa: BLE001 - any unreadable error body falls back to the reason
                message = exc.reason
            raise ModelError(f"model call failed with HTTP {exc.code}: {message}") from None

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
    memory, cpu, size = (int(x) for x in os.environ.pop("SIA_LIMITS").split())
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


FORBIDDEN_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                    "os.fork", "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym",
                    "ctypes.cdata", "socket.bind")


def confine(private_dir: str) -> None:
    """From here on, files open only inside the private directory, the standard library
    and system configuration, and no process can be started.

    An audit hook cannot be removed once added, so harness code cannot lift it. It is the
    second wall (the first is that nothing tells the harness where task data lives): task
    folders, sia's home and the held-out labels stay unreadable even by absolute path.
    """
    import sysconfig

    paths = sysconfig.get_paths()
    allowed = tuple(os.path.realpath(p) + os.sep for p in {
        private_dir, paths["stdlib"], paths["platstdlib"], "/etc", "/dev", "/proc/self",
        "/usr/share/zoneinfo"})
    devices = ("/dev/null", "/dev/urandom", "/dev/random")

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            path = args[0].decode() if isinstance(args[0], bytes) else args[0]
            real = os.path.realpath(path)
            if real in devices or (real + os.sep).startswith(allowed):
                return
            raise PermissionError(f"the sandbox does not allow opening {path}")
        if event.startswith(FORBIDDEN_EVENTS):
            raise PermissionError(f"the sandbox does not allow {event}")

    sys.addaudithook(hook)


def main() -> None:
    limit_self()
    harness_path, sample_path, result_fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = os.fdopen(result_fd, "w")
    del sys.argv[1:]

    def report(**outcome: object) -> None:
        result.write(json.dumps(outcome))
        result.close()

    with open(sample_path, encoding="utf-8") as handle:
        sample = json.load(handle)
    import urllib.request  # noqa: F401 - loaded before confinement, with everything it opens
    confine(os.path.dirname(os.path.abspath(harness_path)))
    try:
        spec = importlib.util.spec_from_file_location("harness", harness_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        solve = module.solve
    except BaseException as exc:  # noqa: BLE001 - whatever loading raises is the harness's fault
        traceback.print_exc()
        return report(status="invalid_harness", error=f"{type(exc).__name__}: {exc}"[:500])
    try:
        answer = solve(sample, Model(os.environ.get("SIA_MODEL_URL")))
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
