"""The OVMS metrics in the Locust web UI: a live tab, and the JSON result and HTML report as downloads.

The tab uses Locust's extension points that need no JavaScript build: ``extended_tabs`` and
``extended_tables`` in the page's template arguments, and an ``extended_stats`` entry added to
every ``/stats/requests`` answer (the UI polls it about every 2 s). Its rows are the console
summary's (window | total), computed from the merged measurements of every process, so the tab
shows the same numbers the JSON result will hold when the test stops.

Routes (behind the web UI's authentication when that is on):

- ``/ovms/stats``: the live statistics as JSON (the OVMS client's flat keys).
- ``/ovms/result.json``: the JSON result (the final one once the test stopped, a live one before).
- ``/ovms/report.html``: the self-contained HTML report of that result.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from metrics_ext.result import summary_rows

__all__ = ["install_web_ui", "TAB_KEY"]

log = logging.getLogger("metrics_ext")
TAB_KEY = "ovms"
STRUCTURE = [{"key": "metric", "title": "OVMS metric"}, {"key": "window", "title": "window"},
             {"key": "total", "title": "total"}]


def tab_rows(stats: dict | None) -> list[dict]:
    if not stats:
        return [{"metric": "no requests yet", "window": "-", "total": "-"}]
    return [{"metric": name, "window": window, "total": total} for name, window, total in summary_rows(stats)]


def install_web_ui(environment: Any, extension: Any) -> None:
    """Add the tab, the download links and the routes to ``environment.web_ui`` (if there is one)."""
    web_ui = environment.web_ui
    if web_ui is None:
        return
    from flask import Response, request  # Locust's own dependency; imported only with a web UI

    web_ui.template_args["extended_tabs"] = [{"title": "OVMS metrics", "key": TAB_KEY}]
    web_ui.template_args["extended_tables"] = [{"key": TAB_KEY, "structure": STRUCTURE}]
    web_ui.template_args["extended_csv_files"] = [
        {"href": "./ovms/result.json", "title": "Download OVMS result (JSON)"},
        {"href": "./ovms/report.html", "title": "Download OVMS report (HTML)"}]
    app, auth = web_ui.app, web_ui.auth_required_if_enabled

    @app.after_request
    def _add_tab_rows(response: Any) -> Any:
        if request.path != "/stats/requests" or response.status_code != 200 or not response.is_json:
            return response
        try:
            data = response.get_json()
            data["extended_stats"] = [{"key": TAB_KEY, "data": tab_rows(extension.live_statistics())}]
            response.set_data(json.dumps(data))
        except Exception as exc:   # the UI must keep working whatever happens to our rows
            log.warning("metrics: web UI tab not updated: %s", exc)
        return response

    @app.route("/ovms/stats")
    @auth
    def _stats() -> Any:
        return Response(json.dumps(extension.live_statistics()), mimetype="application/json")

    def download(body: Any, mimetype: str, filename: str) -> Any:
        """The result's rendering as an attachment, or 404 before the first test."""
        result = extension.live_result()
        if result is None:
            return Response("no test has run yet\n", status=404, mimetype="text/plain")
        return Response(body(result), mimetype=mimetype, headers={"Content-Disposition":
                                                                  f"attachment; filename={filename}"})

    @app.route("/ovms/result.json")
    @auth
    def _result() -> Any:
        return download(lambda result: json.dumps(result, indent=1), "application/json", "ovms-result.json")

    @app.route("/ovms/report.html")
    @auth
    def _report() -> Any:
        from metrics_ext.report import render_report
        return download(render_report, "text/html", "ovms-report.html")
