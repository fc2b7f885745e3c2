"""The Modal trainer: a real `modal.App`, its function body run locally with `.local()`.

Nothing here talks to Modal unless credentials are present (then one test deploys
nothing, but runs the function remotely in an ephemeral app).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import modal
import pytest

from sia.train import modal_app
from sia.train.job import adapter_hash, load_manifest
from sia.train.modal_app import ModalCredentialsMissing, ModalTrainer, adapter_inputs, modal_credentials_present, train
from sia.train.spec import TrainingSpec
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
