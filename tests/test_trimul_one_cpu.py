"""trimul's timing keeps the scorer and both sandboxes on one CPU: left to the scheduler, where
each sandbox ran changed the same kernel's round trip by up to 35%, and the reference scored
0.63-1.91 against itself."""

from __future__ import annotations

import os

import pytest

from sia.tasks.answer_sandbox import SandboxLimits
from sia.tasks.code_answers import evaluate_sandboxed
from tests.test_code_answer_redteam import TRIMUL, honest_kernel_unless

pytestmark = [pytest.mark.slow, pytest.mark.measures_time]


def test_the_answer_is_timed_on_one_cpu_and_the_scorer_is_let_go_after() -> None:
    before = os.sched_getaffinity(0)
    answer = honest_kernel_unless("len(os.sched_getaffinity(0)) != 1", "import os")
    outcome = evaluate_sandboxed("trimul", answer, TRIMUL, SandboxLimits(60.0, 60, 2048))
    assert outcome.failure is None and outcome.reward > 0.3, outcome
    assert os.sched_getaffinity(0) == before
