"""Scoring charge predictions exactly as LawBench scores task 3-3.

Re-implemented from open-compass/LawBench, `evaluation/evaluation_functions/ljp_accusation.py`
(`compute_ljp_accusation`) and `evaluation/utils/function_utils.py` (`compute_f1_two_sets`).
The rule there:

- the gold answer must start with `罪名:`; the prefix is removed and the rest split on `;`
  (see `cases.parse_answer`); gold charges outside the option list stay in the gold set
  (they can never be predicted, so they cost recall);
- the prediction is *not* parsed: every name of LawBench's option list (189 charges, the
  bundled task's `charges.json`) that occurs as a substring anywhere in the prediction
  counts as predicted (so an option contained in a longer one, e.g. `诈骗` in `合同诈骗`,
  is predicted too);
- per case, F1 between the predicted set and the gold set (precision or recall with an
  empty denominator is 0, F1 is 0 when both are 0);
- a case with no option found is an abstention; the task score is the mean F1 over all
  cases (abstentions included, with F1 0) and the abstention rate is abstentions / cases.

With LawBench's own option list these are LawBench's official numbers (tested against its
published prediction files). Added here, not in LawBench: top-1 accuracy, where "first" is
the charge whose match starts earliest in the text (a longer option wins a tie at the same
position); LawBench orders matches by its option list, which carries no meaning, so the set
and hence F1 are identical to LawBench's and only the order is ours.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CaseScore:
    """Score of one prediction; an abstention is also wrong (top1 False, f1 0)."""

    top1_correct: bool
    f1: float
    abstained: bool


def extract_charges(prediction_text: str | None, options: Iterable[str]) -> tuple[str, ...]:
    """Options occurring anywhere in the prediction, ordered by where they first occur."""
    if not prediction_text:
        return ()
    found: list[tuple[int, int, str]] = []
    for option in set(options):
        if not option:
            continue
        position = prediction_text.find(option)
        if position >= 0:
            found.append((position, -len(option), option))
    return tuple(option for _, _, option in sorted(found))


def f1_two_sets(predicted: Collection[str], gold: Collection[str]) -> float:
    """LawBench's `compute_f1_two_sets`: set F1, 0 whenever precision + recall is 0."""
    predicted_set, gold_set = set(predicted), set(gold)
    overlap = len(predicted_set & gold_set)
    precision = overlap / len(predicted_set) if predicted_set else 0.0
    recall = overlap / len(gold_set) if gold_set else 0.0
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def score(prediction_text: str | None, gold_charges: Sequence[str], options: Iterable[str]) -> CaseScore:
    """Score one prediction; `None` (no answer at all) scores like an empty prediction."""
    predicted = extract_charges(prediction_text, options)
    if not predicted:
        return CaseScore(top1_correct=False, f1=0.0, abstained=True)
    return CaseScore(
        top1_correct=predicted[0] in set(gold_charges),
        f1=f1_two_sets(predicted, gold_charges),
        abstained=False,
    )


def aggregate(scores: Sequence[CaseScore]) -> dict[str, float]:
    """Task-level metrics over all scored cases; `f1` is LawBench's official score.

    The denominator is every case, so an unanswered or abstained case counts as 0 in
    accuracy and F1 rather than being dropped.
    """
    if not scores:
        raise ValueError("cannot aggregate an empty list of scores")
    n = len(scores)
    return {
        "top1_accuracy": sum(s.top1_correct for s in scores) / n,
        "f1": sum(s.f1 for s in scores) / n,
        "abstention_rate": sum(s.abstained for s in scores) / n,
        "n": float(n),
    }
