"""The LawBench baselines' pieces (bench/lawbench_baselines.py) on small hand-made cases."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from bench.lawbench_baselines import (  # noqa: E402
    TfidfVectorizer,
    evaluate,
    keyword,
    majority,
    seeded_split,
    tfidf,
)
from sia.tasks.lawbench import Case  # noqa: E402

OPTIONS = ("盗窃", "诈骗", "合同诈骗", "故意伤害")


def case(number: int, question: str, *charges: str) -> Case:
    return Case(f"lb-{number:04d}", "instruction", question, charges)


TRAIN = [case(1, "被告人秘密偷走手机一部", "盗窃"), case(2, "被告人夜间偷走电动车", "盗窃"),
         case(3, "被告人虚构事实骗取钱款", "诈骗"), case(4, "被告人冒充客服骗取财物", "诈骗"),
         case(5, "被告人持刀砍伤被害人", "故意伤害"), case(6, "被告人殴打被害人致轻伤", "故意伤害"),
         case(7, "被告人偷走现金", "盗窃")]
TEST = [case(8, "被告人偷走自行车", "盗窃"), case(9, "被告人骗取他人钱款", "诈骗"),
        case(10, "被告人砍伤他人", "故意伤害")]


def test_keyword_names_the_listed_charges_found_in_the_fact() -> None:
    cases = [case(1, "以签订合同诈骗为名", "合同诈骗"), case(2, "被告人偷走手机", "盗窃")]
    assert keyword([], cases, OPTIONS) == ["合同诈骗;诈骗", ""]
    assert evaluate(keyword([], cases, OPTIONS), cases, OPTIONS)["abstention_rate"] == 0.5


def test_majority_names_the_most_frequent_train_charge() -> None:
    assert majority(TRAIN, TEST, OPTIONS) == ["盗窃"] * 3


def test_tfidf_rows_are_unit_length_and_rare_ngrams_are_dropped() -> None:
    vectorizer = TfidfVectorizer.fit(["偷走手机", "偷走现金"], ngram_range=(1, 2), min_df=2)
    assert set(vectorizer.vocabulary) == {"偷", "走", "偷走"}
    rows = vectorizer.transform(["偷走手机", "无关"])
    assert rows[0].norm().item() == pytest.approx(1.0) and rows[1].abs().sum().item() == 0.0


def test_tfidf_classifier_learns_which_characters_name_which_charge() -> None:
    predictions = tfidf(TRAIN, TEST, OPTIONS)
    assert predictions == ["盗窃", "诈骗", "故意伤害"]
    assert evaluate(predictions, TEST, OPTIONS)["f1"] == 1.0


def test_seeded_split_is_the_tasks_300_100_split() -> None:
    cases = [case(i, f"事实{i}", "盗窃") for i in range(500)]
    train, test = seeded_split(cases, seed=1)
    assert (len(train), len(test)) == (300, 100) and not {c.case_id for c in train} & {c.case_id for c in test}
    assert seeded_split(cases, seed=1) == (train, test) and seeded_split(cases, seed=2) != (train, test)
