"""LawBench 3-3: the loader's errors, the seeded split, and LawBench's scoring rule by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sia.tasks.lawbench import (
    Case,
    LawbenchDataError,
    aggregate,
    extract_charges,
    load_cases,
    load_charge_list,
    score,
    split_cases,
)
from sia.tasks.loader import BUNDLED_ROOT

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lawbench"
DATA = SHARED / "3-3.json"
SHIPPED_CHARGES = BUNDLED_ROOT / "lawbench" / "charges.json"

GOLD_ECHO_F1 = 0.9322428571428584
"""Mean LawBench F1 of echoing each gold answer on the real file, under LawBench's own option
list: cases lose precision to options contained in longer gold charges, and recall to the 13
gold charges its list does not hold."""

OPTIONS = ["盗窃", "诈骗", "合同诈骗", "故意伤害", "故意毁坏财物", "抢劫"]


def real_cases() -> list[Case]:
    if not DATA.is_file():
        pytest.skip(f"LawBench 3-3 data not present at {DATA} (it is never committed to the repo)")
    return load_cases(DATA)


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "3-3.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
                    encoding="utf-8")
    return path


def record(answer: str = "罪名:盗窃", **overrides: object) -> dict[str, object]:
    return {"instruction": "给出罪名", "question": "事实:……", "answer": answer, **overrides}


# --- scoring: hand-computed expectations ---------------------------------------------


def test_single_charge_exact() -> None:
    s = score("罪名:盗窃", ("盗窃",), OPTIONS)
    assert (s.top1_correct, s.f1, s.abstained) == (True, 1.0, False)


def test_multi_charge_gold_half_recalled() -> None:
    # P = 1/1, R = 1/2 -> F1 = 2/3
    s = score("[罪名]故意伤害<eoa>", ("故意伤害", "故意毁坏财物"), OPTIONS)
    assert s.top1_correct is True
    assert s.f1 == pytest.approx(2 / 3)
    assert s.abstained is False


def test_multi_charge_gold_fully_recalled() -> None:
    s = score("罪名:故意毁坏财物;故意伤害", ("故意伤害", "故意毁坏财物"), OPTIONS)
    assert (s.top1_correct, s.f1, s.abstained) == (True, 1.0, False)


def test_option_not_in_gold_comes_first() -> None:
    # extracted (抢劫, 盗窃): top-1 is 抢劫 (wrong); P = 1/2, R = 1/1 -> F1 = 2/3
    assert extract_charges("罪名:抢劫;盗窃", OPTIONS) == ("抢劫", "盗窃")
    s = score("罪名:抢劫;盗窃", ("盗窃",), OPTIONS)
    assert s.top1_correct is False
    assert s.f1 == pytest.approx(2 / 3)
    assert s.abstained is False


def test_empty_and_missing_prediction_abstain() -> None:
    for prediction in ("", None, "无法判断", "罪名:"):
        s = score(prediction, ("盗窃",), OPTIONS)
        assert (s.top1_correct, s.f1, s.abstained) == (False, 0.0, True), prediction


def test_prediction_without_prefix_still_matches() -> None:
    # LawBench does not parse the prediction: any option occurring anywhere counts.
    s = score("经审理，被告人的行为构成诈骗罪。", ("诈骗",), OPTIONS)
    assert (s.top1_correct, s.f1, s.abstained) == (True, 1.0, False)


def test_substring_option_is_also_predicted_as_lawbench_does() -> None:
    # 合同诈骗 contains 诈骗, so both count; the longer match wins the tie for top-1.
    assert extract_charges("罪名:合同诈骗", OPTIONS) == ("合同诈骗", "诈骗")
    s = score("罪名:合同诈骗", ("合同诈骗",), OPTIONS)
    assert s.top1_correct is True
    assert s.f1 == pytest.approx(2 / 3)


def test_wrong_charge_only() -> None:
    s = score("罪名:抢劫", ("盗窃", "诈骗"), OPTIONS)
    assert (s.top1_correct, s.f1, s.abstained) == (False, 0.0, False)


def test_aggregate_counts_abstentions_as_wrong() -> None:
    scores = [
        score("罪名:盗窃", ("盗窃",), OPTIONS),  # top1 1, f1 1
        score("[罪名]故意伤害<eoa>", ("故意伤害", "故意毁坏财物"), OPTIONS),  # top1 1, f1 2/3
        score("罪名:抢劫;盗窃", ("盗窃",), OPTIONS),  # top1 0, f1 2/3
        score("", ("盗窃",), OPTIONS),  # abstained: top1 0, f1 0
        score("构成诈骗罪", ("诈骗",), OPTIONS),  # top1 1, f1 1
    ]
    metrics = aggregate(scores)
    assert metrics["top1_accuracy"] == pytest.approx(3 / 5)
    assert metrics["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 0 + 1) / 5)  # = 2/3
    assert metrics["abstention_rate"] == pytest.approx(1 / 5)
    assert metrics["n"] == 5


def test_aggregate_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        aggregate([])


# --- loading: each malformed file gets a clear error -----------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LawbenchDataError, match="not found"):
        load_cases(tmp_path / "absent.json")


def test_not_json(tmp_path: Path) -> None:
    with pytest.raises(LawbenchDataError, match="not valid JSON .*line 1"):
        load_cases(write(tmp_path, "[{not json"))


def test_not_a_list(tmp_path: Path) -> None:
    with pytest.raises(LawbenchDataError, match="expected a JSON list of cases, got dict"):
        load_cases(write(tmp_path, {"answer": "罪名:盗窃"}))


def test_record_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(LawbenchDataError, match=r"record 1 \(lb-0002\): expected an object"):
        load_cases(write(tmp_path, [record(), "罪名:盗窃"]))


def test_record_missing_field(tmp_path: Path) -> None:
    broken = record()
    del broken["question"]
    with pytest.raises(LawbenchDataError, match=r"record 1 \(lb-0002\): missing field 'question'"):
        load_cases(write(tmp_path, [record(), broken]))


def test_field_not_a_string(tmp_path: Path) -> None:
    with pytest.raises(LawbenchDataError, match="field 'answer' must be a string, got list"):
        load_cases(write(tmp_path, [record(answer=["罪名:盗窃"])]))  # type: ignore[arg-type]


def test_answer_without_prefix(tmp_path: Path) -> None:
    with pytest.raises(LawbenchDataError, match="record 0 .*does not start with '罪名:'"):
        load_cases(write(tmp_path, [record(answer="盗窃")]))


def test_answer_with_empty_charge(tmp_path: Path) -> None:
    for answer in ("罪名:", "罪名:盗窃;"):
        with pytest.raises(LawbenchDataError, match="empty charge"):
            load_cases(write(tmp_path, [record(answer=answer)]))


def test_error_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_cases(tmp_path / "absent.json")


def test_well_formed_file(tmp_path: Path) -> None:
    cases = load_cases(write(tmp_path, [record(), record("罪名:诈骗;合同诈骗")]))
    assert cases[1] == Case("lb-0002", "给出罪名", "事实:……", ("诈骗", "合同诈骗"))


def test_charge_list_errors(tmp_path: Path) -> None:
    with pytest.raises(LawbenchDataError, match="charge list not found"):
        load_charge_list(tmp_path / "absent.json")
    for content, message in (("{", "not a JSON file"), ('{"a": 1}', "list of non-empty charge names"),
                             ('["盗窃", ""]', "list of non-empty charge names"),
                             ('["盗窃", "盗窃"]', "occurs twice")):
        (tmp_path / "charges.json").write_text(content, encoding="utf-8")
        with pytest.raises(LawbenchDataError, match=message):
            load_charge_list(tmp_path / "charges.json")


def test_shipped_charge_list_is_lawbenchs() -> None:
    charges = load_charge_list(SHIPPED_CHARGES)
    assert len(charges) == 189 and charges[:3] == ("侮辱", "违法发放贷款", "失火")
    assert (SHIPPED_CHARGES.parent / "LICENSE-LawBench.txt").read_text(encoding="utf-8").count(
        "Apache License") >= 1
    official = SHARED / "charges.json"
    if not official.is_file():
        pytest.skip(f"LawBench's charge list is not at {official}")
    assert charges == load_charge_list(official)


def test_a_charge_containing_a_gold_charge_elsewhere_scores_as_lawbench_does() -> None:
    # internlm-chat-7b's published answer to case 169: LawBench scores it 2/3 (one of two gold
    # charges, nothing else). A list gathered from the gold answers also holds 走私 (another
    # case's gold charge), a substring of the answer, and scored it 1/2.
    gold = ("走私武器、弹药", "走私、贩卖、运输、制造毒品")
    s = score("走私、贩卖、运输、制造毒品<eoa>\n", gold, load_charge_list(SHIPPED_CHARGES))
    assert s.f1 == pytest.approx(2 / 3, abs=1e-12) and not s.abstained


# --- split -------------------------------------------------------------------------------


def synthetic_cases(n: int) -> list[Case]:
    return [Case(f"lb-{i + 1:04d}", "i", f"q{i}", ("盗窃",)) for i in range(n)]


def test_split_is_deterministic_disjoint_and_covering() -> None:
    cases = synthetic_cases(100)
    train, dev, test = split_cases(cases, seed=7, dev_fraction=0.2, test_fraction=0.1)
    assert (len(train), len(dev), len(test)) == (70, 20, 10)
    ids = [c.case_id for part in (train, dev, test) for c in part]
    assert sorted(ids) == sorted(c.case_id for c in cases)
    assert len(set(ids)) == len(ids)
    assert split_cases(cases, seed=7, dev_fraction=0.2, test_fraction=0.1) == (train, dev, test)
    _, dev_other, test_other = split_cases(cases, seed=8, dev_fraction=0.2, test_fraction=0.1)
    assert (dev_other, test_other) != (dev, test)


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError, match="at most 1"):
        split_cases(synthetic_cases(10), seed=0, dev_fraction=0.6, test_fraction=0.6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        split_cases(synthetic_cases(10), seed=0, dev_fraction=-0.1, test_fraction=0.1)


# --- the real file -------------------------------------------------------------------


def test_real_file_loads() -> None:
    cases = real_cases()
    assert len(cases) == 500
    assert cases[0].case_id == "lb-0001" and cases[-1].case_id == "lb-0500"
    assert cases[0].charges == ("盗窃",)
    assert sum(len(c.charges) > 1 for c in cases) == 167
    gold = {charge for case in cases for charge in case.charges}
    assert len(gold) == 202 and len(gold - set(load_charge_list(SHIPPED_CHARGES))) == 13


def test_real_file_split() -> None:
    cases = real_cases()
    train, dev, test = split_cases(cases, seed=0, dev_fraction=0.15, test_fraction=0.15)
    assert (len(train), len(dev), len(test)) == (350, 75, 75)
    assert {c.case_id for c in train} | {c.case_id for c in dev} | {c.case_id for c in test} == {
        c.case_id for c in cases
    }


def test_real_file_gold_answers_score_under_lawbench_rule() -> None:
    # Echoing the gold answer is not a perfect F1 under LawBench's substring rule:
    # e.g. gold 合同诈骗 also "predicts" 诈骗. These are the exact numbers on the file.
    cases = real_cases()
    options = load_charge_list(SHIPPED_CHARGES)
    gold = aggregate([score("罪名:" + ";".join(c.charges), c.charges, options) for c in cases])
    assert gold["top1_accuracy"] == 0.978
    assert gold["abstention_rate"] == 0.014  # 7 gold answers name only charges outside the list
    assert gold["f1"] == pytest.approx(GOLD_ECHO_F1, abs=1e-9)
    silent = aggregate([score("", c.charges, options) for c in cases])
    assert (silent["top1_accuracy"], silent["f1"], silent["abstention_rate"]) == (0.0, 0.0, 1.0)

