"""The kNN-candidate harness pieces of bench/lawbench_choice.py on small hand-made cases."""

from __future__ import annotations

import math
import random

import pytest

pytest.importorskip("torch")

from bench.lawbench_choice import (
    Choice,
    Neighbours,
    fact_budget,
    harness_prompt,
    overlap,
    overlap_pick,
    pick,
    shuffled,
)
from sia.tasks.lawbench import Case

OPTIONS = ("盗窃", "诈骗", "故意伤害", "抢劫")


def case(number: int, question: str, *charges: str) -> Case:
    return Case(f"lb-{number:04d}", "instruction", question, charges)


TRAIN = [case(1, "被告人秘密偷走手机一部", "盗窃"), case(2, "被告人夜间偷走电动车", "盗窃"),
         case(3, "被告人虚构事实骗取钱款", "诈骗"), case(4, "被告人冒充客服骗取财物", "诈骗"),
         case(5, "被告人持刀砍伤被害人", "故意伤害"), case(6, "被告人殴打被害人致轻伤", "故意伤害"),
         case(7, "被告人偷走现金", "盗窃"), case(8, "被告人偷走钱款", "未列罪名")]


def test_candidates_are_the_heaviest_charges_of_the_nearest_cases() -> None:
    [choice] = Neighbours(TRAIN, OPTIONS).choices([case(9, "被告人偷走自行车", "盗窃")], k=3, size=2)
    assert choice.vote == "盗窃"
    assert len(choice.candidates) <= 2 and list(choice.votes) == sorted(choice.votes, reverse=True)
    assert choice.nearest == ("盗窃",)


def test_unlisted_charges_never_become_candidates() -> None:
    neighbours = Neighbours(TRAIN, OPTIONS)
    assert all(c.case_id != "lb-0008" for c in neighbours.train)
    [choice] = neighbours.choices([case(9, "被告人偷走钱款", "盗窃")], k=7, size=4)
    assert "未列罪名" not in choice.candidates


def test_a_train_case_is_not_its_own_neighbour() -> None:
    lone = case(10, "被告人持枪抢劫银行", "抢劫")
    neighbours = Neighbours([*TRAIN, lone], OPTIONS)
    [choice] = neighbours.choices([lone], k=1, size=3)
    assert "抢劫" not in choice.candidates
    [stranger] = neighbours.choices([case(11, "被告人持枪抢劫银行", "抢劫")], k=1, size=3)
    assert stranger.candidates == ("抢劫",)


def test_the_prompt_fits_the_positions_for_every_choice() -> None:
    choices = Neighbours(TRAIN, OPTIONS).choices(TRAIN[:4], k=5, size=3)
    budget = fact_budget(choices, 64)
    for choice in choices:
        prompt = harness_prompt("事" * 1000, choice.candidates, budget)
        longest = max(len(c) for c in choice.candidates) + len("<eoa>") + 1
        assert len(prompt) + longest <= 64
        assert prompt.endswith("\n[罪名]") and "候选:" + ";".join(choice.candidates) in prompt


def test_a_large_prior_picks_the_vote_and_no_prior_the_model() -> None:
    choice = Choice(case(1, "事实", "诈骗"), ("盗窃", "诈骗"), (2.0, 1.0), ("盗窃",))
    assert pick(choice, [-5.0, -1.0], prior=math.inf) == "盗窃"
    assert pick(choice, [-1.0, -1.0], prior=4.0) == "盗窃"
    assert pick(choice, [-5.0, -1.0], prior=0.0) == "诈骗"


def test_overlap_reranks_towards_charges_named_in_the_fact() -> None:
    choice = Choice(case(1, "被告人以暴力抢劫财物", "抢劫"), ("盗窃", "抢劫"), (2.0, 1.0), ("盗窃",))
    assert overlap(choice.case.question, "抢劫") == 1.0 and overlap(choice.case.question, "盗窃") == 0.0
    assert overlap_pick(choice, 0.0) == "盗窃"
    assert overlap_pick(choice, 1.0) == "抢劫"


def test_shuffling_keeps_each_candidate_with_its_vote() -> None:
    choice = Choice(case(1, "事实", "诈骗"), ("盗窃", "诈骗", "抢劫"), (3.0, 2.0, 1.0), ("盗窃",))
    moved = shuffled(choice, random.Random(1))
    assert sorted(zip(moved.candidates, moved.votes)) == sorted(zip(choice.candidates, choice.votes))
