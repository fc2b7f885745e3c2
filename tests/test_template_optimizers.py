"""The template harness's prompt optimizers (nearest-neighbour candidates, demonstrations,
the weighted-vote fallback, the prompt budget) and the built-in Feedback rules that turn
them on; every example here is made up, so nothing depends on a task."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sia.agents.builtin import (
    ALSO,
    BuiltinFeedback,
    Diagnosis,
    HarnessContext,
    decide_feedback,
    knob_neighbours,
    propose_candidates,
)
from sia.agents.template import (
    KNOB_NAMES,
    OPTIMIZER_KNOB_NAMES,
    Knobs,
    read_knobs,
    render,
)
from sia.core.effect_models import FeedbackRequest
from sia.effects.base import EffectContext
from sia.effects.targets import TargetPool
from sia.harness.backends import ScriptedBackend
from sia.harness.sandbox import ISOLATIONS, Isolation, run_episode
from sia.store.blobs import MemoryBlobStore
from sia.tasks.loader import BUNDLED_ROOT

OPTIMIZED = Knobs(extract="option", samples=3, fallback="nearest", neighbours=3, candidates="knn")
EXAMPLES = [
    {"id": "t1", "text": "the quick brown fox jumps", "label": "alpha"},
    {"id": "t2", "text": "a slow green turtle walks", "label": "beta"},
    {"id": "t3", "text": "the quick brown dog jumps", "label": ["alpha", "gamma"]},
    {"id": "t4", "text": "0123456789", "label": "delta"},
]
SAMPLE = {"id": "s1", "text": "the quick brown fox runs", "options": ["alpha", "beta", "gamma", "delta", "omega"]}


def harness(knobs: Knobs) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(render(knobs), "harness", "exec"), namespace)  # noqa: S102 - the harness sia renders itself
    return namespace


@pytest.fixture
def examples_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "train_examples.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES), encoding="utf-8")
    monkeypatch.setenv("SIA_TRAIN_EXAMPLES", str(path))
    return path


class Replies:
    """A model that answers every call with the same completions and keeps the prompts."""

    def __init__(self, *texts: str) -> None:
        self.texts, self.prompts = list(texts), []

    def complete(self, prompt: str, **params: Any) -> list[str]:
        self.prompts.append(prompt)
        return (self.texts * params["n"])[: params["n"]]


# ---------------------------------------------------------------- the harness


def test_examples_rank_by_character_ngram_similarity(examples_file: Path) -> None:
    h = harness(OPTIMIZED)
    ranked = h["nearest"](SAMPLE, h["load_examples"](), 4)
    assert [e["id"] for e, _ in ranked] == ["t1", "t3", "t2", "t4"]
    similarities = [s for _, s in ranked]
    assert similarities == sorted(similarities, reverse=True) and 0 < similarities[0] <= 1.0


def textbook_cosines(sample: str, texts: list[str]) -> list[float]:
    """The similarity `nearest` claims, written out term by term: the cosine of idf-weighted
    sublinear character 1- and 2-gram counts, grams unseen in the examples left out."""
    def grams(text: str) -> Counter[str]:
        text = text.lower()
        return Counter(text[i:i + n] for n in (1, 2) for i in range(len(text) - n + 1))

    documents = [grams(text) for text in texts]
    frequency = Counter(gram for document in documents for gram in set(document))
    idf = {g: math.log((1 + len(texts)) / (1 + count)) + 1 for g, count in frequency.items()}

    def unit(counts: Counter[str]) -> dict[str, float]:
        weights = {g: (1 + math.log(c)) * idf[g] for g, c in counts.items() if g in idf}
        length = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        return {g: w / length for g, w in weights.items()}

    query = unit(grams(sample))
    return [sum(w * unit(document).get(g, 0.0) for g, w in query.items()) for document in documents]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abcAB 盗窃罪\n", max_size=40), min_size=1, max_size=6),
       st.text(alphabet="abcAB 盗窃罪\nz", max_size=40))
def test_nearest_computes_the_textbook_cosine(texts: list[str], sample: str) -> None:
    h = harness(OPTIMIZED)
    examples = [{"id": f"t{i}", "text": text, "label": "x"} for i, text in enumerate(texts)]
    ranked = h["nearest"]({"text": sample}, examples, len(examples))
    expected = textbook_cosines(sample, texts)
    assert sorted(e["id"] for e, _ in ranked) == sorted(e["id"] for e in examples)
    for example, similarity in ranked:
        assert similarity == pytest.approx(expected[int(example["id"][1:])], abs=1e-12)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)


def test_an_identical_input_is_its_own_nearest_example(examples_file: Path) -> None:
    h = harness(OPTIMIZED)
    (nearest, similarity), = h["nearest"]({"text": "0123456789"}, h["load_examples"](), 1)
    assert nearest["id"] == "t4" and similarity == pytest.approx(1.0)


def test_the_answer_is_constrained_to_the_nearest_examples_labels(examples_file: Path) -> None:
    model = Replies("omega", "beta!", "beta and more")
    answer = harness(OPTIMIZED)["solve"](SAMPLE, model)
    assert answer == "beta"  # "omega" is an option but no near example's label: not a candidate
    assert "options: alpha, gamma, beta\n" in model.prompts[0]


def test_a_multi_label_label_votes_item_by_item(examples_file: Path) -> None:
    h = harness(OPTIMIZED)
    ranked = h["nearest"](SAMPLE, h["load_examples"](), 3)
    weights = h["vote"](ranked)
    (_, fox), (_, dog), (_, turtle) = ranked
    assert weights == pytest.approx({"alpha": fox + dog, "gamma": dog, "beta": turtle})
    assert list(weights) == ["alpha", "gamma", "beta"]
    assert h["solve"](SAMPLE, Replies("gamma", "x", "gamma.")) == "gamma"
    assert h["render_label"](["a", "b"]) == "a, b"


def test_a_multi_label_harness_also_names_the_answers_nearly_as_supported(examples_file: Path) -> None:
    h = harness(OPTIMIZED.with_(also=0.3))
    weights = h["vote"](h["nearest"](SAMPLE, h["load_examples"](), 3))
    assert weights["gamma"] >= 0.3 * weights["alpha"] > weights["beta"]
    assert h["solve"](SAMPLE, Replies("zzz")) == "alpha, gamma"  # the vote answers, with gamma
    assert h["solve"](SAMPLE, Replies("beta")) == "beta, alpha, gamma"  # the model's pick first
    assert h["with_others"]("omega", weights) == "omega"  # no vote for it: nothing to compare with
    assert h["with_others"]("a", {"a": 1.0, "b": 0.9, "c": 0.8, "d": 0.7}) == "a, b, c"  # two more at most
    assert harness(OPTIMIZED)["solve"](SAMPLE, Replies("zzz")) == "alpha"  # 0: one answer


def test_votes_tie_towards_the_nearer_label(examples_file: Path) -> None:
    assert harness(OPTIMIZED)["solve"](SAMPLE, Replies("beta", "alpha", "nothing")) == "alpha"


def test_without_a_named_candidate_the_weighted_vote_of_the_neighbours_answers(examples_file: Path) -> None:
    h = harness(OPTIMIZED)
    assert h["solve"](SAMPLE, Replies("zzz")) == "alpha"
    # two moderately similar "b" outweigh one most similar "a": similarity is summed per label
    assert h["vote"]([({"label": "a"}, 0.9), ({"label": "b"}, 0.5), ({"label": "b"}, 0.5)]) == {"b": 1.0, "a": 0.9}
    assert h["vote"]([({"label": ["x", "y"]}, 0.2), ({"label": "x"}, 0.1)]) == pytest.approx({"x": 0.3, "y": 0.2})


def test_overlap_rereads_the_vote_by_the_characters_the_sample_contains(examples_file: Path) -> None:
    h = harness(OPTIMIZED.with_(overlap=2.0))
    weights, idf = {"盗窃": 0.6, "抢劫": 0.4}, {"盗": 1.0, "窃": 1.0, "抢": 1.0, "劫": 1.0}
    # shares 0.6 and 0.4; only 抢劫's characters are in the text: 0.4 * e**2 > 0.6
    assert list(h["reread"](weights, "被告人持刀抢劫", idf)) == ["抢劫", "盗窃"]
    assert h["reread"](weights, "被告人持刀抢劫", idf) == pytest.approx({"抢劫": 0.4 * 2.718281828**2, "盗窃": 0.6})
    assert list(h["reread"](weights, "没有相关的字", idf)) == ["盗窃", "抢劫"]  # nothing found: the vote's order
    low = harness(OPTIMIZED.with_(overlap=0.3))["reread"]
    assert list(low(weights, "被告人持刀抢劫", idf)) == ["盗窃", "抢劫"]  # 0.4 * e**0.3 < 0.6
    # a character every example has weighs nothing: finding only 劫 (idf 0) is finding nothing
    assert list(h["reread"](weights, "劫", {**idf, "劫": 0.0, "抢": 1.0})) == ["盗窃", "抢劫"]
    assert h["rarity"]([{"text": "ab"}, {"text": "ac"}]) == pytest.approx({"a": 0.0, "b": 0.405465, "c": 0.405465})
    # the sample's own text decides: fox's label "alpha" beats nothing, but "gamma" shares more letters
    h = harness(OPTIMIZED.with_(overlap=50.0))
    assert h["solve"]({**SAMPLE, "text": "gamma gamma"}, Replies("zzz")) == "gamma"
    assert harness(OPTIMIZED)["solve"]({**SAMPLE, "text": "gamma gamma"}, Replies("zzz")) != "gamma"


def test_the_model_and_the_neighbours_weigh_alike_in_the_vote(examples_file: Path) -> None:
    choose = harness(OPTIMIZED)["choose"]
    weights = {"a": 0.8, "b": 0.2}
    assert choose(["b"], 5, ["a", "b"], weights) == "a"  # one completion of five: 0.2 + 0.2 < 0.8
    assert choose(["b"] * 4, 5, ["a", "b"], weights) == "b"  # the model agrees with itself: 0.8 + 0.2 > 0.8
    assert choose(["b", "a"], 2, ["a", "b"], {}) == "a"  # options alone: a tie goes to the first candidate


def test_demonstrations_show_the_nearest_examples_with_their_labels(examples_file: Path) -> None:
    model = Replies("zzz")
    harness(OPTIMIZED.with_(demos=2))["solve"](SAMPLE, model)
    prompt = model.prompts[0]
    assert prompt.startswith("text: the quick brown fox jumps\nanswer: alpha\n"
                             "text: the quick brown dog jumps\nanswer: alpha, gamma\n"
                             "text: the quick brown fox runs\n")


def test_the_prompt_fits_its_character_budget(examples_file: Path) -> None:
    model = Replies("zzz")
    long_sample = {**SAMPLE, "text": "the quick brown fox " * 60, "note": "short"}
    harness(OPTIMIZED.with_(demos=2, prompt_chars=200))["solve"](long_sample, model)
    prompt = model.prompts[0]
    assert len(prompt) <= 200 and prompt.endswith("answer:") and "note: short" in prompt
    assert "options: alpha" in prompt


@pytest.mark.parametrize("variable", [None, "missing.jsonl", "unreadable"])
def test_without_readable_examples_the_sample_options_are_the_candidates(
        variable: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if variable == "unreadable":
        (tmp_path / "unreadable").mkdir()  # a directory: open() fails
    if variable is None:
        monkeypatch.delenv("SIA_TRAIN_EXAMPLES", raising=False)
    else:
        monkeypatch.setenv("SIA_TRAIN_EXAMPLES", str(tmp_path / variable))
    model = Replies("zzz")
    assert harness(OPTIMIZED)["solve"](SAMPLE, model) == "alpha"  # the first option: nothing to vote with
    assert "options: alpha, beta, gamma, delta, omega" in model.prompts[0]
    assert harness(OPTIMIZED)["solve"](SAMPLE, Replies("omega")) == "omega"


def test_bad_lines_of_the_examples_file_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "examples.jsonl"
    path.write_text('not json\n["a list"]\n{"text": "no label"}\n{"text": "x", "label": ""}\n'
                    + json.dumps(EXAMPLES[1]) + "\n", encoding="utf-8")
    monkeypatch.setenv("SIA_TRAIN_EXAMPLES", str(path))
    assert [e["id"] for e in harness(OPTIMIZED)["load_examples"]()] == ["t2"]
    assert harness(OPTIMIZED)["solve"](SAMPLE, Replies("zzz")) == "beta"


def test_candidates_are_matched_as_whole_words_in_latin_text_and_anywhere_in_other_scripts(
        examples_file: Path) -> None:
    extract = harness(OPTIMIZED)["extract"]
    assert extract("alphabet soup", ["alpha"]) is None
    assert extract("It is Alpha.", ["alpha"]) == "alpha"
    assert extract("本案构成盗窃罪", ["抢劫", "盗窃"]) == "盗窃"
    assert extract("beta then alpha, gamma", ["alpha", "alpha, gamma", "beta"]) == "beta"
    assert extract("alpha, gamma", ["alpha", "alpha, gamma"]) == "alpha, gamma"  # longest at one place


# ---------------------------------------------------------------- knobs and renderings


@pytest.mark.parametrize("changed", [
    {"prompt": "bare"}, {"extract": "first_line"}, {"samples": 7}, {"temperature": 0.3}, {"max_tokens": 12},
    {"fallback": "first_option"}, {"fallback": "nearest"}, {"neighbours": 4}, {"demos": 2},
    {"candidates": "knn"}, {"prompt_chars": 300}, {"overlap": 2.0}])
def test_every_knob_reads_back(changed: dict[str, Any]) -> None:
    knobs = OPTIMIZED.with_(**changed)
    assert read_knobs(render(knobs)) == knobs
    assert read_knobs(render(Knobs().with_(**changed))) == Knobs().with_(**changed)


def test_every_knob_is_named_in_the_rendered_module() -> None:
    source = render(OPTIMIZED)
    assert {f.name.upper() for f in fields(Knobs)} == set(KNOB_NAMES) | set(OPTIMIZER_KNOB_NAMES)
    assert all(f"\n{name} = " in source for name in (*KNOB_NAMES, *OPTIMIZER_KNOB_NAMES))


def test_without_optimizer_knobs_the_classic_module_is_rendered_unchanged() -> None:
    reference = (BUNDLED_ROOT / "wordcat" / "reference_harness.py").read_text(encoding="utf-8")
    assert render(Knobs(prompt="bare")) == reference
    assert not Knobs(extract="option", samples=5, fallback="first_option").optimized
    assert all(name not in render(Knobs()) for name in OPTIMIZER_KNOB_NAMES)
    assert read_knobs(reference) == Knobs(prompt="bare")  # a harness older than the optimizer knobs


def test_a_harness_with_a_bad_knob_value_is_not_a_template_harness() -> None:
    assert read_knobs(render(OPTIMIZED).replace("NEIGHBOURS = 3", "NEIGHBOURS = len([])")) is None
    assert read_knobs(render(OPTIMIZED).replace("CANDIDATES = 'knn'", "CANDIDATES = ['knn']")) is None
    assert read_knobs(render(OPTIMIZED).replace("DEMOS = 0", "DEMOS = True")) is None
    assert read_knobs(render(OPTIMIZED).replace("TEMPERATURE = 1.0", "TEMPERATURE = 1")) == OPTIMIZED
    assert read_knobs(render(OPTIMIZED).replace("PROMPT = 'fields'\n", "")) is None


def test_rendered_harnesses_name_no_task() -> None:
    tasks = [p.name for p in BUNDLED_ROOT.iterdir() if p.is_dir() and not p.name.startswith("_")]
    for knobs in (OPTIMIZED, OPTIMIZED.with_(demos=2, prompt_chars=448), Knobs()):
        source = render(knobs).lower()
        assert tasks and not [name for name in tasks if name in source]


# ---------------------------------------------------------------- in the sandbox


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[TargetPool]:
    pool = TargetPool(lambda adapter_hash, adapter_dir: ScriptedBackend(), tmp_path / "adapters")
    yield pool
    pool.close()


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_the_sandboxed_harness_reads_the_examples_it_is_given(isolation: Isolation, targets: TargetPool) -> None:
    gateway = targets.gateway(None, MemoryBlobStore())
    socket = gateway.open_episode("e1", seed=1)
    examples = "".join(json.dumps(e) + "\n" for e in EXAMPLES).encode()
    try:
        outcome = run_episode(render(OPTIMIZED), SAMPLE, model_socket=socket, isolation=isolation,
                              examples=examples)
    finally:
        calls = gateway.close_episode("e1")
    assert outcome.status == "ok" and outcome.answer == "alpha"  # the scripted model names no label
    assert "options: alpha, gamma, beta" in calls[0].prompts[0]


# ---------------------------------------------------------------- the Feedback rules


PUBLIC = HarnessContext(examples_public=True, context_tokens=512)


def request(scores: list[float], mode: str = "H", task: str = "t") -> FeedbackRequest:
    history = [{"generation": i, "score": s, "action": "edit_harness" if i < len(scores) - 1 else None,
                "algorithm": None, "harness_hash": f"h{i}", "adapter_hash": None} for i, s in enumerate(scores)]
    return FeedbackRequest.model_validate({
        "task": task, "task_hash": "th", "provider": "builtin", "harness_hash": f"h{len(scores) - 1}",
        "adapter_hash": None, "episodes": [], "generation": len(scores) - 1, "history": history, "mode": mode,
        "best_generation": max(range(len(scores)), key=lambda i: (scores[i], -i)),
        "reward_shape": {"kind": "no_signal", "recommended": None, "reason": "every reward is 0"}})


def never(generation: int) -> Knobs | None:
    raise AssertionError("no rollback expected")


def test_with_public_examples_unparseable_answers_are_constrained_to_the_nearest_labels() -> None:
    decision = decide_feedback(request([0.0]), None, Diagnosis(100, 90, 0, 0), never, PUBLIC)
    assert decision["action"] == "edit_harness"
    assert read_knobs(decision["harness"]) == Knobs(extract="option", samples=5, fallback="nearest", neighbours=10,
                                                   candidates="knn", prompt_chars=448)
    assert decision["rationale"] == (
        "90/100 dev answers unparseable or crashed: constrain the answer to the labels of the 10 nearest "
        "training examples (character n-gram similarity), vote over 5 samples, and answer their "
        "similarity-weighted vote when no sample names one; the prompt is cut to 448 characters to fit "
        "the target's context")


def test_without_public_examples_the_rules_are_the_classic_ones() -> None:
    decision = decide_feedback(request([0.0]), None, Diagnosis(100, 90, 0, 0), never, HarnessContext())
    assert read_knobs(decision["harness"]) == Knobs(extract="option", samples=5, fallback="first_option")
    assert not read_knobs(decision["harness"]).optimized
    assert decision["rationale"].endswith("extract a listed option, vote over 5 samples, never abstain")


def test_on_a_plateau_the_optimizers_come_one_at_a_time_then_votes_then_stop() -> None:
    classic = Knobs(extract="option", samples=5, fallback="first_option")
    steps, knobs, reasons = [], classic, []
    for _ in range(7):
        decision = decide_feedback(request([0.0, 0.2]), knobs, Diagnosis(100, 0, 0, 20), never, PUBLIC)
        if decision["action"] == "stop":
            break
        knobs = read_knobs(decision["harness"])
        steps.append(knobs)
        reasons.append(decision["rationale"])
    knn = classic.with_(candidates="knn", neighbours=10, fallback="nearest", prompt_chars=448)
    assert steps == [knn, knn.with_(overlap=2.0), knn.with_(overlap=2.0, demos=2),
                     knn.with_(overlap=2.0, demos=2, samples=9),
                     knn.with_(overlap=2.0, demos=2, samples=9, temperature=0.7)]
    assert "constrain the answer to the labels of the 10 nearest training examples" in reasons[0]
    assert "rerank the nearest examples' labels by how much of each the sample's own text contains" in reasons[1]
    assert "show the 2 nearest training examples with their labels before the sample" in reasons[2]


def test_the_rules_never_read_the_task_name() -> None:
    for scores, diagnosis, knobs in (([0.0], Diagnosis(100, 90, 0, 0), None),
                                     ([0.0, 0.2], Diagnosis(100, 0, 0, 20), OPTIMIZED)):
        decisions = [decide_feedback(request(scores, task=name), knobs, diagnosis, never, PUBLIC)
                     for name in ("lawbench", "wordcat", "anything")]
        assert decisions[0] == decisions[1] == decisions[2]


def test_a_search_also_proposes_the_optimizer_knobs_when_examples_are_public() -> None:
    base = Knobs(extract="option", samples=5, fallback="first_option")
    public = knob_neighbours(base, PUBLIC)
    assert knob_neighbours(base) == [k for k in public if not k.optimized]
    assert {(k.candidates, k.demos, k.neighbours) for k in public if k.optimized} >= {
        ("knn", 0, 10), ("knn", 2, 10), ("knn", 0, 20)}
    asked = request([0.0, 0.2]).model_copy(update={"candidates": 3})
    proposals = propose_candidates(asked, base, Diagnosis(100, 0, 0, 20), never, PUBLIC)
    assert proposals[0]["rationale"].startswith("plateau: turn the next harness knob (answers constrained")
    assert read_knobs(proposals[0]["harness"]).candidates == "knn"


def test_a_harness_answering_from_the_neighbours_is_refined_there_first() -> None:
    """Sampling knobs matter only to a model that names a candidate: a harness answering from
    the nearest examples tries how much it reads the sample, more neighbours and (labels that
    are lists) several answers first; any other harness tries the sampling knobs first."""
    knn = OPTIMIZED.with_(samples=5, neighbours=10, overlap=2.0, prompt_chars=PUBLIC.prompt_chars)
    lists = HarnessContext(examples_public=True, context_tokens=512, labels_are_lists=True)
    first = knob_neighbours(knn, lists)[:4]
    assert [(k.overlap, k.neighbours, k.also) for k in first] == [(0.0, 10, 0.0), (3.0, 10, 0.0),
                                                                   (2.0, 15, 0.0), (2.0, 10, ALSO)]
    assert all(k.also == 0 for k in knob_neighbours(knn, PUBLIC)), "one answer for single labels"
    base = Knobs(extract="option", samples=5, fallback="first_option")
    assert not knob_neighbours(base, lists)[0].optimized


def test_a_wh_search_weighs_the_constrained_harness_from_its_first_round() -> None:
    """In mode WH the rule's first fix leaves the answer to the model (training's turn); a
    search's next candidates are the harnesses constrained to the neighbours' labels."""
    asked = request([0.0], mode="WH").model_copy(update={"candidates": 4})
    proposals = propose_candidates(asked, None, Diagnosis(100, 90, 0, 0), never, PUBLIC)
    harnesses = [read_knobs(p["harness"]) for p in proposals if p["action"] == "edit_harness"]
    assert harnesses[0].candidates == "options", "the rule's own decision comes first, as in a line"
    assert harnesses[1].candidates == "knn" and harnesses[2].candidates == "knn"
    in_h = propose_candidates(asked.model_copy(update={"mode": "H"}), None, Diagnosis(100, 90, 0, 0), never, PUBLIC)
    assert read_knobs(in_h[0]["harness"]).candidates == "knn"
    assert [read_knobs(p["harness"]).candidates for p in in_h[1:3]] == ["options", "options"]


def test_the_handler_explains_the_edit_it_stores() -> None:
    blobs = MemoryBlobStore()
    ctx = EffectContext(run_id="r", effect_id="e", kind="feedback", seed=1, attempt=1, blobs=blobs,
                        home=Path("/nonexistent"))
    current = blobs.put_text(render(Knobs()))
    asked = request([0.0]).model_copy(update={
        "harness_hash": current, "history": (request([0.0]).history[0].model_copy(update={"harness_hash": current}),),
        "episodes": tuple(FeedbackRequest.model_validate({
            **request([0.0]).model_dump(), "episodes": [
                {"episode_id": f"e{i}", "sample_id": f"s{i}", "trajectory_hash": None, "status": "ok",
                 "prediction": "garbled", "reward": 0.0} for i in range(4)]}).episodes)})
    feedback = BuiltinFeedback(lambda r: {e.sample_id: ["alpha", "beta"] for e in r.episodes}, context=PUBLIC)
    decision = feedback.run(asked, ctx).result
    assert decision.action == "edit_harness" and decision.harness_hash
    assert read_knobs(blobs.get_text(decision.harness_hash)).candidates == "knn"
    assert "4/4 dev answers unparseable or crashed: constrain the answer" in decision.rationale


def test_in_mode_wh_the_first_fix_leaves_the_answer_to_the_model_and_the_constraint_follows() -> None:
    decision = decide_feedback(request([0.0], mode="WH"), None, Diagnosis(100, 90, 0, 0), never, PUBLIC)
    fixed = read_knobs(decision["harness"])
    assert fixed == Knobs(extract="option", samples=5, fallback="first_option")
    trained = request([0.0, 0.2, 0.2], mode="WH").model_copy(update={"history": tuple(
        entry.model_copy(update={"action": action}) for entry, action in
        zip(request([0.0, 0.2, 0.2], mode="WH").history, ("edit_harness", "update_weights", None)))})
    decision = decide_feedback(trained, fixed, Diagnosis(100, 0, 0, 20), never, PUBLIC)
    assert decision["action"] == "edit_harness" and read_knobs(decision["harness"]).candidates == "knn"


# ---------------------------------------------------------------- wiring and the prompt budget


def test_the_wired_policy_knows_the_examples_are_public_and_the_tiny_models_context(tmp_path: Path) -> None:
    from sia.core.events.types import RunConfig
    from sia.runtime.wiring import handlers_for
    from sia.tasks.loader import load_task

    task = load_task("wordcat", cache=tmp_path / "tasks")
    registry = handlers_for(RunConfig(task="wordcat", sandbox="process"), task.identity(), home=tmp_path)
    try:
        context = registry.get("feedback").context
    finally:
        registry.close()
    from sia.train.tiny import config_for

    assert context == HarnessContext(examples_public=bool(task.public_examples()),
                                     context_tokens=config_for(task.pretraining_corpus()).max_positions)
    assert context.examples_public and context.prompt_chars == context.context_tokens * 7 // 8


def test_the_wired_policy_knows_when_labels_are_lists(tmp_path: Path) -> None:
    from sia.core.events.types import RunConfig
    from sia.runtime.wiring import handlers_for
    from sia.tasks.loader import load_task
    from tests.test_public_labels import make_task

    task = load_task(str(make_task(tmp_path / "labels")), cache=tmp_path / "tasks")  # one train label is a list
    registry = handlers_for(RunConfig(task=task.name, sandbox="process"), task.identity(), home=tmp_path)
    try:
        assert registry.get("feedback").context.labels_are_lists
    finally:
        registry.close()


@pytest.mark.parametrize("corpus", [["Classify the word: horse", "a quick brown fox, it jumps!"],
                                    ["被告人张某盗窃财物，价值人民币3000元。", "本院认为 abc 构成盗窃罪"]])
def test_a_prompt_within_the_character_budget_fits_the_tiny_models_context(corpus: list[str]) -> None:
    from sia.train.tiny import build_tokenizer, tokenizer_kind

    tokenizer = build_tokenizer(corpus, 4096, tokenizer_kind(corpus))
    text = "\n".join(corpus) + "\nanswer: unseen words 未见"
    assert len(tokenizer(text)["input_ids"]) <= len(text)
