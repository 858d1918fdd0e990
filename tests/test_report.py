"""The HTML report: self-contained and offline, numbers equal to the JSON result's, plots that apply, robust."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from metrics_ext.report import render_report, write_report
from metrics_ext.result import format_summary

SAMPLE = Path(__file__).parent / "data" / "sample_result.json"
REPO = Path(__file__).resolve().parents[1]

#: the summary's rows (format_summary's) for each column; the max latency is whichever of pass/fail is larger
SUMMARY_KEYS = ("total_duration", "pass_batches", "fail_batches", "pass_frames", "fail_frames", "brutto_batch_rate",
                "brutto_frame_rate", "netto_batch_rate", "batch_passrate", "mean_latency", "stdev_latency",
                "cv_latency", "latency_p50", "latency_p90", "latency_p95", "latency_p99", "latency_p99_9")

URL_ATTRS = {"src", "href", "xlink:href", "data", "action", "poster", "srcset", "background", "formaction"}


class Page(HTMLParser):
    """The parts of a report a test looks at: tags, value cells, style text, summary rows."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.values: list[dict[str, str | None]] = []     # the attrs of each data-key element
        self.styles: list[str] = []                       # <style> text and style attributes
        self.summary: list[list[str]] = []                # the first summary table's rows, as cell texts
        self.text: list[str] = []
        self._in_style = False
        self._table = 0            # 1 while inside the first table.summary
        self._seen_summary = False
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if "data-key" in a:
            self.values.append(a)
        if a.get("style"):
            self.styles.append(a["style"] or "")
        if tag == "style":
            self._in_style = True
        if tag == "table" and "summary" in (a.get("class") or "").split() and not self._seen_summary:
            self._table, self._seen_summary = 1, True
        if self._table and tag == "tr":
            self.summary.append([])
        if self._table and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False
        if self._table and tag in ("td", "th") and self._cell is not None:
            self.summary[-1].append("".join(self._cell).strip())
            self._cell = None
        if self._table and tag == "table":
            self._table = 0

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_style:
            self.styles.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for t, _a in self.tags if t == tag)

    def keys(self) -> set[str]:
        return {a["data-key"] for a in self.values if a.get("data-key")}


@pytest.fixture(scope="module")
def sample() -> dict:
    return json.loads(SAMPLE.read_text())


@pytest.fixture(scope="module")
def sample_page(sample: dict) -> tuple[str, Page]:
    text = render_report(sample)
    return text, Page(text)


def _assert_offline(page: Page, text: str) -> None:
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "img", "object", "embed", "base"), tag
        for name, value in attrs.items():
            if name in URL_ATTRS and value:
                v = value.strip().lower()
                assert not v.startswith(("http:", "https:", "//", "ftp:", "file:")), (tag, name, value)
    for style in page.styles:
        s = style.lower().replace(" ", "")
        assert "url(http" not in s and "url(//" not in s and "url('http" not in s and 'url("http' not in s
        assert "@import" not in s and "@font-face" not in s
    assert "<!doctype svg" not in text.lower() and "<?xml" not in text


def _assert_numbers(page: Page, result: dict) -> None:
    """Every marked value is the result's value, exactly (after a JSON round trip)."""
    stats = result["statistics"]
    assert page.values
    for attrs in page.values:
        key = attrs["data-key"]
        value = json.loads(attrs["data-value"] or "")
        expected = stats[key] if attrs.get("data-status") is None else stats[key][attrs["data-status"]]
        if isinstance(expected, float) and math.isnan(expected):
            assert isinstance(value, float) and math.isnan(value)
        else:
            assert value == expected and type(value) is type(expected), (key, value, expected)


def _assert_summary_keys(page: Page, stats: dict, prefixes: tuple[str, ...] = ("window_", "")) -> None:
    keys = page.keys()
    for p in prefixes:
        missing = [p + k for k in SUMMARY_KEYS if p + k not in keys]
        assert not missing
        assert {p + "pass_max_latency", p + "fail_max_latency"} & keys


def _plots(page: Page) -> int:
    return page.count("svg")


# ----------------------------------------------------------------------------------------------- variants

def _quantile_list(result: dict) -> dict:
    r = copy.deepcopy(result)
    s = r["statistics"]
    for k in [k for k in s if k.startswith("window_hist_latency_")]:
        del s[k]
    for j, (q, v) in enumerate(((0.5, 0.0131), (0.99, 0.0302), (0.999, 0.0501))):
        s[f"qos_quantile_{j}"], s[f"qos_latency_{j}"], s[f"qos_error_{j}"] = q, v, v * 0.005
    r["parameters"]["options"]["quantile_list"] = "0.5 0.99 0.999"
    return r


def _empty(result: dict) -> dict:
    r = copy.deepcopy(result)
    s = r["statistics"]
    for k, v in list(s.items()):
        if k.startswith("window_hist_latency_"):
            del s[k]
        elif k.endswith(("errors_by_status",)):
            s[k] = {}
        elif k.endswith(("duration", "timestamp", "hist_factor", "hist_base")) or k == "submetrics":
            continue
        elif isinstance(v, int):
            s[k] = 0
        elif isinstance(v, float):
            s[k] = 0.0
    s["window_first_latency"] = s["first_latency"] = None
    r.update(timeline=[], window_histogram=[], by_batch=[])
    return r


def _single_batch(result: dict) -> dict:
    r = copy.deepcopy(result)
    r["by_batch"] = r["by_batch"][:1]
    r["parameters"]["options"]["bs"] = "1"
    return r


def _constant_users(result: dict) -> dict:
    r = _single_batch(result)
    for row in r["timeline"]:
        row["users"] = 4
    return r


def _failures(result: dict) -> dict:
    r = copy.deepcopy(result)
    s = r["statistics"]
    s["window_fail_batches"], s["fail_batches"] = 12, 15
    s["window_fail_frames"], s["fail_frames"] = 27, 33
    s["window_batch_passrate"], s["batch_passrate"] = 1877 / 1889, 2101 / 2116
    s["window_fail_max_latency"] = s["fail_max_latency"] = 0.25     # larger than the pass max: the max row shows it
    s["window_errors_by_status"] = {"UNAVAILABLE": 10, "503": 2}
    s["errors_by_status"] = {"UNAVAILABLE": 12, "503": 3}
    for row in r["timeline"][2:6]:
        row["fail"] = 3
    r["by_batch"][0]["fail_batches"] = 12
    return r


def _failed_only(result: dict) -> dict:
    r = _empty(result)
    s = r["statistics"]
    for p in ("window_", ""):
        s[p + "fail_batches"], s[p + "total_batches"], s[p + "fail_frames"] = 40, 40, 40
        s[p + "fail_max_latency"], s[p + "first_latency"] = 0.031, 0.002
        s[p + "mean_latency"], s[p + "fail_mean_latency"] = 0.004, 0.004
        s[p + "errors_by_status"] = {"INTERNAL": 40}
    r["timeline"] = [{"t": int(r["phases"]["t0"]) + i, "pass": 0, "fail": 10, "frames": 10, "p50": 0.003,
                      "p90": 0.004, "p99": 0.005, "users": 2} for i in range(4)]
    return r


def _old(result: dict) -> dict:
    """A result from before by_batch, window_histogram, the users column and quantiles_reported."""
    r = copy.deepcopy(result)
    for k in ("by_batch", "window_histogram", "quantiles_reported", "thresholds", "workers"):
        del r[k]
    for row in r["timeline"]:
        del row["users"]
    return r


def _with_warmup(result: dict) -> dict:
    r = copy.deepcopy(result)
    s = r["statistics"]
    for k in [k for k in s if not k.startswith(("window_", "qos_")) and k not in ("submetrics",)]:
        s["warmup_" + k] = copy.deepcopy(s[k])
    s["warmup_total_duration"] = 1.0
    r["parameters"]["options"]["report_warmup"] = True
    return r


# --------------------------------------------------------------------------------------------------- tests

def test_sample_is_offline_with_four_plots(sample_page: tuple[str, Page]) -> None:
    text, page = sample_page
    _assert_offline(page, text)
    # throughput, latency over time, histogram, and one breakdown figure (by batch size and by user count)
    assert _plots(page) == 4
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    ids = [a["id"] for _t, a in page.tags if a.get("id")]
    assert len(ids) == len(set(ids)), "ids must be unique across the inline SVGs"


def test_sample_numbers_equal_the_result(sample: dict, sample_page: tuple[str, Page]) -> None:
    _text, page = sample_page
    _assert_numbers(page, sample)
    _assert_summary_keys(page, sample["statistics"])


@pytest.mark.parametrize("variant", ["sample", "failures", "quantile_list", "empty"])
def test_summary_rows_mirror_format_summary(sample: dict, variant: str) -> None:
    """The page's summary table reads as the console's, row for row (the warmup column aside)."""
    r = {"sample": sample, "failures": _failures(sample), "quantile_list": _quantile_list(sample),
         "empty": _empty(sample)}[variant]
    page = Page(render_report(r))
    console = [line.rsplit(maxsplit=2) for line in format_summary(r["statistics"]).splitlines()[1:]]
    html_rows = [row for row in page.summary if row and row[0]]
    assert [r[:3] for r in html_rows] == console


def test_sample_shows_parameters_and_client(sample: dict, sample_page: tuple[str, Page]) -> None:
    _text, page = sample_page
    words = " ".join(page.text)
    p = sample["parameters"]
    for value in ("resnet_dyn", "kfs", "127.0.0.1:19000", "1-2-4", "ovms-refserver", "0.1.0", p["client"]["host"],
                  p["client"]["locust"], p["client"]["platform"], "Window by batch size"):
        assert value in words, value
    assert "Generated by" in words


def test_rendering_is_deterministic(sample: dict, sample_page: tuple[str, Page]) -> None:
    assert render_report(sample) == sample_page[0]


def test_quantile_list_run(sample: dict) -> None:
    r = _quantile_list(sample)
    text = render_report(r)
    page = Page(text)
    _assert_offline(page, text)
    _assert_numbers(page, r)
    assert {"qos_quantile_0", "qos_latency_2", "qos_error_1"} <= page.keys()
    assert _plots(page) == 4


def test_empty_run_renders_table_and_no_data_notes(sample: dict) -> None:
    r = _empty(sample)
    text = render_report(r)
    page = Page(text)
    _assert_offline(page, text)
    _assert_numbers(page, r)
    _assert_summary_keys(page, r["statistics"])
    assert _plots(page) == 0
    words = " ".join(page.text)
    assert "no data" in words and "No requests completed" in words
    first = next(a for a in page.values if a["data-key"] == "window_pass_batches")
    assert first["data-value"] == "0"


def test_single_batch_with_users_ramp_keeps_the_users_breakdown(sample: dict) -> None:
    r = _single_batch(sample)
    page = Page(render_report(r))
    assert _plots(page) == 4
    words = " ".join(page.text)
    assert "user count" in words and "Window by batch size" not in words
    assert not [a for _t, a in page.tags if "data-batch-size" in a]


def test_breakdown_absent_for_single_batch_constant_users(sample: dict) -> None:
    r = _constant_users(sample)
    text = render_report(r)
    page = Page(text)
    assert _plots(page) == 3
    assert "Breakdown" not in text and "Window by batch size" not in text
    _assert_numbers(page, r)


def test_failures_and_errors_by_status(sample: dict) -> None:
    r = _failures(sample)
    text = render_report(r)
    page = Page(text)
    _assert_numbers(page, r)
    errors = {(a["data-key"], a["data-status"]): json.loads(a["data-value"] or "")
              for a in page.values if a.get("data-status") is not None}
    assert errors == {("window_errors_by_status", "UNAVAILABLE"): 10, ("window_errors_by_status", "503"): 2,
                      ("errors_by_status", "UNAVAILABLE"): 12, ("errors_by_status", "503"): 3}
    assert {"window_fail_max_latency", "fail_max_latency"} <= page.keys()   # the larger max is the failed one
    assert "fail req/s" in text
    assert _plots(page) == 4


def test_failed_only_run(sample: dict) -> None:
    r = _failed_only(sample)
    text = render_report(r)
    page = Page(text)
    _assert_offline(page, text)
    _assert_numbers(page, r)
    _assert_summary_keys(page, r["statistics"])
    assert _plots(page) == 2          # throughput and latency over time; the window histogram is empty
    assert "no request in the window" in text


def test_report_warmup_adds_a_column(sample: dict) -> None:
    r = _with_warmup(sample)
    page = Page(render_report(r))
    _assert_numbers(page, r)
    _assert_summary_keys(page, r["statistics"], ("window_", "", "warmup_"))
    assert page.summary[0] == ["", "window", "total", "warmup"]


def test_old_result_without_new_fields(sample: dict) -> None:
    r = _old(sample)
    text = render_report(r)
    page = Page(text)
    _assert_offline(page, text)
    _assert_numbers(page, r)
    assert _plots(page) == 2          # no histogram, no breakdown
    assert "Latency histogram of the window: no data: no request in the window." in " ".join(page.text)


def test_minimal_and_infinite_values() -> None:
    """A bare statistics dict (and the original's Infinity first latency) still renders."""
    r = {"statistics": {"window_pass_batches": 1, "first_latency": math.inf, "mean_latency": None}}
    text = render_report(r, title="bare")
    page = Page(text)
    _assert_numbers(page, r)
    assert "<title>bare</title>" in text


def test_everything_from_the_result_is_escaped(sample: dict) -> None:
    r = copy.deepcopy(sample)
    evil = '"><script>alert(1)</script><img src="http://x/y.png">'
    r["parameters"]["options"]["model_name"] = evil
    r["parameters"]["options"]["shape"] = evil
    r["parameters"]["server"]["name"] = evil
    r["parameters"]["client"]["argv"] = [evil]
    r["statistics"]["window_errors_by_status"] = {evil: 1}
    r["thresholds"] = {"checks": {"check_rps": 1000.0}, "broken": [evil]}
    text = render_report(r, title=evil)
    page = Page(text)
    _assert_offline(page, text)
    assert page.count("script") == 0 and page.count("img") == 0
    assert "Thresholds broken" in text
    _assert_numbers(page, r)


def test_long_run_is_small(sample: dict) -> None:
    """A 10-minute ramp (one timeline row a second, a wide histogram, 4 batch sizes) stays well under 1.5 MB."""
    r = copy.deepcopy(sample)
    t0 = int(r["phases"]["t0"])
    r["phases"]["stop"] = t0 + 600.5
    r["timeline"] = [{"t": t0 + i, "pass": 200 + (i * 37) % 50, "fail": int(i % 7 == 0), "frames": 500,
                      "p50": 0.01 + (i % 13) / 1000, "p90": 0.02 + (i % 11) / 1000, "p99": 0.03 + (i % 17) / 500,
                      "users": 1 + i // 30} for i in range(601)]
    edges = [0.001 * 1.01 ** k for k in range(700)]
    r["window_histogram"] = [[edges[k], edges[k + 1], 1 + (k * 7919) % 300] for k in range(699)]
    r["by_batch"] = r["by_batch"] + [dict(r["by_batch"][-1], batch_size=8)]
    text = render_report(r)
    assert len(text.encode()) < 1_500_000
    assert _plots(Page(text)) == 4

    r["timeline"] = [dict(r["timeline"][i % 600], t=t0 + i) for i in range(3 * 3600)]
    r["phases"]["stop"] = t0 + 3 * 3600
    text = render_report(r)
    assert len(text.encode()) < 1_500_000
    assert "9-second bins" in text


def test_histogram_bins_keep_the_count() -> None:
    from metrics_ext.report import _display_histogram
    buckets = [(0.5 * 1.01 ** k, 0.5 * 1.01 ** (k + 1), float(k % 5 + 1)) for k in range(0, 900, 2)]
    edges, counts, width = _display_histogram(buckets)
    assert len(counts) == len(edges) - 1 <= 90 and width > 1
    assert sum(counts) == sum(b[2] for b in buckets)
    assert all(a < b for a, b in zip(edges, edges[1:], strict=False))
    few = buckets[:10]
    edges, counts, _w = _display_histogram(few)
    assert sum(counts) == sum(b[2] for b in few) and len(counts) == 19     # 10 buckets and 9 gaps at zero


def test_import_does_not_import_matplotlib() -> None:
    code = "import sys, metrics_ext.report; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_first_render_is_quiet_with_a_fresh_config_dir(tmp_path: Path) -> None:
    """The font cache is built on the first use without a word on stdout or stderr."""
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"), PYTHONWARNINGS="default")
    code = ("import json, sys; from metrics_ext.report import render_report; "
            f"render_report(json.loads(__import__('pathlib').Path({str(SAMPLE)!r}).read_text()))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_write_report_is_atomic(sample: dict, tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    path = write_report(sample, target)
    assert path == target and isinstance(path, Path)
    first = target.read_text(encoding="utf-8")
    assert Page(first).count("svg") == 4
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]

    inode = target.stat().st_ino
    assert write_report(_constant_users(sample), str(target)) == target
    assert target.stat().st_ino != inode          # replaced by a new file, never rewritten in place
    assert Page(target.read_text(encoding="utf-8")).count("svg") == 3

    before = target.read_text(encoding="utf-8")
    with pytest.raises((TypeError, AttributeError)):
        write_report({"statistics": 5}, target)   # not a result: the old report stays whole, no debris
    assert target.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]
