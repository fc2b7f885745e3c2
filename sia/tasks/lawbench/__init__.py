"""LawBench task 3-3 (criminal charge prediction): data loading, splitting and LawBench's scoring rule."""

from sia.tasks.lawbench.cases import (
    Case,
    LawbenchDataError,
    case_id_for,
    load_cases,
    load_charge_list,
    parse_answer,
    parse_records,
    split_cases,
)
from sia.tasks.lawbench.scoring import (
    CaseScore,
    aggregate,
    extract_charges,
    f1_two_sets,
    score,
)

__all__ = [
    "Case",
    "CaseScore",
    "LawbenchDataError",
    "aggregate",
    "case_id_for",
    "extract_charges",
    "f1_two_sets",
    "load_cases",
    "load_charge_list",
    "parse_answer",
    "parse_records",
    "score",
    "split_cases",
]
