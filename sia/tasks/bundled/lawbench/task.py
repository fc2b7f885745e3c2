"""lawbench: builds the splits from the user's LawBench 3-3.json (`--data`).

The data file is read where it lies and never copied into the repository; the built splits
go to the task cache. Split: seeded (`[build] seed`), `dev_fraction` / `test_fraction` of the
cases, the rest train (`sia.tasks.lawbench.split_cases`). Public fields: `id` (`lb-0001`,
the record's position in the file), `instruction` (LawBench's prompt for the task),
`question` (the fact description) and `options`: LawBench's own option list (`charges.json`
beside this file, 189 names, Apache-2.0, see `LICENSE-LawBench.txt`), which its scorer
matches predictions against. It ships with the task because LawBench keeps it in its scoring
code, not beside 3-3.json, and because an option list gathered from the gold answers would
hand the labels to the harness. The label is the list of gold charges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sia.tasks.lawbench import case_id_for, load_cases, load_charge_list, split_cases
from sia.tasks.splits import split_files, write_files

CHARGES_FILE = Path(__file__).with_name("charges.json")


def build(data: Path, out: Path, params: dict[str, Any]) -> None:
    cases = load_cases(data)
    train, dev, test = split_cases(cases, seed=int(params.get("seed", 0)),
                                   dev_fraction=float(params.get("dev_fraction", 0.2)),
                                   test_fraction=float(params.get("test_fraction", 0.2)))
    options = list(load_charge_list(CHARGES_FILE))

    def public(case) -> dict:
        return {"id": case.case_id, "instruction": case.instruction, "question": case.question,
                "options": options}

    samples = {"train": [public(c) for c in train], "dev": [public(c) for c in dev],
               "test": [public(c) for c in test]}
    write_files(out, split_files(samples, {case.case_id: list(case.charges) for case in cases}))


def prediction_id(row: dict[str, Any]) -> str | None:
    """The sample id of a line of LawBench's published predictions (`{"index", "prediction",
    "refr"}`, `index` the case's 0-based position in 3-3.json); None for other rows."""
    index = row.get("index")
    if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
        return case_id_for(index)
    return None


def pretraining_corpus(samples: list[dict], seed: int) -> list[str]:
    """The fact descriptions and LawBench instructions (public text; no gold charges)."""
    return [sample["question"] for sample in samples] + sorted({s["instruction"] for s in samples})
