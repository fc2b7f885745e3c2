"""Inside a real run, harnesses that raise, hang, blow up memory, print garbage or look
for keys each become a recorded failed episode of the right kind, and the run goes on."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from sia.tasks.loader import BUNDLED_ROOT
from tests.cli import sia
from tests.conftest import BuiltModels

pytestmark = pytest.mark.slow

BEHAVIOURS = {
    "raise": "raise ValueError('the harness gave up')",
    "hang": "while True:\n    pass",
    "allocate": "hoard = bytearray(10 * 1024 ** 3)\nreturn str(len(hoard))",
    "garbage": "print('answer: fruit' * 100)\nreturn 42",
    "key": "return os.environ.get('ANTHROPIC_API_KEY', 'no key here')",
}
EXPECTED = {"raise": "crash", "hang": "timeout", "allocate": "memory", "garbage": "malformed",
            "key": "ok"}


def faulty_task(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "faulty"
    shutil.copytree(BUNDLED_ROOT / "wordcat", folder, ignore=shutil.ignore_patterns("__pycache__"))
    dev = [json.loads(line)["id"] for line in (folder / "public" / "dev.jsonl").read_text().splitlines()]
    # The first two dev samples answer normally: they are the Meta Agent's smoke run.
    chosen = dict(zip(dev[2:], BEHAVIOURS))
    branches = "".join(f"    if sample['id'] == {sample_id!r}:\n"
                       + textwrap.indent(BEHAVIOURS[name], " " * 8) + "\n"
                       for sample_id, name in chosen.items())
    (folder / "reference_harness.py").write_text(
        "import os\n\n\ndef solve(sample, model):\n" + branches
        + "    return model.complete('question: ' + sample['question'] + '\\nanswer:', max_tokens=2)\n")
    toml = folder / "task.toml"
    toml.write_text(toml.read_text().replace("wall_s = 30.0", "wall_s = 4.0")
                    .replace("cpu_s = 30", "cpu_s = 4"))
    return folder, chosen


def test_every_harness_fault_is_a_recorded_episode_and_the_run_goes_on(tmp_path: Path,
                                                                       built_models: BuiltModels) -> None:
    folder, chosen = faulty_task(tmp_path)
    home = tmp_path / "home"
    model = built_models.seed(home, folder)
    result = sia(home, "run", "--task", str(folder), "--mode", "H", "--max-gen", "1", "--quiet",
                 env={"ANTHROPIC_API_KEY": "", "SIA_TEST_SECRET": "x"}, timeout=300)
    run = result.stdout.split()[-1]
    lines = sia(home, "log", run, "--type", "EpisodeRecorded", "--json").stdout.splitlines()
    episodes = {e["sample_id"]: e for e in (json.loads(line)["payload"] for line in lines)}
    assert len(episodes) == 32
    for sample_id, name in chosen.items():
        assert episodes[sample_id]["status"] == EXPECTED[name], (name, episodes[sample_id])
    assert episodes[next(k for k, v in chosen.items() if v == "key")]["prediction"] == "no key here"
    assert "gave up" in episodes[next(k for k, v in chosen.items() if v == "raise")]["error"]
    completed = json.loads(sia(home, "log", run, "--type", "RunCompleted", "--json").stdout)
    assert completed["payload"]["reason"].startswith("max_generations")
    assert list((home / "models").iterdir()) == [model], "the run built a model besides the seeded one"
