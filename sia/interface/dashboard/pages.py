"""Read models of the dashboard's pages: pure functions from folded state, run records
and stored events to JSON-ready dicts. No store, no HTTP: the app reads, these shape."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from sia.core.decide import episode_ids
from sia.core.events.envelope import StoredEvent
from sia.core.events.types import EVENT_CLASSES
from sia.core.reducers.state import Episode, LoopState, to_jsonable
from sia.interface.views import audit_rows, branch_spend, generation_rows, run_row, show
from sia.store.base import RunRecord

STDERR_TAIL = 40
"""Lines of a harness's stderr the episode viewer shows (the end is where errors are)."""


class EpisodeRef(NamedTuple):
    """Where an episode was recorded, for links from the decisions that cite it."""

    seq: int
    generation: int
    sample_id: str
    status: str


def runs_row(record: RunRecord, state: LoopState) -> dict[str, Any]:
    spend = state.ledger.total
    return {**run_row(record.run_id, state), "created_at": record.created_at,
            "mode": state.config.mode if state.config else None,
            "spend": {"dollars": round(spend.dollars, 6), "tokens": spend.tokens,
                      "gpu_s": round(spend.gpu_s, 3)}}


def lineage(records: Sequence[RunRecord], run_id: str) -> dict[str, Any]:
    """The tree of runs that share `run_id`'s root, and the path from the root to it."""
    by_id = {r.run_id: r for r in records}
    path = [run_id]
    while (parent := by_id[path[-1]].parent_run_id) is not None and parent in by_id:
        path.append(parent)
    path.reverse()
    children: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.parent_run_id is not None:
            children.setdefault(record.parent_run_id, []).append(record)

    def node(record: RunRecord) -> dict[str, Any]:
        return {"run_id": record.run_id, "fork_seq": record.fork_seq,
                "on_path": record.run_id in path,
                "children": [node(c) for c in children.get(record.run_id, [])]}

    return {"root": node(by_id[path[0]]), "path": path}


def family_ids(tree: dict[str, Any]) -> list[str]:
    """Every run of a lineage tree, parents before their forks."""
    ids, stack = [], [tree["root"]]
    while stack:
        node = stack.pop(0)
        ids.append(node["run_id"])
        stack.extend(node["children"])
    return ids


def decision_cards(state: LoopState, refused: dict[int, list[dict[str, Any]]] | None,
                   episodes: Mapping[str, EpisodeRef] | None = None,
                   investigations: dict[int, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Each Feedback decision with its evidence (episodes named by sample when `episodes`
    knows them), refused answers and the investigation behind it (None: not read yet)
    and outcome."""
    episodes = episodes or {}
    cards = []
    for row in audit_rows(state):
        row["evidence"]["episodes"] = [
            {"episode_id": e, "sample_id": episodes[e].sample_id if e in episodes else None,
             "status": episodes[e].status if e in episodes else None}
            for e in row["evidence"]["episodes"]]
        row["refused_answers"] = None if refused is None else refused.get(row["generation"], [])
        row["investigation"] = None if refused is None else (investigations or {}).get(row["generation"], [])
        cards.append(row)
    return cards


def run_page(run_id: str, state: LoopState, tree: dict[str, Any],
             branches: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the run page paints first: summary, chart, lineage, ledger, generations."""
    view = show(state)
    return {
        "run_id": run_id,
        "summary": {k: view[k] for k in ("seq", "status", "task", "mode", "parent_run_id", "fork_seq",
                                         "generation", "best_generation", "best_score",
                                         "stop_reason", "error", "sandbox", "state_hash")},
        "config": view["config"],
        "overrides": view["overrides"],
        "pending_effects": view["pending_effects"],
        "ledger": {**branch_spend(state),
                   "by_kind": {k: {**to_jsonable(v), "tokens": v.tokens}
                               for k, v in state.ledger.by_kind.items()}},
        "generations": [{**row, "episodes": len(g.episodes)}
                        for row, g in zip(generation_rows(state), state.generations)],
        "decisions": decision_cards(state, None),
        "lineage": tree,
        "branches": branches,
        "event_types": sorted(EVENT_CLASSES),
    }


def timeline_page(state: LoopState, elapsed: dict[int, float], refused: dict[int, list[dict[str, Any]]],
                  episodes: Mapping[str, EpisodeRef], types: dict[str, int], first: str | None,
                  last: str | None, investigations: dict[int, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """What needs every event: elapsed per generation, refused answers, investigations,
    counts per type."""
    return {"elapsed": {str(k): round(v, 3) for k, v in elapsed.items()},
            "decisions": decision_cards(state, refused, episodes, investigations),
            "types": dict(sorted(types.items())),
            "first_recorded_at": first, "last_recorded_at": last}


def state_page(state: LoopState) -> dict[str, Any]:
    """`state at seq N`: the fold of the first N events, as `sia show --json` prints it."""
    return {**show(state), "generations": generation_rows(state)}


def event_row(event: StoredEvent) -> dict[str, Any]:
    return {"seq": event.seq, "type": event.type, "run_id": event.run_id,
            "recorded_at": event.recorded_at, "hash": event.hash,
            "payload": json.loads(event.payload)}


def event_page(events: Iterable[StoredEvent], types: frozenset[str], limit: int) -> dict[str, Any]:
    """Up to `limit` events of the given types (all when empty), oldest first, and the seq
    to continue after (None at the end of the log)."""
    rows: list[dict[str, Any]] = []
    last_seen = None
    for event in events:
        last_seen = event.seq
        if types and event.type not in types:
            continue
        rows.append(event_row(event))
        if len(rows) == limit:
            return {"events": rows, "next_after": event.seq}
    return {"events": rows, "next_after": None, "scanned_to": last_seen}


def harness_diff(label_a: str, text_a: str, label_b: str, text_b: str) -> dict[str, Any]:
    lines = list(difflib.unified_diff(text_a.splitlines(), text_b.splitlines(), label_a, label_b,
                                      lineterm=""))
    return {"a": label_a, "b": label_b, "identical": not lines, "diff": lines}


def _calls(trajectory: dict[str, Any]) -> list[dict[str, Any]]:
    """Model calls in one shape: prompt(s), completion(s) with tokens and logprobs."""
    calls = []
    for index, call in enumerate(trajectory.get("calls", [])):
        generations = [{"text": g.get("text", ""),
                        "prompt_tokens": len(g.get("prompt_token_ids", [])),
                        "completion_tokens": len(g.get("token_ids", [])),
                        "logprobs": g.get("logprobs"),
                        "finish_reason": g.get("finish_reason")}
                       for g in call.get("generations", [])]
        if not generations and "completion" in call:
            generations = [{"text": call["completion"], "prompt_tokens": None,
                            "completion_tokens": None, "logprobs": None, "finish_reason": None}]
        prompts = call.get("prompts") or ([call["prompt"]] if "prompt" in call else [])
        calls.append({"index": call.get("index", index), "endpoint": call.get("endpoint"),
                      "status": call.get("status"), "error": call.get("error"),
                      "prompts": prompts, "messages": call.get("messages"),
                      "params": call.get("params"), "generations": generations})
    return calls


def find_episode(state: LoopState, episode_id: str) -> tuple[int, Episode] | None:
    """An episode of a generation still in progress (finished ones keep no episodes)."""
    for generation in state.generations:
        for episode in generation.episodes:
            if episode.episode_id == episode_id:
                return generation.index, episode
    return None


def recorded_episode(event: StoredEvent) -> tuple[int, Episode]:
    """The episode an EpisodeRecorded event records, with its generation."""
    p = json.loads(event.payload)
    return p["generation"], Episode(p["episode_id"], p["sample_id"], p["status"], p["prediction"],
                                    p["trajectory_hash"], p.get("error"))


def episode_page(state: LoopState, generation: int, episode: Episode, trajectory: dict[str, Any] | None,
                 sample: dict[str, Any] | None, sample_note: str | None) -> dict[str, Any]:
    """One episode: its sample's public fields, every model call, reward, status, stderr tail."""
    rewards: dict[str, float] = {}
    if state.task and state.config and generation < len(state.generations):
        rewards = dict(zip(episode_ids(state, generation), state.generations[generation].rewards))
    outcome = (trajectory or {}).get("outcome") or {}
    stderr = outcome.get("stderr_tail") or outcome.get("stderr") or ""
    return {
        "episode_id": episode.episode_id, "generation": generation, "sample_id": episode.sample_id,
        "split": "dev" if state.task and episode.sample_id in state.task.dev_ids else "train",
        "status": episode.status, "prediction": episode.prediction, "error": episode.error,
        "reward": rewards.get(episode.sample_id),
        "trajectory_hash": episode.trajectory_hash,
        "sample": sample, "sample_note": sample_note,
        "outcome": {k: v for k, v in outcome.items() if k not in ("stderr", "stderr_tail")},
        "stderr_tail": stderr.splitlines()[-STDERR_TAIL:],
        "calls": _calls(trajectory or {}),
    }
