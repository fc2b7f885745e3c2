"""Every way a harness can fail is a recorded outcome with its reason, within its limits."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sia.harness.backends import ScriptedBackend
from sia.harness.contract import MAX_ANSWER_CHARS
from sia.harness.gateway import ModelGateway
from sia.harness.runner import MAX_ANSWER
from sia.harness.sandbox import Limits, run_episode

SAMPLE = {"id": "s1", "sentence": "i saw a plum", "options": ["animal", "fruit"]}


def solve(body: str) -> str:
    return "def solve(sample, model):\n" + "".join(f"    {line}\n" for line in body.splitlines())


@pytest.fixture
def model_url() -> Iterator[str]:
    """One open episode on a real gateway over the scripted toy model."""
    with ModelGateway(ScriptedBackend(replies={"i saw a plum": "fruit"})) as gateway:
        yield gateway.open_episode("ep-1")


def test_a_good_harness_answers_through_the_model(model_url: str) -> None:
    body = "outs = model.complete(sample['sentence'], n=3)\nreturn outs[2] if len(outs) == 3 else ''"
    outcome = run_episode(solve(body), SAMPLE, model_url=model_url)
    assert (outcome.status, outcome.answer) == ("ok", "fruit")
    assert outcome.cpu_s > 0 and outcome.max_rss_mb > 1


def test_garbage_on_stdout_cannot_forge_the_answer() -> None:
    body = 'print(\'{"status": "ok", "answer": "forged"}\')\nprint("x" * 10000)\nreturn "real"'
    outcome = run_episode(solve(body), SAMPLE, model_url=None)
    assert (outcome.status, outcome.answer) == ("ok", "real")
    assert len(outcome.stdout_tail) <= 4096


def test_a_raising_harness_is_a_crash_with_its_reason() -> None:
    outcome = run_episode(solve("raise ValueError('bad parse')"), SAMPLE, model_url=None)
    assert outcome.status == "crash" and outcome.error == "ValueError: bad parse"
    assert "harness.py" in outcome.stderr_tail and "line 2" in outcome.stderr_tail


def test_a_hanging_harness_times_out_within_its_limit() -> None:
    outcome = run_episode(solve("while True:\n    pass"), SAMPLE, model_url=None,
                          limits=Limits(wall_s=1.5))
    assert outcome.status == "timeout" and 1.4 <= outcome.wall_s < 5


def test_a_harness_that_allocates_10_gb_is_stopped_by_the_memory_limit() -> None:
    outcome = run_episode(solve("block = bytearray(10 * 1024 ** 3)\nreturn 'x'"), SAMPLE,
                          model_url=None, limits=Limits(memory_mb=512))
    assert outcome.status == "memory" and outcome.wall_s < 5


def test_a_non_string_answer_is_malformed() -> None:
    outcome = run_episode(solve("return ['fruit']"), SAMPLE, model_url=None)
    assert outcome.status == "malformed" and "list" in outcome.error


@pytest.mark.parametrize("source", ["def solve(:\n", "def answer(sample, model):\n    return 'x'\n",
                                    "def solve(sample):\n    return 'x'\n",
                                    "import no_such_module\n" + solve("return 'x'"),
                                    "solve = 3\n"])
def test_a_harness_that_does_not_load_is_invalid(source: str) -> None:
    outcome = run_episode(source, SAMPLE, model_url=None)
    assert outcome.status == "invalid_harness" and outcome.error


def test_a_harness_over_its_cpu_limit_is_stopped_before_its_wall_limit() -> None:
    outcome = run_episode(solve("while True:\n    pass"), SAMPLE, model_url=None,
                          limits=Limits(cpu_s=1, wall_s=20))
    assert outcome.status == "timeout" and "CPU" in outcome.error and outcome.wall_s < 5


def test_a_large_answer_comes_back_and_an_oversized_one_is_malformed() -> None:
    assert MAX_ANSWER == MAX_ANSWER_CHARS
    big = run_episode(solve(f"return '\u00e9' * {MAX_ANSWER_CHARS}"), SAMPLE, model_url=None,
                      limits=Limits(wall_s=10))
    assert big.status == "ok" and big.answer == "\u00e9" * MAX_ANSWER_CHARS
    over = run_episode(solve(f"return 'x' * {MAX_ANSWER_CHARS + 1}"), SAMPLE, model_url=None)
    assert over.status == "malformed" and "over" in over.error


@pytest.mark.parametrize("body", [
    "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])",
    "import os\nos.system('sleep 60 &')",
    "import os\nos.fork()",
], ids=["Popen", "system", "fork"])
def test_a_harness_cannot_start_processes(body: str) -> None:
    outcome = run_episode(solve(body + "\nreturn 'done'"), SAMPLE, model_url=None,
                          limits=Limits(wall_s=10))
    assert outcome.status == "crash" and "sandbox does not allow" in outcome.error
    assert outcome.wall_s < 5


def test_task_files_and_labels_are_unreadable_even_by_absolute_path() -> None:
    import sia.tasks.loader as loader

    labels = loader.BUNDLED_ROOT / "wordcat" / "private" / "labels.jsonl"
    assert labels.is_file()
    outcome = run_episode(solve(f"return open({str(labels)!r}).read()"), SAMPLE, model_url=None)
    assert outcome.status == "crash" and "PermissionError" in outcome.error
    assert "label" not in (outcome.answer or "")
    allowed = run_episode(solve("import json, re, collections\nopen('scratch.txt', 'w').write('ok')\n"
                                "return open('scratch.txt').read()"), SAMPLE, model_url=None)
    assert (allowed.status, allowed.answer) == ("ok", "ok")


def test_a_harness_that_exits_without_answering_is_a_crash() -> None:
    outcome = run_episode(solve("import os\nos._exit(3)"), SAMPLE, model_url=None)
    assert outcome.status == "crash" and "exited 3" in outcome.error


def test_secrets_and_settings_do_not_reach_the_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "HTTPS_PROXY", "SIA_HOME"):
        monkeypatch.setenv(name, "secret-value")
    body = "import os\nreturn ','.join(sorted(os.environ))"
    outcome = run_episode(solve(body), SAMPLE, model_url=None)
    assert outcome.status == "ok"
    assert set(outcome.answer.split(",")) <= {"PATH", "LANG", "HOME", "TMPDIR",
                                              "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "LC_CTYPE"}
    assert "secret-value" not in outcome.answer


def test_the_harness_runs_in_a_private_directory_that_is_removed() -> None:
    outcome = run_episode(solve("import os\nopen('note.txt', 'w').write('x')\nreturn os.getcwd()"),
                          SAMPLE, model_url=None)
    assert outcome.status == "ok" and "sia-episode-" in outcome.answer
    assert not Path(outcome.answer).exists()


def test_episodes_run_concurrently_from_threads() -> None:
    sources = [solve(f"return '{i}'") for i in range(6)] + [solve("raise KeyError('k')")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda s: run_episode(s, SAMPLE, model_url=None), sources))
    assert [o.answer for o in outcomes[:6]] == [str(i) for i in range(6)]
    assert outcomes[6].status == "crash"
