"""Loading LawBench task 3-3 (charge prediction) cases and splitting them.

The data file is read where it lies (it is never copied into the repository). Every way
the file can be broken gets its own message, because a broken task folder must give a
clear error rather than a traceback from deep inside the loop.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ANSWER_PREFIX = "罪名:"
"""Prefix of every gold answer; LawBench asserts it before scoring."""

CHARGE_SEPARATOR = ";"
"""Separator between charges in a gold answer (ASCII semicolon, as LawBench splits)."""

REQUIRED_FIELDS = ("instruction", "question", "answer")


class LawbenchDataError(ValueError):
    """The LawBench data file is missing or malformed; the message names the problem."""


@dataclass(frozen=True)
class Case:
    """One charge-prediction case; `charges` is the gold set in the file's order."""

    case_id: str
    instruction: str
    question: str
    charges: tuple[str, ...]


def case_id_for(index: int) -> str:
    """Stable id from the record's position in the file (1-based), e.g. `lb-0001`."""
    return f"lb-{index + 1:04d}"


def parse_answer(answer: str) -> tuple[str, ...]:
    """Gold charges of a `罪名:<charge>[;<charge>]` answer, as LawBench splits it.

    LawBench strips the prefix and splits on `;` without any other normalisation, so
    neither do we; an empty charge (e.g. `罪名:` or `罪名:盗窃;`) is rejected because it
    could never be matched and would silently lower every score.
    """
    if not answer.startswith(ANSWER_PREFIX):
        raise LawbenchDataError(f"answer {answer!r} does not start with {ANSWER_PREFIX!r}")
    charges = tuple(answer[len(ANSWER_PREFIX):].split(CHARGE_SEPARATOR))
    if any(not charge.strip() for charge in charges):
        raise LawbenchDataError(f"answer {answer!r} has an empty charge")
    return charges


def parse_records(records: object, source: str = "<data>") -> list[Case]:
    """Cases from already-decoded JSON; `source` only labels error messages."""
    if not isinstance(records, list):
        raise LawbenchDataError(f"{source}: expected a JSON list of cases, got {type(records).__name__}")
    cases: list[Case] = []
    for index, record in enumerate(records):
        where = f"{source}: record {index} ({case_id_for(index)})"
        if not isinstance(record, dict):
            raise LawbenchDataError(f"{where}: expected an object, got {type(record).__name__}")
        for name in REQUIRED_FIELDS:
            if name not in record:
                raise LawbenchDataError(f"{where}: missing field {name!r}")
            if not isinstance(record[name], str):
                raise LawbenchDataError(
                    f"{where}: field {name!r} must be a string, got {type(record[name]).__name__}"
                )
        try:
            charges = parse_answer(record["answer"])
        except LawbenchDataError as error:
            raise LawbenchDataError(f"{where}: {error}") from None
        cases.append(Case(case_id_for(index), record["instruction"], record["question"], charges))
    return cases


def load_cases(path: str | Path) -> list[Case]:
    """All cases of a LawBench 3-3 JSON file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise LawbenchDataError(f"{path}: data file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise LawbenchDataError(f"{path}: not UTF-8 text ({error.reason})") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise LawbenchDataError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    return parse_records(records, str(path))


def split_cases(
    cases: Sequence[Case], seed: int, dev_fraction: float, test_fraction: float
) -> tuple[list[Case], list[Case], list[Case]]:
    """Deterministic seeded (train, dev, test) split: disjoint, covering every case.

    Sizes are `round(n * fraction)` for dev and test, the rest is train; each split
    keeps file order so that listings are easy to read and diff.
    """
    if not (0.0 <= dev_fraction <= 1.0 and 0.0 <= test_fraction <= 1.0):
        raise ValueError(f"fractions must lie in [0, 1], got dev={dev_fraction}, test={test_fraction}")
    if dev_fraction + test_fraction > 1.0:
        raise ValueError(f"dev_fraction + test_fraction must be at most 1, got {dev_fraction + test_fraction}")
    ids = [case.case_id for case in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique to split")
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    n_test = round(len(cases) * test_fraction)
    n_dev = min(round(len(cases) * dev_fraction), len(cases) - n_test)
    test_idx = sorted(order[:n_test])
    dev_idx = sorted(order[n_test:n_test + n_dev])
    train_idx = sorted(order[n_test + n_dev:])
    return ([cases[i] for i in train_idx], [cases[i] for i in dev_idx], [cases[i] for i in test_idx])


def load_charge_list(path: str | Path) -> tuple[str, ...]:
    """LawBench's option list (a JSON list of distinct, non-empty charge names), in file order.

    Predictions are matched against this list, never against charges gathered from gold
    answers: a list built from the labels would both leak them and score differently.
    """
    path = Path(path)
    if not path.is_file():
        raise LawbenchDataError(f"{path}: charge list not found")
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LawbenchDataError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise LawbenchDataError(f"{path}: expected a JSON list of non-empty charge names")
    if len(set(names)) != len(names):
        raise LawbenchDataError(f"{path}: a charge name occurs twice")
    return tuple(names)
