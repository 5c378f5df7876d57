"""End to end, the way a person uses it: a logged evaluation, the MLflow UI as `sift-ttft ui` serves it,
and headless Chromium with a fresh profile that opens the root page and clicks the experiment.

Asserts what is seen: the model-training runs table (not MLflow's GenAI overview), the parent run named
by what it compares, the comparison metrics as columns, the data inputs; then a child run's page (its
description with the bits-per-byte and uncertainty curves, a Duration that is the compute time) and the
parent's plot. Saves a screenshot of the runs table; with SIFT_UPDATE_SCREENSHOT=1 it replaces the
README's docs/mlflow-ui.png (a normal test run leaves the checkout untouched).

Needs Debian's chromium (scripts/test.sh installs it via scripts/ensure-debian-package.sh).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest
from conftest import make_result_rows

from flows.config import EvaluateConfig
from tracking.inputs import evaluation_inputs
from tracking.log import tracking_run
from tracking.ui import start_server, stop_server, wait_healthy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "mlflow-ui.png"
EXPERIMENT = "sift-ttft-ui-test"  # its own experiment: other tests' runs never mix into the table
RUN_NAME = "evaluate · base,nn,sift · 8 prompts"
CHILD = "prompt-1/sift"
COLUMNS = ("sift/bpb_after", "nn/bpb_after", "paired/sift-vs-nn/mean")
COMPUTE_SECONDS = 150.0  # what each synthetic child "computed": Duration must say minutes, not ms
PLOT = "bpb_by_method_domain.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_evaluation(tmp_path: Path) -> str:
    """An evaluate-like parent run (8 prompts × base/NN/SIFT, summary, paired metric, data inputs) in
    the session's store; returns the experiment id."""
    rows = make_result_rows(prompts=8)
    for row in rows:
        row["seconds"]["total"] = COMPUTE_SECONDS
    prompts = [{"id": r["prompt_id"], "text": f"text of {r['prompt_id']}", "domain": r["domain"], "doc_id": r["prompt_id"]}
               for r in rows if r["method"] == "sift"]
    manifest = {"fingerprint": "abcdef0123456789", "count": 500, "dim": 8, "embedder_id": "tiny"}
    config = EvaluateConfig(method=["base", "nn", "sift"], n=6, k=50)
    with tracking_run(config, experiment=EXPERIMENT, run_name="evaluate", params={"prompts_count": len(prompts)},
                      datasets=evaluation_inputs(manifest, tmp_path / "index", prompts)) as run:
        for row in rows:
            run.log_result(row)
        run.log_summary(rows)
        run.log_metrics({"paired/sift-vs-nn/mean": -0.0123, "paired/sift-vs-nn/ci_low": -0.03,
                         "paired/sift-vs-nn/ci_high": 0.01, "paired/sift-vs-nn/wins": 5})
    return run.experiment_id


def close_assistant(page) -> None:
    """MLflow's AI side panel opens on a first visit and hides half the page."""
    button = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if button.count() and button.first.is_visible():
        button.first.click()


def walk_the_ui(page, url: str, screenshot: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # the first page load compiles a large bundle on 2 busy cores
    # 1. The root page, as `sift-ttft ui` prints it; then a click on the experiment.
    page.goto(url + "/")
    page.get_by_role("link", name=EXPERIMENT, exact=True).first.click()
    # 2. The model-training runs table, not the GenAI overview ("Traces 0").
    expect(page).to_have_url(re.compile(r"/experiments/\d+/runs.*workflowType=machine_learning"))
    run_link = page.get_by_role("link", name=RUN_NAME)
    expect(run_link.first).to_be_visible()
    close_assistant(page)
    for column in COLUMNS:  # the comparison metrics as columns, with no click on "Columns"
        expect(page.get_by_role("columnheader", name=column).first).to_be_visible()
    expect(page.get_by_text("-0.0123").first).to_be_visible()  # the paired mean's cell
    expect(page.get_by_text(re.compile(r"^prompts")).first).to_be_visible()  # the Dataset column
    page.screenshot(path=str(screenshot))
    # 3. A child run, reached by expanding the parent's row.
    page.get_by_role("row").filter(has=run_link.first).get_by_role("button").first.click()
    page.get_by_role("link", name=CHILD, exact=True).first.click()
    expect(page.get_by_role("heading", name=CHILD)).to_be_visible()
    close_assistant(page)
    expect(page.get_by_text("bits per byte", exact=False).first).to_be_visible()
    expect(page.get_by_text("uncertainty σ by pick", exact=False).first).to_be_visible()
    duration = page.get_by_text("Duration", exact=True).locator("xpath=following::*[1]")
    expect(duration.first).to_have_text(re.compile(r"^2\.\dmin$"))  # 150 s of compute, not milliseconds
    metrics = page.get_by_role("link", name=re.compile(r"^(uncertainty|bpb)$"))
    expect(metrics.nth(0)).to_have_text("uncertainty")  # the metrics table opens on the curves
    expect(metrics.nth(1)).to_have_text("bpb")
    # 4. The parent's plot, through the breadcrumb back to the parent run.
    page.get_by_role("link", name=RUN_NAME).first.click()
    expect(page.get_by_role("heading", name=RUN_NAME)).to_be_visible()
    close_assistant(page)
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("plots", exact=True).first.click()
    page.get_by_text(PLOT, exact=True).first.click()
    image = page.get_by_role("img", name=f"plots/{PLOT}")
    expect(image).to_be_visible()
    page.wait_for_function("i => i.complete && i.naturalWidth > 300", arg=image.element_handle())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_person_clicking_the_experiment_sees_the_training_runs(tmp_path):
    assert Path(CHROMIUM).exists() or shutil.which("chromium"), (
        "Debian's chromium is missing: `apt-get install chromium` (scripts/test.sh does, via scripts/ensure-debian-package.sh)")
    from playwright.sync_api import sync_playwright

    log_evaluation(tmp_path)
    screenshot = tmp_path / "mlflow-ui.png"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = tmp_path / "mlflow-server.log"
    server = start_server(port=port, log_file=log_file)  # what `sift-ttft ui` starts
    try:
        try:
            wait_healthy(url, timeout=150, process=server)
        except RuntimeError as err:
            pytest.fail(f"{err}; server log:\n{log_file.read_text()[-3000:]}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport={"width": 1500, "height": 820}).new_page()  # no stored choices
                page.set_default_timeout(60_000)
                try:
                    walk_the_ui(page, url, screenshot)
                except Exception:
                    page.screenshot(path=str(tmp_path / "failure.png"))  # what the page showed, for debugging
                    print(f"failure screenshot: {tmp_path / 'failure.png'}")
                    raise
            finally:
                browser.close()
    finally:
        stop_server(server)
    assert server.poll() is not None, "the server must be stopped"
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 30_000
    if os.environ.get("SIFT_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, README_SCREENSHOT)
