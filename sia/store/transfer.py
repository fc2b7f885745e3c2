"""Moving runs between stores as JSONL: `sia export` / `sia import`.

An export holds the whole history of a run (its ancestors' prefixes included, each row
under the run that recorded it), the run records of its lineage, and every blob its
events reference, then a trailer with counts. Import verifies all of it — every hash,
link and seq, every blob's sha256, the trailer — before it writes anything, and writes
runs and events in one transaction: a truncated or altered file changes nothing. The
importing store then gives the rows MACs and heads under its own key (the exporting
home's key never travels). A file holding one of this environment's secrets is refused:
its rows and blobs are named by their hashes, so they cannot be redacted, only kept out.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from sia.core.events.canonical import GENESIS_HASH, canonical_json, sha256_hex
from sia.core.events.envelope import StoredEvent, hash_is_valid
from sia.store.base import EventStore, RunRecord, UnknownRun

FORMAT = "sia-export"
VERSION = 1
_SHA = re.compile(r"^[0-9a-f]{64}$")


class ImportRefused(ValueError):
    """The file is not a complete, untampered sia export; nothing was imported."""


def blob_refs(payload: Any) -> Iterator[str]:
    """sha256 values under keys ending in `_hash`: the blobs an event points at."""
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key.endswith("_hash") and isinstance(value, str) and _SHA.match(value):
                yield value
            else:
                yield from blob_refs(value)
    elif isinstance(payload, list):
        for item in payload:
            yield from blob_refs(item)


def export_run(store: EventStore, run_id: str, out: TextIO) -> dict[str, int]:
    store.verify(run_id)
    chain = list(reversed(store.chain(run_id)))
    events = list(store.read(run_id))
    blobs: list[str] = []
    seen: set[str] = set()
    for event in events:
        for sha in blob_refs(json.loads(event.payload)):
            if sha not in seen and store.blobs.has(sha):
                seen.add(sha)
                blobs.append(sha)
    owners = {e.run_id for e in events}
    runs = [asdict(r) for r in chain if r.run_id in owners or r.run_id == run_id]
    _write(out, {"kind": "header", "format": FORMAT, "version": VERSION, "run_id": run_id,
                 "runs": runs})
    for event in events:
        _write(out, {"kind": "event", **asdict(event)})
    for sha in blobs:
        _write(out, {"kind": "blob", "sha256": sha,
                     "data": base64.b64encode(store.blobs.get(sha)).decode("ascii")})
    _write(out, {"kind": "end", "events": len(events), "blobs": len(blobs),
                 "last_hash": events[-1].hash if events else GENESIS_HASH})
    return {"events": len(events), "blobs": len(blobs)}


def _write(out: TextIO, record: dict[str, Any]) -> None:
    out.write(canonical_json(record) + "\n")


def import_run(store: EventStore, path: Path) -> str:
    """Verify an export completely, then add its runs, events and blobs; returns the run id."""
    header, events, blobs, trailer = _parse(_lines(path))
    run_id: str = header["run_id"]
    runs = [RunRecord(**r) for r in header["runs"]]
    if not runs or runs[-1].run_id != run_id:
        raise ImportRefused(f"{path}: lineage in the header does not end at {run_id}")
    _verify_chain(path, events)
    if trailer["events"] != len(events) or trailer["blobs"] != len(blobs):
        raise ImportRefused(f"{path}: trailer counts ({trailer['events']} events, "
                            f"{trailer['blobs']} blobs) do not match the file")
    if events and trailer["last_hash"] != events[-1].hash:
        raise ImportRefused(f"{path}: trailer's last hash does not match the last event")
    _refuse_secrets(store, path, events, blobs)
    new_runs, new_events = _new_rows(store, path, runs, events)
    for data in blobs.values():
        store.blobs.put(data)
    if new_runs:
        store.import_events(new_runs, new_events)
    return run_id


def _lines(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ImportRefused(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                raise ImportRefused(f"{path}: line {number} is cut off (truncated file)")
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ImportRefused(f"{path}: line {number} is not JSON ({exc.msg})") from None


def _parse(lines: Iterable[tuple[int, dict[str, Any]]]) -> tuple[
        dict[str, Any], list[StoredEvent], dict[str, bytes], dict[str, Any]]:
    header: dict[str, Any] | None = None
    trailer: dict[str, Any] | None = None
    events: list[StoredEvent] = []
    blobs: dict[str, bytes] = {}
    for number, record in lines:
        kind = record.get("kind") if isinstance(record, dict) else None
        if trailer is not None:
            raise ImportRefused(f"line {number}: data after the end marker")
        if header is None:
            if kind != "header" or record.get("format") != FORMAT:
                raise ImportRefused("not a sia export (no header line)")
            if record.get("version") != VERSION:
                raise ImportRefused(f"export format version {record.get('version')} is not {VERSION}")
            header = record
        elif kind == "event":
            fields = {k: v for k, v in record.items() if k != "kind"}
            try:
                events.append(StoredEvent(**fields))
            except TypeError as exc:
                raise ImportRefused(f"line {number}: malformed event ({exc})") from None
        elif kind == "blob":
            data = base64.b64decode(record.get("data", ""))
            if sha256_hex(data) != record.get("sha256"):
                raise ImportRefused(f"line {number}: blob {record.get('sha256')} does not match its hash")
            blobs[record["sha256"]] = data
        elif kind == "end":
            trailer = record
        else:
            raise ImportRefused(f"line {number}: unknown record kind {kind!r}")
    if header is None:
        raise ImportRefused("empty file: not a sia export")
    if trailer is None:
        raise ImportRefused("no end marker: the export is truncated")
    return header, events, blobs, trailer


def _verify_chain(path: Path, events: list[StoredEvent]) -> None:
    prev = GENESIS_HASH
    for expected_seq, event in enumerate(events, start=1):
        if event.seq != expected_seq:
            raise ImportRefused(f"{path}: seq {expected_seq} is missing (found {event.seq})")
        if event.prev_hash != prev or not hash_is_valid(event):
            raise ImportRefused(f"{path}: event seq {event.seq} ({event.type}) was altered")
        prev = event.hash


def _refuse_secrets(store: EventStore, path: Path, events: list[StoredEvent],
                    blobs: dict[str, bytes]) -> None:
    for event in events:
        name = store.redactor.holds(event.payload)
        if name is not None:
            raise ImportRefused(f"{path}: event seq {event.seq} ({event.type}) holds the value "
                                f"of ${name}; a secret is never recorded")
    for sha, data in blobs.items():
        name = store.redactor.holds_bytes(data)
        if name is not None:
            raise ImportRefused(f"{path}: blob {sha} holds the value of ${name}; a secret is "
                                "never recorded")


def _new_rows(store: EventStore, path: Path, runs: list[RunRecord],
              events: list[StoredEvent]) -> tuple[list[RunRecord], list[StoredEvent]]:
    """Runs the store lacks; runs it has must hold exactly the exported events."""
    known: set[str] = set()
    for run in runs:
        try:
            store.get_run(run.run_id)
        except UnknownRun:
            continue
        known.add(run.run_id)
    for event in events:
        if event.run_id in known:
            mine = store.event_at(event.run_id, event.seq)
            if mine is None or mine.hash != event.hash:
                raise ImportRefused(f"{path}: run {event.run_id} exists here with a different "
                                    f"history (seq {event.seq} differs)")
    new_runs = [r for r in runs if r.run_id not in known]
    new_ids = {r.run_id for r in new_runs}
    return new_runs, [e for e in events if e.run_id in new_ids]
