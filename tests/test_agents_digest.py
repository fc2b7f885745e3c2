"""The stratified trajectory digest and trajectory summaries (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sia.agents.digest import GROUPS, MIN_CHARS, build_digest, classify, clip, summarize_trajectory
from sia.harness.backends import Completion
from sia.harness.gateway import ModelCall

OPTIONS = ["animal", "color", "fruit", "tool"]
# (status, prediction, reward) → the kind it must be sorted into
KINDS = [
    (("ok", "fruit", 1.0), "correct"),
    (("ok", "tool", 0.0), "wrong"),
    (("ok", "the the", 0.0), "unparseable"),
    (("ok", "", 0.0), "unparseable"),
    (("ok", None, 0.0), "unparseable"),
    (("timeout", None, 0.0), "timeout"),
    (("crash", None, 0.0), "crash"),
    (("memory", None, 0.0), "crash"),
    (("malformed", None, 0.0), "crash"),
]


def make(n: int, *, pattern: list[tuple[str, str | None, float]] | None = None,
         extra: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    pattern = pattern or [k for k, _ in KINDS]
    episodes, samples = [], {}
    for i in range(n):
        status, prediction, reward = pattern[i % len(pattern)]
        episodes.append({"episode_id": f"ep{i:03d}", "sample_id": f"s{i:03d}", "status": status,
                         "prediction": prediction, "reward": reward, "trajectory_hash": f"{i:064x}",
                         **(extra or {})})
        samples[f"s{i:03d}"] = {"id": f"s{i:03d}", "word": f"word-{i}", "options": OPTIONS}
    return episodes, samples


def summaries(episode_id: str) -> str:
    return f"1 model call(s)\ncall 0:\n  prompt: \"classify {episode_id}\"\n  completion[0]: \"...\""


def test_classification_follows_the_builtin_order() -> None:
    for (status, prediction, reward), kind in KINDS:
        episode = {"status": status, "prediction": prediction, "reward": reward}
        assert classify(episode, OPTIONS) == kind, (status, prediction, reward)
    # without options any non-empty answer parses
    assert classify({"status": "ok", "prediction": "the the", "reward": 0.0}, []) == "wrong"


def test_every_non_empty_group_is_represented_with_its_count() -> None:
    episodes, samples = make(90)
    digest = build_digest(episodes, samples, summaries, seed=7, max_chars=6000)
    assert digest.counts == {"unparseable": 30, "wrong": 10, "timeout": 10, "crash": 30, "correct": 10}
    kinds = {e["episode_id"]: classify(e, OPTIONS) for e in episodes}
    shown_kinds = {kinds[e] for e in digest.episode_ids_shown}
    assert shown_kinds == set(GROUPS), "failures and successes are both sampled"
    assert "counts: unparseable 30, wrong 10, timeout 10, crash 30, correct 10" in digest.text
    for episode_id in digest.episode_ids_shown:
        assert f"### episode {episode_id} |" in digest.text
    assert len(digest.text) <= 6000


def test_only_groups_that_occur_get_a_section() -> None:
    episodes, samples = make(12, pattern=[("ok", "fruit", 1.0), ("ok", "tool", 0.0)])
    digest = build_digest(episodes, samples, summaries, seed=1)
    assert digest.counts["timeout"] == digest.counts["crash"] == digest.counts["unparseable"] == 0
    assert "## wrong:" in digest.text and "## correct:" in digest.text
    assert "## crash:" not in digest.text
    assert len(digest.episode_ids_shown) == 8  # per_group=4 of each of the two groups


def test_the_sample_is_deterministic_in_the_seed_and_varies_with_it() -> None:
    episodes, samples = make(200)
    first = build_digest(episodes, samples, summaries, seed=42)
    again = build_digest(list(reversed(episodes)), samples, summaries, seed=42)
    assert first == again, "same seed, same digest (whatever order the episodes came in)"
    others = {build_digest(episodes, samples, summaries, seed=s).episode_ids_shown for s in range(5)}
    assert len(others) > 1
    assert first.digest_hash == __import__("hashlib").sha256(first.text.encode()).hexdigest()


@pytest.mark.parametrize("max_chars", [MIN_CHARS, 3000, 6000, 12_000, 40_000])
def test_the_text_fits_its_budget_and_always_shows_the_counts(max_chars: int) -> None:
    episodes, samples = make(300)
    huge = {e["episode_id"]: "x" * 50_000 for e in episodes}
    for sample in samples.values():
        sample["passage"] = "lorem ipsum " * 2000
    digest = build_digest(episodes, samples, huge, seed=3, max_chars=max_chars)
    assert len(digest.text) <= max_chars
    c = digest.counts
    assert (c["correct"], c["wrong"], c["timeout"]) == (34, 34, 33)
    assert (f"counts: unparseable {c['unparseable']}, wrong 34, timeout 33, crash {c['crash']}, "
            "correct 34") in digest.text
    kinds = {e["episode_id"]: classify(e, OPTIONS) for e in episodes}
    assert {kinds[e] for e in digest.episode_ids_shown} == set(GROUPS)
    if max_chars <= 6000:
        assert "left out to fit the size budget" in digest.text


def test_a_budget_below_the_minimum_is_refused() -> None:
    episodes, samples = make(3)
    with pytest.raises(ValueError, match="minimum"):
        build_digest(episodes, samples, summaries, seed=0, max_chars=MIN_CHARS - 1)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ok", "ok", "timeout", "crash"]),
                          st.one_of(st.none(), st.text(max_size=300)),
                          st.sampled_from([0.0, 0.5, 1.0])), min_size=1, max_size=40),
       st.integers(min_value=MIN_CHARS, max_value=8000), st.integers(0, 2**32))
def test_budget_and_stratification_hold_for_any_episodes(
        pattern: list[tuple[str, str | None, float]], max_chars: int, seed: int) -> None:
    episodes, samples = make(len(pattern), pattern=pattern)
    digest = build_digest(episodes, samples, lambda e: "y" * 5000, seed=seed, max_chars=max_chars)
    assert len(digest.text) <= max_chars
    assert sum(digest.counts.values()) == len(pattern)
    present = {g for g, c in digest.counts.items() if c}
    kinds = {e["episode_id"]: classify(e, OPTIONS) for e in episodes}
    assert {kinds[e] for e in digest.episode_ids_shown} == present


def test_it_never_renders_fields_it_was_not_given() -> None:
    episodes, samples = make(20, extra={"label": "SECRET-LABEL-42", "gold": "SECRET-GOLD"})
    digest = build_digest(episodes, samples, summaries, seed=5)
    assert "SECRET" not in digest.text
    for episode in episodes:  # the blob name is not something the agent can use
        assert episode["trajectory_hash"] not in digest.text
    # every rendered sample line is exactly the public fields handed over (options shown apart)
    for line in digest.text.splitlines():
        if line.startswith("sample: "):
            fields = json.loads(line[len("sample: "):])
            assert set(fields) == {"id", "word"}
    # and nothing appears that was not in the input: no unknown sample ids
    assert all(f"sample s{i:03d}" in digest.text or f"s{i:03d}" not in digest.text for i in range(20))


def test_summaries_are_only_computed_for_shown_episodes() -> None:
    episodes, samples = make(100)
    asked: list[str] = []

    def summary(episode_id: str) -> str:
        asked.append(episode_id)
        return "summary"

    digest = build_digest(episodes, samples, summary, seed=9)
    assert set(digest.episode_ids_shown) <= set(asked)
    assert len(asked) <= 5 * 4


def test_clip_keeps_head_and_tail_within_the_limit() -> None:
    text = "HEAD" + "m" * 1000 + "TAIL"
    clipped = clip(text, 100)
    assert len(clipped) <= 100 and clipped.startswith("HEAD") and clipped.endswith("TAIL")
    assert clip("short", 100) == "short"
    for limit in range(1, 60):
        assert len(clip(text, limit)) <= limit


def test_trajectory_summary_reads_gateway_model_calls() -> None:
    calls = [ModelCall(index=i, endpoint="completions", status=200, prompts=[f"prompt {i}: " + "p" * 2000],
                       generations=[Completion(text=f"answer {i}", prompt_token_ids=[1], token_ids=[2])])
             for i in range(5)]
    calls.append(ModelCall(index=5, endpoint="chat", status=429, prompts=[], error="budget spent",
                           messages=[{"role": "user", "content": "hi"}]))
    trajectory = {"calls": [c.model_dump(mode="json") for c in calls], "log_tail": "Traceback: boom"}
    text = summarize_trajectory(trajectory, max_chars=1200)
    assert len(text) <= 1200
    assert text.startswith("6 model call(s)")
    assert "prompt 0" in text and "answer 0" in text
    assert "HTTP 429" in text and "budget spent" in text and "boom" in text
    assert "prompt 3" not in text, "only the first calls and the last are shown"
    # the stand-ins' simple form
    simple = summarize_trajectory({"calls": [{"prompt": "question s1", "completion": "right"}]})
    assert "question s1" in simple and "right" in simple
