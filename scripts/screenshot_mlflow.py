"""Screenshot the MLflow UI on the newest run of an experiment (how docs/mlflow-ui.png is made).

    SIFT_HOME=.sift-state .venv/bin/python scripts/screenshot_mlflow.py --out docs/mlflow-ui.png

Starts `mlflow server` on the state folder's store (as `sift-ttft ui` does), opens the newest parent
run of the experiment in headless Chromium (Debian's package: scripts/ensure-chromium.sh), shows its
bits-per-byte plot and saves the page.
"""

from __future__ import annotations

import argparse
import socket

from mlflow.tracking import MlflowClient

from sift.env import set_default_env
from tracking.store import default_tracking_uri
from tracking.ui import start_server, stop_server, wait_healthy

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="sift-ttft")
    parser.add_argument("--plot", default="bpb_by_method_domain.png")
    parser.add_argument("--out", default="docs/mlflow-ui.png")
    args = parser.parse_args()
    set_default_env()
    client = MlflowClient(default_tracking_uri())
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {default_tracking_uri()}: run `make demo` first")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    parent = next((r for r in runs if "mlflow.parentRunId" not in r.data.tags), None)
    if parent is None:
        raise SystemExit("no finished parent run to show")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = start_server(port=port)
    try:
        wait_healthy(url, timeout=120, process=server)
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=60_000)
        view = "?workflowType=machine_learning"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 820})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}{view}")
            close_assistant = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
            page.get_by_role("tab", name="Artifacts").click()
            if close_assistant.count():
                close_assistant.first.click()
            page.get_by_text("plots", exact=True).first.click()
            page.get_by_text(args.plot, exact=True).first.click()
            image = page.get_by_role("img", name=f"plots/{args.plot}")
            expect(image).to_be_visible()
            page.wait_for_function("i => i.complete && i.naturalWidth > 300", arg=image.element_handle())
            page.screenshot(path=args.out)
            browser.close()
    finally:
        stop_server(server)
    print(f"saved {args.out} (run {parent.info.run_id})")


if __name__ == "__main__":
    main()
