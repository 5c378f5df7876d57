"""tracking/: a real MLflow sqlite store in a temporary folder, read back through MlflowClient."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_result_rows

from flows.config import EvaluateConfig
from tracking import plots
from sift.stats import summarize
from tracking.keys import clean_key, metric_key
from tracking.log import NullLogger, tracking_run
from tracking.metrics import result_metrics, selection_table
from tracking.reaper import RunTerminated, owner_alive, owner_tags
from tracking.store import TrackingUnreachable, check_reachable, default_tracking_uri, get_or_create_experiment
from tracking.ui import reap_store, server_command, server_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("plots/bpb_by_method_domain.png", "plots/bpb_gain_by_method_domain.png", "plots/paired_vs_nn.png",
         "plots/uncertainty_vs_bpb_after.png", "plots/uncertainty_vs_bpb_gain.png", "plots/curves.png")


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store(state_dir):
    """The test session's sqlite store (conftest: MLFLOW_TRACKING_URI in the session's state folder).

    Shared on purpose: building MLflow's schema takes 5-10 s on 2 cores, paid once per session.
    Every experiment here is named tracking-test-* so other tests' runs never mix in.
    """
    assert default_tracking_uri().startswith(f"sqlite:///{state_dir}")
    return state_dir


@pytest.fixture(scope="module")
def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=default_tracking_uri())


@pytest.fixture(scope="module")
def logged(store, client):
    """One evaluate-like flow run: config + fingerprints, one child per row, the summary."""
    rows = make_result_rows(prompts=6)
    config = EvaluateConfig(n=6, k=50, method=["base", "nn", "sift"])
    fingerprints = {"index_fingerprint": "0123abcd", "corpus_fingerprint": "feedbeef",
                    "model_id": "tiny-llama", "embedder_id": "tiny-bert"}
    with tracking_run(config, experiment="tracking-test-eval", run_name="evaluate", params=fingerprints) as tracker:
        child_ids = [tracker.log_result(row) for row in rows]
        summary = tracker.log_summary(rows)
    return {"rows": rows, "summary": summary, "run_id": tracker.run_id, "child_ids": child_ids,
            "experiment_id": tracker.experiment_id}


def test_default_store_is_the_state_folder_sqlite_with_four_slashes(store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri = default_tracking_uri()
    assert uri == f"sqlite:////{str(store).lstrip('/')}/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert default_tracking_uri() == "http://tracking.example:5000"


def test_experiment_has_explicit_artifact_location_and_is_restored_after_delete(store, client):
    exp_id = get_or_create_experiment("tracking-test-location")
    exp = client.get_experiment(exp_id)
    assert exp.artifact_location == (store / "mlflow" / "artifacts" / "tracking-test-location").as_uri()
    assert get_or_create_experiment("tracking-test-location") == exp_id
    client.delete_experiment(exp_id)
    assert get_or_create_experiment("tracking-test-location") == exp_id
    assert client.get_experiment(exp_id).lifecycle_stage == "active"


@pytest.mark.slow  # shares the `logged` fixture: ~5-10 s of sqlite commits on 2 busy cores
def test_parent_run_params_hold_config_fingerprints_versions_and_commit(logged, client):
    run = client.get_run(logged["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "evaluate"
    params = run.data.params
    assert params["n"] == "6" and params["k"] == "50" and params["lam"] == "0.1"
    assert json.loads(params["method"]) == ["base", "nn", "sift"]
    assert set(EvaluateConfig.model_fields) <= set(params)  # the whole config
    assert params["index_fingerprint"] == "0123abcd" and params["corpus_fingerprint"] == "feedbeef"
    assert params["model_id"] == "tiny-llama" and params["embedder_id"] == "tiny-bert"
    for package in ("torch", "transformers", "mlflow", "numpy", "faiss-cpu"):
        assert params[f"version.{package}"] not in ("", "missing")
    assert len(params["git_commit"]) == 40  # the tests run from the git checkout
    assert run.data.tags["mlflow.source.git.commit"] == params["git_commit"]


@pytest.mark.slow  # shares the `logged` fixture: ~5-10 s of sqlite commits on 2 busy cores
def test_one_finished_child_run_per_prompt_and_method(logged, client):
    children = client.search_runs([logged["experiment_id"]],
                                  filter_string=f"tags.mlflow.parentRunId = '{logged['run_id']}'", max_results=1000)
    assert sorted(r.info.run_id for r in children) == sorted(logged["child_ids"])
    assert {r.info.status for r in children} == {"FINISHED"}
    names = {r.info.run_name for r in children}
    assert {f"{row['prompt_id']}/{row['method']}" for row in logged["rows"]} == names


@pytest.mark.slow  # shares the `logged` fixture: ~5-10 s of sqlite commits on 2 busy cores
def test_child_metrics_params_and_selection_table(logged, client, tmp_path):
    for row, child_id in zip(logged["rows"], logged["child_ids"]):
        run = client.get_run(child_id)
        assert run.data.params == {"prompt_id": row["prompt_id"], "method": row["method"], "domain": row["domain"]}
        m = run.data.metrics
        assert m["bpb_gain"] == pytest.approx(row["bpb_before"] - row["bpb_after"])
        assert m["bpb_before"] == pytest.approx(row["bpb_before"]) and m["bpb_after"] == pytest.approx(row["bpb_after"])
        assert m["steps"] == row["steps"] and m["stopped_early"] == float(row["stopped_early"])
        assert m["tokens"] == row["tokens"] and m["flops"] == pytest.approx(row["flops"])
        for phase, seconds in row["seconds"].items():
            assert m[f"seconds_{phase}"] == pytest.approx(seconds)
        # σ_n at step n for every pick (σ_0 included).
        sigma = sorted((x.step, x.value) for x in client.get_metric_history(child_id, "uncertainty"))
        assert sigma == [(n, pytest.approx(s)) for n, s in enumerate(row["uncertainties"])]
        # bpb at step 0, at every curve point, and after the last step.
        bpb = dict((x.step, x.value) for x in client.get_metric_history(child_id, "bpb"))
        assert bpb[0] == pytest.approx(row["bpb_before"]) and bpb[row["steps"]] == pytest.approx(row["bpb_after"])
        for step, value in row["bpb_curve"]:
            assert bpb[step] == pytest.approx(value)
        artifacts = {a.path for a in client.list_artifacts(child_id)}
        if row["method"] == "base":
            assert artifacts == set()  # nothing was picked
            continue
        assert artifacts == {"selection.json"}
        table = json.loads(Path(client.download_artifacts(child_id, "selection.json", str(tmp_path))).read_text())
        columns = table["columns"]
        picks = [dict(zip(columns, values)) for values in table["data"]]
        assert [p["rank"] for p in picks] == list(range(1, len(row["picked_ids"]) + 1))
        assert [p["corpus_id"] for p in picks] == row["picked_ids"]
        assert [p["seq_id"] for p in picks] == row["picked_seq_ids"]
        assert [p["domain"] for p in picks] == row["picked_domains"]
        assert [p["score"] for p in picks] == pytest.approx(row["picked_scores"])
        assert [p["repeated"] for p in picks] == row["repeated"]
        assert sum(p["trained"] for p in picks) == row["steps"]


@pytest.mark.slow  # shares the `logged` fixture: ~5-10 s of sqlite commits on 2 busy cores
def test_parent_metrics_are_means_with_bootstrap_intervals_per_method_and_domain(logged, client):
    m = client.get_run(logged["run_id"]).data.metrics
    rows = logged["rows"]
    for method in ("base", "nn", "sift"):
        after = [r["bpb_after"] for r in rows if r["method"] == method]
        assert m[f"{method}/bpb_after"] == pytest.approx(np.mean(after))
        assert m[f"{method}/bpb_after_lo"] <= m[f"{method}/bpb_after"] <= m[f"{method}/bpb_after_hi"]
        assert m[f"{method}/count"] == len(after)
        # "q&a forum" is not a legal metric name: its per-domain metrics use the sanitised name.
        for domain, key in (("code", "code"), ("q&a forum", "q_a forum")):
            mine = [r["bpb_after"] for r in rows if r["method"] == method and r["domain"] == domain]
            assert m[f"{method}/{key}/bpb_after"] == pytest.approx(np.mean(mine))
            assert f"{method}/{key}/bpb_gain_hi" in m
    gain = [r["bpb_before"] - r["bpb_after"] for r in rows if r["method"] == "sift"]
    assert m["sift/bpb_gain"] == pytest.approx(np.mean(gain))
    assert "sift/spearman_sigma_gain" in m and -1 <= m["sift/spearman_sigma_gain"] <= 1
    # every method against the reference (nn, the default): paired/<method>-vs-nn/{mean,ci_low,ci_high,wins}
    pairs = [(a, b) for a in rows for b in rows
             if a["method"] == "sift" and b["method"] == "nn" and a["prompt_id"] == b["prompt_id"]]
    diff = [a["bpb_after"] - b["bpb_after"] for a, b in pairs]
    assert m["paired/sift-vs-nn/mean"] == pytest.approx(np.mean(diff))
    assert m["paired/sift-vs-nn/ci_low"] <= m["paired/sift-vs-nn/mean"] <= m["paired/sift-vs-nn/ci_high"]
    assert m["paired/sift-vs-nn/wins"] == sum(d < 0 for d in diff)
    assert "paired/base-vs-nn/mean" in m and not any(k.startswith("paired/nn-vs") for k in m)


@pytest.mark.slow  # shares the `logged` fixture: ~5-10 s of sqlite commits on 2 busy cores
def test_parent_artifacts_summary_rows_and_plots(logged, client, tmp_path):
    run_id = logged["run_id"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.csv", "summary.json", "results.jsonl", "plots"} <= top
    assert set(PLOTS) <= {a.path for a in client.list_artifacts(run_id, "plots")}
    local = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    csv_lines = (local / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,domain,count,bpb_before")
    assert len(csv_lines) == 1 + 3 * (4 + 1)  # 3 methods × (4 domains + all)
    assert json.loads((local / "summary.json").read_text())["methods"] == ["base", "nn", "sift"]
    assert len((local / "results.jsonl").read_text().splitlines()) == len(logged["rows"])
    for plot in PLOTS:
        data = (local / plot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, plot


def test_a_crash_marks_the_parent_and_open_children_failed(store, client, result_rows):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking_run({"n": 1}, experiment="tracking-test-crash", run_name="crashes") as tracker:
            done = tracker.log_result(result_rows[0])
            with tracker._child("in-flight", {}):  # a child still being written when the flow dies
                raise RuntimeError("boom")
    parent = client.get_run(tracker.run_id)
    assert parent.info.status == "FAILED" and "RuntimeError: boom" in parent.data.tags["error"]
    assert client.get_run(done).info.status == "FINISHED"
    runs = client.search_runs([tracker.experiment_id])
    done_name = f"{result_rows[0]['prompt_id']}/{result_rows[0]['method']}"
    assert {r.info.run_name: r.info.status for r in runs} == {"crashes": "FAILED", "in-flight": "FAILED",
                                                              done_name: "FINISHED"}
    with pytest.raises(RuntimeError, match="has ended"):
        tracker.log_metrics({"late": 1.0})


def test_ctrl_c_marks_the_run_killed(store, client):
    with pytest.raises(KeyboardInterrupt):
        with tracking_run({"n": 1}, experiment="tracking-test-crash", run_name="interrupted") as tracker:
            raise KeyboardInterrupt
    assert client.get_run(tracker.run_id).info.status == "KILLED"


def test_unreachable_server_fails_fast_with_a_clear_message(store, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingUnreachable) as err:
        check_reachable(uri, timeout=2)
    assert time.monotonic() - start < 3
    message = str(err.value)
    assert uri in message and "not reachable" in message and "--no-tracking" in message
    # The flow's entry point refuses before creating anything (MLflow's own client would retry for minutes).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(TrackingUnreachable):
        with tracking_run({"n": 1}, experiment="never-created", reachability_timeout=2):
            pytest.fail("the block must not run")
    assert time.monotonic() - start < 3


def test_unwritable_sqlite_folder_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingUnreachable, match="cannot create the folder"):
        check_reachable(f"sqlite:///{blocker}/sub/mlflow.db")
    with pytest.raises(ValueError, match="timeout"):
        check_reachable(f"sqlite:///{tmp_path}/mlflow.db", timeout=0)


def test_no_tracking_logger_records_nothing_but_returns_the_summary(tmp_path, monkeypatch, result_rows):
    db = tmp_path / "never.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with tracking_run({"n": 1}, enabled=False) as tracker:
        assert isinstance(tracker, NullLogger) and not tracker.enabled and tracker.run_id is None
        assert tracker.log_result(result_rows[0]) is None
        tracker.log_params({"a": 1})
        tracker.log_metrics({"b": 2.0})
        tracker.log_landscape([{"lam": 0.1}], [1.0])
        summary = tracker.log_summary(result_rows)
    assert summary["methods"] == ["base", "nn", "sift"]
    assert not db.exists()


def test_params_are_immutable_and_names_are_sanitised(store, client):
    assert metric_key("recall@10") == "recall_10"
    assert metric_key("sift", "a/b", "bpb") == "sift/a_b/bpb" and clean_key("a/b@c") == "a/b_c"
    with tracking_run({"lam": 0.1}, experiment="tracking-test-params") as tracker:
        tracker.log_params({"lam": 0.1, "extra": "x"})  # same value again: fine
        with pytest.raises(ValueError, match="'lam' is already"):
            tracker.log_params({"lam": 0.2})
        tracker.log_metrics({"recall@10": 0.5, "nan": math.nan})
    run = client.get_run(tracker.run_id)
    assert run.data.metrics == {"recall_10": 0.5} and run.data.params["extra"] == "x"


def test_landscape_logs_plot_and_trials_table(store, client):
    params = [{"lam": 10 ** x, "alpha": None if i % 4 == 0 else 1.5 ** i} for i, x in enumerate(np.linspace(-3, 1, 9))]
    values = list(np.linspace(1.0, 0.8, 9))
    with tracking_run({"trials": 9}, experiment="tracking-test-tune") as tracker:
        tracker.log_landscape(params, values)
    paths = {a.path for a in client.list_artifacts(tracker.run_id, "plots")}
    assert paths == {"plots/landscape.png"}
    assert "trials.json" in {a.path for a in client.list_artifacts(tracker.run_id)}


def test_result_metrics_and_selection_table_follow_the_row(result_rows):
    sift_row = next(r for r in result_rows if r["method"] == "sift" and r["stopped_early"])
    keys = {(k, s) for k, _, s in result_metrics(sift_row)}
    assert {("uncertainty", n) for n in range(len(sift_row["uncertainties"]))} <= keys
    assert ("bpb", 0) in keys and ("bpb", sift_row["steps"]) in keys
    table = selection_table(sift_row)
    assert table["trained"].count(True) == sift_row["steps"] < len(table["rank"])  # stopped early
    assert table["uncertainty_after"][0] == sift_row["uncertainties"][1]


def test_plots_spearman_is_the_stats_rho():  # sift.stats itself: tests/test_stats.py
    assert plots.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert plots.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(plots.spearman([1, 2], [1, 2]))


def test_plots_titles_carry_the_story(result_rows):
    fig = plots.plot_uncertainty_vs_bpb(result_rows, "bpb_gain")
    rho = plots.spearman(
        [plots.final_uncertainty(r) for r in result_rows if r["method"] != "base"],
        [r["bpb_before"] - r["bpb_after"] for r in result_rows if r["method"] != "base"],
    )
    assert f"Spearman ρ = {rho:+.2f}" in fig.axes[0].get_title()
    fig = plots.plot_bpb_by_method_domain(summarize(result_rows))
    assert [t.get_text().split("\n")[0] for t in fig.axes[0].get_xticklabels()] == [
        "code", "wiki", "fiction", "q&a forum", "all"]
    with pytest.raises(ValueError, match="differ in length"):
        plots.plot_landscape([{"lam": 1.0}], [1.0, 2.0])
    with pytest.raises(ValueError, match="y must be"):
        plots.plot_uncertainty_vs_bpb(result_rows, "steps")


def test_ui_server_command_is_loopback_one_worker_no_jobs(store):
    cmd = server_command(port=5055)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == default_tracking_uri()
    assert cmd[cmd.index("--artifacts-destination") + 1] == str(store / "mlflow" / "artifacts")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5055"
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert server_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    with pytest.raises(ValueError, match="already a server"):
        server_command(tracking_uri="http://127.0.0.1:5000")
    with pytest.raises(ValueError, match="port"):
        server_command(port=70000)


# A flow that opens a parent run and one child run, says so, then dies: by SIGKILL (no cleanup can run)
# or by waiting for the test's SIGTERM.
DYING_FLOW = """
import os, signal, sys, time
from tracking.log import tracking_run
with tracking_run({"n": 1}, experiment=sys.argv[1], run_name="dies") as tracker:
    with tracker._child("in-flight", {}) as child_id:
        print(tracker.run_id, child_id, flush=True)
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(120)
"""
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dying_flows(store):
    """Both DYING_FLOW subprocesses ("kill", "term"), started together so their imports of MLflow
    overlap; each maps to (process, parent run id, child run id) once both runs exist."""
    procs = {how: subprocess.Popen([sys.executable, "-c", DYING_FLOW, f"tracking-test-{how}", how], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for how in ("kill", "term")}
    try:
        flows = {}
        for how, proc in procs.items():
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=30)
                pytest.fail(f"the {how} flow died before opening its runs:\n{proc.stderr.read()[-3000:]}")
            flows[how] = (proc, *line.split())
        yield flows
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow  # `dying_flows`: two subprocesses that import mlflow, ~5-10 s on 2 busy cores
def test_sigkilled_flow_runs_are_reaped_by_the_next_run_on_this_host(dying_flows, client):
    proc, parent_id, child_id = dying_flows["kill"]
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert {client.get_run(r).info.status for r in (parent_id, child_id)} == {"RUNNING"}  # what we fix
    exp_id = client.get_run(parent_id).info.experiment_id
    # Runs the reaper must leave alone: ours (alive), another host's, and one without owner tags.
    mine = client.create_run(exp_id, run_name="alive", tags=owner_tags()).info.run_id
    elsewhere = client.create_run(exp_id, run_name="elsewhere",
                                  tags={**owner_tags(), "sift.host": "another-host"}).info.run_id
    untagged = client.create_run(exp_id, run_name="untagged").info.run_id
    # Our PID with another start time: the PID was reused by us, the owner is gone.
    reused = client.create_run(exp_id, run_name="reused-pid",
                               tags={**owner_tags(), "sift.start": "old-boot:1"}).info.run_id

    with tracking_run({"n": 1}, experiment="tracking-test-kill", run_name="next") as tracker:
        pass
    for run_id in (parent_id, child_id, reused):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and run.data.tags["sift.reaped"] == "owner process gone"
    for run_id in (mine, elsewhere, untagged):
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING" and "sift.reaped" not in run.data.tags
        client.set_terminated(run_id, "FINISHED")  # leave no RUNNING run behind for later tests
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    dead_tags = client.get_run(parent_id).data.tags
    assert dead_tags["sift.pid"] == str(proc.pid) and dead_tags["sift.host"] == socket.gethostname()
    # `sift-ttft ui` reaps every experiment of the store before serving.
    other_exp = get_or_create_experiment("tracking-test-kill-ui")
    orphan = client.create_run(other_exp, tags={k: dead_tags[k] for k in ("sift.pid", "sift.host", "sift.start")
                                                if k in dead_tags}).info.run_id
    assert orphan in reap_store(default_tracking_uri())
    assert client.get_run(orphan).info.status == "FAILED"


@pytest.mark.slow  # shares `dying_flows`
def test_sigtermed_flow_marks_its_runs_killed_and_still_dies_by_sigterm(dying_flows, client):
    proc, parent_id, child_id = dying_flows["term"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM  # the default handler still ends the process
    parent = client.get_run(parent_id)
    assert parent.info.status == "KILLED" and "SIGTERM" in parent.data.tags["error"]
    assert client.get_run(child_id).info.status == "KILLED"


def test_sigterm_raises_inside_the_block_then_reaches_the_previous_handler(store, client):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with pytest.raises(RunTerminated):
            with tracking_run({"n": 1}, experiment="tracking-test-crash", run_name="terminated") as tracker:
                assert signal.getsignal(signal.SIGTERM) is not previous
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                pytest.fail("SIGTERM must interrupt the block")
        assert received == [signal.SIGTERM]  # passed on, not swallowed
        assert client.get_run(tracker.run_id).info.status == "KILLED"
        handler = signal.getsignal(signal.SIGTERM)
        with tracking_run({"n": 1}, experiment="tracking-test-crash", run_name="restores"):
            pass
        assert signal.getsignal(signal.SIGTERM) is handler  # restored on a normal exit too
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_owner_alive_tells_live_dead_zombie_and_reused_pids():
    tags = owner_tags()
    assert tags["sift.pid"] == str(os.getpid()) and tags["sift.host"] == socket.gethostname()
    assert owner_alive(os.getpid(), tags.get("sift.start"))
    assert not owner_alive(os.getpid(), "old-boot:1")  # same PID, another process
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not owner_alive(zombie.pid)  # exited, not yet waited for: it will never end its runs
    zombie.wait()
    assert not owner_alive(zombie.pid)
    with pytest.raises(ValueError, match="pid"):
        owner_alive(0)


def test_names_moved_out_of_tracking_log_are_still_importable_from_it():
    """tracking/log.py was split by job; flows and other branches import these from tracking.log."""
    import tracking.keys
    import tracking.log
    import tracking.metrics
    import tracking.provenance
    import tracking.reaper

    homes = {tracking.keys: ("metric_key", "clean_key", "MAX_PARAM_CHARS"),
             tracking.metrics: ("result_metrics", "selection_table", "summary_metrics", "summary_csv"),
             tracking.provenance: ("package_versions", "git_commit", "PACKAGES"),
             tracking.reaper: ("owner_tags", "owner_alive", "process_start", "reap_orphan_runs", "RunTerminated",
                               "sigterm_raises", "OWNER_PID", "OWNER_HOST", "OWNER_START", "REAPED")}
    for module, names in homes.items():
        for name in names:
            assert getattr(tracking.log, name) is getattr(module, name), name
