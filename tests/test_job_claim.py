"""One winner per job: the claim protocol on the file store, with a controlled clock,
and across processes racing for the same claim."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from sia.train.job_claim import FileClaimStore, Heartbeat, ModalDictClaimStore, claim_job, release

pytestmark = pytest.mark.slow

JOB = "a" * 64


def test_the_first_claim_wins_and_its_retry_keeps_it(tmp_path: Path) -> None:
    store = FileClaimStore(tmp_path)
    first = claim_job(store, JOB, "fc-1", now=100.0, stale_s=60)
    assert first.won and first.generation == 0
    assert claim_job(store, JOB, "fc-1", now=130.0, stale_s=60).won  # a Modal retry of fc-1
    other = claim_job(store, JOB, "fc-2", now=130.0, stale_s=60)
    assert (other.won, other.holder, other.generation) == (False, "fc-1", 0)
    assert claim_job(store, "b" * 64, "fc-2", now=130.0, stale_s=60).won  # claims are per job


def test_a_beating_holder_keeps_the_job_and_a_silent_one_loses_it(tmp_path: Path) -> None:
    store = FileClaimStore(tmp_path)
    won = claim_job(store, JOB, "fc-1", now=100.0, stale_s=60)
    store.put(f"{won.key(JOB)}/beat", "150.0")
    assert not claim_job(store, JOB, "fc-2", now=200.0, stale_s=60).won  # beat 50 s ago
    taken = claim_job(store, JOB, "fc-2", now=211.0, stale_s=60)  # 61 s of silence
    assert (taken.won, taken.generation) == (True, 1)
    late = claim_job(store, JOB, "fc-3", now=211.0, stale_s=60)  # the takeover itself is exclusive
    assert (late.won, late.holder, late.generation) == (False, "fc-2", 1)
    assert not claim_job(store, JOB, "fc-1", now=212.0, stale_s=60).won  # the old holder is out


def test_a_released_claim_goes_to_the_next_claimant_at_once(tmp_path: Path) -> None:
    store = FileClaimStore(tmp_path)
    won = claim_job(store, JOB, "fc-1", now=100.0, stale_s=3600)
    release(store, JOB, won)
    after = claim_job(store, JOB, "fc-2", now=101.0, stale_s=3600)
    assert (after.won, after.generation) == (True, 1)


def test_the_heartbeat_beats_while_running(tmp_path: Path) -> None:
    store = FileClaimStore(tmp_path)
    clock = iter(range(1000, 2000))
    with Heartbeat(store, f"{JOB}/0", beat_s=0.01, now=lambda: float(next(clock))):
        time.sleep(0.2)
    beat = float(store.get(f"{JOB}/0/beat") or 0)
    assert beat > 1002.0  # several beats, not just the first


def _race(root: str, owner: str, start: float, results: multiprocessing.Queue) -> None:
    while time.time() < start:
        pass
    results.put((owner, claim_job(FileClaimStore(Path(root)), JOB, owner, now=time.time(), stale_s=600).won))


def test_processes_racing_for_one_claim_get_one_winner(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    start = time.time() + 2.0
    workers = [context.Process(target=_race, args=(str(tmp_path), f"fc-{i}", start, results)) for i in range(6)]
    for worker in workers:
        worker.start()
    outcomes = dict(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(outcomes.values()) == [False] * 5 + [True]
    winner = next(owner for owner, won in outcomes.items() if won)
    assert (store_value := FileClaimStore(tmp_path).get(f"{JOB}/0")) is not None
    assert store_value.startswith(f"{winner} ")


def _modal_credentials() -> bool:
    from sia.train.modal_app import modal_credentials_present

    return modal_credentials_present()


@pytest.mark.skipif(not _modal_credentials(), reason="no Modal credentials: the modal.Dict claim is not exercised")
def test_modal_dict_put_if_absent_has_one_winner() -> None:  # pragma: no cover - needs a Modal account
    import modal

    with modal.Dict.ephemeral() as mapping:
        store = ModalDictClaimStore(mapping)
        assert [store.put_if_absent("job/0", f"fc-{i} 1.0") for i in range(3)] == [True, False, False]
        assert store.get("job/0") == "fc-0 1.0" and store.get("job/1") is None
        won = claim_job(store, "job", "fc-1", now=1000.0, stale_s=60)  # fc-0 never beat: stale
        assert (won.won, won.generation) == (True, 1)
