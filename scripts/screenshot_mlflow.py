"""Screenshot the MLflow UI on the newest run of an experiment (how docs/mlflow-ui.png is made).

    SIFT_HOME=.sift-state .venv/bin/python scripts/screenshot_mlflow.py --out docs/mlflow-ui.png

Starts `mlflow server` on the state folder's store as `sift-ttft ui` does, and walks the UI the way a
person does in headless Chromium with a fresh profile (Debian's package: scripts/ensure-debian-package.sh):
the root page, a click on the experiment (the training runs table), a click on the newest parent run,
Artifacts, its bits-per-byte plot; then saves the page. `--runs-table` saves the runs table instead.
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


def close_assistant(page) -> None:
    """MLflow's AI side panel opens on a first visit and hides half the page."""
    button = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if button.count() and button.first.is_visible():
        button.first.click()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="sift-ttft")
    parser.add_argument("--plot", default="bpb_by_method_domain.png")
    parser.add_argument("--out", default="docs/mlflow-ui.png")
    parser.add_argument("--runs-table", action="store_true", help="save the experiment's runs table instead")
    args = parser.parse_args()
    set_default_env()
    client = MlflowClient(default_tracking_uri())
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {default_tracking_uri()}: run `make demo` first")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5000)  # children start earlier: their compute
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
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_context(viewport={"width": 1500, "height": 820}).new_page()
            page.set_default_timeout(60_000)
            page.goto(url + "/")
            page.get_by_role("link", name=args.experiment, exact=True).first.click()
            run_link = page.get_by_role("link", name=parent.info.run_name, exact=True).first
            expect(run_link).to_be_visible()
            close_assistant(page)
            if args.runs_table:
                page.screenshot(path=args.out)
            else:
                run_link.click()
                close_assistant(page)
                page.get_by_role("tab", name="Artifacts").click()
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
