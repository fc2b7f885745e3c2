"""The Modal trainer: a real `modal.App`, its function body run locally with `.local()`.

Nothing here talks to Modal unless credentials are present (then one test deploys
nothing, but runs the function remotely in an ephemeral app).
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import modal
import pytest

from sia.train import modal_app
from sia.train.gpu_plan import GPU_COUNTS
from sia.train.job import JobError, adapter_hash, load_manifest
from sia.train.job_claim import FileClaimStore
from sia.train.modal_app import (
    FUNCTIONS,
    HUB_ALLOW,
    HUB_IGNORE,
    ModalCredentialsMissing,
    ModalTrainer,
    adapter_inputs,
    choose_function,
    modal_credentials_present,
    pinned_revision,
    train,
    train_body,
)
from sia.train.spec import TrainingSpec
from tests.test_gpu_plan import GPT_OSS_20B, GPT_OSS_120B
from tests.test_train_job import PARAMS, make_fixture, make_spec


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_fixture(tmp_path_factory.mktemp("modal-fixture"))


@pytest.fixture
def volume_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "vol"
    monkeypatch.setenv("SIA_MODAL_VOLUME_ROOT", str(root))
    return root


def _local(spec_json: str, inputs: dict) -> dict:
    with warnings.catch_warnings():  # "executing locally ... no access to the mounted Volume"
        warnings.simplefilter("ignore")
        return train.local(spec_json, inputs)


def test_the_app_is_real_modal_code() -> None:
    assert isinstance(modal_app.app, modal.App) and modal_app.app.name == "sia-train"
    assert isinstance(train, modal.Function)
    spec = train._spec_  # what @app.function recorded (private, but the only local view)
    assert spec.gpus == "H100" and list(spec.volumes) == ["/vol"]
    assert isinstance(modal_app.volume, modal.Volume)
    assert any(p.startswith("torch==2.13.0") for p in modal_app.PINNED)
    import peft
    import transformers
    import trl
    for name, module in (("transformers", transformers), ("peft", peft), ("trl", trl)):
        assert f"{name}=={module.__version__}" in modal_app.PINNED, f"image pin of {name} is stale"


def test_train_body_runs_locally_and_the_volume_is_the_source_of_truth(
        fx: dict, volume_root: Path) -> None:
    spec = make_spec(fx)
    inputs = {"rollouts_jsonl": fx["data"].read_text(), "model_dir": str(fx["model"].path)}
    result = _local(spec.to_json(), inputs)
    job_dir = volume_root / "jobs" / spec.job_id
    manifest = load_manifest(job_dir, verify=True)
    assert manifest is not None and result == manifest.model_dump(mode="json")
    assert result["job_id"] == spec.job_id and result["metrics"]["steps"] == 8.0

    # a retried or duplicate call returns the recorded manifest without training
    mtime = (job_dir / "DONE").stat().st_mtime_ns
    assert _local(spec.to_json(), {}) == result
    assert (job_dir / "DONE").stat().st_mtime_ns == mtime
    assert len((job_dir / "attempts").read_text().split()) == 1

    # the next job starts from that adapter, named by its job on the volume or sent inline
    follow = make_spec(fx, initial_adapter_hash=result["adapter_hash"], seed=8)
    chained = _local(follow.to_json(), {**inputs, "init_adapter_job": spec.job_id})
    assert chained["spec"]["initial_adapter_hash"] == result["adapter_hash"]
    assert chained["adapter_hash"] != result["adapter_hash"]
    inline = make_spec(fx, initial_adapter_hash=result["adapter_hash"], seed=9)
    out = _local(inline.to_json(), {**inputs, "init_adapter_files": adapter_inputs(job_dir / "adapter")})
    assert adapter_hash(volume_root / "jobs" / inline.job_id / "init-adapter") == result["adapter_hash"]
    assert out["job_id"] == inline.job_id


def test_train_body_refuses_data_that_is_not_the_specs(fx: dict, volume_root: Path) -> None:
    spec = make_spec(fx)
    with pytest.raises(Exception, match="hashes to"):
        _local(spec.to_json(), {"rollouts_jsonl": "{}\n", "model_dir": str(fx["model"].path)})
    with pytest.raises(Exception, match="no data"):
        _local(spec.to_json(), {"model_dir": str(fx["model"].path)})


def test_there_is_a_function_for_every_planned_gpu_count() -> None:
    assert tuple(FUNCTIONS) == GPU_COUNTS
    for gpus, function in FUNCTIONS.items():
        assert function._spec_.gpus == ("H100" if gpus == 1 else f"H100:{gpus}")
        assert list(function._spec_.volumes) == ["/vol"]
    assert choose_function(GPT_OSS_20B, lora_rank=32)[0] == "train"
    name, plan = choose_function(GPT_OSS_120B, lora_rank=32)
    assert name == FUNCTIONS[8]._tag_ == "train_h100x8" and plan is not None and plan.gpus == 8
    assert choose_function(None, lora_rank=32) == ("train", None)


class RecordingClaims(FileClaimStore):
    """The local claim store, noting every put-if-absent outcome."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.outcomes: list[tuple[str, bool]] = []

    def put_if_absent(self, key: str, value: str) -> bool:
        won = super().put_if_absent(key, value)
        self.outcomes.append((value.split()[0], won))
        return won


def test_concurrent_calls_for_one_job_train_once(fx: dict, volume_root: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIA_MODAL_WAIT_POLL_S", "0.05")
    spec = make_spec(fx)
    inputs = {"rollouts_jsonl": fx["data"].read_text(), "model_dir": str(fx["model"].path)}
    claims = RecordingClaims(volume_root / "claims")
    start = threading.Barrier(3)
    results: dict[int, dict] = {}

    def call(i: int) -> None:
        start.wait()
        results[i] = train_body(spec.to_json(), inputs, claims=claims, owner=f"fc-{i}")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    job_dir = volume_root / "jobs" / spec.job_id
    manifest = load_manifest(job_dir, verify=True)
    assert manifest is not None and len(results) == 3
    assert all(result == manifest.model_dump(mode="json") for result in results.values())
    winners = [owner for owner, won in claims.outcomes if won]
    losers = {owner for owner, won in claims.outcomes if not won}
    assert len(winners) == 1 and losers == {"fc-0", "fc-1", "fc-2"} - set(winners)  # all contended, one won
    assert len((job_dir / "attempts").read_text().split()) == 1  # trained once
    assert {json.loads(line)["attempt"] for line in (job_dir / "metrics.jsonl").read_text().splitlines()} == {1}


def test_a_dead_winners_job_is_taken_over(fx: dict, volume_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIA_MODAL_CLAIM_STALE_S", "60")
    spec = make_spec(fx)
    claims = FileClaimStore(volume_root / "claims")
    assert claims.put_if_absent(f"{spec.job_id}/0", f"fc-dead {time.time() - 3600}")  # an hour silent
    inputs = {"rollouts_jsonl": fx["data"].read_text(), "model_dir": str(fx["model"].path)}
    result = train_body(spec.to_json(), inputs, owner="fc-new")
    assert result["job_id"] == spec.job_id
    assert claims.get(f"{spec.job_id}/1").startswith("fc-new ")


def test_a_failed_winner_hands_the_job_on_at_once(fx: dict, volume_root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIA_MODAL_CLAIM_STALE_S", "3600")
    spec = make_spec(fx)
    with pytest.raises(JobError, match="no data"):
        train_body(spec.to_json(), {"model_dir": str(fx["model"].path)}, owner="fc-1")
    inputs = {"rollouts_jsonl": fx["data"].read_text(), "model_dir": str(fx["model"].path)}
    assert train_body(spec.to_json(), inputs, owner="fc-2")["job_id"] == spec.job_id


def test_the_chosen_plan_is_recorded_with_the_job(fx: dict, volume_root: Path) -> None:
    spec = make_spec(fx)
    config = json.loads((Path(fx["model"].path) / "config.json").read_text())
    _, plan = choose_function(config, lora_rank=spec.lora.rank)
    assert plan is not None
    inputs = {"rollouts_jsonl": fx["data"].read_text(), "model_dir": str(fx["model"].path),
              "gpu_plan": plan.to_dict()}
    _local(spec.to_json(), inputs)
    recorded = json.loads((volume_root / "jobs" / spec.job_id / "gpu_plan.json").read_text())
    assert recorded == plan.to_dict() and recorded["gpus"] == 1


# The files of the hub repositories (huggingface.co/openai/gpt-oss-20b and -120b).
_GPT_OSS_COMMON = ["LICENSE", "README.md", "USAGE_POLICY", "chat_template.jinja", "config.json",
                   "generation_config.json", "model.safetensors.index.json", "special_tokens_map.json",
                   "tokenizer.json", "tokenizer_config.json", "metal/model.bin", "original/config.json",
                   "original/dtypes.json"]
GPT_OSS_20B_FILES = _GPT_OSS_COMMON + [f"model-0000{i}-of-00002.safetensors" for i in range(3)] + [
    "original/model.safetensors"]
GPT_OSS_120B_FILES = _GPT_OSS_COMMON + [f"model-{i:05d}-of-00014.safetensors" for i in range(15)] + [
    f"original/model--{i:05d}-of-00007.safetensors" for i in range(1, 8)]


@pytest.mark.parametrize("files, shards", [(GPT_OSS_20B_FILES, 3), (GPT_OSS_120B_FILES, 15)])
def test_only_the_files_training_loads_are_downloaded(files: list[str], shards: int) -> None:
    from huggingface_hub.utils import filter_repo_objects  # what snapshot_download filters with

    selected = set(filter_repo_objects(files, allow_patterns=list(HUB_ALLOW), ignore_patterns=list(HUB_IGNORE)))
    assert {f for f in selected if f.endswith(".safetensors")} == {f for f in files if f.startswith("model-")}
    assert len([f for f in selected if f.endswith(".safetensors")]) == shards
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"} <= selected
    assert not any(f.startswith(("original/", "metal/")) for f in selected)
    assert not selected & {"LICENSE", "README.md", "USAGE_POLICY"}


def test_a_hub_model_must_be_pinned_to_a_commit(fx: dict, volume_root: Path) -> None:
    spec = make_spec(fx, base_model_id="openai/gpt-oss-20b")
    inputs = {"rollouts_jsonl": fx["data"].read_text()}
    with pytest.raises(JobError, match="revision pinned to a 40-hex commit sha \\(got None\\)"):
        _local(spec.to_json(), inputs)
    with pytest.raises(JobError, match="got 'main'"):
        _local(spec.to_json(), {**inputs, "model_revision": "main"})
    assert pinned_revision("openai/gpt-oss-20b", "a" * 40) == "a" * 40


def test_the_client_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        monkeypatch.delenv(key, raising=False)
    if modal_credentials_present():
        pytest.skip("a Modal token is configured in ~/.modal.toml")
    trainer = ModalTrainer()
    with pytest.raises(ModalCredentialsMissing, match="MODAL_TOKEN_ID"):
        trainer.submit(TrainingSpec(algorithm="grpo", base_model_id="m", base_model_hash="0" * 64,
                                    data_hash="0" * 64), {})
    with pytest.raises(ModalCredentialsMissing):
        trainer.attach("fc-0000")


@pytest.mark.skipif(not modal_credentials_present(),
                    reason="no Modal credentials (MODAL_TOKEN_ID/MODAL_TOKEN_SECRET or ~/.modal.toml): "
                           "the remote H100 run is not exercised")
def test_real_modal_run(fx: dict) -> None:  # pragma: no cover - needs a Modal account
    spec = make_spec(fx, precision="bf16")
    model_rel = f"models/{fx['model'].model_hash}"
    with modal_app.volume.batch_upload(force=True) as batch:
        batch.put_directory(str(fx["model"].path), model_rel)
    with modal.enable_output(), modal_app.app.run():
        call = train.spawn(spec.to_json(), {"rollouts_jsonl": fx["data"].read_text(), "model_dir": model_rel})
        result = modal.FunctionCall.from_id(call.object_id).get(timeout=3600)
        again = train.remote(spec.to_json(), {})
    assert result["job_id"] == spec.job_id and again == result
    manifest = ModalTrainer().manifest_from_volume(spec.job_id)
    assert manifest is not None and manifest.model_dump(mode="json") == result
    assert json.dumps(result)  # plain JSON: recordable in an event
    assert PARAMS["epochs"] == 2
