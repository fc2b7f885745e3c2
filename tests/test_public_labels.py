"""Train labels are public data (issue J): the task format says which splits' labels are
public (train by default, never dev or test), `Task.public_examples` serves them, every episode
sandbox shows them to the harness as a read-only file named by SIA_TRAIN_EXAMPLES (but the
episode's own sample), and the investigating agents list them with a tool. Dev and test labels
stay unreadable: a hostile harness hunting for them finds nothing, and no agent request holds one."""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sia.agents.llm import LLMFeedback, LLMMeta
from sia.agents.tools import LIST_LIMIT, RESULT_CHARS, DraftRunner, example_tools, run_tool
from sia.core.effect_models import parse_request
from sia.core.events.canonical import canonical_json
from sia.effects.base import EffectContext
from sia.effects.episode import EpisodeHandler, SmokeCheck
from sia.effects.held_out import HeldOutTestHandler
from sia.effects.targets import TargetPool
from sia.harness.backends import ScriptedBackend
from sia.harness.bwrap import EXAMPLES_PATH, LIBRARY_DIRS, interpreter
from sia.harness.contract import validate_harness
from sia.harness.sandbox import EXAMPLES_VARIABLE, ISOLATIONS, Isolation, Limits, run_episode
from sia.llm import get_provider
from sia.store.blobs import MemoryBlobStore
from sia.tasks.format import TaskSpec
from sia.tasks.loader import BUNDLED_ROOT, Task, TaskError, default_cache, load_task, validate_task
from sia.testing import AnthropicServer, CallTools, ScriptedCall
from tests.hostile_harness import DISARM
from tests.test_agents_investigation import DECIDE, LIMITS, Recorder, context, request_of
from tests.test_agents_llm import GOOD, KEY

DEV_SENTINEL = "DEV-SENTINEL-91c2e"
TEST_SENTINEL = "TEST-SENTINEL-44ab7"
TRAIN_MARK = "TRAIN-LABEL"
TRAIN = {"t0": "TRAIN-LABEL-zero", "t1": "TRAIN-LABEL-one", "t2": ["TRAIN-LABEL-a", "TRAIN-LABEL-b"],
         "t3": "TRAIN-LABEL-one", "t4": "TRAIN-LABEL-four", "t5": "TRAIN-LABEL-five"}
DEV_IDS = [f"s{i}" for i in range(8)]
"""The sample ids of `tests.test_agents_llm.feedback_request`'s episodes."""
TEST_IDS = [f"x{i}" for i in range(4)]

EVALUATOR = '''
def reward(sample, prediction, label):
    labels = label if isinstance(label, list) else [label]
    return 1.0 if prediction.strip() in labels else 0.0
'''


def make_task(root: Path, public_labels: list[str] | None = None) -> Path:
    """A task whose train labels are marked TRAIN-LABEL, and every dev and test label a sentinel."""
    root.mkdir(parents=True)
    setting = "" if public_labels is None else f"public_labels = {json.dumps(public_labels)}\n"
    (root / "task.toml").write_text(f'name = "labels"\ndescription = "Name the code word."\n{setting}'
                                    '[reward]\nkind = "binary"\n', encoding="utf-8")
    (root / "evaluator.py").write_text(EVALUATOR, encoding="utf-8")
    (root / "public").mkdir()
    (root / "private").mkdir()
    rows = {"public/train.jsonl": [{"id": i, "question": f"code word {i} (Ünïcode)", "options": ["a", "b"]}
                                   for i in TRAIN],
            "public/dev.jsonl": [{"id": i, "word": f"word {i}", "options": ["a", "b"]} for i in DEV_IDS],
            "private/test.jsonl": [{"id": i, "word": f"word {i}"} for i in TEST_IDS],
            "private/labels.jsonl": [*({"id": i, "label": label} for i, label in TRAIN.items()),
                                     *({"id": i, "label": f"{DEV_SENTINEL}-{i}"} for i in DEV_IDS),
                                     *({"id": i, "label": f"{TEST_SENTINEL}-{i}"} for i in TEST_IDS)]}
    for rel, lines in rows.items():
        (root / rel).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def task_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("public-labels") / "labels")


@pytest.fixture(scope="module")
def task(task_root: Path) -> Task:
    return load_task(task_root)


@pytest.fixture(scope="module")
def private_task(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return load_task(make_task(tmp_path_factory.mktemp("private-labels") / "labels", public_labels=[]))


@pytest.fixture(params=ISOLATIONS)
def isolation(request: pytest.FixtureRequest) -> Isolation:
    return request.param


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[TargetPool]:
    pool = TargetPool(lambda adapter_hash, adapter_dir: ScriptedBackend(), tmp_path / "adapters")
    yield pool
    pool.close()


# ---------------------------------------------------------------- the task format


def test_train_labels_are_public_by_default_and_can_be_kept_private(task: Task, private_task: Task) -> None:
    assert TaskSpec(name="t", description="d", reward={"kind": "binary"}).public_labels == ("train",)
    assert task.spec.public_labels == ("train",)
    assert [e["id"] for e in task.public_examples()] == task.ids("train") == list(TRAIN)
    assert private_task.spec.public_labels == ()
    assert private_task.public_examples() == [] and private_task.public_examples_jsonl() == b""
    assert example_tools(private_task.public_examples()) == []


@pytest.mark.parametrize(("public_labels", "reason"), [
    (["dev"], "'dev' labels cannot be public: dev labels stay with the evaluator: agents see dev scores "
              "and rewards only"),
    (["train", "test"], "'test' labels cannot be public: test labels are used once, at the end, to score "
                        "the final answer"),
    (["validation"], "unknown split 'validation': only \"train\" labels may be public"),
])
def test_dev_and_test_labels_are_refused_with_the_reason(tmp_path: Path, public_labels: list[str],
                                                         reason: str) -> None:
    root = make_task(tmp_path / "task", public_labels=public_labels)
    with pytest.raises(TaskError) as caught:
        load_task(root)
    assert caught.value.problems == [f"task.toml: field `public_labels`: {reason}"]
    assert validate_task(root) == caught.value.problems


# ---------------------------------------------------------------- Task.public_examples


def test_wordcat_examples_are_its_train_samples_with_their_labels_without_options() -> None:
    wordcat = load_task("wordcat")
    labels = {row["id"]: row["label"] for row in map(json.loads, (BUNDLED_ROOT / "wordcat" / "private" /
                                                                   "labels.jsonl").read_text().splitlines())}
    examples = wordcat.public_examples()
    assert [e["id"] for e in examples] == wordcat.ids("train") and len(examples) == 64
    for example, sample in zip(examples, wordcat.samples("train")):
        assert example == {**{k: v for k, v in sample.items() if k != "options"}, "label": labels[sample["id"]]}
    assert not {e["id"] for e in examples} & {*wordcat.ids("dev"), *(s["id"] for s in wordcat.test_samples())}


def test_examples_keep_multi_labels_and_come_as_fresh_copies(task: Task) -> None:
    examples = task.public_examples()
    assert examples[2] == {"id": "t2", "question": "code word t2 (Ünïcode)",
                           "label": ["TRAIN-LABEL-a", "TRAIN-LABEL-b"]}
    assert all(e["label"] == TRAIN[e["id"]] for e in examples)
    examples[2]["label"].append("mutated")
    examples.pop()
    assert task.public_examples()[2]["label"] == ["TRAIN-LABEL-a", "TRAIN-LABEL-b"]
    assert len(task.public_examples()) == len(TRAIN)


def test_the_examples_file_is_canonical_jsonl_encoded_once_less_the_episodes_own_sample(task: Task) -> None:
    whole = task.public_examples_jsonl()
    assert whole == "".join(canonical_json(e) + "\n" for e in task.public_examples()).encode("utf-8")
    assert "Ünïcode".encode() in whole and task.public_examples_jsonl() is whole
    assert task.public_examples_jsonl(without="s0") is whole
    lines = whole.splitlines(keepends=True)
    assert task.public_examples_jsonl(without="t2") == b"".join(lines[:2] + lines[3:])


# ---------------------------------------------------------------- the harness's view


READER = '''
import json, os

def solve(sample, model):
    path = os.environ.get("SIA_TRAIN_EXAMPLES")
    if path is None:
        raise RuntimeError("no examples")
    with open(path, encoding="utf-8") as handle:
        labels = {row["id"]: row["label"] for row in map(json.loads, handle)}
    return json.dumps({"path": path, "labels": labels, "sample": sample["id"]})
'''


def test_every_episode_handler_shows_the_harness_the_train_examples(task: Task, targets: TargetPool,
                                                                    isolation: Isolation) -> None:
    blobs = MemoryBlobStore()
    harness = blobs.put_text(READER)
    ctx = EffectContext(run_id="r", effect_id="episode-0", kind="episode", seed=3, attempt=1, blobs=blobs,
                        home=Path("."))
    handler = EpisodeHandler(task, targets, isolation=isolation)
    request = parse_request("episode", {"task": task.name, "task_hash": task.task_hash, "generation": 0,
                                        "sample_id": "s1", "harness_hash": harness, "adapter_hash": None,
                                        "target": "scripted"})
    result = handler.run(request, ctx).result
    seen = json.loads(result.prediction or "{}")
    assert result.status == "ok" and seen["labels"] == TRAIN
    if isolation == "bwrap":
        assert seen["path"] == EXAMPLES_PATH
    else:
        assert Path(seen["path"]).name == "train_examples.jsonl"
        assert Path(seen["path"]).parent.name.startswith("sia-episode-")
    assert SmokeCheck(task, targets, blobs, isolation=isolation)(READER) == []
    rows, _ = DraftRunner(task, targets, isolation=isolation)(READER, ["t1", "s2"], "k", 1, None, blobs)
    drafted = [json.loads(row["answer"]) for row in rows]
    assert set(drafted[0]["labels"]) == set(TRAIN) - {"t1"} and drafted[1]["labels"] == TRAIN
    test_ctx = EffectContext(run_id="r", effect_id="test-0", kind="test", seed=3, attempt=1, blobs=blobs,
                             home=Path("."))
    held_out = HeldOutTestHandler(task, targets, isolation=isolation, workers=2).run(
        parse_request("test", {"task": task.name, "task_hash": task.task_hash, "generation": 0, "harness_hash": harness,
                               "adapter_hash": None, "target": "scripted"}), test_ctx).result
    assert held_out.n_answered == len(TEST_IDS) and held_out.score == 0.0


def test_an_episode_on_a_train_sample_never_sees_its_own_label(task: Task, targets: TargetPool,
                                                              isolation: Isolation) -> None:
    rows, _ = DraftRunner(task, targets, isolation=isolation)(READER, list(TRAIN)[:4], "own", 1, None,
                                                              MemoryBlobStore())
    for sample_id, row in zip(TRAIN, rows):
        seen = json.loads(row["answer"])["labels"]
        assert sample_id not in seen and len(seen) == len(TRAIN) - 1


ABSENCE = '''
import os

def solve(sample, model):
    return repr((os.environ.get("SIA_TRAIN_EXAMPLES"), sorted(os.listdir("."))))
'''


def test_without_public_labels_there_is_no_variable_and_no_file(private_task: Task, targets: TargetPool,
                                                                isolation: Isolation) -> None:
    blobs = MemoryBlobStore()
    rows, _ = DraftRunner(private_task, targets, isolation=isolation)(ABSENCE, ["t0", "s0"], "k", 1, None, blobs)
    assert [row["answer"] for row in rows] == ["(None, ['harness.py', 'sample.json'])"] * 2


WRITER = '''
import errno, os

def attempt(action):
    try:
        action()
        return "done"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def solve(sample, model):
    path = os.environ["SIA_TRAIN_EXAMPLES"]
    mode = os.stat(path).st_mode
    write = attempt(lambda: open(path, "a").write("forged"))
    chmod = attempt(lambda: os.chmod(path, 0o644))
    after = open(path).read()
    rename = attempt(lambda: os.rename(path, "moved.jsonl"))
    remove = attempt(lambda: os.remove(path))
    return repr((mode & 0o222, write, chmod, after, rename, remove))
'''


def test_the_examples_file_is_read_only(isolation: Isolation) -> None:
    """Under bwrap a mode-0444 file on a read-only mount: no write, chmod, rename or removal.
    In the process sandbox a mode-0444 file in the episode's own private dir: a write fails but
    for root, whose write changes only that episode's copy."""
    examples = b'{"id":"t0","label":"TRAIN-LABEL-zero"}\n'
    mode, write, chmod, after, rename, remove = ast.literal_eval(
        run_episode(WRITER, {"id": "s0"}, model_socket=None, isolation=isolation, examples=examples).answer or "")
    assert mode == 0
    if isolation == "bwrap":
        assert (write, chmod, after, rename, remove) == ("EACCES", "EROFS", examples.decode(), "EBUSY", "EBUSY")
    else:
        assert write == ("done" if os.geteuid() == 0 else "EACCES")
    again = run_episode(READER, {"id": "s0"}, model_socket=None, isolation=isolation, examples=examples)
    assert json.loads(again.answer or "{}")["labels"] == {"t0": "TRAIN-LABEL-zero"}  # each episode gets a fresh copy


def test_the_examples_take_none_of_the_private_directorys_room(isolation: Isolation) -> None:
    examples = b"".join(canonical_json({"id": f"t{i}", "label": "x" * 1000}).encode() + b"\n" for i in range(1500))
    body = ('import os\ndef solve(sample, model):\n'
            '    size = len(open(os.environ["SIA_TRAIN_EXAMPLES"], "rb").read())\n'
            '    open("scratch.bin", "wb").write(b"x" * 900_000)\n    return str(size)\n')
    outcome = run_episode(body, {"id": "s0"}, model_socket=None, isolation=isolation, examples=examples,
                          limits=Limits(file_mb=1))
    assert (outcome.status, outcome.answer) == ("ok", str(len(examples)))
    assert len(examples) > 1.4 * 2**20


HUNT = '''
import json, os, stat

MARKERS = [marker[::-1] for marker in REVERSED_MARKERS]  # the source never holds a marker itself

def solve(sample, model):
    found, regular = set(), [0]

    def look(data):
        found.update(m for m in MARKERS if m.encode() in data)

    def read(path):
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                return
            with open(path, "rb") as handle:
                data = handle.read(8_000_000)
        except Exception:
            return
        regular[0] += 1
        look(data)

    for root in ROOTS:
        for here, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if os.path.join(here, d) not in SKIP]
            for name in files:
                read(os.path.join(here, name))
    for path in PROBES:
        read(path)
    for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["self", "thread-self"]:
        for leaf in ("environ", "cmdline", "maps", "mountinfo"):
            read(f"/proc/{pid}/{leaf}")
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            descriptors = []
        for fd in descriptors:
            read(f"/proc/{pid}/fd/{fd}")
    look(json.dumps(dict(os.environ)).encode())
    with open(os.environ["SIA_TRAIN_EXAMPLES"], encoding="utf-8") as handle:
        ids = [json.loads(line)["id"] for line in handle]
    return json.dumps({"found": sorted(found), "files_read": regular[0], "example_ids": ids})
'''


def test_a_hostile_harness_finds_train_labels_only(task: Task, task_root: Path, targets: TargetPool,
                                                   isolation: Isolation) -> None:
    """Under bwrap the hunt first disarms the runner's audit hook and walks the whole view (the
    read-only system libraries and standard library aside: the host's own files); in the
    process sandbox the hook is the boundary (best effort, as that sandbox is) and the hunt
    walks the private dir, the task folder and the task cache."""
    probes = [str(task_root / "private" / "labels.jsonl"), str(task_root / "private" / "test.jsonl"),
              str(task_root / "public" / "dev.jsonl"), f"/proc/{os.getpid()}/environ", f"/proc/{os.getpid()}/cmdline",
              "/proc/1/environ", "/proc/self/environ", EXAMPLES_PATH]
    if isolation == "bwrap":
        python = interpreter()
        roots = ["/"]
        skip = ["/proc", "/sys", *LIBRARY_DIRS, python.stdlib, os.path.dirname(python.stdlib)]
        prefix = DISARM
    else:
        roots, skip, prefix = [".", str(task_root), str(default_cache())], [], ""
    markers = [m[::-1] for m in (DEV_SENTINEL, TEST_SENTINEL, TRAIN_MARK)]
    source = (prefix + f"REVERSED_MARKERS = {markers!r}\nROOTS = {roots!r}\n"
              f"SKIP = set({skip!r})\nPROBES = {probes!r}\n" + HUNT)
    rows, _ = DraftRunner(task, targets, isolation=isolation)(source, ["s3"], "hunt", 1, None, MemoryBlobStore())
    assert rows[0]["status"] == "ok", rows[0]
    hunted = json.loads(rows[0]["answer"])
    assert hunted["found"] == [TRAIN_MARK] and hunted["files_read"] >= 3
    assert hunted["example_ids"] == list(TRAIN)


# ---------------------------------------------------------------- the agents' tool


def tool_result(examples: list[dict[str, Any]], **arguments: Any) -> tuple[dict[str, Any] | str, bool]:
    (tool,) = example_tools(examples)
    outcome = run_tool(tool, arguments)
    return (outcome.content if outcome.is_error else json.loads(outcome.content)), outcome.is_error


def test_list_train_examples_filters_pages_and_counts_labels(task: Task) -> None:
    examples = task.public_examples()
    everything, _ = tool_result(examples)
    assert isinstance(everything, dict)
    assert (everything["total"], everything["matched"]) == (len(TRAIN), len(TRAIN))
    assert [e["label"] for e in everything["examples"]] == list(TRAIN.values())
    assert everything["label_counts"]["TRAIN-LABEL-one"] == 2 and everything["label_counts"]["TRAIN-LABEL-b"] == 1
    multi, _ = tool_result(examples, label="TRAIN-LABEL-b")
    assert isinstance(multi, dict) and [e["id"] for e in multi["examples"]] == ["t2"]
    text, _ = tool_result(examples, contains="CODE WORD T4 (üNÏCODE")
    assert isinstance(text, dict) and [e["id"] for e in text["examples"]] == ["t4"]
    page, _ = tool_result(examples, offset=4, limit=1)
    assert isinstance(page, dict) and [e["id"] for e in page["examples"]] == ["t4"] and page["matched"] == 6
    for bad, problem in (({"limit": 0}, "'limit' 1 or more"), ({"offset": -1}, "'offset' must be 0 or more"),
                         ({"label": 3}, "'label' must be a string"), ({"limit": "all"}, "'limit' must be an integer")):
        message, is_error = tool_result(examples, **bad)
        assert is_error and problem in str(message)


def test_list_train_examples_is_capped_like_the_other_tools() -> None:
    examples = [{"id": f"t{i}", "question": "q" * 5000, "label": "l" * 5000} for i in range(200)]
    listed, _ = tool_result(examples, limit=1)
    assert isinstance(listed, dict)
    assert len(listed["examples"][0]["question"]) <= 700 and len(listed["examples"][0]["label"]) <= 700
    assert all(len(k) <= 80 for k in listed["label_counts"])
    (tool,) = example_tools(examples)
    capped = run_tool(tool, {"limit": 500})
    assert len(capped.content) <= RESULT_CHARS and capped.content.count('"id"') <= LIST_LIMIT


@pytest.fixture
def anthropic_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicServer]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with AnthropicServer(api_key=KEY) as server:
        yield server


def test_the_agents_list_train_labels_and_never_see_a_dev_or_test_label(
        task: Task, anthropic_server: AnthropicServer) -> None:
    provider = get_provider("anthropic", base_url=anthropic_server.base_url, timeout=10.0)
    meta_turns = anthropic_server.converse(
        CallTools((ScriptedCall("read_samples", {"split": "dev", "limit": 8}),
                   ScriptedCall("list_train_examples", {"label": "TRAIN-LABEL-one"}))),
        CallTools((ScriptedCall("submit_harness", {"harness": GOOD}),)))
    blobs = MemoryBlobStore()
    meta = LLMMeta(provider, "claude-haiku-4-5", task, validate_harness).run(
        parse_request("meta", {"task": task.name, "task_hash": task.task_hash, "provider": "anthropic",
                               "attempt": 1, "limits": LIMITS.model_dump()}),
        context(blobs, Recorder(), kind="meta"))
    assert meta.result.valid and meta_turns.finished
    assert "list_train_examples" in meta_turns.exchanges[0].offered
    listed = json.loads(meta_turns.exchanges[1].results[1].content)
    assert [(e["id"], e["label"]) for e in listed["examples"]] == [("t1", "TRAIN-LABEL-one"), ("t3", "TRAIN-LABEL-one")]
    feedback_turns = anthropic_server.converse(
        CallTools((ScriptedCall("list_episodes", {}), ScriptedCall("read_episode", {"sample_id": "s1"}),
                   ScriptedCall("list_train_examples", {}))),
        CallTools((ScriptedCall("decide", DECIDE),)))
    feedback = LLMFeedback(provider, "claude-haiku-4-5", task, validate_harness)
    decided = feedback.run(request_of(blobs), context(blobs, Recorder())).result
    assert decided.action == "edit_harness" and feedback_turns.finished
    assert "list_train_examples" in feedback_turns.exchanges[0].offered
    episodes, episode, examples = (json.loads(r.content) for r in feedback_turns.exchanges[1].results)
    assert episodes["total"] == len(DEV_IDS) and episode["sample"] == task.sample("s1")
    assert examples["matched"] == len(TRAIN)
    sent = [request.text for request in anthropic_server.requests]
    assert any("TRAIN-LABEL-one" in text for text in sent)
    assert not any(DEV_SENTINEL in text or TEST_SENTINEL in text for text in sent)


def test_the_harness_contract_tells_agents_where_the_examples_are() -> None:
    from sia.harness.contract import HARNESS_CONTRACT

    assert EXAMPLES_VARIABLE == "SIA_TRAIN_EXAMPLES" and EXAMPLES_VARIABLE in HARNESS_CONTRACT
    assert "must also work without them" in HARNESS_CONTRACT
