from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sia.core.events.types import RunConfig
from sia.effects.deterministic import deterministic_registry, toy_task
from sia.runtime.loop import Runtime
from sia.store.memory import MemoryEventStore

TOY = dict(task="toy", meta="deterministic", feedback="deterministic",
           target="deterministic", trainer="deterministic")


def toy_config(**changes: object) -> RunConfig:
    return RunConfig(**{**TOY, **changes})  # type: ignore[arg-type]


@pytest.fixture
def memory_runtime(tmp_path: Path) -> Runtime:
    return Runtime(MemoryEventStore(), deterministic_registry(), home=tmp_path, concurrency=2)


def toy_run(runtime: Runtime, **changes: object) -> str:
    run_id = runtime.create(toy_config(**changes), toy_task())
    runtime.drive(run_id)
    return run_id


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "sia-home"
    monkeypatch.setenv("SIA_HOME", str(home))
    monkeypatch.delenv("SIA_CRASH_AT", raising=False)
    monkeypatch.delenv("SIA_EFFECT_COUNTER", raising=False)
    return home


class BuiltModels:
    """Tiny target models built once per test session and copied into the homes of runs
    whose claim is not the build itself.

    A `sia run` with the tiny target first builds the task's model into `<home>/models` (for
    wordcat 200 single-threaded pretraining steps, 15 to 20 s); a home seeded here starts with
    the directory that build would make, found by the same `TinyModelSource` the run uses, so
    the run builds nothing. That the build is byte-identical and cached is test_train_tiny's
    claim, and the main job's runs still build from an empty home.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def seed(self, home: Path, task: str | Path) -> Path:
        """Copy `task`'s tiny model into `home` (made private as sia makes it); its path there."""
        from sia.runtime.wiring import TinyModelSource
        from sia.store.home import make_private_dir
        from sia.tasks.loader import load_task

        with open(self.root / ".lock", "a") as lock:  # pytest-xdist's workers share the root
            fcntl.flock(lock, fcntl.LOCK_EX)
            built = TinyModelSource(load_task(task, cache=self.root / "tasks"), self.root / "models").path()
        make_private_dir(home / "models")
        return Path(shutil.copytree(built, home / "models" / built.name))


def xdist_worker(config: pytest.Config) -> bool:
    """Whether this process is one of pytest-xdist's workers (`pytest -n N`)."""
    return hasattr(config, "workerinput")


@pytest.fixture(scope="session")
def built_models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltModels:
    if not xdist_worker(request.config):
        return BuiltModels(tmp_path_factory.mktemp("built-models"))
    shared = tmp_path_factory.getbasetemp().parent / "built-models"  # the workers' common parent
    shared.mkdir(exist_ok=True)
    return BuiltModels(shared)


class EarlyProcess:
    """A test's command started when collection ends, so that it runs beside the tests collected
    before it rather than after them, on a core they leave free (`mypy` over the package takes
    about 50 s with a cold cache; a test mostly keeps one core busy)."""

    def __init__(self, command: list[str], cwd: Path | None = None, timeout: float = 600) -> None:
        self.command, self.timeout = command, timeout
        self.stdout, self.stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self.stdout,
                                        stderr=self.stderr)

    def result(self) -> subprocess.CompletedProcess[str]:
        """Wait for the command's end; what it printed (files, not pipes: a full pipe would stall it)."""
        returncode = self.process.wait(timeout=self.timeout)
        printed = []
        for file in (self.stdout, self.stderr):
            file.seek(0)
            printed.append(file.read().decode(errors="replace"))
            file.close()
        return subprocess.CompletedProcess(self.command, returncode, *printed)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


EARLY = pytest.StashKey[dict[str, EarlyProcess]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "start_early(*command, cwd=None, timeout=600): the test's "
                            "command, started when collection ends; the test reads it with `started_early`")
    config.addinivalue_line("markers", "measures_time: the test compares wall-clock measurements; "
                            "under pytest-xdist no other test runs beside it")
    if hasattr(config.option, "testrunuid") and not xdist_worker(config):
        # Name the run's workers share, so that this process can remove their lock files.
        config.option.testrunuid = config.option.testrunuid or uuid.uuid4().hex


def turn_directory(config: pytest.Config) -> Path:
    """Where pytest-xdist's workers keep the lock files of their `turn`s (one per test run)."""
    run = config.workerinput["testrunuid"] if xdist_worker(config) else config.option.testrunuid
    return Path(tempfile.gettempdir()) / f"sia-tests-{run}"


@contextmanager
def turn(directory: Path, alone: bool) -> Iterator[None]:
    """A readers-writer lock shared by pytest-xdist's workers, the writer first.

    A test that measures time (`alone`) must not share the CPUs: another worker's test would
    delay the sandboxes it times by a scheduler slice or more (a 400 us reference kernel was
    timed at 7 ms). It takes the turnstile, so that no test starts, then waits for the tests
    running to end; every other test passes the turnstile and shares the room.
    """
    with open(directory / "turnstile", "a") as turnstile, open(directory / "room", "a") as room:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(room, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Under pytest-xdist, every test (its fixtures' setup and teardown too) takes its `turn`."""
    if not xdist_worker(item.config):
        yield
        return
    locks = turn_directory(item.config)
    locks.mkdir(exist_ok=True)
    with turn(locks, item.get_closest_marker("measures_time") is not None):
        yield


LONGEST_FIRST = ("test_main_job.py", "test_lawbench_run.py", "test_agents_investigation.py", "test_redteam.py",
                 "test_vllm_run.py", "test_redaction.py", "test_llm_runs.py", "test_code_answer_redteam.py",
                 "test_train_job.py", "test_crash.py")
"""The modules that take longest (`pytest --durations`), longest first."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, hand out the longest modules first, so that the workers, given the
    short ones last, end together instead of one running a long module alone at the end."""
    if xdist_worker(config):
        rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the `start_early` command of every test this session will run (none for a test
    deselected, e.g. by `-m "not slow"`, and none when only collecting).

    Under pytest-xdist every worker collects every test and does not know which it will run,
    and no core is idle to start a command on: there the test starts its command itself.
    """
    started: dict[str, EarlyProcess] = {}
    if not session.config.option.collectonly and not xdist_worker(session.config):
        for item in session.items:
            marker = item.get_closest_marker("start_early")
            if marker is not None:
                started[item.nodeid] = EarlyProcess([str(arg) for arg in marker.args], **marker.kwargs)
    session.stash[EARLY] = started


def pytest_sessionfinish(session: pytest.Session) -> None:
    for early in session.stash.get(EARLY, {}).values():
        early.stop()
    if getattr(session.config.option, "testrunuid", None) and not xdist_worker(session.config):
        shutil.rmtree(turn_directory(session.config), ignore_errors=True)


@pytest.fixture
def started_early(request: pytest.FixtureRequest) -> subprocess.CompletedProcess[str]:
    """The test's `start_early` command, run to its end."""
    started = request.session.stash[EARLY]
    if request.node.nodeid not in started:
        marker = request.node.get_closest_marker("start_early")
        if marker is None:
            raise LookupError(f"{request.node.nodeid} has no start_early marker")
        started[request.node.nodeid] = EarlyProcess([str(arg) for arg in marker.args], **marker.kwargs)
    return started[request.node.nodeid].result()
