"""The gateway serves harnesses over real HTTP on per-episode Unix sockets, records every call
to its episode, and nothing a client sends makes it read, allocate or wait without bound."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sia.harness.backends import (
    Completion,
    SamplingParams,
    ScriptedBackend,
    TargetBackend,
)
from sia.harness.contract import HARNESS_CONTRACT, validate_harness
from sia.harness.gateway import GatewayLimits, ModelGateway
from sia.harness.runner import UnixConnection
from sia.harness.sandbox import Limits, run_episode
from tests.hostile_harness import DISARM

SAMPLE = {"id": "s1", "sentence": "i saw a plum"}
GOOD = '''
def solve(sample, model):
    first = model.complete(sample["sentence"], max_tokens=4, temperature=0.7)
    chat = model.chat([{"role": "user", "content": sample["sentence"]}], max_tokens=2)
    return model.complete(sample["sentence"] + " ?", n=2, max_tokens=3)[1] + "|" + first + "|" + chat
'''


@pytest.fixture
def gateway() -> Iterator[ModelGateway]:
    with ModelGateway(ScriptedBackend(replies={"i saw a plum": "fruit"}),
                      limits=GatewayLimits(max_calls=5, max_completion_tokens=40)) as served:
        yield served


def request(path: Path, method: str, route: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    connection = UnixConnection(str(path), timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, "/v1" + route, body=data,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def post(path: Path, route: str, body: Any) -> tuple[int, dict[str, Any]]:
    return request(path, "POST", route, body)


def raw(path: Path, data: bytes, *, then_send: int = 0, then_end: bool = False) -> bytes:
    """Send `data` (then `then_send` more bytes, as fast as the gateway takes them, or the end
    of what this client sends); the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(path))
        client.sendall(data)
        if then_end:
            client.shutdown(socket.SHUT_WR)
        try:
            chunk = b"x" * 65536
            for _ in range(then_send // len(chunk)):
                client.sendall(chunk)
        except OSError:
            pass
        reply = b""
        try:
            while True:
                piece = client.recv(65536)
                if not piece:
                    break
                reply += piece
        except OSError:
            pass
        return reply


def test_a_harness_answers_through_the_gateway_and_every_call_is_recorded(
        gateway: ModelGateway) -> None:
    outcome = run_episode(GOOD, SAMPLE, model_socket=gateway.open_episode("ep-1"))
    calls = gateway.close_episode("ep-1")
    assert outcome.status == "ok", outcome.stderr_tail
    assert [c.endpoint for c in calls] == ["completions", "chat", "completions"]
    assert all(c.status == 200 and c.latency_s >= 0 for c in calls)
    first, chat, third = calls
    assert first.prompts == ["i saw a plum"] and first.generations[0].text == "fruit"
    assert first.params is not None and first.params.temperature == 0.7
    assert chat.messages == [{"role": "user", "content": "i saw a plum"}]
    assert chat.prompts == ["user: i saw a plum\nassistant:"]
    assert third.params is not None and third.params.n == 2 and len(third.generations) == 2
    for call in calls:
        for generation in call.generations:
            assert generation.prompt_token_ids and generation.token_ids
            assert generation.logprobs is not None
            assert len(generation.logprobs) == len(generation.token_ids)
    assert outcome.answer == f"{third.generations[1].text}|fruit|{chat.generations[0].text}"


def test_the_same_episode_and_seed_give_the_same_samples(gateway: ModelGateway) -> None:
    texts = []
    for episode in ("a", "a", "b"):
        path = gateway.open_episode(episode, seed=7)
        texts.append(post(path, "/completions", {"prompt": "say", "max_tokens": 5})[1]
                     ["choices"][0]["text"])
        gateway.close_episode(episode)
    assert texts[0] == texts[1] != texts[2]


def test_a_call_belongs_to_the_episode_whose_socket_took_it_and_a_closed_socket_is_gone(
        gateway: ModelGateway) -> None:
    mine = gateway.open_episode("mine")
    other = gateway.open_episode("other")
    assert mine != other and mine.parent == other.parent == gateway.directory
    assert post(mine, "/completions", {"prompt": "hello"})[0] == 200
    assert gateway.close_episode("other") == []
    assert not other.exists()
    with pytest.raises(OSError):
        post(other, "/completions", {"prompt": "hello"})
    assert len(gateway.close_episode("mine")) == 1


def test_a_harness_cannot_reach_another_episode(gateway: ModelGateway) -> None:
    """Under bwrap the other socket does not exist in the sandbox, even with the audit hook
    disarmed; the process sandbox has only the hook to refuse it."""
    victim = gateway.open_episode("victim")
    attack = f'''
import socket

def solve(sample, model):
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect({str(victim)!r})
        return "connected"
    except OSError as exc:
        return type(exc).__name__
'''
    for isolation, source, refusal in (("bwrap", DISARM + attack, "FileNotFoundError"),
                                       ("process", attack, "PermissionError")):
        outcome = run_episode(source, SAMPLE, model_socket=gateway.open_episode(isolation),
                              isolation=isolation)  # type: ignore[arg-type]
        assert (outcome.status, outcome.answer) == ("ok", refusal), outcome.stderr_tail
        assert gateway.close_episode(isolation) == []
    assert gateway.close_episode("victim") == []


def test_budgets_answer_429_and_are_recorded(gateway: ModelGateway) -> None:
    path = gateway.open_episode("greedy")
    status, reply = post(path, "/completions", {"prompt": "go", "max_tokens": 1000})
    assert status == 200 and reply["usage"]["completion_tokens"] == 40
    assert post(path, "/completions", {"prompt": "go", "max_tokens": 1})[0] == 429
    statuses = [post(path, "/completions", {"prompt": "go"})[0] for _ in range(4)]
    calls = gateway.close_episode("greedy")
    assert statuses == [429, 429, 429, 429] and [c.status for c in calls] == [200] + [429] * 5
    assert calls[0].params is not None and calls[0].params.max_tokens == 40
    assert "calls" in (calls[-1].error or "")


def test_a_harness_over_budget_sees_a_clear_model_error(gateway: ModelGateway) -> None:
    source = "def solve(sample, model):\n    while True:\n        model.complete('go', max_tokens=1)\n"
    outcome = run_episode(source, SAMPLE, model_socket=gateway.open_episode("loop"))
    calls = gateway.close_episode("loop")
    assert outcome.status == "crash" and outcome.error is not None
    assert outcome.error.startswith("ModelError: model call failed with HTTP 429")
    assert len(calls) == 6 and calls[-1].status == 429


class Broken:
    name = "broken"

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        raise RuntimeError("device lost")


def test_a_backend_error_is_a_recorded_502() -> None:
    backend: TargetBackend = Broken()
    with ModelGateway(backend) as gateway:
        path = gateway.open_episode("e")
        status, reply = post(path, "/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        calls = gateway.close_episode("e")
    assert status == 502 and "device lost" in reply["error"]["message"]
    assert [c.status for c in calls] == [502] and "device lost" in (calls[0].error or "")


def test_bad_requests_are_400_and_models_are_listed(gateway: ModelGateway) -> None:
    path = gateway.open_episode("e")
    assert post(path, "/completions", {"prompt": 3})[0] == 400
    assert post(path, "/completions", {"prompt": "x", "n": 99})[0] == 400
    assert post(path, "/chat/completions", {"messages": []})[0] == 400
    assert post(path, "/completions", "not an object")[0] == 400
    assert post(path, "/embeddings", {"input": "x"})[0] == 404
    assert request(path, "GET", "/models")[1]["data"][0]["id"] == "scripted"
    assert [c.status for c in gateway.close_episode("e")] == [400, 400, 400, 400]


HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(("headers", "status"), [
    (b"", b"411"),
    (b"Content-Length: -5\r\n", b"400"),
    (b"Content-Length: abc\r\n", b"400"),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", b"400"),
    (b"Content-Length: 99999999999999999999\r\n", b"413"),
    (b"Transfer-Encoding: chunked\r\n", b"411"),
    (b"X-Pad: " + b"a" * 20000 + b"\r\n", b"431"),
    (b"".join(b"X-%d: 1\r\n" % i for i in range(3000)), b"431"),
], ids=["missing", "negative", "not-a-number", "two-lengths", "huge", "chunked", "long-header",
        "many-headers"])
def test_bad_lengths_and_heads_are_refused_without_reading_the_body(
        gateway: ModelGateway, headers: bytes, status: bytes) -> None:
    path = gateway.open_episode("e")
    reply = raw(path, HEAD + headers + b"\r\n", then_send=64 << 20)
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:200]
    assert gateway.close_episode("e") == []


BODY = b'{"prompt": "p", "max_tokens": 2}'
POST = b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n" % len(BODY)


@pytest.mark.parametrize(("data", "replies"), [
    (b"GARBAGE\r\n\r\n", [b"400"]),
    (b"GET /v1/models HTTP/2\r\n\r\n", [b"400"]),
    (POST + b" X-Folded: 1\r\n\r\n" + BODY, [b"400"]),
    (POST + b"No colon here\r\n\r\n" + BODY, [b"400"]),
    (b"DELETE /v1/models HTTP/1.1\r\n\r\n", [b"501"]),
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 40\r\n\r\n" + BODY, []),
    (b"\r\n" + POST + b"\r\n" + BODY + POST + b"Connection: close\r\n\r\n" + BODY, [b"200", b"200"]),
    (POST + b"Connection: close\r\n\r\n" + BODY + POST + b"\r\n" + BODY, [b"200"]),
    (POST.replace(b"1.1", b"1.0") + b"\r\n" + BODY + POST + b"\r\n" + BODY, [b"200"]),
    (POST + b"Expect: 100-continue\r\nConnection: close\r\n\r\n" + BODY, [b"100", b"200"]),
], ids=["garbage", "http2", "folded-header", "no-colon", "delete", "short-body", "keep-alive",
        "close", "http1.0", "expect-continue"])
def test_requests_are_read_as_http_1_1_and_anything_else_is_refused_and_closed(
        gateway: ModelGateway, data: bytes, replies: list[bytes]) -> None:
    """The gateway's own HTTP/1.1: a bad request line or header is a 400, another method a 501
    (then the connection closes), a keep-alive connection takes request after request, and
    `Connection: close` or HTTP/1.0 ends it after its answer; a body cut short is not served."""
    path = gateway.open_episode("e")
    reply = raw(path, data, then_end=True)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)
    assert statuses == replies, reply[:300]
    assert [call.status for call in gateway.close_episode("e")] == [200] * replies.count(b"200")


def test_slow_clients_are_cut_off_and_an_episode_is_served_on_few_connections_at_once() -> None:
    limits = GatewayLimits(socket_timeout_s=0.5, max_connections=2)
    with ModelGateway(ScriptedBackend(), limits=limits) as gateway:
        path = gateway.open_episode("slow")
        held = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        for client in held:
            client.connect(str(path))
            client.sendall(b"POST /v1/comp")
            client.settimeout(5)
        time.sleep(0.2)
        assert gateway.open_connections("slow") == 2
        started = time.perf_counter()
        assert [client.recv(100) for client in held] == [b"", b"", b""]
        assert 0.4 < time.perf_counter() - started < 2.5
        assert post(path, "/completions", {"prompt": "go"})[0] == 200
        for client in held:
            client.close()
        assert gateway.close_episode("slow")[0].status == 200


def test_parallel_calls_over_the_connection_cap_wait_their_turn() -> None:
    with ModelGateway(ScriptedBackend(), limits=GatewayLimits(max_connections=2)) as gateway:
        path = gateway.open_episode("parallel")
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda i: post(path, "/completions", {"prompt": f"p{i}"})[0],
                                     range(16)))
        assert statuses == [200] * 16 and len(gateway.close_episode("parallel")) == 16


def test_closing_an_episode_ends_its_open_connections() -> None:
    with ModelGateway(ScriptedBackend()) as gateway:
        path = gateway.open_episode("e")
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        client.settimeout(5)
        time.sleep(0.1)
        closer = threading.Timer(0.2, gateway.close_episode, args=("e",))
        closer.start()
        assert client.recv(100) == b""
        closer.join()
        client.close()


def test_the_scripted_backend_is_deterministic_and_honours_stop_and_greedy() -> None:
    backend = ScriptedBackend(vocabulary=["a", "b", "c"])
    params = SamplingParams(max_tokens=6, n=3, seed=1)
    once, again = backend.generate(["p", "q"], params), backend.generate(["p", "q"], params)
    assert once == again and len(once) == 6
    assert all(len(g.token_ids) == 6 and max(g.token_ids) < 3 for g in once)
    greedy = backend.generate(["p"], SamplingParams(max_tokens=3, temperature=0))[0]
    assert greedy.text == "a a a" and greedy.logprobs == [0.0, 0.0, 0.0]
    stopped = backend.generate(["p"], SamplingParams(max_tokens=3, temperature=0, stop=("a a",)))[0]
    assert (stopped.text, stopped.finish_reason) == ("a", "stop")


@pytest.mark.parametrize(("source", "problem"), [
    ("def solve(sample, model):\n    return 'x'\n", None),
    ("def solve(sample, model, *, retries=2):\n    return 'x'\n", None),
    ("def solve(*args):\n    return 'x'\n", None),
    ("def solve(:", "SyntaxError"),
    ("def answer(sample, model):\n    return 'x'\n", "no top-level"),
    ("def solve(sample):\n    return 'x'\n", "two arguments"),
    ("def solve(sample, model, extra):\n    return 'x'\n", "other arguments"),
    ("async def solve(sample, model):\n    return 'x'\n", "async"),
    ("def solve(sample, model):\n    return " + "-" * 150_000 + "1\n", "nests too deeply"),
])
def test_validate_harness_names_the_problem(source: str, problem: str | None) -> None:
    problems = validate_harness(source)
    assert problems == [] if problem is None else problem in problems[0]


def test_harnesses_validated_on_many_threads_at_once_get_their_own_verdicts() -> None:
    """32 episodes check their harnesses together, and each verdict is its own harness's (the
    verdicts are remembered per source, and parses are serialised: CPython 3.11's AST
    conversion can fail with a SystemError when threads parse at once under heavy garbage
    collection, a race rare enough that this test does not provoke it)."""
    sources = [f"def solve(sample, model):\n    return {'[' * 40}{i}{']' * 40}\n" for i in range(64)]
    sources += [f"def answer{i}(sample, model):\n    return 'x'\n" for i in range(64)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        verdicts = list(pool.map(validate_harness, sources))
    assert verdicts[:64] == [[]] * 64
    assert all(v and "no top-level" in v[0] for v in verdicts[64:])


def test_the_contract_text_documents_the_model_interface() -> None:
    for phrase in ("def solve(sample: dict, model) -> str", "model.complete(", "model.chat(",
                   "malformed", "invalid_harness"):
        assert phrase in HARNESS_CONTRACT


def test_an_invalid_harness_never_starts_a_process() -> None:
    outcome = run_episode("def solve(sample):\n    return 'x'\n", SAMPLE, model_socket=None,
                          limits=Limits(wall_s=1))
    assert outcome.status == "invalid_harness" and outcome.wall_s == 0.0
