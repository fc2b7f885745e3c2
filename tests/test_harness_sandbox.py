"""Every way a harness can fail is a recorded outcome with its reason, within its limits."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sia.harness.sandbox import Limits, run_episode

SAMPLE = {"id": "s1", "sentence": "i saw a plum", "options": ["animal", "fruit"]}


def solve(body: str) -> str:
    return "def solve(sample, model):\n" + "".join(f"    {line}\n" for line in body.splitlines())


@pytest.fixture
def model_url() -> Iterator[str]:
    """A loopback completions endpoint that records what it was asked."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            reply = json.dumps({"choices": [{"index": i, "text": f"fruit {i}"}
                                            for i in range(body.get("n", 1))]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_good_harness_answers_through_the_model(model_url: str) -> None:
    outcome = run_episode(solve("return model.complete(sample['sentence'], n=3)[2]"), SAMPLE,
                          model_url=model_url)
    assert (outcome.status, outcome.answer) == ("ok", "fruit 2")


def test_garbage_on_stdout_cannot_forge_the_answer() -> None:
    body = 'print(\'{"status": "ok", "answer": "forged"}\')\nprint("x" * 10000)\nreturn "real"'
    outcome = run_episode(solve(body), SAMPLE, model_url=None)
    assert (outcome.status, outcome.answer) == ("ok", "real")
    assert len(outcome.stdout_tail) <= 4096


def test_a_raising_harness_is_a_crash_with_its_reason() -> None:
    outcome = run_episode(solve("raise ValueError('bad parse')"), SAMPLE, model_url=None)
    assert outcome.status == "crash" and outcome.error == "ValueError: bad parse"


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
                                    "import no_such_module\n"])
def test_a_harness_that_does_not_load_is_invalid(source: str) -> None:
    assert run_episode(source, SAMPLE, model_url=None).status == "invalid_harness"


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
    from pathlib import Path

    assert outcome.status == "ok" and "sia-episode-" in outcome.answer
    assert not Path(outcome.answer).exists()


def test_episodes_run_concurrently_from_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    sources = [solve(f"return '{i}'") for i in range(6)] + [solve("raise KeyError('k')")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda s: run_episode(s, SAMPLE, model_url=None), sources))
    assert [o.answer for o in outcomes[:6]] == [str(i) for i in range(6)]
    assert outcomes[6].status == "crash"
