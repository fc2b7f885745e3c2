"""Episodes forked from one warm sandbox per harness (`sia.harness.forkserver`) are walled off
from each other and from the server: each test attacks a fence with a harness, the way a
harness rewarded by a score would."""

from __future__ import annotations

import ast
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from sia.harness import forkserver, sandbox
from sia.harness.backends import ScriptedBackend
from sia.harness.gateway import ModelGateway
from sia.harness.sandbox import Limits, run_episode
from tests.hostile_harness import DISARM

pytestmark = pytest.mark.skipif(sandbox.forking_unavailable_reason() is not None,
                                reason="this machine cannot fork episodes from a warm sandbox")

SECRET = "label-7f3a9c"
"""What one episode holds (in its sample and its public examples) and a sibling wants."""

SIBLINGS = DISARM + '''
import ctypes, glob, json, os, socket, time

RENDEZVOUS = [("abstract listener", socket.AF_UNIX, socket.SOCK_STREAM, "\\0sia-sibling"),
              ("abstract datagram", socket.AF_UNIX, socket.SOCK_DGRAM, "\\0sia-sibling-dgram"),
              ("tcp on loopback", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 4242)),
              ("udp on loopback", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 4242)),
              ("tcp6 on loopback", socket.AF_INET6, socket.SOCK_STREAM, ("::1", 4242))]
KEEP = []

def _holder(sample):
    open("/episode/secret.txt", "w").write(sample["secret"])
    for place in ("/tmp", "/sia", "/dev/shm", "/", "/sia/gateway"):
        try:
            open(os.path.join(place, "secret.txt"), "w").write(sample["secret"])
        except OSError:
            pass
    opened = []
    for name, family, kind, address in RENDEZVOUS:
        try:
            rendezvous = socket.socket(family, kind)
            rendezvous.bind(address)
            if kind == socket.SOCK_STREAM:
                rendezvous.listen(4)
            opened.append(name)
            KEEP.append(rendezvous)
        except OSError:
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    shm = libc.shmget(0x5151, 4096, 0o1666)
    time.sleep(3)
    return json.dumps({"shm": shm, "opened": opened})

def _seeker(sample):
    time.sleep(1)
    found = []
    places = ("/proc/*/root/episode/*", "/proc/*/root/*/secret.txt", "/proc/*/cwd/*", "/episode/*",
              "/*/secret.txt", "/secret.txt", "/sia/**", "/dev/**")
    for path in [path for place in places for path in glob.glob(place, recursive=True)]:
        try:
            if os.path.isfile(path) and sample["secret_reversed"][::-1] in open(path, errors="replace").read():
                found.append(path)
        except OSError:
            pass
    for pid in range(2, 4096):
        try:
            os.kill(pid, 0)
            found.append(f"pid {pid}")
        except OSError:
            pass
    for name, family, kind, address in RENDEZVOUS:
        try:
            with socket.socket(family, kind) as client:
                client.settimeout(1)
                if kind == socket.SOCK_STREAM:
                    client.connect(address)
                else:
                    client.sendto(b"hello", address)
                found.append(name)
        except OSError:
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.shmget(0x5151, 4096, 0o666) >= 0:
        found.append("shared memory")
    return json.dumps({"found": found, "processes": sorted(p for p in os.listdir("/proc") if p.isdigit()),
                       "gateway": os.listdir("/sia/gateway")})

def solve(sample, model):
    return _holder(sample) if sample["role"] == "holder" else _seeker(sample)
'''


@pytest.fixture
def gateway() -> Iterator[ModelGateway]:
    with ModelGateway(ScriptedBackend(replies={"ping": "pong"})) as opened:
        yield opened


def test_siblings_can_neither_see_nor_reach_each_other(gateway: ModelGateway) -> None:
    """The holder writes the secret everywhere it can, tries to open a meeting point on every
    kind of socket (abstract Unix stream and datagram, TCP and UDP on loopback) and makes SysV
    shared memory; its sibling of the same harness, in the same server at the same time, looks
    for all of it (files, /proc, signals, each socket, the memory) and finds nothing. Siblings
    share the server's network namespace, so it is the seccomp filter that leaves the holder
    no socket to open."""
    holder = {"role": "holder", "secret": SECRET}
    seeker = {"role": "seeker", "secret_reversed": SECRET[::-1]}
    with ThreadPoolExecutor(max_workers=2) as pool:
        held = pool.submit(run_episode, SIBLINGS, holder, model_socket=gateway.open_episode("holder"),
                           examples=json.dumps({"id": "seeker", "label": SECRET}).encode() + b"\n")
        time.sleep(0.3)
        sought = pool.submit(run_episode, SIBLINGS, seeker, model_socket=gateway.open_episode("seeker"),
                             examples=b'{"id": "holder", "label": "other"}\n')
        seen, kept = sought.result(), held.result()
    assert kept.status == "ok" and seen.status == "ok", (kept, seen)
    report = json.loads(seen.answer or "{}")
    assert report == {"found": [], "processes": ["1"], "gateway": []}
    opened = json.loads(kept.answer or "{}")
    assert opened["opened"] == [] and opened["shm"] >= 0


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _server_process(source: str) -> int:
    """The host pid of the fork server (bwrap's child running zygote.py) for `source`."""
    server = next(s for key, s in forkserver.SERVERS._servers.items() if key[0] == source)
    assert server.pid is not None
    for pid in _descendants(server.pid):
        try:
            if b"zygote.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError("no fork server process found")


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory needs root here")
def test_the_server_keeps_nothing_of_an_episodes_sample() -> None:
    """Every episode inherits the server's memory, so the server must never read a sample or
    examples: after an episode with the secret in both, the server's memory holds no copy."""
    source = "def solve(sample, model):\n    return sample['secret'][:3]\n"
    outcome = run_episode(source, {"secret": SECRET}, model_socket=None,
                          examples=json.dumps({"id": "x", "label": SECRET}).encode() + b"\n")
    assert outcome.status == "ok" and outcome.answer == SECRET[:3]
    pid = _server_process(source)
    memory = bytearray()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            span, permissions = line.split()[:2]
            if not permissions.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                memory += mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
    assert len(memory) > 1_000_000 and SECRET.encode() not in memory


def test_an_episode_holds_no_descriptor_of_the_server_and_cannot_forge_its_reports() -> None:
    """An episode has stdin, stdout, stderr and its result pipe, nothing else: no control socket
    on which to read a sibling's descriptors or forge a report; sending a forged end of every
    descriptor it has changes nothing for the next episode."""
    source = DISARM + '''
import json, os, socket
def solve(sample, model):
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    for fd in range(3, 256):
        try:
            socket.socket(fileno=os.dup(fd)).send(json.dumps({"exit": "0", "code": 0, "cpu_s": 0,
                                                               "max_rss_mb": 0}).encode())
        except OSError:
            pass
    return json.dumps(fds)
'''
    first = run_episode(source, {}, model_socket=None)
    assert first.status == "ok"
    descriptors = json.loads(first.answer or "[]")
    assert descriptors[:3] == [0, 1, 2] and len(descriptors) <= 5, descriptors
    again = run_episode(source, {"n": 2}, model_socket=None)
    assert again.status == "ok" and again.answer == first.answer


def test_an_episode_cannot_make_namespaces_mount_fork_or_regain_capabilities() -> None:
    source = DISARM + '''
import ctypes, os
def solve(sample, model):
    libc = ctypes.CDLL(None, use_errno=True)
    results = {
        "unshare": libc.unshare(0x10000000),
        "setns": libc.setns(os.open("/proc/self/ns/pid", os.O_RDONLY), 0),
        "mount": libc.mount(b"none", b"/episode", b"tmpfs", 0, None),
        "umount": libc.umount2(b"/proc", 2),
        "capabilities": open("/proc/self/status").read().split("CapPrm:")[1].split()[0],
    }
    try:
        results["fork"] = os.fork()
    except OSError as exc:
        results["fork"] = type(exc).__name__
    return repr(results)
'''
    outcome = run_episode(source, {}, model_socket=None)
    assert outcome.status == "ok", outcome
    assert ast.literal_eval(outcome.answer or "{}") == {
        "unshare": -1, "setns": -1, "mount": -1, "umount": -1, "capabilities": "0" * 16,
        "fork": "PermissionError"}


def test_a_killed_episode_leaves_its_siblings_and_the_server_serving() -> None:
    source = ("def solve(sample, model):\n    import time\n"
              "    if sample['stall']:\n        while True:\n            pass\n"
              "    time.sleep(0.5)\n    return 'done'\n")
    limits = Limits(wall_s=1.5)
    with ThreadPoolExecutor(max_workers=2) as pool:
        stalled = pool.submit(run_episode, source, {"stall": True}, model_socket=None, limits=limits)
        sibling = pool.submit(run_episode, source, {"stall": False}, model_socket=None, limits=limits)
        assert sibling.result().answer == "done"
        assert stalled.result().status == "timeout"
    started = time.perf_counter()
    after = run_episode(source, {"stall": False}, model_socket=None, limits=limits)
    assert after.answer == "done" and time.perf_counter() - started < 1.4


def test_an_episode_whose_server_dies_is_a_crash_that_says_so_and_the_next_gets_a_new_one() -> None:
    source = "def solve(sample, model):\n    import time\n    time.sleep(sample['s'])\n    return 'slept'\n"
    assert run_episode(source, {"s": 0}, model_socket=None).answer == "slept"
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(run_episode, source, {"s": 5}, model_socket=None)
        time.sleep(0.5)
        os.kill(_server_process(source), signal.SIGKILL)
        lost = running.result()
    assert lost.status == "crash" and "fork server" in (lost.error or ""), lost
    assert run_episode(source, {"s": 0}, model_socket=None).answer == "slept"


def test_a_machine_without_fork_servers_runs_each_episode_in_a_sandbox_of_its_own(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sandbox, "forking_unavailable_reason", lambda: "no fork servers here")
    forked: list[object] = []
    monkeypatch.setattr(sandbox, "run_forked", lambda *a, **k: forked.append(a))
    source = "import os\ndef solve(sample, model):\n    return repr((os.getpid(), os.getuid()))\n"
    outcomes = [run_episode(source, {}, model_socket=None) for _ in range(2)]
    assert [(o.status, o.answer) for o in outcomes] == [("ok", "(1, 65534)")] * 2 and forked == []
    said = [r.getMessage() for r in caplog.records if "no fork servers here" in r.getMessage()]
    assert len(said) == 1 and "sandbox each" in said[0]  # said once, with the reason


class CountedServers(NamedTuple):
    servers: forkserver.ForkServers
    started: list[int]
    """One entry per server started."""


@pytest.fixture
def counted_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountedServers]:
    """Fork servers of their own, each start counted."""
    counted = CountedServers(forkserver.ForkServers(), [])
    real = forkserver.ForkServer.__init__

    def counting(self: forkserver.ForkServer, *args: object, **kwargs: object) -> None:
        counted.started.append(1)
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(forkserver.ForkServer, "__init__", counting)
    try:
        yield counted
    finally:
        counted.servers.close()


def test_episodes_of_one_harness_share_one_server_started_once(counted_servers: CountedServers) -> None:
    """32 episodes arriving together start one server, not 32 (and 128 of them, each told its
    own end while the next are sent, all end ok)."""
    source = "def solve(sample, model):\n    return str(sample['i'])\n"
    with ThreadPoolExecutor(max_workers=32) as pool:
        outcomes = list(pool.map(lambda i: sandbox.run_forked(
            source, {"i": i}, model_socket=None, limits=Limits(), examples=None,
            servers=counted_servers.servers), range(128)))
    assert [o.answer for o in outcomes] == [str(i) for i in range(128)] and len(counted_servers.started) == 1


def test_episodes_of_every_gateway_share_the_harnesss_server(counted_servers: CountedServers) -> None:
    """The smoke run's gateway, the next drive's and the next adapter's put their sockets in
    one directory, so the server the smoke run started serves them all: one start, and each
    episode reaches its own gateway's model (and sees no socket, its own included)."""
    source = ("import os\n"
              "def solve(sample, model):\n"
              "    return model.complete('ping') + ' ' + repr(os.listdir('/sia/gateway'))\n")
    answers = []
    for reply in ("pong", "pang"):
        with ModelGateway(ScriptedBackend(replies={"ping": reply})) as opened:
            socket_path = opened.open_episode("e")
            answers.append(sandbox.run_forked(source, {}, model_socket=socket_path, limits=Limits(),
                                              examples=None, servers=counted_servers.servers).answer)
            opened.close_episode("e")
        assert not socket_path.exists()
    assert answers == ["pong []", "pang []"] and len(counted_servers.started) == 1


def test_a_harness_compiled_by_the_server_runs_as_one_loaded_from_its_file(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server compiles the harness once; an episode must not tell the difference: the same
    module name and file, and the same traceback (file and line) when loading it fails."""
    source = ("import sys\nNAME = (__name__, __file__)\n"
              "def solve(sample, model):\n    if sample['fail']:\n        raise KeyError('at solve')\n"
              "    return repr(NAME)\n")
    failing = "x = 1\nraise ValueError('at import')\ndef solve(sample, model):\n    return 'x'\n"
    forked = [run_episode(source, {"fail": False}, model_socket=None),
              run_episode(source, {"fail": True}, model_socket=None),
              run_episode(failing, {}, model_socket=None)]
    monkeypatch.setattr(sandbox, "forking_unavailable_reason", lambda: "compare with a sandbox each")
    alone = [run_episode(source, {"fail": False}, model_socket=None),
             run_episode(source, {"fail": True}, model_socket=None),
             run_episode(failing, {}, model_socket=None)]
    assert forked[0].answer == alone[0].answer == repr(("harness", "/episode/harness.py"))
    for mine, theirs in zip(forked[1:], alone[1:], strict=True):
        assert (mine.status, mine.error) == (theirs.status, theirs.error)
        assert 'File "/episode/harness.py", line' in mine.stderr_tail
        assert mine.stderr_tail.splitlines()[-3:] == theirs.stderr_tail.splitlines()[-3:]
    assert forked[2].status == "invalid_harness" and "line 2" in forked[2].stderr_tail


def test_an_episode_the_server_could_not_wall_off_is_sias_failure_not_the_harnesss(tmp_path: Path) -> None:
    """An episode whose walls could not be put up (here: its gateway socket is missing) is not
    started, which `run_forked` raises (so `run_episode` gives it a sandbox of its own), while
    a harness that mimics that failure (the same words, the same exit code) is a crash."""
    source = "def solve(sample, model):\n    return 'ran'\n"
    with pytest.raises(forkserver.ServerGone, match="not walled off"):
        sandbox.run_forked(source, {}, model_socket=tmp_path / "missing.sock", limits=Limits(),
                           examples=None)
    mimic = ("import os, sys\ndef solve(sample, model):\n"
             "    sys.stderr.write(\"sia: the episode's sandbox could not be set up: no\\n\")\n"
             "    sys.stderr.flush()\n    os._exit(70)\n")
    outcome = sandbox.run_forked(mimic, {}, model_socket=None, limits=Limits(), examples=None)
    assert outcome.status == "crash" and "exited 70" in (outcome.error or "")
