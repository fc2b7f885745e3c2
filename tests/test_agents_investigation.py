"""The Feedback and Meta agents as investigations: several turns of tool use through the real
SDKs against the loopback servers, every step journaled, resumed from the journal without
asking again, bounded by turns, tokens and dollars."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sia.agents.investigation import limit_reached, render_steps
from sia.agents.llm import LLMFeedback, LLMMeta, investigates
from sia.agents.template import Knobs, render
from sia.agents.tools import ToolInputError
from sia.core.effect_models import parse_request
from sia.core.events.types import AgentLimits, AgentStepRecorded, AnswerRefused, BaseEvent, Usage
from sia.core.reducers.state import AgentStep
from sia.effects.base import EffectContext, EffectError
from sia.harness.contract import validate_harness
from sia.llm import get_provider
from sia.store.blobs import BlobStore, MemoryBlobStore
from sia.testing import AnthropicServer, CallTools, FinalAnswer, OpenAIServer, ScriptedCall
from tests.conftest import BuiltModels
from tests.test_agents_llm import GOOD, KEY, ToyTask, feedback_request

EDIT = render(Knobs(extract="option", samples=3, fallback="first_option"))
LIMITS = AgentLimits(max_turns=8, max_tokens=200_000, max_dollars=5.0)
HELD_OUT = "t-held-out"


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@dataclass
class Protocol:
    name: str
    server: AnthropicServer | OpenAIServer
    provider: Any
    model: str


@pytest.fixture(params=["anthropic", "openai"])
def proto(request: pytest.FixtureRequest) -> Iterator[Protocol]:
    if request.param == "anthropic":
        with AnthropicServer(api_key=KEY) as srv:
            yield Protocol("anthropic", srv, get_provider("anthropic", base_url=srv.base_url, timeout=10.0),
                           "claude-haiku-4-5")
    else:
        with OpenAIServer(api_key=KEY, models=("claude-haiku-4-5",)) as osrv:
            yield Protocol("openai", osrv, get_provider("openai", base_url=osrv.api_base, timeout=10.0),
                           "claude-haiku-4-5")


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicServer]:
    with AnthropicServer(api_key=KEY) as srv:
        yield srv


class DraftStandIn:
    """Runs nothing: answers each sample with its first option and counts the runs, so a test
    can see whether a replayed step ran its tool again. (The real runner, `play` in the
    sandbox, is exercised by the whole runs below.)"""

    def __init__(self) -> None:
        self.runs: list[tuple[str, ...]] = []

    def public_split(self, sample_id: str) -> str:
        if sample_id == HELD_OUT:
            raise ToolInputError(f"sample {sample_id!r} is held out: only train and dev samples can be used")
        if not sample_id.startswith("s"):
            raise ToolInputError(f"no sample {sample_id!r}")
        return "dev"

    def __call__(self, source: str, sample_ids: Sequence[str], key: str, seed: int,
                 adapter_hash: str | None, blobs: BlobStore) -> tuple[list[dict[str, Any]], Usage]:
        self.runs.append(tuple(sample_ids))
        rows = [{"sample_id": s, "status": "ok", "answer": "animal", "reward": 1.0} for s in sample_ids]
        return rows, Usage(tokens_in=7 * len(sample_ids), tokens_out=3 * len(sample_ids))


@dataclass
class Recorder:
    """What the runtime does with reported events: keep them, and fold the steps into the journal."""

    events: list[BaseEvent] = field(default_factory=list)
    stop_after_steps: int | None = None

    def report(self, event: BaseEvent) -> None:
        self.events.append(event)
        if self.stop_after_steps is not None and len(self.steps) >= self.stop_after_steps:
            raise Killed(f"killed after {len(self.steps)} steps")

    @property
    def steps(self) -> list[AgentStepRecorded]:
        return [e for e in self.events if isinstance(e, AgentStepRecorded)]

    def journal(self) -> tuple[AgentStep, ...]:
        return tuple(AgentStep(e.index, e.kind, e.name, e.blob_hash, e.summary, e.usage) for e in self.steps)


class Killed(BaseException):
    """Stands in for kill -9 inside one process: nothing after it runs."""


def context(blobs: MemoryBlobStore, recorder: Recorder, kind: str = "feedback",
            journal: tuple[AgentStep, ...] = ()) -> EffectContext:
    return EffectContext(run_id="run-test", effect_id=f"{kind}-effect-0123456789abcdef", kind=kind, seed=7,
                         attempt=1, blobs=blobs, home=Path("."), journal=journal, report=recorder.report)


def feedback(proto: Protocol, draft: DraftStandIn, **kw: Any) -> LLMFeedback:
    return LLMFeedback(proto.provider, proto.model, ToyTask(), validate_harness, draft=draft,
                       dev_rewards=lambda run_id: {0: {f"s{i}": 0.0 for i in range(8)}}, **kw)


def request_of(blobs: MemoryBlobStore, limits: AgentLimits | None = LIMITS, **kw: Any) -> Any:
    data = feedback_request(blobs, **kw)
    if limits is not None:
        data["limits"] = limits.model_dump()
    return parse_request("feedback", data)


DECIDE = {"action": "edit_harness", "rationale": "the draft answers every sample", "evidence": ["ep-1"],
          "harness": EDIT}
INVESTIGATION = (
    CallTools((ScriptedCall("list_episodes", {"max_reward": 0}), ScriptedCall("history", {})),
              text="Failures first."),
    CallTools((ScriptedCall("read_episode", {"episode_id": "ep-1"}),
               ScriptedCall("compare_generations", {"generation": 0}),
               ScriptedCall("diff_harnesses", {"from_generation": 0}))),
    CallTools((ScriptedCall("run_draft_harness", {"harness": EDIT, "samples": ["s1", "s2"]}),)),
    CallTools((ScriptedCall("decide", DECIDE),)),
)


def steps_usage(recorder: Recorder) -> Usage:
    steps = recorder.steps
    return Usage(tokens_in=sum(s.usage.tokens_in for s in steps), tokens_out=sum(s.usage.tokens_out for s in steps),
                 dollars=sum(s.usage.dollars for s in steps))


# ---------------------------------------------------------------- investigating


def test_feedback_investigates_over_several_turns_then_decides(proto: Protocol) -> None:
    conversation = proto.server.converse(*INVESTIGATION)
    blobs, recorder, draft = MemoryBlobStore(), Recorder(), DraftStandIn()
    outcome = feedback(proto, draft).run(request_of(blobs), context(blobs, recorder))
    result = outcome.result
    assert conversation.finished and proto.server.errors == []
    assert result.action == "edit_harness" and blobs.get_text(result.harness_hash) == EDIT
    assert "investigated in 4 turn(s) and 7 tool call(s)" in result.rationale
    assert [(s.kind, s.name) for s in recorder.steps] == [
        ("turn", proto.model), ("tool", "list_episodes"), ("tool", "history"),
        ("turn", proto.model), ("tool", "read_episode"), ("tool", "compare_generations"), ("tool", "diff_harnesses"),
        ("turn", proto.model), ("tool", "run_draft_harness"), ("turn", proto.model), ("tool", "decide")]
    assert [s.index for s in recorder.steps] == list(range(11)) and draft.runs == [("s1", "s2")]
    # the tools answered from the request: failures listed, the episode read in full, the
    # comparison with generation 0, the diff, the draft's rewards beside the current ones
    results = {call.name: json.loads(blobs.get_text(step.blob_hash))["content"]
               for step, call in zip([s for s in recorder.steps if s.kind == "tool"], conversation.issued)}
    listed = json.loads(results["list_episodes"])
    assert listed["matched"] == 5 and all(e["reward"] == 0 for e in listed["episodes"])
    episode = json.loads(results["read_episode"])
    assert episode["sample"]["word"] == "red" and episode["trajectory"]["calls"][0]["completions"] == ["completion 1"]
    compared = json.loads(results["compare_generations"])
    assert compared["improved"] == 3 and compared["regressed"] == 0
    assert results["diff_harnesses"].startswith("--- generation 0")
    drafted = json.loads(results["run_draft_harness"])
    assert drafted["samples"][0]["current_reward"] == 0.0 and drafted["mean_reward"] == 1.0
    # what the model was given back is what the journal holds
    assert [r.content for r in conversation.exchanges[-1].results] == [
        json.loads(blobs.get_text(s.blob_hash))["content"] for s in recorder.steps if s.kind == "tool"][:-1]
    # the effect's usage is its steps', the draft's tokens included, counted once
    total = steps_usage(recorder)
    assert (outcome.usage.tokens_in, outcome.usage.tokens_out) == (total.tokens_in, total.tokens_out)
    assert outcome.usage.dollars == pytest.approx(total.dollars) and total.dollars > 0
    draft_step = next(s for s in recorder.steps if s.name == "run_draft_harness")
    assert (draft_step.usage.tokens_in, draft_step.usage.tokens_out) == (14, 6)


def test_a_killed_investigation_resumes_from_its_journal_without_asking_again(
        anthropic_server: AnthropicServer) -> None:
    twin_blobs, twin_recorder = MemoryBlobStore(), Recorder()
    with AnthropicServer(api_key=KEY) as twin_server:  # its own prompt cache, as a separate process would have
        twin_server.converse(*INVESTIGATION)
        twin_proto = Protocol("anthropic", twin_server, get_provider("anthropic", base_url=twin_server.base_url,
                                                                     timeout=10.0), "claude-haiku-4-5")
        twin = feedback(twin_proto, DraftStandIn()).run(request_of(twin_blobs), context(twin_blobs, twin_recorder))
    proto = Protocol("anthropic", anthropic_server, get_provider("anthropic", base_url=anthropic_server.base_url,
                                                                  timeout=10.0), "claude-haiku-4-5")

    conversation = anthropic_server.converse(*INVESTIGATION)
    blobs, draft = MemoryBlobStore(), DraftStandIn()
    first = Recorder(stop_after_steps=9)  # killed just after the draft ran, before turn 3 was asked
    with pytest.raises(Killed):
        feedback(proto, draft).run(request_of(blobs), context(blobs, first))
    assert len(conversation.requests) == 3 and draft.runs == [("s1", "s2")]
    second = Recorder()
    resumed = feedback(proto, draft).run(request_of(blobs), context(blobs, second, journal=first.journal()))
    assert conversation.finished and anthropic_server.errors == []
    assert len(conversation.requests) == len(INVESTIGATION), "no turn was asked twice"
    assert draft.runs == [("s1", "s2")], "the draft harness did not run again"
    assert [s.index for s in second.steps] == [9, 10]
    assert resumed.result == twin.result
    assert (resumed.usage.tokens_in, resumed.usage.tokens_out) == (twin.usage.tokens_in, twin.usage.tokens_out)
    assert [s.blob_hash for s in first.steps + second.steps] == [s.blob_hash for s in twin_recorder.steps]


def test_a_journal_that_does_not_fit_the_conversation_fails_clearly(anthropic_server: AnthropicServer) -> None:
    proto = Protocol("anthropic", anthropic_server, get_provider("anthropic", base_url=anthropic_server.base_url,
                                                                  timeout=10.0), "claude-haiku-4-5")
    blobs = MemoryBlobStore()
    wrong = (AgentStep(0, "tool", "history", blobs.put_text("{}"), "", Usage()),)
    with pytest.raises(EffectError, match="diverges at step 0: recorded tool 'history', now turn"):
        feedback(proto, DraftStandIn()).run(request_of(blobs), context(blobs, Recorder(), journal=wrong))


def test_a_refused_decision_goes_back_to_the_model_as_a_tool_error(anthropic_server: AnthropicServer) -> None:
    proto = Protocol("anthropic", anthropic_server, get_provider("anthropic", base_url=anthropic_server.base_url,
                                                                  timeout=10.0), "claude-haiku-4-5")
    bad = {"action": "update_weights", "rationale": "train", "evidence": [], "plan": {"algorithm": "grpo"}}
    conversation = anthropic_server.converse(CallTools((ScriptedCall("decide", bad),)),
                                             CallTools((ScriptedCall("decide", DECIDE),)))
    blobs, recorder = MemoryBlobStore(), Recorder()
    result = feedback(proto, DraftStandIn()).run(request_of(blobs, mode="H"), context(blobs, recorder)).result
    (seen,) = conversation.exchanges[1].results
    assert seen.is_error and "not allowed in mode H" in seen.content
    (refusal,) = [e for e in recorder.events if isinstance(e, AnswerRefused)]
    assert refusal.attempt == 1 and "mode H" in refusal.problems[0]
    assert result.action == "edit_harness" and "refused before: turn 1: refused:" in result.rationale


def test_a_malformed_tool_call_is_recorded_and_the_model_asked_again(anthropic_server: AnthropicServer) -> None:
    proto = Protocol("anthropic", anthropic_server, get_provider("anthropic", base_url=anthropic_server.base_url,
                                                                  timeout=10.0), "claude-haiku-4-5")
    conversation = anthropic_server.converse(CallTools((ScriptedCall("list_episodes", "[1, 2]"),)),
                                             FinalAnswer("I think I am done."),
                                             CallTools((ScriptedCall("decide", DECIDE),)))
    blobs, recorder = MemoryBlobStore(), Recorder()
    result = feedback(proto, DraftStandIn()).run(request_of(blobs), context(blobs, recorder)).result
    assert conversation.finished and result.action == "edit_harness"
    malformed, text_only = recorder.steps[0], recorder.steps[1]
    assert malformed.summary.startswith("malformed: ") and malformed.usage.tokens_in > 0
    assert text_only.summary == "text: 'I think I am done.'"
    last = conversation.requests[-1]["messages"]
    assert "could not be run" in json.dumps(last[2]) and "without calling a tool" in json.dumps(last[4])


# ---------------------------------------------------------------- limits


def test_the_turn_limit_forces_a_last_turn_that_offers_only_decide(proto: Protocol) -> None:
    conversation = proto.server.converse(
        CallTools((ScriptedCall("list_episodes", {}),)),
        CallTools((ScriptedCall("run_draft_harness", {"harness": EDIT, "samples": ["s1"]}),)),
        CallTools((ScriptedCall("decide", DECIDE),)))
    blobs, recorder = MemoryBlobStore(), Recorder()
    limits = AgentLimits(max_turns=3, max_tokens=None, max_dollars=None)
    result = feedback(proto, DraftStandIn()).run(request_of(blobs, limits), context(blobs, recorder)).result
    last = conversation.requests[-1]
    offered = [t.get("name") or t["function"]["name"] for t in last["tools"]]
    assert offered == ["decide"]
    assert last["tool_choice"] in ({"type": "any"}, "required")
    assert "ended by the turn limit: 2 of 3 turns taken" in result.rationale
    assert recorder.steps[-2].summary.startswith("last turn (turn limit: 2 of 3 turns taken): called decide")


def test_the_token_limit_ends_the_investigation_and_a_refused_last_answer_fails_clearly(
        anthropic_server: AnthropicServer) -> None:
    proto = Protocol("anthropic", anthropic_server, get_provider("anthropic", base_url=anthropic_server.base_url,
                                                                  timeout=10.0), "claude-haiku-4-5")
    bad = {"action": "stop", "rationale": "done", "evidence": ["ep-999"]}
    conversation = anthropic_server.converse(CallTools((ScriptedCall("history", {}),)),
                                             CallTools((ScriptedCall("decide", bad),)))
    blobs, recorder = MemoryBlobStore(), Recorder()
    limits = AgentLimits(max_turns=20, max_tokens=100, max_dollars=None)
    with pytest.raises(EffectError) as failed:
        feedback(proto, DraftStandIn()).run(request_of(blobs, limits), context(blobs, recorder))
    message = str(failed.value)
    assert conversation.finished and "no valid decision" in message
    assert "the last turn (token limit: " in message and "evidence must be episode ids" in message
    assert "investigated in 2 turn(s)" in message


def test_the_dollar_limit_counts_every_turn(anthropic_server: AnthropicServer) -> None:
    proto = Protocol("anthropic", anthropic_server, get_provider("anthropic", base_url=anthropic_server.base_url,
                                                                  timeout=10.0), "claude-sonnet-4-6")
    anthropic_server.converse(CallTools((ScriptedCall("history", {}),)), CallTools((ScriptedCall("history", {}),)),
                              CallTools((ScriptedCall("decide", DECIDE),)))
    blobs, recorder = MemoryBlobStore(), Recorder()
    limits = AgentLimits(max_turns=20, max_tokens=None, max_dollars=0.013)
    result = feedback(proto, DraftStandIn()).run(request_of(blobs, limits), context(blobs, recorder)).result
    turns = [s for s in recorder.steps if s.kind == "turn"]
    assert sum(s.usage.dollars for s in turns[:-1]) >= 0.013 > sum(s.usage.dollars for s in turns[:-2])
    assert "ended by the dollar limit" in result.rationale


def test_limits_and_the_choice_of_path() -> None:
    limits = AgentLimits(max_turns=4, max_tokens=1000, max_dollars=1.0)
    assert limit_reached(limits, 2, Usage(tokens_in=500, tokens_out=499, dollars=0.99)) is None
    assert limit_reached(limits, 3, Usage()) == "turn limit: 3 of 4 turns taken"
    assert limit_reached(limits, 0, Usage(tokens_in=600, tokens_out=400)) == "token limit: 1000 of 1000 tokens spent"
    assert limit_reached(limits, 0, Usage(dollars=1.5)) == "dollar limit: $1.5000 of $1.0000 spent"
    tool_use = get_provider("anthropic", base_url="http://127.0.0.1:9")
    assert investigates(tool_use, limits) == limits
    assert investigates(tool_use, None) is None
    assert investigates(tool_use, AgentLimits(max_turns=1)) is None


def test_without_limits_the_feedback_agent_answers_in_one_structured_request(anthropic_server: AnthropicServer) -> None:
    proto = Protocol("anthropic", anthropic_server, get_provider("anthropic", base_url=anthropic_server.base_url,
                                                                  timeout=10.0), "claude-haiku-4-5")
    anthropic_server.responder = lambda body: {"action": "stop", "rationale": "good enough", "evidence": []}
    blobs, recorder = MemoryBlobStore(), Recorder()
    result = feedback(proto, DraftStandIn()).run(request_of(blobs, None), context(blobs, recorder)).result
    assert result.action == "stop" and recorder.events == []
    (body,) = anthropic_server.message_requests
    assert body["tool_choice"] == {"type": "tool", "name": "decision"}


# ---------------------------------------------------------------- what tools may show


def test_tools_refuse_held_out_and_unknown_samples_and_bad_arguments(anthropic_server: AnthropicServer) -> None:
    proto = Protocol("anthropic", anthropic_server, get_provider("anthropic", base_url=anthropic_server.base_url,
                                                                  timeout=10.0), "claude-haiku-4-5")
    conversation = anthropic_server.converse(
        CallTools((ScriptedCall("run_draft_harness", {"harness": EDIT, "samples": [HELD_OUT]}),
                   ScriptedCall("run_draft_harness", {"harness": EDIT, "samples": ["s1", "s2", "s3", "s4", "s5"]}),
                   ScriptedCall("run_draft_harness", {"harness": "import os\n", "samples": ["s1"]}),
                   ScriptedCall("read_episode", {"episode_id": "nope"}),
                   ScriptedCall("list_episodes", {"min_reward": "high"}),
                   ScriptedCall("compare_generations", {"generation": 1}),
                   ScriptedCall("diff_harnesses", {"from_generation": 5}))),
        CallTools((ScriptedCall("decide", DECIDE),)))
    blobs, draft = MemoryBlobStore(), DraftStandIn()
    feedback(proto, draft).run(request_of(blobs), context(blobs, Recorder()))
    results = conversation.exchanges[1].results
    assert all(r.is_error for r in results) and draft.runs == []
    texts = [r.content for r in results]
    assert "is held out" in texts[0] and "at most 4 samples" in texts[1] and "contract_problems" in texts[2]
    assert "no dev episode 'nope'" in texts[3] and "'min_reward' must be a number" in texts[4]
    assert "generation 1 has no dev rewards" in texts[5] and "no generation 5" in texts[6]


def test_meta_investigates_then_submits_a_harness(anthropic_server: AnthropicServer) -> None:
    provider = get_provider("anthropic", base_url=anthropic_server.base_url, timeout=10.0)
    conversation = anthropic_server.converse(
        CallTools((ScriptedCall("read_samples", {"split": "dev", "limit": 2}),
                   ScriptedCall("read_samples", {"split": "test"}))),
        CallTools((ScriptedCall("run_draft_harness", {"harness": GOOD, "samples": ["s0"]}),)),
        CallTools((ScriptedCall("submit_harness", {"harness": "def solve(sample):\n    return 1\n"}),)),
        CallTools((ScriptedCall("submit_harness", {"harness": GOOD, "notes": "first"}),)))
    blobs, recorder, draft = MemoryBlobStore(), Recorder(), DraftStandIn()
    handler = LLMMeta(provider, "claude-haiku-4-5", ToyTask(), validate_harness, draft=draft)
    request = parse_request("meta", {"task": "toy", "task_hash": "t" * 8, "provider": "anthropic", "attempt": 1,
                                     "limits": LIMITS.model_dump()})
    outcome = handler.run(request, context(blobs, recorder, kind="meta"))
    assert outcome.result.valid and blobs.get_text(outcome.result.harness_hash) == GOOD
    first = conversation.exchanges[1].results
    assert json.loads(first[0].content)["samples"][0]["word"] == "cat"
    assert first[1].is_error and "split must be train or dev" in first[1].content
    refused = conversation.exchanges[3].results[-1]
    assert refused.is_error and "refused" in refused.content
    assert [e.attempt for e in recorder.events if isinstance(e, AnswerRefused)] == [1]
    assert draft.runs == [("s0",)]


# ---------------------------------------------------------------- the audit's view


def test_render_steps_shows_every_step_and_the_total() -> None:
    steps = [AgentStep(0, "turn", "claude-sonnet-4-6", "h0", "called list_episodes",
                       Usage(tokens_in=1200, tokens_out=40, dollars=0.0042, wall_s=1.5)),
             AgentStep(1, "tool", "list_episodes", "h1", "list_episodes(max_reward=0) -> {\"matched\": 5}",
                       Usage(wall_s=0.01)),
             AgentStep(2, "tool", "run_draft_harness", "h2", "run_draft_harness(...) -> {\"mean_reward\": 1.0}",
                       Usage(tokens_in=14, tokens_out=6, wall_s=2.0))]
    assert render_steps(steps, indent="") == [
        "investigation: 1 turn(s), 2 tool call(s)",
        "    0 model claude-sonnet-4-6: called list_episodes [1200 in / 40 out, $0.0042]",
        "    1 tool list_episodes: list_episodes(max_reward=0) -> {\"matched\": 5}",
        "    2 tool run_draft_harness: run_draft_harness(...) -> {\"mean_reward\": 1.0} [14 in / 6 out, $0.0000]",
        "  total: 1214 in / 46 out tokens, $0.0042, 3.5s",
    ]
    assert render_steps([]) == []



# ---------------------------------------------------------------- whole runs


SENTINEL = "zebracorn-sentinel-label-4417"
RUN_ID = "inv"
SECOND = render(Knobs(prompt="fields", extract="option", samples=3, fallback="first_option"))
RUN_DECIDE = {"action": "edit_harness", "rationale": "the draft names an option on every sample",
              "evidence": [], "harness": SECOND}
RUN_TURNS = (
    CallTools((ScriptedCall("list_episodes", {"max_reward": 0}), ScriptedCall("history", {})), text="Failures."),
    CallTools((ScriptedCall("read_episode", {"sample_id": "wc-003"}),
               ScriptedCall("run_draft_harness", {"harness": SECOND, "samples": ["wc-003", "wc-006"]}))),
    CallTools((ScriptedCall("decide", RUN_DECIDE),)),
)


@pytest.fixture(scope="module")
def sentinel_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wordcat with a test label no agent may ever see."""
    import shutil

    import sia.tasks.bundled as bundled

    folder = tmp_path_factory.mktemp("tasks") / "wordcat"
    shutil.copytree(Path(bundled.__path__[0]) / "wordcat", folder)
    labels = folder / "private" / "labels.jsonl"
    test_ids = {json.loads(line)["id"] for line in (folder / "private" / "test.jsonl").read_text().splitlines()}
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    first_test = next(row for row in rows if row["id"] in test_ids)
    first_test["label"] = SENTINEL
    labels.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def run_args(task: Path, *extra: str) -> list[str]:
    return ["run", "--task", str(task), "--mode", "H", "--max-gen", "2", "--quiet", "--run-id", RUN_ID,
            "--set", "meta=builtin", *extra]


def events_of(home: Path) -> list[dict[str, Any]]:
    from tests.cli import sia

    return [json.loads(line) for line in sia(home, "log", RUN_ID, "--json").stdout.splitlines()]


def steps_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["payload"] for e in events if e["type"] == "AgentStepRecorded"]


def comparable(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each event's type and payload without what differs between two runs of one config: its
    timings (wall time, stamps, hashes that chain them)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("wall_s", "retry_in_s")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return [(e["type"], json.dumps(strip(e["payload"]), sort_keys=True)) for e in events]


def assert_no_sentinel(home: Path, server: AnthropicServer | OpenAIServer) -> None:
    stored = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert SENTINEL.encode() not in stored
    assert all(SENTINEL not in request.text for request in server.requests)


@pytest.fixture(scope="module")
def twin(sentinel_task: Path, tmp_path_factory: pytest.TempPathFactory, built_models: BuiltModels) -> dict[str, Any]:
    """An uninterrupted run whose Feedback Agent investigates over three turns."""
    from tests.cli import sia

    home = tmp_path_factory.mktemp("twin")
    built_models.seed(home, sentinel_task)
    with AnthropicServer(api_key=KEY) as server:
        conversation = server.converse(*RUN_TURNS)
        sia(home, *run_args(sentinel_task, "--set", "feedback=anthropic:claude-sonnet-4-6"),
            env=server.env, timeout=600)
        assert server.errors == [] and conversation.finished
        assert_no_sentinel(home, server)
        exchanges = conversation.exchanges
    return {"home": home, "events": events_of(home), "exchanges": exchanges}


@pytest.mark.slow
def test_a_whole_run_whose_feedback_agent_investigates_before_deciding(twin: dict[str, Any]) -> None:
    from tests.cli import sia, sia_json

    home, events = twin["home"], twin["events"]
    steps = steps_of(events)
    assert [(s["kind"], s["name"]) for s in steps] == [
        ("turn", "claude-sonnet-4-6"), ("tool", "list_episodes"), ("tool", "history"),
        ("turn", "claude-sonnet-4-6"), ("tool", "read_episode"), ("tool", "run_draft_harness"),
        ("turn", "claude-sonnet-4-6"), ("tool", "decide")]
    read_back = twin["exchanges"][-1].results
    drafted = json.loads(read_back[-1].content)
    assert [s["sample_id"] for s in drafted["samples"]] == ["wc-003", "wc-006"]
    assert all(s["status"] == "ok" and s["model_calls"] >= 1 for s in drafted["samples"])
    assert steps[5]["usage"]["tokens_in"] > 0, "the draft's target tokens are counted"
    (decision,) = sia_json(home, "audit", RUN_ID)
    assert decision["action"] == "edit_harness"
    assert "[sia: investigated in 3 turn(s) and 5 tool call(s)" in decision["rationale"]
    assert decision["investigation"][0] == "investigation: 3 turn(s), 5 tool call(s)"
    assert any("run_draft_harness" in line for line in decision["investigation"])
    printed = sia(home, "audit", RUN_ID).stdout
    assert "the investigation behind the decision" in printed and "tool read_episode" in printed
    completed = next(e["payload"] for e in events if e["type"] == "EffectCompleted"
                     and e["payload"]["kind"] == "feedback")
    assert completed["usage"]["tokens_in"] == sum(s["usage"]["tokens_in"] for s in steps)
    assert completed["usage"]["dollars"] == pytest.approx(sum(s["usage"]["dollars"] for s in steps))
    assert sia(home, "replay", RUN_ID, "--check").returncode == 0


@pytest.mark.slow
def test_kill_9_mid_investigation_then_resume_is_the_uninterrupted_run(
        sentinel_task: Path, twin: dict[str, Any], tmp_path: Path, built_models: BuiltModels) -> None:
    import os
    import signal
    import subprocess

    from tests.cli import SIA, sia

    home = tmp_path / "home"
    built_models.seed(home, sentinel_task)
    with AnthropicServer(api_key=KEY) as server:
        conversation = server.converse(*RUN_TURNS)
        process: list[subprocess.Popen[str]] = []

        def killing(body: dict[str, Any]) -> Any:
            if len(conversation.requests) == 2:  # two turns answered, their tools run: kill -9 now
                process[0].send_signal(signal.SIGKILL)
                process[0].wait()
                raise ConnectionAbortedError("the sia process was killed")
            return conversation(body)

        server.responder = killing
        environment = {**os.environ, "SIA_HOME": str(home), **server.env}
        process.append(subprocess.Popen([*SIA, *run_args(sentinel_task, "--set",
                                                         "feedback=anthropic:claude-sonnet-4-6")],
                                        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL, text=True))
        assert process[0].wait(timeout=600) == -signal.SIGKILL
        killed = events_of(home)
        assert len(steps_of(killed)) == 6 and killed[-1]["type"] == "AgentStepRecorded"
        server.responder = conversation
        sia(home, "resume", RUN_ID, "--quiet", env=server.env, timeout=600)
        assert conversation.finished and len(conversation.requests) == len(RUN_TURNS), "no turn asked twice"
        assert_no_sentinel(home, server)
    resumed = events_of(home)
    assert comparable(resumed) == comparable(twin["events"])
    assert sia(home, "replay", RUN_ID, "--check").returncode == 0


@pytest.mark.slow
def test_an_openai_compatible_run_whose_investigation_is_ended_by_its_turn_limit(
        sentinel_task: Path, tmp_path: Path, built_models: BuiltModels) -> None:
    from tests.cli import sia, sia_json

    home = tmp_path / "home"
    built_models.seed(home, sentinel_task)
    turns = (RUN_TURNS[0], RUN_TURNS[1], CallTools((ScriptedCall("decide", RUN_DECIDE),)))
    with OpenAIServer(api_key=KEY, models=("loopback-model",)) as server:
        conversation = server.converse(*turns)
        sia(home, *run_args(sentinel_task, "--set", "feedback=openai:loopback-model", "--set", "agent.max_turns=3"),
            env=server.env, timeout=600)
        assert server.errors == [] and conversation.finished
        last = conversation.requests[-1]
        assert [t["function"]["name"] for t in last["tools"]] == ["decide"] and last["tool_choice"] == "required"
        assert_no_sentinel(home, server)
    steps = steps_of(events_of(home))
    assert [s["name"] for s in steps if s["kind"] == "tool"] == [
        "list_episodes", "history", "read_episode", "run_draft_harness", "decide"]
    assert steps[-2]["summary"].startswith("last turn (turn limit: 2 of 3 turns taken)")
    (decision,) = sia_json(home, "audit", RUN_ID)
    assert decision["provider"] == "openai:loopback-model"
    assert "ended by the turn limit: 2 of 3 turns taken" in decision["rationale"]


def test_steps_of_an_effect_are_picked_from_the_events_in_order() -> None:
    from sia.agents.investigation import steps_of_effect

    mine = [AgentStepRecorded(effect_id="e1", index=i, kind="turn", name="m", blob_hash="h") for i in range(2)]
    other = AgentStepRecorded(effect_id="e2", index=0, kind="tool", name="history", blob_hash="h")
    assert steps_of_effect([mine[0], other, mine[1]], "e1") == mine


def test_a_tool_result_is_clipped_and_a_failing_tool_is_one_error_result() -> None:
    from sia.agents.tools import RESULT_CHARS, Tool, as_json, run_tool
    from sia.llm import ToolSpec

    assert len(as_json({"text": "x" * 50_000})) <= RESULT_CHARS

    def broken(arguments: Any) -> Any:
        raise KeyError("boom")

    outcome = run_tool(Tool(ToolSpec(name="broken", input_schema={"type": "object"}), broken), {})
    assert outcome.is_error and outcome.content == "error: the tool failed: KeyError: 'boom'"


def test_meta_out_of_turns_with_a_refused_harness_is_an_invalid_proposal(anthropic_server: AnthropicServer) -> None:
    provider = get_provider("anthropic", base_url=anthropic_server.base_url, timeout=10.0)
    anthropic_server.converse(CallTools((ScriptedCall("read_samples", {}),)),
                              CallTools((ScriptedCall("submit_harness", {"harness": "import os\n"}),)))
    blobs = MemoryBlobStore()
    handler = LLMMeta(provider, "claude-haiku-4-5", ToyTask(), validate_harness)
    request = parse_request("meta", {"task": "toy", "task_hash": "t" * 8, "provider": "anthropic", "attempt": 1,
                                     "limits": AgentLimits(max_turns=2).model_dump()})
    result = handler.run(request, context(blobs, Recorder(), kind="meta")).result
    assert not result.valid and result.harness_hash is None
    assert result.problems[0].startswith("the last turn (turn limit: 1 of 2 turns taken) was refused")
    assert "investigated in 2 turn(s) and 2 tool call(s)" in result.problems[-1]
