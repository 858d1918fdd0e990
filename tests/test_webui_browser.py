"""The web UI in a real browser: a distributed run started from the form, the OVMS tab live, the report.

Headless Debian Chromium driven by Playwright (no browser download: the system's /usr/bin/chromium).
One master with its web UI and two workers, all on loopback; the test fills the start form (users,
ramp, host and the suite's own custom parameters), watches the OVMS tab's numbers grow, stops the
test, downloads the HTML report and the JSON result from the UI, opens the report with every
network request refused, and checks that its numbers are the JSON result's. Screenshots of the tab
and of the report go to ``artifacts/`` (or $OVMS_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from tests.conftest import terminate
from tests.locust_run import ROOT, free_port, start_distributed

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("OVMS_ARTIFACTS") or ROOT / "artifacts")
# as root, in a sandbox with no outside network: no sandbox, and no background fetches that would be refused
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed (make test installs it)")


class _Cells(HTMLParser):
    """Every element's data-key -> data-value in an HTML document, and the plots (svg or img) it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.plots = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if "data-key" in a and "data-value" in a:
            self.values[a["data-key"]] = a["data-value"]
        if tag == "svg" or (tag == "img" and str(a.get("src", "")).startswith("data:image/")):
            self.plots += 1


def _wait(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _ui_state(base: str) -> dict:
    try:
        return requests.get(f"{base}/stats/requests", timeout=5).json()
    except (requests.RequestException, ValueError):
        return {}


def _tab_value(page, metric: str) -> str:
    row = page.locator("tr", has=page.locator("td", has_text=metric)).first
    return row.locator("td").nth(1).inner_text(timeout=10_000)


def test_distributed_run_from_the_web_ui(refserver, tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    web_port = free_port()
    base = f"http://127.0.0.1:{web_port}"
    result_file = tmp_path / "result.json"
    master, workers = start_distributed(["--web-host", "127.0.0.1", "--web-port", str(web_port),
                                         "--result_file", str(result_file)], cwd=tmp_path)
    try:
        _wait(lambda: _ui_state(base).get("worker_count") == 2, 60, "two workers connected to the master")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
                page = context.new_page()
                page.goto(base + "/")
                # the start form: Locust's fields, then the suite's own options under "Custom parameters"
                page.locator("input[name=userCount]").fill("4")
                page.locator("input[name=spawnRate]").fill("4")
                page.locator("input[name=host]").fill(refserver.grpc_address)
                page.get_by_role("button", name="Custom parameters").click()
                page.locator("input[name=api]").fill("kfs")
                page.locator("input[name=modelName]").fill("two_inputs")
                page.locator("input[name=bs]").fill("1 2")
                page.locator("input[name=warmup]").fill("1")
                page.get_by_role("button", name="Start").click()

                _wait(lambda: _ui_state(base).get("state") == "running", 30, "the run to start")
                page.get_by_role("tab", name="OVMS metrics").click()
                # the workers report every 3 s: the tab's request count grows while the test runs
                first = _wait(lambda: _count(_tab_value(page, "requests (pass/fail)")), 20, "the first numbers")
                later = _wait(lambda: (n := _count(_tab_value(page, "requests (pass/fail)"))) > first and n,
                              20, "the tab's numbers to grow")
                assert later > first > 0
                assert _tab_value(page, "latency p99 ms") not in ("", "-")
                page.screenshot(path=str(ARTIFACTS / "webui-ovms-tab.png"), full_page=True)

                page.get_by_role("button", name="Stop").click()
                _wait(lambda: _ui_state(base).get("state") == "stopped", 30, "the run to stop")
                # the master exports once it holds both workers' final snapshots
                _wait(result_file.exists, 20, "the result file")
                final = json.loads(result_file.read_text())
                assert final["workers"] and all(state == "final" for state in final["workers"].values())

                page.get_by_role("tab", name="Download Data").click()
                with page.expect_download() as report_download:
                    page.get_by_text("Download OVMS report (HTML)").click()
                report_path = tmp_path / "report.html"
                report_download.value.save_as(report_path)
                with page.expect_download() as json_download:
                    page.get_by_text("Download OVMS result (JSON)").click()
                json_path = tmp_path / "downloaded.json"
                json_download.value.save_as(json_path)
                downloaded = json.loads(json_path.read_text())
                assert "live" not in downloaded and downloaded["statistics"] == final["statistics"]

                # the report offline: every request but the file itself is refused, and none is made
                offline = browser.new_context(viewport={"width": 1300, "height": 1000}, offline=True)
                fetched: list[str] = []
                offline.route("**/*", lambda route: (fetched.append(route.request.url), route.abort())
                              if not route.request.url.startswith("file:") else route.continue_())
                report_page = offline.new_page()
                report_page.goto(report_path.as_uri())
                report_page.wait_for_load_state("load")
                assert fetched == []
                report_page.screenshot(path=str(ARTIFACTS / "report-plots.png"), full_page=True)
            finally:
                browser.close()
    finally:
        for proc in [*workers, master]:
            terminate(proc)

    cells = _Cells()
    cells.feed(report_path.read_text())
    stats = final["statistics"]
    assert cells.plots >= 3   # throughput, latency quantiles, window histogram (+ the batch-size breakdown)
    assert {"window_brutto_batch_rate", "brutto_batch_rate", "window_latency_p99"} <= set(cells.values)
    for key, text in cells.values.items():
        if key in stats and not isinstance(stats[key], dict):
            assert json.loads(text) == stats[key], key
    assert stats["window_pass_batches"] > 0 and stats["window_fail_batches"] == 0 and stats["submetrics"] == 2
    assert [row["batch_size"] for row in final["by_batch"]] == [1, 2]
    # the workers told the master what the server is (it fetched nothing itself, started from the UI)
    assert final["parameters"]["server"]["name"] == "ovms-refserver"
    assert all(row.get("users") != 0 for row in final["timeline"])   # unknown (null) before the first count
    assert (ARTIFACTS / "webui-ovms-tab.png").stat().st_size > 10_000
    assert (ARTIFACTS / "report-plots.png").stat().st_size > 10_000


def _count(text: str) -> int:
    """'1234/5' (pass/fail) -> 1239; anything else -> 0."""
    try:
        ok, bad = text.split("/")
        return int(ok) + int(bad)
    except ValueError:
        return 0
