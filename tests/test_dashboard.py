"""`sia serve`: the dashboard driven in a real headless Chromium, against real `sia`
processes sharing one SIA_HOME (the server, runs started beside it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cli import SIA, sia, sia_json
from tests.test_cli_ops import feedback_boundary

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(os.environ.get("SIA_SCREENSHOTS", "/tmp/sia-dashboard-screenshots"))

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.exists(), reason=(
    "needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)"))]


class Server:
    """`sia serve --port 0` in its own process; `url` is where it listens."""

    def __init__(self, home: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [*SIA, "serve", "--port", "0", *args], env={**os.environ, "SIA_HOME": str(home)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        found = re.search(r"http://[\d.]+:\d+/", line)
        if not found:
            self.stop()
            raise AssertionError(f"sia serve did not announce its address: {line!r}")
        self.url = found.group(0)

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(self.url.rstrip("/") + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", **headers},
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            return exc.code, json.loads(text) if text.startswith("{") else {"error": text}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """A home with a 3-generation toy run and a fork of it that trained with DPO."""
    home = tmp_path_factory.mktemp("dashboard") / "home"
    run = sia(home, "run", "--task", "toy", "--max-gen", "3", "--quiet").stdout.split()[-1]
    fork = sia(home, "fork", run, "--at", str(feedback_boundary(home, run)),
               "--set", "feedback.force=update_weights:dpo").stdout.split()[-1]
    sia(home, "resume", fork, "--quiet")
    yield home, run, fork


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def readonly(home: tuple[Path, str, str]) -> Iterator[Server]:
    server = Server(home[0])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def actions(home: tuple[Path, str, str]) -> Iterator[Server]:
    server = Server(home[0], "--allow-actions")
    yield server
    server.stop()


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def test_runs_run_decision_episode_and_harness_diff(home: tuple[Path, str, str], readonly: Server,
                                                    page: Any) -> None:
    root, run, fork = home
    page.goto(readonly.url)
    page.wait_for_selector(f'#runs tr[data-run="{fork}"]')
    rows = {r.get_attribute("data-run"): r.inner_text() for r in page.locator("#runs tbody tr").all()}
    assert set(rows) == {run, fork} and f"{run} @ " in rows[fork] and "completed" in rows[run]
    page.fill("#filter-text", fork)
    assert page.locator("#runs tbody tr").count() == 1
    shot(page, "runs")

    page.locator(f'#runs tr[data-run="{fork}"] a').first.click()
    page.wait_for_selector("#score-chart polyline")
    legend = page.inner_text("#chart-legend")
    assert f"{run} (root run)" in legend and f"{fork} (fork of {run} at seq" in legend
    assert "weight update" in legend and "stop" not in legend  # only markers that appear
    assert page.inner_text("#chart-scale") == "scores are on their full range, 0 to 1"
    assert page.locator("#lineage .on-path a").all_inner_texts() == [run, fork]
    assert "harness sandbox" in page.inner_text("#run-head")
    ledger = page.inner_text("#ledger")
    assert "inherited" in ledger and "GPU" in ledger
    decisions = sia_json(root, "audit", fork)
    forced = next(d for d in decisions if d["forced"])
    card = page.locator(f'#decision-{forced["generation"]}')
    card.wait_for()
    text = card.inner_text()
    assert "update_weights" in text and "dpo" in text and forced["rationale"][:30] in text
    after = forced["score_after"]
    assert f"→ {after:.3f}" in card.locator(".outcome").inner_text()
    page.wait_for_selector(f"#decision-{forced['generation']} .refused:not(:has-text('…'))")
    shot(page, "run")

    page.goto(f"{readonly.url}#/run/{run}")  # the root edited its harness after generation 0
    page.wait_for_selector("#diff-a")
    page.select_option("#diff-a", "0")
    page.select_option("#diff-b", "1")
    page.click("#diff-show")
    page.wait_for_selector("#diff-out pre.diff")
    assert f"--- {run} gen 0" in page.inner_text("#diff-out")
    assert page.locator("#diff-out .add").count() > 0

    page.locator(".episode-link").first.click()
    page.wait_for_selector("#episode")
    assert page.inner_text("#episode-status") == "ok"
    assert page.locator("#calls .call").count() >= 1 and "question" in page.inner_text("#calls")
    assert "task cannot be opened here" in page.inner_text("#sample")  # the toy task has no folder
    shot(page, "episode")


def test_event_log_filters_pages_and_travels_in_time(home: tuple[Path, str, str], readonly: Server,
                                                     page: Any) -> None:
    from playwright.sync_api import expect

    root, run, _ = home
    page.goto(f"{readonly.url}#/run/{run}")
    page.wait_for_selector("#events tbody tr")
    assert page.locator("#events tbody tr").count() == 100  # paged, not the whole log
    page.click("#events-more")
    page.wait_for_selector("#events-more:disabled")
    total = len(sia(root, "log", run, "--json").stdout.splitlines())
    assert page.locator("#events tbody tr").count() == total
    page.select_option("#event-type", "FeedbackDecided")
    expect(page.locator("#events tbody tr")).to_have_count(2)
    assert set(page.locator("#events tbody td:nth-child(2)").all_inner_texts()) == {"FeedbackDecided"}
    seq = int(page.locator("#events tbody tr").first.get_attribute("data-seq"))
    page.locator("#events tbody tr .state-here").first.click()
    page.wait_for_selector("#state-panel")
    expected = sia_json(root, "show", run, "--at", str(seq))
    panel = page.inner_text("#state-panel")
    assert f"state after seq {seq}" in panel and expected["state_hash"] in panel
    assert page.locator(".fork-here").count() == 0  # read-only: no action buttons


def test_a_run_started_elsewhere_appears_live(home: tuple[Path, str, str], readonly: Server,
                                              page: Any) -> None:
    root = home[0]
    page.goto(f"{readonly.url}#/run/live-run")
    page.wait_for_selector("#waiting")
    page.wait_for_selector("#live.on")
    driver = subprocess.Popen([*SIA, "run", "--task", "toy", "--max-gen", "3", "--quiet", "--run-id",
                               "live-run"], env={**os.environ, "SIA_HOME": str(root)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        page.wait_for_selector('#generations tr[data-gen="2"]', timeout=30_000)
        seen = time.time()
    finally:
        driver.wait(timeout=60)
    events = [json.loads(line) for line in sia(root, "log", "live-run", "--json").stdout.splitlines()]
    started = next(e for e in events if e["type"] == "GenerationStarted"
                   and e["payload"]["generation"] == 2)
    committed = datetime.fromisoformat(started["recorded_at"]).timestamp()
    assert seen - committed < 2.0, f"generation 2 showed {seen - committed:.2f} s after its commit"
    page.wait_for_selector("#run-status:has-text('completed')", timeout=5_000)


def test_fork_from_an_event_with_actions_allowed(home: tuple[Path, str, str], actions: Server,
                                                 page: Any) -> None:
    root, run, _ = home
    at = feedback_boundary(root, run, nth=1)
    page.goto(f"{actions.url}#/run/{run}")
    page.wait_for_selector(f'#events tr[data-seq="{at}"]')
    page.locator(f'#events tr[data-seq="{at}"] .fork-here').click()
    page.fill("#fork-settings", "feedback.force=update_weights:entropic")
    page.click("#fork-go")
    page.wait_for_selector("#fork-message a")
    new_id = page.inner_text("#fork-message a")
    shot(page, "fork")
    page.goto(actions.url)
    page.wait_for_selector(f'#runs tr[data-run="{new_id}"]')
    assert f"{run} @ {at}" in page.inner_text(f'#runs tr[data-run="{new_id}"]')
    made = next(r for r in sia_json(root, "runs") if r["run_id"] == new_id)
    assert made["parent_run_id"] == run and made["fork_seq"] == at
    assert sia_json(root, "show", new_id)["overrides"] == {"feedback.force": "update_weights:entropic"}


def test_actions_are_refused_read_only_cross_site_or_without_token(
        home: tuple[Path, str, str], readonly: Server, actions: Server, page: Any) -> None:
    root, run, _ = home
    before = len(sia_json(root, "runs"))
    page.goto(f"{readonly.url}#/run/{run}")
    page.wait_for_selector("#events tbody tr")
    answer = page.evaluate("""async (run) => {
        const r = await fetch(`/api/runs/${run}/fork`, {method: "POST", headers: {"Content-Type": "application/json"},
                                                        body: JSON.stringify({at: 5})});
        return [r.status, (await r.json()).error];
    }""", run)
    assert answer[0] == 403 and "read-only" in answer[1] and "--allow-actions" in answer[1]
    host = actions.url.split("//")[1].rstrip("/")
    token = re.search(r'name="sia-token" content="([^"]+)"',
                      urllib.request.urlopen(actions.url).read().decode()).group(1)
    status, body = actions.post(f"/api/runs/{run}/fork", {"at": 5},
                                {"Origin": "http://evil.example", "X-Sia-Token": token})
    assert status == 403 and "cross-site" in body["error"]
    status, body = actions.post(f"/api/runs/{run}/fork", {"at": 5}, {"Origin": f"http://{host}"})
    assert status == 403 and "token" in body["error"]
    status, body = actions.post(f"/api/runs/{run}/pause", {}, {"Origin": f"http://{host}", "X-Sia-Token": token})
    assert status == 409 and "not running" in body["error"]
    status, body = actions.post(f"/api/runs/{run}/fork", {"at": 10**6},
                                {"Origin": f"http://{host}", "X-Sia-Token": token})
    assert status == 400 and "outside run" in body["error"]
    status, body = actions.post(f"/api/runs/{run}/fork", {"at": 5},
                                {"Host": "evil.example", "Origin": "http://evil.example", "X-Sia-Token": token})
    assert status == 400 and body["error"] == "Invalid host header"  # DNS rebinding
    assert len(sia_json(root, "runs")) == before


def test_pause_a_run_left_running_by_a_killed_driver(home: tuple[Path, str, str], actions: Server,
                                                     page: Any) -> None:
    root = home[0]
    sia(root, "run", "--task", "toy", "--quiet", "--run-id", "crashed",
        env={"SIA_CRASH_AT": "after_request_commit:5"}, check=False)
    assert sia_json(root, "show", "crashed")["status"] == "running"
    page.goto(f"{actions.url}#/run/crashed")
    page.click("#pause")
    page.wait_for_selector("#notice .ok")
    shown = sia_json(root, "show", "crashed")
    assert shown["status"] == "paused"
    events = [json.loads(line) for line in sia(root, "log", "crashed", "--json").stdout.splitlines()]
    assert events[-1]["type"] == "RunPaused" and events[-1]["payload"]["reason"] == "paused from the dashboard"
    page.wait_for_selector("#run-status:has-text('paused')")
