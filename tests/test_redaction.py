"""Invariant 6's second line of defence: no secret value reaches anything a store records."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from sia.core.effect_models import EpisodeRequest, EpisodeResult
from sia.store.redact import (
    MIN_FRAGMENT,
    MIN_SECRET_LENGTH,
    Redactor,
    SecretRefused,
    configured_key_names,
    redactor_from_environment,
    secret_names,
)
from sia.store.sqlite import SqliteEventStore
from sia.tasks.loader import BUNDLED_ROOT
from tests.cli import sia

CANARY = "sk-canary-7f3c9a1e5b2d4f60a8c7e9b1d3f5a7c9"


def test_every_occurrence_is_replaced_by_the_variables_name() -> None:
    redactor = Redactor({"OPENAI_API_KEY": CANARY})
    text = f"Authorization: Bearer {CANARY}\n{CANARY}{CANARY}"
    assert redactor.redact(text) == ("Authorization: Bearer [redacted:OPENAI_API_KEY]\n"
                                     "[redacted:OPENAI_API_KEY][redacted:OPENAI_API_KEY]")
    assert redactor.find(text) == "OPENAI_API_KEY"
    assert redactor.redact("nothing here") == "nothing here"


def test_short_and_empty_values_are_not_secrets() -> None:
    redactor = Redactor({"VLLM_API_KEY": "EMPTY", "X_TOKEN": "", "Y_KEY": "a" * (MIN_SECRET_LENGTH - 1)})
    assert not redactor and redactor.names == []
    assert redactor.redact("EMPTY handed aaaaaaaaaaa") == "EMPTY handed aaaaaaaaaaa"


def test_a_secret_inside_another_is_replaced_whole() -> None:
    outer = CANARY + "-extended-part"
    redactor = Redactor({"A_KEY": CANARY, "B_KEY": outer})
    assert redactor.redact(f"{outer} {CANARY}") == "[redacted:B_KEY] [redacted:A_KEY]"


def test_json_stays_valid_when_a_secret_needs_escaping_or_follows_a_backslash() -> None:
    tricky = 'n"quoted\\secret-0123456789'
    redactor = Redactor({"ODD_SECRET": tricky})
    document = json.dumps({"a": f"x\\{tricky}", tricky: [tricky, 1]}, ensure_ascii=False)
    assert tricky not in document and redactor.find(document) == "ODD_SECRET"
    redacted = redactor.redact_document(document)
    assert json.loads(redacted) == {"a": "x\\[redacted:ODD_SECRET]",
                                    "[redacted:ODD_SECRET]": ["[redacted:ODD_SECRET]", 1]}
    clean = '{"b":1}'
    assert redactor.redact_document(clean) is clean


def test_a_secret_cut_by_a_tail_or_a_truncation_leaves_no_fragment() -> None:
    redactor = Redactor({"OPENAI_API_KEY": CANARY})
    mark = "[redacted:OPENAI_API_KEY]"
    line = f"env: OPENAI_API_KEY={CANARY} PATH=/bin\n"
    for cut in range(len(line)):
        tail, head = line[cut:], line[:cut]
        for text, piece in ((tail, CANARY[-(len(line) - cut - len(" PATH=/bin\n")):]),
                            (head, CANARY[:cut - len("env: OPENAI_API_KEY=")])):
            redacted = redactor.redact(text)
            if len(piece) >= MIN_FRAGMENT and piece in text:
                assert piece not in redacted and mark in redacted, (cut, text)
            assert CANARY[:MIN_FRAGMENT] not in redacted and CANARY[-MIN_FRAGMENT:] not in redacted
    document = json.dumps({"stdout_tail": line[24:], "error": line[:42]})
    assert json.loads(redactor.redact_document(document)) == {
        "stdout_tail": f"{mark} PATH=/bin\n", "error": f"env: OPENAI_API_KEY={mark}"}
    assert redactor.redact("a sk-canary-7 in prose") == "a sk-canary-7 in prose"


def test_refusals_need_a_real_occurrence_not_a_shared_prefix() -> None:
    key = "sk-ant-api03-Qw9Er7Ty5Ui3Op1As2Df4Gh6Jk8Lz0XcVb"
    redactor = Redactor({"ANTHROPIC_API_KEY": key})
    assert redactor.holds('{"note":"Anthropic keys start with sk-ant-api03-"}') is None
    assert redactor.redact("keys start with sk-ant-api03-") == "keys start with sk-ant-api03-"
    assert redactor.holds(f'{{"tail":"{key[-MIN_FRAGMENT:]} exit 1"}}') == "ANTHROPIC_API_KEY"
    assert redactor.holds(f'{{"head":"token={key[:MIN_FRAGMENT]}"}}') == "ANTHROPIC_API_KEY"
    assert redactor.holds(f'{{"mid":"x{key[3:3 + MIN_FRAGMENT]}x"}}') is None
    assert redactor.holds_bytes(b"\xff\xfe" + key.encode()) == "ANTHROPIC_API_KEY"
    assert redactor.holds_bytes(b"\xff\xfe weights") is None


def test_structured_values_are_redacted_string_by_string() -> None:
    redactor = Redactor({"OPENAI_API_KEY": CANARY})
    value = {"answer": f"key {CANARY}", "n": 3, "calls": [(CANARY, 1.5, None)], CANARY: True}
    assert redactor.redact_data(value) == {
        "answer": "key [redacted:OPENAI_API_KEY]", "n": 3,
        "calls": [["[redacted:OPENAI_API_KEY]", 1.5, None]], "[redacted:OPENAI_API_KEY]": True}
    untouched = {"a": "b"}
    assert Redactor.none().redact_data(untouched) is untouched


def test_bytes_that_must_stay_verbatim_are_refused_naming_only_the_variable() -> None:
    redactor = Redactor({"HF_TOKEN": CANARY})
    redactor.refuse("a blob", b"\x00\x01 float weights")
    with pytest.raises(SecretRefused) as info:
        redactor.refuse("a blob", b"\x00" + CANARY.encode())
    assert "$HF_TOKEN" in str(info.value) and CANARY not in str(info.value)


def test_which_variables_hold_secrets() -> None:
    env = {"ANTHROPIC_API_KEY": "1", "OPENAI_API_KEY": "1", "HF_TOKEN": "1",
           "MODAL_TOKEN_SECRET": "1", "DB_PASSWORD": "1", "MY_LLM_CRED": "1",
           "KEYBOARD_LAYOUT": "1", "TOKENIZERS_PARALLELISM": "1", "PATH": "1", "SIA_HOME": "1"}
    assert secret_names(env) == {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "HF_TOKEN",
                                 "MODAL_TOKEN_SECRET", "DB_PASSWORD"}
    providers = {"openai": {"base_url": "http://x", "api_key_env": "MY_LLM_CRED"}, "local": {}}
    assert configured_key_names(providers) == {"MY_LLM_CRED"}
    redactor = redactor_from_environment(configured_key_names(providers),
                                         {"MY_LLM_CRED": CANARY, "PATH": "/usr/bin:/bin:/sbin"})
    assert redactor.names == ["MY_LLM_CRED"]


def test_open_home_redacts_configured_key_variables(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LLM_CRED", CANARY)
    plain = SqliteEventStore.open_home(tmp_path / "a")
    assert "MY_LLM_CRED" not in plain.redactor.names
    plain.close()
    store = SqliteEventStore.open_home(tmp_path / "b", secret_names=("MY_LLM_CRED",))
    assert store.blobs.get_text(store.blobs.put_text(CANARY)) == "[redacted:MY_LLM_CRED]"
    store.close()


LEAKY_HARNESS = '''"""Echoes everything it is given to every channel that gets recorded."""
import sys


def solve(sample, model):
    text = sample["question"]
    print(text)
    print(text, file=sys.stderr)
    completion = model.complete(text, max_tokens=4)
    return text + " " + (completion if isinstance(completion, str) else completion[0])
'''


def leaky_task(root: Path) -> Path:
    """wordcat whose public questions carry a pasted key, with a harness that echoes them."""
    task = root / "leaky"
    shutil.copytree(BUNDLED_ROOT / "wordcat", task)
    for split in ("train", "dev"):
        path = task / "public" / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**row, "question": f"{row['question']} key={CANARY}"})
                                + "\n" for row in rows))
    (task / "reference_harness.py").write_text(LEAKY_HARNESS)
    return task


@pytest.mark.slow
def test_a_key_in_a_real_run_reaches_no_file_under_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    task = leaky_task(tmp_path)
    env = {"OPENAI_API_KEY": CANARY, "ANTHROPIC_API_KEY": ""}
    sia(home, "run", "--task", str(task), "--mode", "H", "--max-gen", "1", "--quiet",
        "--run-id", "leaky", "--set", "sandbox=process", env=env, timeout=300)
    log = sia(home, "log", "leaky", "--json", env=env).stdout
    assert "[redacted:OPENAI_API_KEY]" in log
    assert CANARY not in log
    files = [p for p in home.rglob("*") if p.is_file()]
    with closing(sqlite3.connect(home / "sia.sqlite")) as db:
        marked = db.execute("SELECT count(*) FROM blobs WHERE instr(data, ?)",
                            (b"[redacted:OPENAI_API_KEY]",)).fetchone()[0]
    assert marked, "the trajectories were not redacted"
    assert [p for p in files if CANARY.encode() in p.read_bytes()] == []
    assert "intact" in sia(home, "verify", "leaky", env=env).stdout


def test_an_export_holding_this_homes_secret_is_refused(tmp_path: Path) -> None:
    from sia.core.events.envelope import EncodedEvent
    from sia.store.transfer import ImportRefused, export_run, import_run

    source = SqliteEventStore(tmp_path / "a" / "sia.sqlite", redactor=Redactor.none())
    source.create_run("r", [EncodedEvent("RunPaused", 1, json.dumps({"reason": CANARY}))])
    with (tmp_path / "r.jsonl").open("w", encoding="utf-8") as handle:
        export_run(source, "r", handle)
    source.close()
    target = SqliteEventStore(tmp_path / "b" / "sia.sqlite",
                              redactor=Redactor({"OPENAI_API_KEY": CANARY}))
    with pytest.raises(ImportRefused, match=r"seq 1 \(RunPaused\) holds the value of \$OPENAI_API_KEY"):
        import_run(target, tmp_path / "r.jsonl")
    assert target.list_runs() == []
    target.close()


def test_the_runtime_records_and_interprets_only_redacted_results() -> None:
    from sia.effects.base import EffectContext, EffectResult
    from sia.effects.deterministic import deterministic_registry, toy_task
    from sia.runtime.loop import Runtime
    from sia.runtime.replay import check_run
    from sia.store.memory import MemoryEventStore
    from tests.conftest import toy_config

    class Leaky:
        kind = "episode"

        def run(self, request: EpisodeRequest, ctx: EffectContext) -> EffectResult:
            if request.sample_id == "toy-03":
                raise RuntimeError(f"gateway said: bad key {CANARY[:30]}")
            result = deterministic_registry().get("episode").run(request, ctx)
            assert isinstance(result.result, EpisodeResult)
            prediction = f"{CANARY} {result.result.prediction}"
            return EffectResult(result.result.model_copy(update={"prediction": prediction}), result.usage)

    registry = deterministic_registry()
    registry.register(Leaky())
    store = MemoryEventStore(redactor=Redactor({"OPENAI_API_KEY": CANARY}))
    runtime = Runtime(store, registry, home=Path("/nonexistent"), sleep=lambda s: None)
    runtime.create(toy_config(max_generations=2), toy_task(), run_id="run")
    runtime.drive("run")
    payloads = "".join(e.payload for e in store.read("run"))
    assert "[redacted:OPENAI_API_KEY]" in payloads
    assert CANARY[:MIN_FRAGMENT] not in payloads and CANARY[-MIN_FRAGMENT:] not in payloads
    assert all(CANARY[:MIN_FRAGMENT] not in entry.result for entry in store._cache.values())
    assert check_run(store, "run").divergence is None
