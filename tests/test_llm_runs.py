"""Whole runs with the Meta and Feedback agents on an LLM: the real `anthropic` and
`openai` SDKs, inside a real `sia run` process, against loopback protocol servers that
also throw a rate limit and a server error at them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sia.agents.template import Knobs, render
from sia.testing import AnthropicServer, Fault, OpenAIServer, Script
from tests.cli import sia, sia_json

pytestmark = pytest.mark.slow

KEY = "sk-test-SECRET-run-4821"
FIRST = render(Knobs(prompt="fields", extract="option", samples=3, fallback="first_option"))
SECOND = render(Knobs(prompt="fields", extract="option", samples=5, fallback="first_option"))
SCRIPT = (
    {"harness": FIRST, "notes": "list the options, cue the answer, vote over 3"},
    {"action": "update_weights", "rationale": "train", "plan": {"algorithm": "grpo"}},
    {"action": "edit_harness", "rationale": "votes are close: sample five completions",
     "evidence": [], "harness": SECOND},
)


def check_run(home: Path, run: str, provider: str, requests: int) -> None:
    state = sia_json(home, "show", run)
    assert state["status"] == "completed" and len(state["dev_scores"]) == 2
    (decision,) = sia_json(home, "audit", run)
    assert decision["action"] == "edit_harness" and decision["provider"].startswith(provider)
    (refusal,) = decision["refused_answers"]
    assert refusal["attempt"] == 1 and "mode H" in " ".join(refusal["problems"])
    assert "(after 1 refused)" in sia(home, "audit", run).stdout
    assert "five completions" in decision["rationale"]
    failures = [e for e in sia(home, "log", run, "--type", "EffectFailed", "--json").stdout.splitlines()]
    assert len(failures) == 2
    (refused,) = [json.loads(line)["payload"] for line in
                  sia(home, "log", run, "--type", "AnswerRefused", "--json").stdout.splitlines()]
    assert refused["kind"] == "feedback" and "mode H" in " ".join(refused["problems"])
    assert requests == 5
    stored = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert KEY.encode() not in stored


def test_a_run_with_anthropic_meta_and_feedback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with AnthropicServer(api_key=KEY) as server:
        server.responder = Script(*SCRIPT)
        server.fail_next(Fault.rate_limited(retry_after=0), Fault.server_error())
        result = sia(home, "run", "--task", "wordcat", "--mode", "H", "--max-gen", "2", "--quiet",
                     "--set", "meta=anthropic", "--set", "feedback=anthropic:claude-sonnet-4-6",
                     "--set", "agent.max_turns=1",  # one structured answer (investigations: test_agents_investigation)
                     env={"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.base_url},
                     timeout=300)
        requests = len(server.requests)
    check_run(home, result.stdout.split()[-1], "anthropic", requests)


def test_a_run_with_an_openai_compatible_endpoint(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with OpenAIServer(api_key=KEY, models=("loopback-model",)) as server:
        server.responder = Script(*SCRIPT)
        server.fail_next(Fault.rate_limited(retry_after=0), Fault.server_error())
        result = sia(home, "run", "--task", "wordcat", "--mode", "H", "--max-gen", "2", "--quiet",
                     "--set", "meta=openai:loopback-model",
                     "--set", "feedback=openai:loopback-model", "--set", "agent.max_turns=1",
                     env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.api_base},
                     timeout=300)
        requests = len(server.requests)
    check_run(home, result.stdout.split()[-1], "openai", requests)


def test_a_search_explores_every_candidate_the_llm_proposes(tmp_path: Path) -> None:
    """`--candidates 3` with an LLM Feedback Agent: its decision and two alternatives are a
    round's three candidates, each run on its own branch."""
    home, asked = tmp_path / "home", []
    harnesses = iter(render(Knobs(prompt="fields", extract="option", samples=n, fallback="first_option"))
                     for n in range(3, 40))

    def respond(body: dict) -> dict:
        if body["tools"][0]["name"] == "harness":
            return {"harness": next(harnesses)}
        asked.append(body["tools"][0]["input_schema"]["properties"]["alternatives"]["maxItems"])
        return {"action": "edit_harness", "rationale": "vote over more samples", "evidence": [],
                "harness": next(harnesses), "alternatives": [
                    {"action": "edit_harness", "rationale": f"alternative {i}", "harness": next(harnesses)}
                    for i in (1, 2)]}

    with AnthropicServer(api_key=KEY) as server:
        server.responder = respond
        result = sia(home, "run", "--task", "wordcat", "--mode", "H", "--max-gen", "2", "--candidates", "3",
                     "--quiet", "--set", "meta=anthropic", "--set", "feedback=anthropic:claude-sonnet-4-6",
                     "--set", "agent.max_turns=1",
                     env={"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.base_url}, timeout=300)
    run = result.stdout.split()[-1]
    proposed = [json.loads(line)["payload"] for line in
                sia(home, "log", run, "--type", "CandidatesProposed", "--json").stdout.splitlines()]
    evaluated = sia(home, "log", run, "--type", "CandidateEvaluated", "--json").stdout.splitlines()
    assert proposed and asked == [2] * len(proposed)
    assert all(len(p["candidates"]) == 3 and p["provider"].startswith("anthropic") for p in proposed)
    assert [c["rationale"] for c in proposed[0]["candidates"][1:]] == ["alternative 1", "alternative 2"]
    assert len(evaluated) == 3 * len(proposed)
    assert sia(home, "replay", run, "--check").returncode == 0
