"""An agent that investigates with tools before it answers, every step journaled.

The loop asks the model for one turn at a time (`ToolUseProvider.next_turn`), runs the
tools it calls, hands the results back, and ends when the model calls the final tool
(`decide` for Feedback, `submit_harness` for Meta) with an answer its `check` accepts. A
refused final call comes back to the model as an error result and the loop goes on.

Every model turn and every tool call is reported as an `AgentStepRecorded` the moment it
completes, its content a blob. An effect killed mid-investigation is resumed from
`ctx.journal`: steps 0..k-1 are read back from their blobs, so neither the model nor a
tool is asked again, and the loop continues at step k with the same conversation. The
loop must therefore be a function of the journaled results alone: nothing else it reads
may change between attempts.

A turn is journaled without the provider's message id (`Turn.raw_id`): it differs on every
call, and without it a resumed investigation journals the same blobs as an uninterrupted one.

Limits (`AgentLimits`): before each turn the spend so far (model tokens and dollars, and
what draft harness runs cost) and the turns taken are checked; when one is reached, the
next turn is the last: only the final tool is offered and the model must call it. If that
answer is refused too, the investigation ends with its problems, never a hang.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from sia.agents.digest import clip
from sia.agents.tools import Tool, ToolOutcome, run_tool
from sia.core.events.canonical import canonical_json
from sia.core.events.types import AgentLimits, AgentStepRecorded, BaseEvent, Usage
from sia.effects.base import EffectContext, EffectError
from sia.llm import (
    AssistantMessage,
    ChatMessage,
    MalformedToolCall,
    ToolCall,
    ToolResult,
    ToolResultsMessage,
    ToolSpec,
    ToolUseProvider,
    Turn,
    TurnRequest,
    UserMessage,
)

NO_CALL_REASK = ("You answered without calling a tool. Investigate with the tools, then give your answer "
                 "by calling `{final}`.")
MALFORMED_REASK = ("Your last turn was dropped: a tool call in it could not be run ({problems}). "
                   "Call the tools again with JSON object arguments, and only the tools offered.")
LAST_TURN_NOTE = ("\n\n# The investigation is over ({reason})\nCall `{final}` now with the best answer "
                  "what you have found supports. No other tool is available.")
SUMMARY_CHARS = 160


@dataclass(frozen=True)
class FinalTool:
    """The tool that ends the investigation; `check(arguments, attempt)` says why an answer
    is refused (`attempt` numbers the final calls from 1, the journaled ones included)."""

    spec: ToolSpec
    check: Callable[[Mapping[str, Any], int], list[str]]


@dataclass(frozen=True)
class Verdict:
    """How an investigation ended: the accepted final arguments, or why there are none."""

    answer: dict[str, Any] | None
    problems: tuple[str, ...]
    usage: Usage
    turns: int
    tool_calls: int
    refused: tuple[str, ...]
    """The final calls refused before the answer, each with its problems."""
    ended_by: str | None
    """The limit that forced the last turn, when one did."""


def spend_total(usages: Sequence[Usage]) -> Usage:
    return Usage(tokens_in=sum(u.tokens_in for u in usages), tokens_out=sum(u.tokens_out for u in usages),
                 dollars=sum(u.dollars for u in usages), wall_s=round(sum(u.wall_s for u in usages), 6),
                 gpu_s=sum(u.gpu_s for u in usages))


def limit_reached(limits: AgentLimits, turns: int, spent: Usage) -> str | None:
    """Why the next turn must be the last (None: the investigation may go on).

    The last turn itself is always allowed, so `max_turns` counts it."""
    if turns >= limits.max_turns - 1:
        return f"turn limit: {turns} of {limits.max_turns} turns taken"
    tokens = spent.tokens_in + spent.tokens_out
    if limits.max_tokens is not None and tokens >= limits.max_tokens:
        return f"token limit: {tokens} of {limits.max_tokens} tokens spent"
    if limits.max_dollars is not None and spent.dollars >= limits.max_dollars:
        return f"dollar limit: ${spent.dollars:.4f} of ${limits.max_dollars:.4f} spent"
    return None


@dataclass
class Journal:
    """This effect's steps: read back from `ctx.journal` where an earlier attempt recorded
    them, else performed now, stored as a blob and reported at once."""

    ctx: EffectContext
    spent: list[Usage] = field(default_factory=list)

    @property
    def index(self) -> int:
        return len(self.spent)

    def step(self, kind: str, name: str, perform: Callable[[], tuple[dict[str, Any], str, Usage]]) -> dict[str, Any]:
        index = self.index
        if index < len(self.ctx.journal):
            recorded = self.ctx.journal[index]
            if (recorded.kind, recorded.name) != (kind, name):
                raise EffectError(f"the journal of effect {self.ctx.effect_id} diverges at step {index}: "
                                  f"recorded {recorded.kind} {recorded.name!r}, now {kind} {name!r}")
            self.spent.append(recorded.usage)
            return dict(json.loads(self.ctx.blobs.get_text(recorded.blob_hash)))
        content, summary, usage = perform()
        blob = self.ctx.blobs.put_text(canonical_json(content))
        self.ctx.report(AgentStepRecorded(effect_id=self.ctx.effect_id, index=index, kind=kind, name=name,
                                          blob_hash=blob, summary=clip(summary, SUMMARY_CHARS), usage=usage))
        self.spent.append(usage)
        return content

    @property
    def usage(self) -> Usage:
        return spend_total(self.spent)


class Investigation:
    """One investigation: a provider, a system prompt, the tools and the final tool."""

    def __init__(self, provider: ToolUseProvider, model: str | None, *, system: str, tools: Sequence[Tool],
                 final: FinalTool, limits: AgentLimits, max_tokens: int) -> None:
        self.provider, self.model, self.system = provider, model, system
        self.tools = {tool.spec.name: tool for tool in tools}
        self.final, self.limits, self.max_tokens = final, limits, max_tokens
        if final.spec.name in self.tools:
            raise ValueError(f"the final tool {final.spec.name!r} is also an ordinary tool")

    @property
    def label(self) -> str:
        return self.model or self.provider.name

    def run(self, opening: str, ctx: EffectContext) -> Verdict:
        journal = Journal(ctx)
        messages: list[ChatMessage] = [UserMessage(text=opening)]
        refused: list[str] = []
        turns = calls = finals = 0
        final = self.final.spec.name
        while True:
            ended_by = limit_reached(self.limits, turns, journal.usage)
            request = self._request(messages, ctx.seed, ended_by)
            record = journal.step("turn", self.label, lambda: self._turn(request, ended_by))
            turns += 1
            if "malformed" in record:
                problems = [str(p) for p in record["malformed"]]
                if ended_by:
                    return self._verdict(None, [f"the last turn ({ended_by}) was malformed: " + "; ".join(problems)],
                                         journal, turns, calls, refused, ended_by)
                messages += [AssistantMessage(text="(a turn with a malformed tool call, dropped)"),
                             UserMessage(text=MALFORMED_REASK.format(problems=clip("; ".join(problems), 800)))]
                continue
            turn = Turn.model_validate(record["turn"])
            messages.append(turn.message if not turn.message.is_empty else AssistantMessage(text="(no reply)"))
            if not turn.tool_calls:
                if ended_by:
                    return self._verdict(None, [f"the last turn ({ended_by}) called no tool"], journal, turns,
                                         calls, refused, ended_by)
                messages.append(UserMessage(text=NO_CALL_REASK.format(final=final)))
                continue
            results: list[ToolResult] = []
            for call in turn.tool_calls:
                finals += call.name == final
                outcome = journal.step("tool", call.name, partial(self._call, call, finals))
                calls += 1
                result = ToolResult(call_id=call.id, content=outcome["content"], is_error=outcome["is_error"])
                results.append(result)
                if call.name == final:
                    if not result.is_error:
                        return self._verdict(dict(call.arguments), [], journal, turns, calls, refused, ended_by)
                    refused.append(f"turn {turns}: {result.content}")
            if ended_by:
                return self._verdict(None, [f"the last turn ({ended_by}) was refused: "
                                            + (refused[-1] if refused else "no final answer")],
                                     journal, turns, calls, refused, ended_by)
            messages.append(ToolResultsMessage(results=tuple(results)))

    def _request(self, messages: Sequence[ChatMessage], seed: int, ended_by: str | None) -> TurnRequest:
        if ended_by:
            return TurnRequest(provider=self.provider.name, model=self.model,
                               system=self.system + LAST_TURN_NOTE.format(reason=ended_by, final=self.final.spec.name),
                               messages=tuple(messages), tools=(self.final.spec,), tool_choice="any",
                               max_tokens=self.max_tokens, seed=seed, cache_prefix=True)
        return TurnRequest(provider=self.provider.name, model=self.model, system=self.system,
                           messages=tuple(messages), tools=(*(t.spec for t in self.tools.values()), self.final.spec),
                           max_tokens=self.max_tokens, seed=seed, cache_prefix=True)

    def _turn(self, request: TurnRequest, ended_by: str | None) -> tuple[dict[str, Any], str, Usage]:
        started = time.monotonic()
        try:
            turn = self.provider.next_turn(request)
        except MalformedToolCall as exc:
            usage = Usage(tokens_in=exc.usage.total_input_tokens, tokens_out=exc.usage.output_tokens,
                          dollars=exc.dollars, wall_s=round(time.monotonic() - started, 6))
            return ({"malformed": list(exc.problems), "last": ended_by},
                    "malformed: " + "; ".join(exc.problems), usage)
        usage = Usage(tokens_in=turn.usage.total_input_tokens, tokens_out=turn.usage.output_tokens,
                      dollars=turn.dollars, wall_s=round(time.monotonic() - started, 6))
        called = ", ".join(call.name for call in turn.tool_calls)
        summary = (f"called {called}" if called else f"text: {turn.text.strip()[:100]!r}")
        if ended_by:
            summary = f"last turn ({ended_by}): {summary}"
        return {"turn": turn.model_dump(mode="json", exclude={"raw_id"}), "last": ended_by}, summary, usage

    def _call(self, call: ToolCall, attempt: int) -> tuple[dict[str, Any], str, Usage]:
        started = time.monotonic()
        if call.name == self.final.spec.name:
            problems = self.final.check(call.arguments, attempt)
            outcome = (ToolOutcome("accepted") if not problems
                       else ToolOutcome("refused:\n" + "\n".join(f"- {p}" for p in problems), is_error=True))
        else:
            outcome = run_tool(self.tools[call.name], call.arguments)
        wall = round(time.monotonic() - started, 6)
        usage = outcome.usage.model_copy(update={"wall_s": wall})
        content = {"call": call.model_dump(mode="json"), "content": outcome.content, "is_error": outcome.is_error}
        summary = f"{call.name}({_arguments_brief(call.arguments)}) -> " + \
                  ("error: " if outcome.is_error else "") + outcome.content[:80].replace("\n", " ")
        return content, summary, usage

    def _verdict(self, answer: dict[str, Any] | None, problems: list[str], journal: Journal, turns: int,
                 calls: int, refused: list[str], ended_by: str | None) -> Verdict:
        return Verdict(answer, tuple(problems), journal.usage, turns, calls, tuple(refused), ended_by)


def _arguments_brief(arguments: Mapping[str, Any]) -> str:
    parts = []
    for key, value in arguments.items():
        if isinstance(value, str):
            parts.append(f"{key}={value!r}" if len(value) <= 40 else f"{key}=<{len(value)} chars>")
        else:
            parts.append(f"{key}={clip(json.dumps(value, ensure_ascii=False, default=str), 60)}")
    return ", ".join(parts)


def describe(verdict: Verdict) -> str:
    """One line on how the investigation went, for the decision's rationale."""
    u = verdict.usage
    text = (f"investigated in {verdict.turns} turn(s) and {verdict.tool_calls} tool call(s), "
            f"{u.tokens_in + u.tokens_out} tokens, ${u.dollars:.4f}")
    if verdict.ended_by:
        text += f"; ended by the {verdict.ended_by}"
    return text


# ---------------------------------------------------------------- the audit's view


class StepLike(Protocol):
    """A journaled step (`AgentStep` of a pending effect, or the `AgentStepRecorded` event)."""

    @property
    def index(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def summary(self) -> str: ...

    @property
    def usage(self) -> Usage: ...


def steps_of_effect(events: Iterable[BaseEvent], effect_id: str) -> list[AgentStepRecorded]:
    """The journaled steps of one effect, from a run's events (every attempt's, in order)."""
    return [e for e in events if isinstance(e, AgentStepRecorded) and e.effect_id == effect_id]


def render_steps(steps: Sequence[StepLike], indent: str = "    ") -> list[str]:
    """The investigation behind one decision, a line per step and a total, for `sia audit`."""
    if not steps:
        return []
    lines = [f"{indent}investigation: {sum(s.kind == 'turn' for s in steps)} turn(s), "
             f"{sum(s.kind == 'tool' for s in steps)} tool call(s)"]
    for step in sorted(steps, key=lambda s: s.index):
        u = step.usage
        cost = (f" [{u.tokens_in} in / {u.tokens_out} out, ${u.dollars:.4f}]"
                if step.kind == "turn" or u.tokens_in or u.tokens_out else "")
        who = f"model {step.name}" if step.kind == "turn" else f"tool {step.name}"
        lines.append(f"{indent}  {step.index:>3} {who}: {step.summary}{cost}")
    total = spend_total([s.usage for s in steps])
    lines.append(f"{indent}  total: {total.tokens_in} in / {total.tokens_out} out tokens, ${total.dollars:.4f}, "
                 f"{total.wall_s:.1f}s")
    return lines
