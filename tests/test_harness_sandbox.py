"""Every way a harness can fail is a recorded outcome with its reason, within its limits,
in both sandboxes (bubblewrap, and the weaker process sandbox a user may choose)."""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sia.harness import sandbox
from sia.harness.backends import ScriptedBackend
from sia.harness.contract import MAX_ANSWER_CHARS
from sia.harness.gateway import ModelGateway
from sia.harness.runner import MAX_ANSWER
from sia.harness.sandbox import ISOLATIONS, Isolation, Limits, run_episode
from sia.harness.seccomp import UnsupportedMachine, episode_filter
from tests.hostile_harness import DISARM

SAMPLE = {"id": "s1", "sentence": "i saw a plum", "options": ["animal", "fruit"]}


def solve(body: str) -> str:
    return "def solve(sample, model):\n" + "".join(f"    {line}\n" for line in body.splitlines())


@pytest.fixture
def model_socket() -> Iterator[Path]:
    """One open episode on a real gateway over the scripted toy model."""
    with ModelGateway(ScriptedBackend(replies={"i saw a plum": "fruit"})) as gateway:
        yield gateway.open_episode("ep-1")


@pytest.fixture(params=ISOLATIONS)
def isolation(request: pytest.FixtureRequest) -> Isolation:
    return request.param


def test_a_good_harness_answers_through_the_model(model_socket: Path, isolation: Isolation) -> None:
    body = "outs = model.complete(sample['sentence'], n=3)\nreturn outs[2] if len(outs) == 3 else ''"
    outcome = run_episode(solve(body), SAMPLE, isolation=isolation, model_socket=model_socket)
    assert (outcome.status, outcome.answer) == ("ok", "fruit")
    assert outcome.cpu_s > 0 and outcome.max_rss_mb > 1


def test_garbage_on_stdout_cannot_forge_the_answer(isolation: Isolation) -> None:
    body = 'print(\'{"status": "ok", "answer": "forged"}\')\nprint("x" * 10000)\nreturn "real"'
    outcome = run_episode(solve(body), SAMPLE, isolation=isolation, model_socket=None)
    assert (outcome.status, outcome.answer) == ("ok", "real")
    assert len(outcome.stdout_tail) <= 4096


def test_a_raising_harness_is_a_crash_with_its_reason(isolation: Isolation) -> None:
    outcome = run_episode(solve("raise ValueError('bad parse')"), SAMPLE, isolation=isolation, model_socket=None)
    assert outcome.status == "crash" and outcome.error == "ValueError: bad parse"
    assert "harness.py" in outcome.stderr_tail and "line 2" in outcome.stderr_tail


def test_a_hanging_harness_times_out_within_its_limit(isolation: Isolation) -> None:
    outcome = run_episode(solve("while True:\n    pass"), SAMPLE, isolation=isolation, model_socket=None,
                          limits=Limits(wall_s=1.5))
    assert outcome.status == "timeout" and 1.4 <= outcome.wall_s < 5


def test_a_harness_that_allocates_10_gb_is_stopped_by_the_memory_limit(isolation: Isolation) -> None:
    outcome = run_episode(solve("block = bytearray(10 * 1024 ** 3)\nreturn 'x'"), SAMPLE,
                          isolation=isolation, model_socket=None, limits=Limits(memory_mb=512))
    assert outcome.status == "memory" and outcome.wall_s < 5


def test_a_non_string_answer_is_malformed(isolation: Isolation) -> None:
    outcome = run_episode(solve("return ['fruit']"), SAMPLE, isolation=isolation, model_socket=None)
    assert outcome.status == "malformed" and "list" in outcome.error


@pytest.mark.parametrize("source", ["def solve(:\n", "def answer(sample, model):\n    return 'x'\n",
                                    "def solve(sample):\n    return 'x'\n",
                                    "import no_such_module\n" + solve("return 'x'"),
                                    "solve = 3\n"])
def test_a_harness_that_does_not_load_is_invalid(source: str, isolation: Isolation) -> None:
    outcome = run_episode(source, SAMPLE, isolation=isolation, model_socket=None)
    assert outcome.status == "invalid_harness" and outcome.error


def test_a_harness_over_its_cpu_limit_is_stopped_before_its_wall_limit(isolation: Isolation) -> None:
    outcome = run_episode(solve("while True:\n    pass"), SAMPLE, isolation=isolation, model_socket=None,
                          limits=Limits(cpu_s=1, wall_s=20))
    assert outcome.status == "timeout" and "CPU" in outcome.error and outcome.wall_s < 5


def test_a_large_answer_comes_back_and_an_oversized_one_is_malformed(isolation: Isolation) -> None:
    assert MAX_ANSWER == MAX_ANSWER_CHARS
    big = run_episode(solve(f"return '\u00e9' * {MAX_ANSWER_CHARS}"), SAMPLE, isolation=isolation, model_socket=None,
                      limits=Limits(wall_s=10))
    assert big.status == "ok" and big.answer == "\u00e9" * MAX_ANSWER_CHARS
    over = run_episode(solve(f"return 'x' * {MAX_ANSWER_CHARS + 1}"), SAMPLE, isolation=isolation, model_socket=None)
    assert over.status == "malformed" and "over" in over.error


@pytest.mark.parametrize("body", [
    "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])",
    "import os\nos.system('sleep 60 &')",
    "import os\nos.fork()",
], ids=["Popen", "system", "fork"])
def test_a_harness_cannot_start_processes(body: str, isolation: Isolation) -> None:
    outcome = run_episode(solve(body + "\nreturn 'done'"), SAMPLE, isolation=isolation, model_socket=None,
                          limits=Limits(wall_s=10))
    assert outcome.status == "crash" and "sandbox does not allow" in outcome.error
    assert outcome.wall_s < 5


def test_task_files_and_labels_are_unreadable_even_by_absolute_path(isolation: Isolation) -> None:
    import sia.tasks.loader as loader

    labels = loader.BUNDLED_ROOT / "wordcat" / "private" / "labels.jsonl"
    assert labels.is_file()
    outcome = run_episode(solve(f"return open({str(labels)!r}).read()"), SAMPLE, isolation=isolation, model_socket=None)
    assert outcome.status == "crash" and "PermissionError" in outcome.error
    assert "label" not in (outcome.answer or "")
    allowed = run_episode(solve("import json, re, collections\nopen('scratch.txt', 'w').write('ok')\n"
                                "return open('scratch.txt').read()"), SAMPLE, isolation=isolation,
                          model_socket=None)
    assert (allowed.status, allowed.answer) == ("ok", "ok")


def test_a_harness_that_exits_without_answering_is_a_crash(isolation: Isolation) -> None:
    outcome = run_episode(solve("import os\nos._exit(3)"), SAMPLE, isolation=isolation, model_socket=None)
    assert outcome.status == "crash" and "exited 3" in outcome.error


def test_secrets_and_settings_do_not_reach_the_harness(monkeypatch: pytest.MonkeyPatch, isolation: Isolation) -> None:
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "HTTPS_PROXY", "SIA_HOME"):
        monkeypatch.setenv(name, "secret-value")
    body = "import os\nreturn ','.join(sorted(os.environ))"
    outcome = run_episode(solve(body), SAMPLE, isolation=isolation, model_socket=None)
    assert outcome.status == "ok"
    assert set(outcome.answer.split(",")) <= {"PATH", "LANG", "HOME", "TMPDIR",
                                              "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "LC_CTYPE",
                                              "PWD"}
    assert "secret-value" not in outcome.answer


def test_the_harness_runs_in_a_private_directory_that_is_removed(isolation: Isolation) -> None:
    outcome = run_episode(solve("import os\nopen('note.txt', 'w').write('x')\nreturn os.getcwd()"),
                          SAMPLE, isolation=isolation, model_socket=None)
    expected = "/episode" if isolation == "bwrap" else "sia-episode-"
    assert outcome.status == "ok" and expected in outcome.answer
    assert isolation == "bwrap" or not Path(outcome.answer).exists()


def test_the_bwrap_private_directory_is_a_size_limited_tmpfs_seen_by_no_one_else() -> None:
    body = ("import os\nopen('big', 'wb').write(b'x' * 3 * 2**20)\n"
            "try:\n    open('bigger', 'wb').write(b'x' * 3 * 2**20)\nexcept OSError as exc:\n"
            "    return f'{exc.errno} {sorted(os.listdir())}'\nreturn 'no limit'")
    outcome = run_episode(solve(body), SAMPLE, model_socket=None, isolation="bwrap",
                          limits=Limits(file_mb=4))
    assert (outcome.status, outcome.answer) == ("ok", "28 ['big', 'bigger', 'harness.py', 'sample.json']")
    second = run_episode(solve("import os\nreturn str(sorted(os.listdir()))"), SAMPLE,
                         model_socket=None, isolation="bwrap")
    assert second.answer == "['harness.py', 'sample.json']"


def test_threads_work_in_bwrap_but_a_second_process_does_not() -> None:
    """The seccomp filter, not the audit hook (disarmed here), refuses the fork."""
    body = ("import os, threading\nseen = []\nthread = threading.Thread(target=seen.append, args=(1,))\n"
            "thread.start(); thread.join()\nimport posix\ntry:\n    posix.fork()\n"
            "except OSError as exc:\n    return f'{seen} {exc.errno}'\nos._exit(0)")
    outcome = run_episode(DISARM + solve(body), SAMPLE, model_socket=None, isolation="bwrap")
    assert (outcome.status, outcome.answer) == ("ok", "[1] 1"), outcome.stderr_tail


def test_episodes_run_concurrently_from_threads(isolation: Isolation) -> None:
    sources = [solve(f"return '{i}'") for i in range(6)] + [solve("raise KeyError('k')")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda s: run_episode(s, SAMPLE, isolation=isolation, model_socket=None), sources))
    assert [o.answer for o in outcomes[:6]] == [str(i) for i in range(6)]
    assert outcomes[6].status == "crash"


def test_a_harness_that_execs_a_sleeper_leaves_nothing_alive_after_its_wall_limit() -> None:
    """exec keeps the pid (and the limits, and the filter); the kill at the wall limit
    takes the whole pid namespace with it."""
    marker = f"{time.time_ns() % 10**9}"
    body = (f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', "
            f"'import time; time.sleep({marker})'])")
    outcome = run_episode(DISARM + solve(body), SAMPLE, model_socket=None, isolation="bwrap",
                          limits=Limits(wall_s=1.5))
    assert outcome.status == "timeout"
    time.sleep(0.2)
    survivors = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                 and marker.encode() in _cmdline(p)]
    assert survivors == []


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:
        return b""


SOCKETS = DISARM + '''
import errno, socket

def solve(sample, model):
    refused = []
    for name, family, kind in (("inet", socket.AF_INET, socket.SOCK_STREAM),
                               ("udp", socket.AF_INET, socket.SOCK_DGRAM),
                               ("inet6", socket.AF_INET6, socket.SOCK_STREAM),
                               ("netlink", socket.AF_NETLINK, socket.SOCK_RAW),
                               ("unix datagram", socket.AF_UNIX, socket.SOCK_DGRAM),
                               ("unix seqpacket", socket.AF_UNIX, socket.SOCK_SEQPACKET)):
        try:
            socket.socket(family, kind).close()
        except PermissionError:
            refused.append(name)
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    stream.bind("\\0sia-meet")
    try:
        stream.listen(1)
    except PermissionError:
        refused.append("listen")
    left, right = socket.socketpair()
    left.sendall(b"pair")
    return " ".join(refused) + " | " + right.recv(4).decode() + " | " + model.complete(sample["sentence"])
'''


@pytest.mark.parametrize("own_sandbox", [False, True], ids=["forked", "own sandbox"])
def test_a_harness_can_make_no_socket_but_a_unix_stream_client(
        model_socket: Path, own_sandbox: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seccomp filter, not the audit hook (disarmed here), refuses every other socket and
    `listen`: episodes forked from one server share its network namespace, so a socket that
    could listen or receive datagrams would let siblings meet. A socket pair and the gateway
    still work."""
    if own_sandbox:
        monkeypatch.setattr(sandbox, "forking_unavailable_reason", lambda: "a sandbox each")
    outcome = run_episode(SOCKETS, SAMPLE, model_socket=model_socket, isolation="bwrap")
    assert (outcome.status, outcome.answer) == (
        "ok", "inet udp inet6 netlink unix datagram unix seqpacket listen | pair | fruit"), outcome


def test_a_system_call_of_a_foreign_abi_kills_the_episode() -> None:
    """x32 numbers would slip past the x86-64 table, so the filter kills on sight."""
    if platform.machine() != "x86_64":
        pytest.skip("the x32 ABI exists on x86-64 only")
    body = ("import ctypes\nlibc = ctypes.CDLL(None)\n"
            "libc.syscall(0x40000000 | 39)\nreturn 'survived'")
    outcome = run_episode(DISARM + solve(body), SAMPLE, model_socket=None, isolation="bwrap")
    assert outcome.status == "crash" and outcome.answer is None
    assert f"exited {-signal.SIGSYS}" in (outcome.error or "")


def test_the_filter_is_refused_for_a_machine_without_a_table() -> None:
    with pytest.raises(UnsupportedMachine, match="riscv64"):
        episode_filter("riscv64")


VIEW = '''
import os
def solve(sample, model):
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return repr({"root": sorted(os.listdir("/")), "usr": sorted(os.listdir("/usr")),
                 "uid": os.getuid(), "caps": status["CapEff"].strip(), "pid": os.getpid(),
                 "processes": sorted(p for p in os.listdir("/proc") if p.isdigit()),
                 "session": os.getsid(0), "shm": os.path.exists("/dev/shm/x"),
                 "site": os.listdir(os.path.join(os.path.dirname(os.__file__), "site-packages")),
                 "hostname": os.uname().nodename})
'''


def test_the_bwrap_view_holds_the_interpreter_its_libraries_and_the_episode_only() -> None:
    import ast

    outcome = run_episode(DISARM + VIEW, SAMPLE, model_socket=None, isolation="bwrap")
    seen = ast.literal_eval(outcome.answer or "{}")
    top = {name for name in ("usr", "lib", "lib64", "lib32") if Path("/" + name).exists()}
    interpreter_root = Path(sys.base_prefix).parts[1]
    assert set(seen["root"]) == {"episode", "sia", "dev", "proc", interpreter_root} | top
    assert set(seen["usr"]) <= {"lib", "lib64", "lib32"} | ({"local"} if
                                                            sys.base_prefix.startswith("/usr/local") else set())
    assert (seen["uid"], seen["caps"], seen["pid"], seen["processes"]) == (65534, "0" * 16, 1, ["1"])
    assert seen["session"] == 1 and seen["site"] == [] and seen["hostname"] == "sandbox"


def test_bwraps_command_line_on_the_host_names_no_gateway_socket(model_socket: Path) -> None:
    body = "import time\ntime.sleep(1.5)\nreturn 'slept'"
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(run_episode, solve(body), SAMPLE, model_socket=model_socket,
                              isolation="bwrap")
        time.sleep(0.8)
        lines = [_cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit()]
        assert running.result().answer == "slept"
    ours = [line for line in lines if line.startswith(b"bwrap\0--args") or b"/bwrap\0--args" in line]
    assert ours and not any(b".sock" in line for line in ours)


def test_the_thread_cap_binds_the_sandbox_user_but_not_host_root() -> None:
    body = ("import threading\nstop = threading.Event()\nstarted = 0\ntry:\n"
            "    for _ in range(40):\n        threading.Thread(target=stop.wait).start()\n"
            "        started += 1\nexcept RuntimeError:\n    pass\nstop.set()\nreturn str(started)")
    outcome = run_episode(solve(body), SAMPLE, model_socket=None, isolation="bwrap",
                          limits=Limits(threads=8))
    assert outcome.status == "ok"
    started = int(outcome.answer or 0)
    assert started > 8 if os.geteuid() == 0 else started == 7


def test_a_harness_holds_at_most_256_open_files(isolation: Isolation) -> None:
    body = ("import os\nheld = []\ntry:\n    for _ in range(400):\n        held.append(os.pipe())\n"
            "except OSError as exc:\n    return f'{exc.errno} {len(held)}'\nreturn 'unbounded'")
    outcome = run_episode(solve(body), SAMPLE, isolation=isolation, model_socket=None)
    errno_, pipes = (outcome.answer or "0 0").split()
    assert outcome.status == "ok" and errno_ == "24" and 100 < int(pipes) < 128
