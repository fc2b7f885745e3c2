"""Training jobs: spec identity, the job directory contract, and the subprocess trainer.

Real peft/torch training on the tiny embedded model (no pretraining, rank-4 LoRA, 8
GRPO steps), real child processes, a real `kill -9`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sia.core.events.canonical import content_hash
from sia.train.job import (
    JobError,
    acquire_job_lock,
    adapter_hash,
    canonical_adapter_config,
    load_adapter,
    load_manifest,
    run_job,
    store_adapter,
)
from sia.train.local import LocalTrainer, TrainingFailed
from sia.train.spec import LoraShape, TrainingSpec, data_hash

pytestmark = pytest.mark.slow

CORPUS = [
    "question : what is one plus one ? answer : two",
    "question : what is two plus two ? answer : four",
    "question : what is one plus two ? answer : three",
    "question : what is two plus one ? answer : three",
]
PARAMS = {"epochs": 2, "batch_size": 4, "checkpoint_every": 1}  # 16 rollouts → 8 steps


def make_fixture(root: Path) -> dict:
    from sia.train.rollouts import Rollout, write_rollouts
    from sia.train.tiny import build_tiny_model, build_tokenizer

    model = build_tiny_model(CORPUS, seed=0, root=root / "models", pretrain_steps=0)
    tokenizer = build_tokenizer(CORPUS)
    rollouts = []
    for i, line in enumerate(CORPUS):
        question, answer = line.split(" answer : ")
        prompt = tokenizer(question + " answer :")["input_ids"]
        for guess in ("two", "three", "four", "one"):
            rollouts.append(Rollout(prompt_ids=prompt,
                                    completion_ids=tokenizer(guess)["input_ids"] + [tokenizer.eos_token_id],
                                    reward=1.0 if guess == answer else 0.0, group=f"q{i}"))
    data = root / "rollouts.jsonl"
    write_rollouts(data, rollouts)
    return {"model": model, "data": data}


def make_spec(fx: dict, **changes: object) -> TrainingSpec:
    fields = dict(algorithm="grpo", params=PARAMS, base_model_id=fx["model"].model_id,
                  base_model_hash=fx["model"].model_hash, lora=LoraShape(rank=4, alpha=8),
                  data_hash=data_hash(fx["data"]), seed=7, precision="fp32")
    return TrainingSpec(**{**fields, **changes})  # type: ignore[arg-type]


def inputs_for(fx: dict, init: Path | None = None) -> dict:
    return {"model_dir": str(fx["model"].path), "init_adapter_dir": str(init) if init else None,
            "data_path": str(fx["data"])}


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_fixture(tmp_path_factory.mktemp("train-fixture"))


@pytest.fixture(scope="module")
def reference(fx: dict, tmp_path_factory: pytest.TempPathFactory):
    """The spec trained once in this process, uninterrupted: what every other run must match."""
    job_dir = tmp_path_factory.mktemp("reference") / "job"
    manifest = run_job(make_spec(fx), job_dir=job_dir, model_dir=fx["model"].path,
                       init_adapter_dir=None, data_path=fx["data"])
    return manifest, job_dir


# ----------------------------------------------------------------------------- spec


def test_job_id_is_the_content_hash_of_the_spec(fx: dict) -> None:
    spec = make_spec(fx)
    assert spec.job_id == content_hash(spec.model_dump(mode="json"))
    assert TrainingSpec.from_json(spec.to_json()) == spec
    assert TrainingSpec.from_json(spec.to_json()).job_id == spec.job_id
    assert make_spec(fx, seed=8).job_id != spec.job_id
    assert make_spec(fx, params={**PARAMS, "lr": 1e-3}).job_id != spec.job_id
    # a module list is a set: its order does not change the job
    a = make_spec(fx, lora=LoraShape(target_modules=["v_proj", "q_proj"]))
    b = make_spec(fx, lora=LoraShape(target_modules=("q_proj", "v_proj")))
    assert a.job_id == b.job_id
    with pytest.raises(ValueError):
        make_spec(fx, params={"lr": float("nan")})
    with pytest.raises(ValueError):
        make_spec(fx, precision="fp16")


def test_adapter_config_is_canonical() -> None:
    one = canonical_adapter_config({"target_modules": ["v", "q", "k"], "base_model_name_or_path": "/tmp/x1",
                                    "r": 4}, "tiny")
    two = canonical_adapter_config({"r": 4, "base_model_name_or_path": "/other/x2",
                                    "target_modules": ["k", "v", "q"]}, "tiny")
    assert one == two == {"target_modules": ["k", "q", "v"], "base_model_name_or_path": "tiny", "r": 4}


# ----------------------------------------------------------------------------- run_job


def test_run_job_writes_the_job_directory_contract(fx: dict, reference) -> None:
    manifest, job_dir = reference
    assert (job_dir / "DONE").read_text().strip() == content_hash(manifest.model_dump(mode="json"))
    assert load_manifest(job_dir, verify=True) == manifest
    assert manifest.job_id == make_spec(fx).job_id
    assert set(manifest.files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert manifest.adapter_hash == adapter_hash(job_dir / "adapter") == content_hash(manifest.files)
    assert manifest.config_hash == manifest.files["adapter_config.json"]
    assert manifest.metrics["steps"] == 8.0
    lines = (job_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8 and '"step":8' in lines[-1].replace(" ", "")
    assert not list(job_dir.glob(".*tmp*")) and not (job_dir / ".adapter-staging").exists()
    # a second call is answered from DONE
    again = run_job(make_spec(fx), job_dir=job_dir, model_dir=fx["model"].path,
                    init_adapter_dir=None, data_path=Path("/nonexistent"))
    assert again == manifest


def test_adapter_round_trips_through_the_blob_store(tmp_path: Path, reference) -> None:
    from sia.store.blobs import FileBlobStore

    manifest, job_dir = reference
    blobs = FileBlobStore(tmp_path / "blobs")
    assert store_adapter(blobs, job_dir / "adapter") == manifest.adapter_hash
    out = load_adapter(blobs, manifest.adapter_hash, tmp_path / "restored")
    assert adapter_hash(out) == manifest.adapter_hash


def test_run_job_refuses_inputs_that_do_not_match_the_spec(fx: dict, tmp_path: Path) -> None:
    wrong = tmp_path / "other.jsonl"
    wrong.write_text(fx["data"].read_text() + "\n")
    with pytest.raises(JobError, match="hashes to"):
        run_job(make_spec(fx), job_dir=tmp_path / "j", model_dir=fx["model"].path,
                init_adapter_dir=None, data_path=wrong)
    with pytest.raises(JobError, match="initial_adapter_hash"):
        run_job(make_spec(fx), job_dir=tmp_path / "j", model_dir=fx["model"].path,
                init_adapter_dir=tmp_path, data_path=fx["data"])
    with pytest.raises(JobError, match="created for job"):
        run_job(make_spec(fx, seed=99), job_dir=tmp_path / "j", model_dir=fx["model"].path,
                init_adapter_dir=None, data_path=fx["data"])


# ----------------------------------------------------------------------------- LocalTrainer


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lock_held(job_dir: Path) -> bool:
    fd = acquire_job_lock(job_dir)
    if fd is None:
        return True
    os.close(fd)
    return False


def _attempt_pids(job_dir: Path) -> list[int]:
    return [int(x) for x in (job_dir / "attempts").read_text().split()]


def test_two_job_dirs_give_byte_identical_adapters_and_a_repeat_does_not_train(
        fx: dict, tmp_path: Path, reference) -> None:
    spec = make_spec(fx)
    one, two = LocalTrainer(tmp_path / "a"), LocalTrainer(tmp_path / "b")
    handles = [one.submit(spec, inputs_for(fx)), two.submit(spec, inputs_for(fx))]  # run side by side
    assert all(h.started for h in handles)
    seen: list[dict] = []
    manifests = [one.wait(handles[0], seen.append), two.wait(handles[1])]
    assert [e["step"] for e in seen] == list(range(1, 9))
    dirs = [h.job_dir for h in handles]
    assert dirs[0] != dirs[1]
    weights = [(d / "adapter" / "adapter_model.safetensors").read_bytes() for d in dirs]
    configs = [(d / "adapter" / "adapter_config.json").read_bytes() for d in dirs]
    assert weights[0] == weights[1] and configs[0] == configs[1]
    assert manifests[0] == manifests[1] == reference[0]  # subprocess == in-process, too

    # the same spec again: answered from DONE, nothing trains, nothing is rewritten
    adapter = dirs[0] / "adapter" / "adapter_model.safetensors"
    before = (adapter.stat().st_mtime_ns, _attempt_pids(dirs[0]))
    again = one.submit(spec, inputs_for(fx))
    assert again.done and not again.started and again.pid is None
    assert one.wait(again) == manifests[0]
    assert one.attach(spec.job_id).manifest == manifests[0]
    assert (adapter.stat().st_mtime_ns, _attempt_pids(dirs[0])) == before
    assert len(before[1]) == 1

    # inside an effect: the first attempt reports TrainingJobSubmitted, a resumed one re-attaches
    from sia.effects.base import EffectContext
    from sia.store.blobs import MemoryBlobStore

    reported: list = []
    ctx = EffectContext(run_id="r", effect_id="e1", kind="train", seed=0, attempt=1,
                        blobs=MemoryBlobStore(), home=tmp_path, report=reported.append)
    assert one.run_effect(spec, inputs_for(fx), ctx) == manifests[0]
    assert [(e.type, e.job_id, e.backend, e.call_id) for e in reported] == [
        ("TrainingJobSubmitted", spec.job_id, "local", spec.job_id)]
    ctx.call_id = reported[0].call_id
    assert one.run_effect(spec, inputs_for(fx), ctx) == manifests[0] and len(reported) == 1
    assert (adapter.stat().st_mtime_ns, _attempt_pids(dirs[0])) == before


DRIVER = """
import json, sys, time
from pathlib import Path
from sia.train.local import LocalTrainer
from sia.train.spec import TrainingSpec
trainer = LocalTrainer(Path(sys.argv[1]), env={"SIA_TRAIN_STEP_DELAY": "0.7"})
handle = trainer.submit(TrainingSpec.from_json(Path(sys.argv[2]).read_text()), json.loads(sys.argv[3]))
print(handle.pid, flush=True)
time.sleep(600)
"""


def test_kill_9_of_driver_and_child_resumes_from_the_checkpoint_and_never_runs_twice(
        fx: dict, tmp_path: Path, reference) -> None:
    import subprocess
    import sys

    spec = make_spec(fx)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    # a driver process submits the job, then dies by kill -9: the job must not notice
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), str(spec_file),
                               json.dumps(inputs_for(fx))], stdout=subprocess.PIPE, text=True)
    child_pid = int(driver.stdout.readline())
    trainer = LocalTrainer(tmp_path)
    job_dir = trainer.job_dir(spec.job_id)
    metrics = job_dir / "metrics.jsonl"
    steps = lambda: len(metrics.read_text().splitlines()) if metrics.is_file() else 0  # noqa: E731
    _wait_for(lambda: steps() >= 1, what="the first training step")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    driver.stdout.close()
    _wait_for(lambda: steps() >= 3, what="training to go on after its driver died")
    assert list((job_dir / "checkpoint").rglob("pg_state.pt")), "no checkpoint after step 2"

    # a new driver re-attaches; while it runs every submit re-attaches: never a second process
    first = trainer.attach(spec.job_id)
    assert first is not None and first.pid == child_pid and not first.started
    attached = []
    threads = [threading.Thread(target=lambda: attached.append(trainer.submit(spec, inputs_for(fx))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(h.started, h.pid) for h in attached] == [(False, child_pid)] * 3
    assert _lock_held(job_dir) and _attempt_pids(job_dir) == [child_pid]

    os.kill(child_pid, signal.SIGKILL)
    _wait_for(lambda: not _lock_held(job_dir), what="the kernel to drop the dead child's lock")
    assert load_manifest(job_dir) is None
    assert trainer.attach(spec.job_id) is None  # not running, not done: submit again
    with pytest.raises(TrainingFailed, match="was killed or exited without finishing"):
        trainer.wait(first)

    second = trainer.submit(spec, inputs_for(fx))
    assert second.started and second.pid != child_pid
    assert _lock_held(job_dir)  # held by the new child for its whole run
    manifest = trainer.wait(second)
    assert _attempt_pids(job_dir) == [child_pid, second.pid]

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    killed = [r["step"] for r in records if r["attempt"] == 1]
    resumed = [r["step"] for r in records if r["attempt"] == 2]
    assert resumed[0] > 1, "the second attempt started from scratch instead of the checkpoint"
    assert resumed[0] <= killed[-1] + 1 and resumed[-1] == 8
    # resuming is exact: the same adapter as the uninterrupted run
    assert manifest == reference[0]


def test_a_child_that_fails_reports_its_stderr(fx: dict, tmp_path: Path) -> None:
    trainer = LocalTrainer(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    handle = trainer.submit(make_spec(fx), {**inputs_for(fx), "data_path": str(bad)})
    with pytest.raises(TrainingFailed) as info:
        trainer.wait(handle, timeout=60)
    assert info.value.returncode == 2
    assert "hashes to" in str(info.value) and "exited with status 2" in str(info.value)
    assert trainer.attach("0" * 64) is None
    with pytest.raises(JobError, match="not a job id"):
        trainer.attach("../etc")
