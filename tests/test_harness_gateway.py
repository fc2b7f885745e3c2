"""The gateway serves harnesses over real loopback HTTP and records every call to its episode."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from sia.harness.backends import (
    Generation,
    SamplingParams,
    ScriptedBackend,
    TargetBackend,
)
from sia.harness.contract import HARNESS_CONTRACT, validate_harness
from sia.harness.gateway import GatewayLimits, ModelGateway
from sia.harness.sandbox import Limits, run_episode

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


def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_harness_answers_through_the_gateway_and_every_call_is_recorded(
        gateway: ModelGateway) -> None:
    outcome = run_episode(GOOD, SAMPLE, model_url=gateway.open_episode("ep-1"))
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
        url = gateway.open_episode(episode, seed=7)
        texts.append(post(url + "/completions", {"prompt": "say", "max_tokens": 5})[1]
                     ["choices"][0]["text"])
        gateway.close_episode(episode)
    assert texts[0] == texts[1] != texts[2]


def test_calls_without_a_valid_episode_token_are_refused(gateway: ModelGateway) -> None:
    mine = gateway.open_episode("mine")
    other = gateway.open_episode("other")
    body = {"prompt": "hello"}
    assert post(gateway.url + "/v1/completions", body)[0] == 403
    assert post(gateway.url + "/ep/guessed-token/v1/completions", body)[0] == 403
    calls_on_other = gateway.close_episode("other")
    assert post(other + "/completions", body)[0] == 403
    assert post(mine + "/completions", body)[0] == 200
    assert calls_on_other == [] and len(gateway.close_episode("mine")) == 1
    assert gateway.refused_unattributed == 3


def test_a_harness_cannot_reach_another_episode_or_the_bare_gateway(gateway: ModelGateway) -> None:
    victim = gateway.open_episode("victim")
    token = victim.split("/ep/")[1].split("/")[0]
    source = f'''
import json, os, urllib.error, urllib.request

def attempt(url):
    request = urllib.request.Request(url, data=json.dumps({{"prompt": "x"}}).encode())
    try:
        urllib.request.urlopen(request, timeout=5)
        return "200"
    except urllib.error.HTTPError as exc:
        return str(exc.code)

def solve(sample, model):
    base = os.environ["SIA_MODEL_URL"].split("/ep/")[0]
    return ",".join([attempt(base + "/v1/completions"),
                     attempt(base + "/ep/not-{token}/v1/completions")])
'''
    outcome = run_episode(source, SAMPLE, model_url=gateway.open_episode("attacker"))
    assert (outcome.status, outcome.answer) == ("ok", "403,403")
    assert gateway.close_episode("victim") == [] and gateway.close_episode("attacker") == []


def test_budgets_answer_429_and_are_recorded(gateway: ModelGateway) -> None:
    url = gateway.open_episode("greedy") + "/completions"
    status, reply = post(url, {"prompt": "go", "max_tokens": 1000})
    assert status == 200 and reply["usage"]["completion_tokens"] == 40
    assert post(url, {"prompt": "go", "max_tokens": 1})[0] == 429
    statuses = [post(url, {"prompt": "go"})[0] for _ in range(4)]
    calls = gateway.close_episode("greedy")
    assert statuses == [429, 429, 429, 429] and [c.status for c in calls] == [200] + [429] * 5
    assert calls[0].params is not None and calls[0].params.max_tokens == 40
    assert "calls" in (calls[-1].error or "")


def test_a_harness_over_budget_sees_a_clear_model_error(gateway: ModelGateway) -> None:
    source = "def solve(sample, model):\n    while True:\n        model.complete('go', max_tokens=1)\n"
    outcome = run_episode(source, SAMPLE, model_url=gateway.open_episode("loop"))
    calls = gateway.close_episode("loop")
    assert outcome.status == "crash" and outcome.error is not None
    assert outcome.error.startswith("ModelError: model call failed with HTTP 429")
    assert len(calls) == 6 and calls[-1].status == 429


class Broken:
    name = "broken"

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        raise RuntimeError("device lost")


def test_a_backend_error_is_a_recorded_502() -> None:
    backend: TargetBackend = Broken()
    with ModelGateway(backend) as gateway:
        url = gateway.open_episode("e")
        status, reply = post(url + "/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        calls = gateway.close_episode("e")
    assert status == 502 and "device lost" in reply["error"]["message"]
    assert [c.status for c in calls] == [502] and "device lost" in (calls[0].error or "")


def test_bad_requests_are_400_and_models_are_listed(gateway: ModelGateway) -> None:
    url = gateway.open_episode("e")
    assert post(url + "/completions", {"prompt": 3})[0] == 400
    assert post(url + "/completions", {"prompt": "x", "n": 99})[0] == 400
    assert post(url + "/chat/completions", {"messages": []})[0] == 400
    assert post(url + "/completions", "not an object")[0] == 400
    assert post(url + "/embeddings", {"input": "x"})[0] == 404
    with urllib.request.urlopen(url + "/models", timeout=5) as response:
        assert json.loads(response.read())["data"][0]["id"] == "scripted"
    assert [c.status for c in gateway.close_episode("e")] == [400, 400, 400, 400]


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
])
def test_validate_harness_names_the_problem(source: str, problem: str | None) -> None:
    problems = validate_harness(source)
    assert problems == [] if problem is None else problem in problems[0]


def test_the_contract_text_documents_the_model_interface() -> None:
    for phrase in ("def solve(sample: dict, model) -> str", "model.complete(", "model.chat(",
                   "malformed", "invalid_harness"):
        assert phrase in HARNESS_CONTRACT


def test_an_invalid_harness_never_starts_a_process() -> None:
    outcome = run_episode("def solve(sample):\n    return 'x'\n", SAMPLE, model_url=None,
                          limits=Limits(wall_s=1))
    assert outcome.status == "invalid_harness" and outcome.wall_s == 0.0
