"""The `sia` command line: start, resume, fork, replay, audit and inspect runs.

Heavy libraries (torch, transformers, peft, trl) are imported only by the handlers that
need them, so inspection commands answer in well under a second.
"""

from __future__ import annotations

import difflib
import gc
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from sia.core.config import ConfigError, apply_overrides, parse_assignments
from sia.core.decide import UnknownDeciderVersion
from sia.core.events.mapper import EventDecodeError
from sia.core.events.types import RunConfig, TaskIdentity
from sia.core.reducers.loop import FoldError
from sia.core.reducers.state import LoopState
from sia.interface.task_commands import app as tasks_app
from sia.store.base import EventStore, StoreError
from sia.store.blobs import BlobMissing
from sia.store.home import sia_home

app = typer.Typer(
    help="sia: a self-improving agent loop you can resume, fork, replay and audit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(tasks_app, name="tasks", help="List, show, validate tasks and score predictions.")
out = Console()
err = Console(stderr=True)


class CliError(Exception):
    """A user-facing failure: printed as one line on stderr, exit status 1."""


@app.callback()
def main(
    home: Annotated[Optional[Path], typer.Option(
        "--home", envvar="SIA_HOME", help="State directory (default ~/.sia).")] = None,
) -> None:
    if home is not None:
        import os

        os.environ["SIA_HOME"] = str(home)


@contextmanager
def opened_store(settings: Any = None) -> Iterator[EventStore]:
    """The home's store, redacting the values of every key variable `sia.toml` names too."""
    from sia.runtime.settings import load_settings
    from sia.store.redact import configured_key_names
    from sia.store.sqlite import SqliteEventStore

    try:
        providers = (settings if settings is not None else load_settings()).providers
    except ConfigError:
        providers = {}
    store = SqliteEventStore.open_home(secret_names=tuple(sorted(configured_key_names(providers))))
    for notice in store.notices:
        err.print(f"[yellow]{notice}[/yellow]")
    try:
        yield store
    finally:
        store.close()


def load(store: EventStore, run_id: str, at: int | None = None) -> LoopState:
    """The run's state after event `at` (the end when None); `at` outside the log is an error."""
    from sia.runtime.loop import load_state

    store.get_run(run_id)
    if at is not None:
        checked_seq(store, run_id, at)
    return load_state(store, run_id, upto=at)


def checked_seq(store: EventStore, run_id: str, seq: int, option: str = "--at") -> int:
    """`seq` if the run has an event there, else a CliError naming the valid range."""
    last = store.last_seq(run_id)
    if not 1 <= seq <= last:
        raise CliError(f"{option} {seq} is outside run {run_id}, whose events are seq 1 to {last}")
    return seq


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


# ---------------------------------------------------------------- driving runs


def _runtime(store: EventStore, config: RunConfig, task: TaskIdentity | None, concurrency: int,
             cache: str, observer: Callable[..., None] | None = None,
             settings: Any = None) -> Any:
    from sia.runtime.loop import Runtime
    from sia.runtime.settings import load_settings
    from sia.runtime.wiring import BackendUnavailable, handlers_for

    if cache not in ("off", "read", "readwrite"):
        raise CliError(f"--cache must be off, read or readwrite, not {cache!r}")
    try:
        registry = handlers_for(config, task, home=sia_home(),
                                settings=settings if settings is not None else load_settings())
    except BackendUnavailable as exc:
        raise CliError(str(exc)) from None
    return Runtime(store, registry, concurrency=concurrency, cache=cache,  # type: ignore[arg-type]
                   home=sia_home(), observer=observer)


def _drive(store: EventStore, run_id: str, state: LoopState, concurrency: int, cache: str,
           quiet: bool) -> LoopState:
    from sia.interface.progress import LiveProgress, summary_table

    assert state.config is not None
    progress = LiveProgress(err, home=sia_home())
    runtime = _runtime(store, state.config, state.task, concurrency, cache,
                       None if quiet else progress)
    # What start-up imported and wired lives as long as the process: frozen, the collector
    # never walks it again (a full collection did, for ~60 ms with the interpreter lock held,
    # stalling every episode in flight).
    gc.freeze()
    try:
        if quiet:
            state = runtime.drive(run_id)
        else:
            with progress:
                state = runtime.drive(run_id)
    except KeyboardInterrupt:
        err.print(f"paused; continue with: sia resume {run_id}")
        raise typer.Exit(130) from None
    if not quiet:
        from sia.interface.views import generation_elapsed

        err.print(summary_table(state, generation_elapsed(store.read(run_id)), err.width))
    if state.status == "failed":
        err.print(f"run failed: {state.error}")
    return state


@app.command()
def run(
    task: Annotated[str, typer.Option(help="Task: a bundled name (sia tasks list) or a task folder.")] = "wordcat",
    mode: Annotated[str, typer.Option(help="H (harness only) or WH (harness + weights).")] = "WH",
    max_gen: Annotated[int, typer.Option("--max-gen", help="Generations to run.")] = 3,
    seed: Annotated[int, typer.Option(help="Run seed; every handler seed derives from it.")] = 0,
    budget: Annotated[list[str], typer.Option(
        help="Spend limit, e.g. --budget dollars=5 --budget episodes=400 "
             "(tokens|dollars|wall_s|gpu_s|episodes).")] = [],
    set_: Annotated[list[str], typer.Option("--set", help="Any setting as key=value.")] = [],
    concurrency: Annotated[int, typer.Option(help="Episodes run at once.")] = 2,
    candidates: Annotated[int, typer.Option(help="Candidates explored per generation, each on its own "
                                            "fork; the best is kept only if it beats the incumbent.")] = 1,
    cache: Annotated[str, typer.Option(help="Effect cache: off | read | readwrite.")] = "readwrite",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live display.")] = False,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Name the run (default: task-time-random).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Data file for tasks built from one (e.g. LawBench 3-3.json).")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="Settings file (default ./sia.toml, then $SIA_HOME/sia.toml).")] = None,
) -> None:
    """Start a run; prints the run id as the last line."""
    from sia.runtime.settings import load_settings, role_defaults
    from sia.tasks.catalog import UnknownTask, resolve_task

    settings = load_settings(config_file)
    try:
        resolved = resolve_task(task, data=data, cache=sia_home() / "tasks")
    except UnknownTask as exc:
        raise CliError(str(exc)) from None
    overrides: dict[str, str] = {}
    if not resolved.defaults:
        overrides, notices = role_defaults(settings)
        for notice in notices:
            err.print(f"[yellow]{notice}[/yellow]")
    overrides.update({**resolved.defaults, "mode": mode, "max_generations": str(max_gen),
                      "seed": str(seed), "search.candidates": str(candidates)})
    overrides.update({f"budget.{k}": v for k, v in parse_assignments(budget).items()})
    overrides.update(parse_assignments(set_))
    config = apply_overrides(RunConfig(task=resolved.identity.name), overrides)
    with opened_store(settings) as store:
        runtime = _runtime(store, config, resolved.identity, concurrency, cache, settings=settings)
        run_id = runtime.create(config, resolved.identity, run_id=run_id)
        err.print(f"run {run_id} started (meta={config.meta}, feedback={config.feedback}, "
                  f"target={config.target}, trainer={config.trainer})")
        _drive(store, run_id, load(store, run_id), concurrency, cache, quiet)
    print(run_id)


@app.command()
def resume(
    run_id: str,
    concurrency: Annotated[int, typer.Option(help="Episodes run at once.")] = 2,
    cache: Annotated[str, typer.Option(help="Effect cache: off | read | readwrite.")] = "readwrite",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Continue a run after a crash, Ctrl-C or fork: settle pending effects, then go on."""
    with opened_store() as store:
        state = load(store, run_id)
        if state.config is None:
            raise CliError(f"run {run_id} has no configuration (empty log)")
        state = _drive(store, run_id, state, concurrency, cache, quiet)
    print(run_id)


def fork_run(store: EventStore, run_id: str, at: int, assignments: list[str]) -> str:
    """Fork `run_id` after event `at` with `key=value` overrides; `sia fork` and the
    dashboard's fork action both come here. Returns the new run's id."""
    state = load(store, run_id, at)
    if state.config is None:
        raise CliError(f"cannot fork {run_id} at seq {at}: the run has no configuration there")
    overrides = parse_assignments(assignments)
    config = apply_overrides(state.config, overrides)
    return _runtime(store, config, state.task, 1, "readwrite").fork(run_id, at, config, overrides)


@app.command()
def fork(
    run_id: str,
    at: Annotated[int, typer.Option("--at", help="Last parent event the fork keeps.")],
    set_: Annotated[list[str], typer.Option("--set", help="Override as key=value, e.g. "
                                            "feedback.force=update_weights:grpo.")] = [],
) -> None:
    """Branch a run at an event; the parent's prefix is shared, never copied. Prints the new id."""
    with opened_store() as store:
        new_id = fork_run(store, run_id, at, set_)
    err.print(f"forked {run_id}@{at}; continue it with: sia resume {new_id}")
    print(new_id)


@app.command()
def replay(
    run_id: str,
    to: Annotated[Optional[int], typer.Option("--to", help="Fold only up to this seq.")] = None,
    check: Annotated[bool, typer.Option(help="Re-run decide and interpret against the log.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Rebuild a run's state from its log; --check proves today's code agrees with it."""
    from sia.interface.views import show
    from sia.runtime.replay import check_run

    with opened_store() as store:
        store.get_run(run_id)
        if to is not None:
            checked_seq(store, run_id, to, "--to")
        if check:
            report = check_run(store, run_id, upto=to)
            result = {**show(report.state), "check": {
                "ok": report.ok, "events": report.events,
                "decisions_checked": report.decisions_checked,
                "outcomes_checked": report.outcomes_checked,
                "divergence": report.divergence.describe() if report.divergence else None}}
            if as_json:
                emit_json(result)
            if not report.ok:
                assert report.divergence is not None
                raise CliError(f"replay check failed for {run_id} at {report.divergence.describe()}")
            if not as_json:
                out.print(f"ok: {report.events} events, hash chain verified, "
                          f"{report.decisions_checked} decide batches and "
                          f"{report.outcomes_checked} effect outcomes re-derived identically; "
                          f"state {result['state_hash'][:16]}")
            return
        state = load(store, run_id, to)
        emit_json(show(state)) if as_json else out.print(
            f"{run_id} folded to seq {state.seq}: status {state.status}, "
            f"generation {state.generation}, state {show(state)['state_hash'][:16]}")


# ---------------------------------------------------------------- inspection


@app.command()
def runs(as_json: Annotated[bool, typer.Option("--json")] = False,
         show_all: Annotated[bool, typer.Option("--all", help="Also list a search's candidate branches.")] = False,
         ) -> None:
    """All runs in this home: id, task, parent, status, generations, best score."""
    from sia.interface.views import run_row

    with opened_store() as store:
        rows = [run_row(r.run_id, load(store, r.run_id)) for r in store.list_runs()]
    if as_json:
        emit_json(rows)
        return
    from sia.interface.progress import Column, fitted_table

    branches = [row for row in rows if row["explores_candidate"] is not None]
    if not show_all:
        rows = [row for row in rows if row["explores_candidate"] is None]
    cells = []
    for row in rows:
        parent = f"{row['parent_run_id']}@{row['fork_seq']}" if row["parent_run_id"] else "-"
        best = "-" if row["best_dev_score"] is None else f"{row['best_dev_score']:.3f}"
        cells.append([row["run_id"], row["task"] or "-", row["status"], str(row["generations"]),
                      best, parent, str(row["events"])])
    columns = [Column("run", 0), Column("task", 1), Column("status", 0), Column("gens", 2),
               Column("best", 1), Column("parent", 3), Column("events", 4)]
    out.print(fitted_table(f"runs in {sia_home()}", columns, cells, out.width))
    if branches and not show_all:
        out.print(f"{len(branches)} candidate branches of searches not listed (sia tree RUN draws them; "
                  "sia runs --all lists them)", highlight=False)


@app.command()
def log(
    run_id: str,
    type_: Annotated[Optional[str], typer.Option("--type", help="Only events of this type.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """The run's events, oldest first (its inherited prefix included)."""
    from sia.core.events.types import EVENT_CLASSES

    if type_ is not None and type_ not in EVENT_CLASSES:
        raise CliError(f"--type {type_} is not an event type; known types: "
                       f"{', '.join(sorted(EVENT_CLASSES))}")
    with opened_store() as store:
        store.get_run(run_id)
        for event in store.read(run_id):
            if type_ and event.type != type_:
                continue
            if as_json:
                sys.stdout.write(json.dumps({
                    "seq": event.seq, "type": event.type, "hash": event.hash,
                    "prev_hash": event.prev_hash, "run_id": event.run_id,
                    "schema_version": event.schema_version, "recorded_at": event.recorded_at,
                    "payload": json.loads(event.payload)}, ensure_ascii=False) + "\n")
            else:
                marker = "" if event.run_id == run_id else f" [{event.run_id}]"
                out.print(f"{event.seq:>6} {event.type:<22} {event.payload[:100]}{marker}",
                          markup=False, highlight=False)


@app.command()
def show(
    run_id: str,
    at: Annotated[Optional[int], typer.Option("--at", help="State after this seq.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The folded state of a run (at its end, or at --at SEQ)."""
    from sia.interface.progress import summary_table
    from sia.interface.views import show as show_view

    with opened_store() as store:
        state = load(store, run_id, at)
        view = show_view(state)
        if as_json:
            emit_json(view)
            return
        from sia.interface.views import generation_elapsed

        elapsed = generation_elapsed(store.read(run_id, upto=at))
    out.print(summary_table(state, elapsed, out.width))
    for key in ("seq", "state_hash", "outcome_hash", "status", "parent_run_id", "fork_seq",
                "best_generation", "best_score", "test_score", "harness_hash", "adapter_hash", "sandbox",
                "stop_reason", "error"):
        if view[key] is not None:
            out.print(f"{key:>16}: {view[key]}")
    if view["pending_effects"]:
        out.print(f"{'pending':>16}: {len(view['pending_effects'])} effects")


@app.command()
def tree(run_id: str) -> None:
    """The run as an archive: generations, each search round's candidates with their branches
    and dev scores, the path taken, and the held-out test score."""
    from sia.interface.views import search_tree

    with opened_store() as store:
        state = load(store, run_id)
    for line in search_tree(state):
        out.print(line, highlight=False, markup=False)


@app.command()
def verify(run_id: str) -> None:
    """Check every event, link and seq of the run's history, its keyed MACs and head, and
    the store's append-only triggers; names the first bad seq."""
    with opened_store() as store:
        count = store.verify(run_id)
    out.print(f"ok: {run_id}: {count} events, hash chain intact (sha256 and keyed MACs), "
              "append-only triggers in place")


@app.command()
def export(
    run_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="JSONL file to write.")],
) -> None:
    """Write a run (its whole lineage history and referenced blobs) to a JSONL file."""
    from sia.store.transfer import export_run

    if not output.parent.is_dir():
        raise CliError(f"cannot write {output}: the folder {output.parent} does not exist")
    if output.is_dir():
        raise CliError(f"cannot write {output}: it is a folder; name a file, e.g. {output / 'run.jsonl'}")
    with opened_store() as store:
        store.get_run(run_id)
        tmp = output.with_name(output.name + ".partial")
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                counts = export_run(store, run_id, handle)
            tmp.replace(output)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CliError(f"cannot write {output}: {exc.strerror or exc}") from None
    out.print(f"exported {run_id}: {counts['events']} events, {counts['blobs']} blobs → {output}")


@app.command(name="import")
def import_(path: Path) -> None:
    """Add a run from an export file, after verifying every hash; refuses partial files."""
    from sia.store.transfer import ImportRefused, import_run

    with opened_store() as store:
        try:
            run_id = import_run(store, path)
        except ImportRefused as exc:
            raise CliError(f"import refused, nothing changed: {exc}") from None
        count = store.verify(run_id)
    out.print(f"imported {run_id}: {count} events verified")
    print(run_id)


@app.command()
def audit(
    run_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    rejudge: Annotated[Optional[str], typer.Option(
        "--rejudge", help="Re-ask this feedback provider each recorded decision (in forks).")] = None,
) -> None:
    """Every Feedback decision: evidence shown, action and algorithm with why, outcome."""
    from sia.agents.investigation import render_steps
    from sia.core.events.mapper import MAPPER
    from sia.interface.views import audit_rows, investigations_by_generation, refusals_by_generation, sandbox_of

    with opened_store() as store:
        state = load(store, run_id)
        sandbox = sandbox_of(state)
        rows = audit_rows(state)
        logged = [MAPPER.decode(e).event for e in store.read(run_id)
                  if e.type in ("EffectRequested", "AnswerRefused", "AgentStepRecorded")]
        refused = refusals_by_generation(logged)
        investigated = investigations_by_generation(logged)
        for row in rows:
            row["refused_answers"] = refused.get(row["generation"], [])
            row["investigation"] = render_steps(investigated.get(row["generation"], []), indent="")
        if rejudge:
            from sia.core.config import apply_overrides
            from sia.runtime.rejudge import rejudge as rejudge_run
            from sia.runtime.rejudge import summary

            assert state.config is not None
            config = apply_overrides(state.config, {"feedback": rejudge})
            results = rejudge_run(_runtime(store, config, state.task, 2, "readwrite"), run_id, rejudge)
            for row, result in zip(rows, results):
                row["rejudged"] = {"provider": rejudge, "run_id": result.fork_run_id,
                                   "action": result.rejudged[0] if result.rejudged else None,
                                   "algorithm": result.rejudged[1] if result.rejudged else None,
                                   "agrees": result.agrees}
            agreement = summary(results)
    if as_json:
        emit_json({"decisions": rows, "rejudge": agreement} if rejudge else rows)
        return
    from sia.interface.progress import Column, fitted_table

    cells = []
    for row in rows:
        algorithm = row["algorithm"] or "-"
        if row["recommended_algorithm"]:
            algorithm += f" ({row['recommended_algorithm']})"
        delta = "-" if row["delta"] is None else f"{row['delta']:+.3f}"
        evidence = f"{(row['evidence']['digest_hash'] or '-')[:10]} {row['evidence']['summary']}"
        action = row["action"] + (" (forced)" if row["forced"] else "")
        if row["refused_answers"]:
            action += f" (after {len(row['refused_answers'])} refused)"
        if row["rollback_to"] is not None:
            action += f", after rolling back to gen {row['rollback_to']}"
        cells.append([str(row["generation"]), action, algorithm,
                      "-" if row["score_before"] is None else f"{row['score_before']:.3f}", delta,
                      row["provider"] or "-", row["rationale"], evidence])
    columns = [Column("gen", 0), Column("action", 0, flexible=True), Column("algorithm (rec.)", 1),
               Column("score", 1, right=True), Column("Δ next", 1, right=True), Column("by", 2),
               Column("rationale", 3, flexible=True, min_width=24),
               Column("evidence", 4, flexible=True, min_width=20)]
    if sandbox is not None:
        out.print(f"harnesses ran in the {sandbox} sandbox", highlight=False)
    out.print(fitted_table(f"decisions of {run_id}", columns, cells, out.width))
    for row in rows:
        if row["investigation"]:
            out.print(f"gen {row['generation']}, the investigation behind the decision:", highlight=False)
            for line in row["investigation"]:
                out.print("  " + line, highlight=False, markup=False)
    if rejudge:
        for row in rows:
            again = row["rejudged"]
            verdict = "agrees" if again["agrees"] else f"says {again['action']} {again['algorithm'] or ''}"
            out.print(f"gen {row['generation']}: {rejudge} {verdict} (recorded in {again['run_id']})")
        out.print(f"agreement: {agreement['agreed']}/{agreement['decisions']}")


@app.command()
def diff(run_a: str, run_b: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Compare two branches: common ancestor, first divergence, scores, harness, spend."""
    from sia.interface.views import branch_spend

    with opened_store() as store:
        events_a, events_b = list(store.read(run_a)), list(store.read(run_b))
        common = 0
        for a, b in zip(events_a, events_b):
            if a.hash != b.hash:
                break
            common += 1
        ancestor = events_a[common - 1].run_id if common else None
        state_a, state_b = load(store, run_a), load(store, run_b)
        harness = [store.blobs.get_text(s.harness_hash) if s.harness_hash else ""
                   for s in (state_a, state_b)]
    first = lambda events: (f"seq {events[common].seq} {events[common].type}"  # noqa: E731
                            if common < len(events) else "(none)")
    generations = max(len(state_a.generations), len(state_b.generations))
    scores = [{"generation": i,
               run_a: state_a.generations[i].score if i < len(state_a.generations) else None,
               run_b: state_b.generations[i].score if i < len(state_b.generations) else None}
              for i in range(generations)]
    harness_diff = list(difflib.unified_diff(harness[0].splitlines(), harness[1].splitlines(),
                                             run_a, run_b, lineterm=""))
    result: dict[str, Any] = {"common_events": common, "common_ancestor": ancestor,
              "first_divergence": {run_a: first(events_a), run_b: first(events_b)},
              "scores": scores, "harness_diff": harness_diff,
              "spend": {run_a: branch_spend(state_a), run_b: branch_spend(state_b)}}
    if as_json:
        emit_json(result)
        return
    out.print(f"common history: {common} events (last owned by {ancestor or '-'})")
    out.print(f"first divergence: {run_a}: {result['first_divergence'][run_a]} | "
              f"{run_b}: {result['first_divergence'][run_b]}")
    table = Table(title="dev score per generation")
    for column in ("gen", run_a, run_b):
        table.add_column(column)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for row in scores:
        table.add_row(str(row["generation"]), fmt(row[run_a]), fmt(row[run_b]))
    out.print(table)
    for name in (run_a, run_b):
        spend = result["spend"][name]
        out.print(f"spend {name}: own ${spend['own']['dollars']:.4f} {spend['own']['tokens']} tok, "
                  f"inherited ${spend['inherited']['dollars']:.4f} {spend['inherited']['tokens']} tok")
    out.print("\n".join(harness_diff) if harness_diff else "harnesses are identical",
              markup=False, highlight=False)


@app.command()
def report(
    run_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the PNG and HTML.")] = Path("."),
) -> None:
    """Write a PNG (dev score per generation, run and forks) and a self-contained HTML report."""
    from sia.interface.report import write_report

    with opened_store() as store:
        store.get_run(run_id)
        png, page = write_report(store, run_id, output)
    out.print(f"wrote {png} and {page}")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback exposes your runs.")] = "127.0.0.1",
    allow_actions: Annotated[bool, typer.Option(
        "--allow-actions", help="Let the page fork and pause runs (POST, same-origin, token).")] = False,
) -> None:
    """A live web dashboard of this home's runs: scores, lineage, decisions, episodes, log."""
    import os
    import socket

    import uvicorn

    from sia.interface.dashboard.app import Settings, create_app, new_token

    with opened_store() as store:
        loopback = ("127.0.0.1", "localhost", "[::1]")
        settings = Settings(home=sia_home(), allow_actions=allow_actions, token=new_token(),
                            fork=fork_run, user_errors=(CliError,),
                            hosts=loopback if host in ("127.0.0.1", "::1") else ("*",))
        try:
            listener = socket.create_server((host, port))
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise CliError(f"cannot listen on {host}:{port}: {reason}") from None
        bound_host, bound_port = listener.getsockname()[:2]
        server = uvicorn.Server(uvicorn.Config(create_app(store, settings), log_level="warning",
                                               timeout_graceful_shutdown=1))
        mode = "actions allowed" if allow_actions else "read-only"
        err.print(f"sia dashboard ({mode}) on http://{bound_host}:{bound_port}/ — Ctrl-C stops it",
                  highlight=False)
        try:
            server.run(sockets=[listener])
        finally:
            listener.close()


def entrypoint() -> None:
    """Run the app, turning expected failures into one line on stderr and exit status 1."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (CliError, StoreError, ConfigError, FoldError, EventDecodeError, BlobMissing,
            UnknownDeciderVersion) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
