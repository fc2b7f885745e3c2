"""Dashboard responsiveness on a 100k-event run, measured in headless Chromium.

Writes a realistic run (bench/workload.py) into a fresh SIA_HOME, with a snapshot every
SNAPSHOT_EVERY events as the runtime keeps them, starts `sia serve` on it and times, in a
real browser, from navigation to:

- runs list painted (the run's row visible);
- run page first paint (summary, chart, generations, decisions), from navigation start to
  the frame after the chart entered the page, in the page's own clock; cold (the
  server's first look at the run) and warm;
- first event-log page painted (100 rows: the log is paged, never sent whole), same clock;
- timeline filled in (as seen by the test driver, which polls) (elapsed per generation and refused answers: the one pass over
  every event, made after first paint and then kept warm);
- `state at seq 50000` (time travel) answered.

Usage: python bench/dashboard_bench.py [--events 100000] [--repeats 3]
Needs /usr/bin/chromium and playwright (the test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def build(home: Path, count: int) -> int:
    from workload import events, record_run

    from sia.core.events.mapper import MAPPER
    from sia.store.sqlite import SqliteEventStore

    store = SqliteEventStore.open_home(home)
    state = record_run(store, [MAPPER.encode(e) for e in events(count)])
    store.close()
    return state.seq


def serve(home: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "sia", "serve", "--port", "0"],
                               env={**os.environ, "SIA_HOME": str(home)}, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True)
    assert process.stderr is not None
    line = process.stderr.readline()
    found = re.search(r"http://[\d.]+:\d+/", line)
    if not found:
        process.terminate()
        raise SystemExit(f"sia serve did not start: {line}")
    return process, found.group(0)


PAINT_PROBE = """
for (const [selector, name] of [["#score-chart polyline", "__chartPainted"], ["#events tbody tr", "__eventsPainted"]]) {
  new MutationObserver((_, observer) => {
    if (document.querySelector(selector)) {
      observer.disconnect();
      requestAnimationFrame(() => requestAnimationFrame((t) => { window[name] = t; }));
    }
  }).observe(document, {childList: true, subtree: true});
}
"""
"""Milliseconds from navigation start to the frame after the chart (the first event-log
row) is in the page: when it was painted (the second animation frame follows the painted one)."""


def timed(page: Any, url: str, selector: str) -> float:
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(selector, timeout=60_000)
    return time.perf_counter() - started


def measure(url: str, repeats: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    results: dict[str, list[float]] = {k: [] for k in (
        "run_page_first_paint_cold", "run_page_first_paint_warm", "runs_list", "event_log_first_page",
        "timeline_filled", "state_at_seq_50000")}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for attempt in range(repeats):
            context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
            context.add_init_script(PAINT_PROBE)
            page = context.new_page()
            key = "run_page_first_paint_cold" if attempt == 0 else "run_page_first_paint_warm"
            started = time.perf_counter()
            page.goto(f"{url}#/run/bench")
            page.wait_for_function("window.__chartPainted !== undefined", timeout=60_000)
            results[key].append(page.evaluate("window.__chartPainted") / 1000)
            page.wait_for_function("window.__eventsPainted !== undefined", timeout=60_000)
            results["event_log_first_page"].append(page.evaluate("window.__eventsPainted") / 1000)
            rows = page.locator("#events tbody tr").count()
            assert rows == 100, f"the event log should be paged, got {rows} rows"
            page.wait_for_selector("#generations tbody tr td:nth-child(6):not(:has-text('…'))", timeout=60_000)
            results["timeline_filled"].append(time.perf_counter() - started)
            page.fill("#state-seq", "50000")
            started = time.perf_counter()
            page.click("#state-go")
            page.wait_for_selector("#state-panel", timeout=60_000)
            results["state_at_seq_50000"].append(time.perf_counter() - started)
            results["runs_list"].append(timed(page, url, '#runs tr[data-run="bench"]'))
            context.close()
        browser.close()
    return {k: {"median_s": round(statistics.median(v), 3), "runs_s": [round(x, 3) for x in v]}
            for k, v in results.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="sia-dashboard-bench-")) / "home"
    seq = build(home, args.events)
    process, url = serve(home)
    try:
        results = measure(url, args.repeats)
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(f"run of {seq} events, {os.cpu_count()} cores")
    for name, value in results.items():
        print(f"{name:<28} median {value['median_s']:.3f} s  (runs: {', '.join(map(str, value['runs_s']))})")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "dashboard_bench.json").write_text(json.dumps({"events": seq, **results}, indent=2))


if __name__ == "__main__":
    main()
