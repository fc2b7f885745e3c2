"""What the model gateway forwards to: the `TargetBackend` protocol and backends that need no model.

The gateway speaks HTTP to harnesses and this protocol to models, so a harness never
learns how the target model is served. A backend returns exact token ids and, when it
has them, per-token log-probabilities: the trajectories built from them are what
weight training learns from, so they must be the tokens actually sampled.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class SamplingParams(BaseModel):
    """The effective parameters of one call, after the gateway applied its limits."""

    model_config = ConfigDict(frozen=True)

    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: tuple[str, ...] = ()
    seed: int = 0


class Completion(BaseModel):
    """One completion of one prompt, as sampled."""

    model_config = ConfigDict(frozen=True)

    text: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: Literal["stop", "length"] = "length"
    stop_token_id: int | None = None
    """The token that ended a "stop" sample, left out of `token_ids`, when the backend knows it
    (a remote target without a local model directory: the trainer appends it, not a guessed EOS)."""


@runtime_checkable
class TargetBackend(Protocol):
    """A target model. `generate` returns `params.n` generations per prompt, prompt-major.

    Completion `j` of prompt `i` is at index `i * params.n + j` and must depend only on
    the prompt, the parameters and `params.seed` (so a recorded call can be re-run).
    Calls may arrive from several threads at once; a backend serialises them if it must.
    An optional `render_chat(messages) -> str` method turns chat messages into the
    prompt (a chat template); without it the gateway uses a plain "role: content" layout.
    """

    name: str

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]: ...


class Sampler(Protocol):
    """The per-prompt sampling interface of `sia.target.local.LocalBackend`."""

    name: str

    def sample(self, prompt: str, *, max_tokens: int, temperature: float, n: int, seed: int,
               stop: list[str] | None = None, top_p: float = 1.0) -> Sequence[Any]: ...


class SamplerBackend:
    """Adapts a per-prompt sampler (such as the local transformers backend) to `TargetBackend`.

    Each prompt gets its own seed derived from the call's seed, so the answer to one
    prompt does not depend on which other prompts shared its call.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.name = sampler.name

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        generations: list[Completion] = []
        for index, prompt in enumerate(prompts):
            samples = self.sampler.sample(prompt, max_tokens=params.max_tokens,
                                          temperature=params.temperature, n=params.n,
                                          seed=params.seed + index, stop=list(params.stop) or None,
                                          top_p=params.top_p)
            generations.extend(Completion(text=s.text, prompt_token_ids=list(s.prompt_token_ids),
                                          token_ids=list(s.token_ids),
                                          logprobs=None if s.logprobs is None else list(s.logprobs),
                                          finish_reason=s.finish_reason) for s in samples)
        return generations


DEFAULT_VOCABULARY: tuple[str, ...] = (
    "yes", "no", "maybe", "fruit", "animal", "the", "answer", "is", "a", "an", "plum", "cat",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", ".", "!",
)


class ScriptedBackend:
    """A deterministic toy model over a word vocabulary, for tests and offline runs.

    Words are tokens: a word of the vocabulary has its index as id, any other word a
    stable id above the vocabulary. A prompt found in `replies` is answered with that
    text (greedy, log-probability 0 per token); any other prompt gets `max_tokens`
    words drawn uniformly with a generator seeded from (seed, prompt, sample index), with
    log-probability -log(len(vocabulary)) per token. Temperature 0 always picks the
    first word. Stop strings cut the text and end the generation with "stop".
    """

    def __init__(self, vocabulary: Sequence[str] = DEFAULT_VOCABULARY,
                 replies: Mapping[str, str] | None = None, name: str = "scripted") -> None:
        if not vocabulary:
            raise ValueError("the vocabulary must not be empty")
        self.vocabulary = tuple(vocabulary)
        self.replies = dict(replies or {})
        self.name = name
        self._ids = {word: index for index, word in enumerate(self.vocabulary)}

    def token_id(self, word: str) -> int:
        known = self._ids.get(word)
        if known is not None:
            return known
        return len(self.vocabulary) + zlib.crc32(word.encode("utf-8")) % 1_000_000

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        return [self._one(prompt, params, j) for prompt in prompts for j in range(params.n)]

    def _one(self, prompt: str, params: SamplingParams, index: int) -> Completion:
        prompt_ids = [self.token_id(word) for word in prompt.split()]
        if prompt in self.replies:
            words = self.replies[prompt].split()[: params.max_tokens]
            logprob = 0.0
            reason: Literal["stop", "length"] = "stop"
        else:
            rng = random.Random(f"{params.seed}:{index}:{prompt}")
            pick = (lambda: self.vocabulary[0]) if params.temperature == 0 else (
                lambda: rng.choice(self.vocabulary))
            words = [pick() for _ in range(params.max_tokens)]
            logprob = 0.0 if params.temperature == 0 else -math.log(len(self.vocabulary))
            reason = "length"
        kept: list[str] = []
        for word in words:
            if any(marker and marker in " ".join([*kept, word]) for marker in params.stop):
                reason = "stop"
                break
            kept.append(word)
        return Completion(text=" ".join(kept), prompt_token_ids=prompt_ids,
                          token_ids=[self.token_id(word) for word in kept],
                          logprobs=[round(logprob, 6)] * len(kept), finish_reason=reason)
