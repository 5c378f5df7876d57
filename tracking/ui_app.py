"""The web app `sift-ttft ui` serves: MLflow's own server app, whose first page opens on our training runs.

Why a wrapper: MLflow 3.17's UI picks its view (GenAI traces or model-training runs) from a per-browser
setting, ``localStorage["mlflow.workflowType_v1"]``, default "genai"; a ``?workflowType=`` URL parameter
overrides it for one page, but the links on the home page drop it. The experiment tag
``mlflow.experimentKind`` that ``tracking.store`` sets is read only when a UI feature flag is off, and in
3.17.2 it is on (``Z0 = () => !0`` in the bundle). No server setting exists. So a person who clicks our
experiment on the home page lands on an empty "Overview / Usage · Traces 0" page.

The runs table likewise shows no metric columns until a person picks them; its column choice lives in
``localStorage["MLflowLocalStorage-1.1-ExperimentPage-[\"<id>\"]-ReactComponentState"]``.

This wrapper passes every request to MLflow's app unchanged, except the HTML page itself (``GET /``),
into which it puts a short script that runs before MLflow's bundle and, only where this browser has
made no choice of its own:

- sets the view to model training;
- for each experiment whose ``sift.ui.columns`` tag (``tracking.naming.UI_COLUMNS_TAG``, written as
  runs log their comparison metrics) lists metrics, shows the Dataset column and those metrics (instead
  of MLflow's default Source, Models, Dataset). A choice made later in
  the UI is kept; a column list we set earlier is updated when new methods appear.

Served through MLflow's plugin hook: ``mlflow server --app-name sift-ttft`` (``tracking.ui``; the package
declares the ``mlflow.app`` entry point, so a team's tracking server can run it too: docs/team.md).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Awaitable, Callable, Mapping

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

TRACKING_URI_ENV = "SIFT_UI_TRACKING_URI"  # the store whose experiments' column tags the page reads
MLFLOW_SERVER_STORE_ENV = "_MLFLOW_SERVER_FILE_STORE"  # mlflow.server.constants.BACKEND_STORE_URI_ENV_VAR
WORKFLOW_KEY = "mlflow.workflowType_v1"
MLFLOW_DEFAULT_COLUMNS = ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"]
# Ours: the data inputs, then the metrics. Source (always "sift-ttft") and Models (none logged) would
# only push the metrics off the screen.
SIFT_COLUMNS = ["attributes.`Dataset`"]
_NO_CACHE_HEADERS = {b"etag", b"last-modified", b"cache-control", b"content-length"}

_SCRIPT = """(function () {
  try {
    var ls = window.localStorage, columns = %(columns)s, defaults = %(defaults)s, ours = %(ours)s;
    if (!ls.getItem(%(workflow_key)s)) ls.setItem(%(workflow_key)s, JSON.stringify("machine_learning"));
    var same = function (a, b) { return JSON.stringify(a) === JSON.stringify(b); };
    Object.keys(columns).forEach(function (id) {
      var key = "MLflowLocalStorage-1.1-ExperimentPage-" + JSON.stringify([id]) + "-ReactComponentState";
      var mine = "sift.ui.columnsSet." + id;
      var state = JSON.parse(ls.getItem(key) || "{}");
      var wanted = ours.concat(columns[id].map(function (k) { return "metrics.`" + k + "`"; }));
      var current = state.selectedColumns;
      var untouched = !current || same(current, defaults) || same(current, JSON.parse(ls.getItem(mine) || "null"));
      if (untouched && !same(current, wanted)) {
        state.selectedColumns = wanted;
        ls.setItem(key, JSON.stringify(state));
        ls.setItem(mine, JSON.stringify(wanted));
      }
    });
  } catch (e) { /* private mode or a changed UI: MLflow's own defaults apply */ }
})();"""


def defaults_script(columns: Mapping[str, list[str]]) -> str:
    """The ``<script>`` element (text) that sets this browser's defaults: the model-training view, and
    ``columns`` (experiment id → metric keys) as runs-table columns, each only where no choice was made."""
    def js(value: Any) -> str:
        return json.dumps(value).replace("<", "\\u003c")  # nothing in the data can close the <script>

    body = _SCRIPT % {"columns": js({str(k): list(v) for k, v in columns.items()}),
                      "defaults": js(MLFLOW_DEFAULT_COLUMNS), "ours": js(SIFT_COLUMNS), "workflow_key": js(WORKFLOW_KEY)}
    return f"<script>{body}</script>"


def inject(html: bytes, script: str) -> bytes:
    """``html`` with ``script`` placed before its first ``<script`` (MLflow's bundle), else before
    ``</head>``, else at the start."""
    data = script.encode("utf-8")
    for marker in (b"<script", b"</head>"):
        at = html.find(marker)
        if at >= 0:
            return html[:at] + data + html[at:]
    return data + html


def experiment_columns(tracking_uri: str | None) -> dict[str, list[str]]:
    """Experiment id → the metric keys its ``UI_COLUMNS_TAG`` lists (experiments without it left out);
    {} when the store cannot be read (the page still loads, with MLflow's defaults)."""
    from tracking.naming import UI_COLUMNS_TAG

    if not tracking_uri:
        return {}
    try:
        from mlflow import MlflowClient

        experiments = MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1000)
    except Exception:  # noqa: BLE001 — a page without our defaults beats no page
        return {}
    out: dict[str, list[str]] = {}
    for exp in experiments:
        try:
            keys = json.loads(exp.tags.get(UI_COLUMNS_TAG) or "[]")
        except ValueError:
            continue
        if isinstance(keys, list) and keys:
            out[exp.experiment_id] = [str(k) for k in keys]
    return out


class DefaultViewApp:
    """ASGI app: ``inner`` (default: ``mlflow.server.fastapi_app.app``, imported on first use) with the
    defaults script put into every HTML answer to ``GET /``. That page is also sent uncached (no ETag,
    ``Cache-Control: no-store``), so a browser picks up new column tags on its next load."""

    def __init__(self, inner: Callable | None = None, tracking_uri: str | None = None):
        self._inner = inner
        self._tracking_uri = tracking_uri

    def _app(self) -> Callable:
        if self._inner is None:
            from mlflow.server.fastapi_app import app as mlflow_app

            self._inner = mlflow_app
        return self._inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app()
        if scope.get("type") != "http" or scope.get("method") != "GET" or scope.get("path") != "/":
            await app(scope, receive, send)
            return
        # Ask for the whole page, never a 304 for a copy that holds yesterday's script.
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in (b"if-none-match", b"if-modified-since")]
        scope = {**scope, "headers": headers}
        # `sift-ttft ui` names the store; a plain `mlflow server --app-name sift-ttft` (a team's tracking
        # server, docs/team.md) has its own backend store in MLflow's server variable.
        uri = self._tracking_uri or os.environ.get(TRACKING_URI_ENV) or os.environ.get(MLFLOW_SERVER_STORE_ENV)
        start: dict | None = None
        chunks: list[bytes] = []

        async def capture(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            response_headers = list(start.get("headers", []))
            is_html = any(k.lower() == b"content-type" and b"text/html" in v.lower() for k, v in response_headers)
            if start.get("status") == 200 and is_html:
                columns = await asyncio.to_thread(experiment_columns, uri)
                body = inject(body, defaults_script(columns))
                response_headers = [(k, v) for k, v in response_headers if k.lower() not in _NO_CACHE_HEADERS]
                response_headers += [(b"cache-control", b"no-store"), (b"content-length", str(len(body)).encode())]
            await send({**start, "headers": response_headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await app(scope, receive, capture)


app = DefaultViewApp()  # an instance, not a function: MLflow would otherwise call it as an app factory
