"""Parent-run data inputs, system metrics, run names, UI columns and child-run durations, read back
from the session's real MLflow sqlite store (conftest) through MlflowClient."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import make_result_rows

from flows.config import EvaluateConfig
from tracking.inputs import DataInput, evaluation_inputs, index_input, prompts_digest, prompts_input
from tracking.log import tracking_run
from tracking.naming import UI_COLUMNS_TAG, comparison_name, parent_run_name, result_description, ui_columns
from tracking.store import default_tracking_uri

MANIFEST = {"fingerprint": "0123456789abcdef", "count": 8000, "dim": 384, "embedder_id": "tiny-bert@1",
            "index_type": "flat", "corpus_fingerprint": "feedbeeffeedbeef"}
PROMPTS = [{"id": "p-code", "text": "def f(x): return x", "domain": "code", "doc_id": "d1"},
           {"id": "p-wiki", "text": "Paris is the capital of France.", "domain": "wiki", "doc_id": "d2"},
           {"id": "p-wiki-2", "text": "Rome is the capital of Italy.", "domain": "wiki", "doc_id": "d3"}]


@pytest.fixture(scope="module")
def client(state_dir):
    from mlflow import MlflowClient

    assert default_tracking_uri().startswith(f"sqlite:///{state_dir}")
    return MlflowClient(tracking_uri=default_tracking_uri())


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


# ------------------------------------------------------------------------------------------ datasets


def test_prompt_digest_follows_content_not_order():
    assert prompts_digest(PROMPTS) == prompts_digest(list(reversed(PROMPTS)))
    changed = [dict(PROMPTS[0], text="def f(x): return x + 1"), *PROMPTS[1:]]
    assert prompts_digest(changed) != prompts_digest(PROMPTS)
    assert prompts_digest(PROMPTS[:2]) != prompts_digest(PROMPTS)
    assert len(prompts_digest(PROMPTS)) == 16


def test_inputs_refuse_what_cannot_be_named():
    with pytest.raises(ValueError, match="fingerprint"):
        index_input({"count": 3})
    with pytest.raises(ValueError, match="no prompts"):
        prompts_input([])
    with pytest.raises(ValueError, match="36"):
        DataInput("x", "d" * 37, "", "training")


def test_parent_run_logs_index_and_prompts_as_datasets_filterable_by_fingerprint(client, tmp_path):
    index_dir, prompts_file = tmp_path / "my-index", tmp_path / "prompts.jsonl"
    inputs = evaluation_inputs(MANIFEST, index_dir, PROMPTS, prompts_file)
    with tracking_run({"n": 2}, experiment="tracking-test-inputs", run_name="with data", datasets=inputs,
                      system_metrics=False) as tracker:
        pass
    with tracking_run({"n": 2}, experiment="tracking-test-inputs", run_name="other data", system_metrics=False,
                      datasets=evaluation_inputs(dict(MANIFEST, fingerprint="ffffffffffffffff"), index_dir,
                                                 PROMPTS[:1])):
        pass
    run = client.get_run(tracker.run_id)
    logged = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(logged) == {"index", "prompts"}
    index, prompts = logged["index"], logged["prompts"]
    assert index.dataset.digest == MANIFEST["fingerprint"]
    assert prompts.dataset.digest == prompts_digest(PROMPTS)
    assert json.loads(index.dataset.source) == {"uri": str(index_dir.resolve())}
    assert json.loads(prompts.dataset.source) == {"uri": str(prompts_file.resolve())}
    assert {t.key: t.value for t in index.tags}["mlflow.data.context"] == "training"
    assert {t.key: t.value for t in prompts.tags}["mlflow.data.context"] == "evaluation"
    assert json.loads(index.dataset.profile)["num_rows"] == 8000
    assert json.loads(prompts.dataset.profile) == {"num_rows": 3, "domains": {"code": 1, "wiki": 2}}
    assert [c["name"] for c in json.loads(prompts.dataset.schema)["mlflow_colspec"]] == ["id", "text", "domain", "doc_id"]
    # Filtering runs by data: only the run on this index and these prompts matches both digests.
    exp = tracker.experiment_id
    by_index = client.search_runs([exp], f"dataset.name = 'index' AND dataset.digest = '{MANIFEST['fingerprint']}'")
    assert [r.info.run_id for r in by_index] == [tracker.run_id]
    by_prompts = client.search_runs([exp], f"dataset.digest = '{prompts_digest(PROMPTS)}'")
    assert [r.info.run_id for r in by_prompts] == [tracker.run_id]


# ------------------------------------------------------------------------------------ system metrics


def test_system_metrics_are_sampled_into_the_parent_run_and_stop_with_it(client, monkeypatch):
    pytest.importorskip("psutil")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's own override
    before = len(monitor_threads())
    with tracking_run({"n": 1}, experiment="tracking-test-sysmetrics", run_name="sampled") as tracker:
        assert len(monitor_threads()) == before + 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                k.startswith("system/") for k in client.get_run(tracker.run_id).data.metrics):
            time.sleep(0.2)
    assert len(monitor_threads()) == before, "the sampler must stop when the run ends"
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics


def test_system_metrics_thread_stops_when_the_run_fails(client, monkeypatch):
    pytest.importorskip("psutil")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    before = len(monitor_threads())
    with pytest.raises(RuntimeError, match="boom"):
        with tracking_run({"n": 1}, experiment="tracking-test-sysmetrics", run_name="fails") as tracker:
            assert len(monitor_threads()) == before + 1
            raise RuntimeError("boom")
    assert len(monitor_threads()) == before
    assert client.get_run(tracker.run_id).info.status == "FAILED"


def test_system_metrics_can_be_turned_off(client, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    before = len(monitor_threads())
    with tracking_run({"n": 1}, experiment="tracking-test-sysmetrics", run_name="off"):
        assert len(monitor_threads()) == before


# ---------------------------------------------------------------------------------- names and columns


def test_parent_run_name_says_what_is_compared():
    cfg = EvaluateConfig(method=["nn", "sift"])
    assert comparison_name("evaluate", ["nn", "sift"], 48) == "evaluate · nn,sift · 48 prompts"
    assert parent_run_name("evaluate", cfg, {"prompts_count": 48}) == "evaluate · nn,sift · 48 prompts"
    assert parent_run_name(None, cfg, {"prompts_count": 1}) == "evaluate · nn,sift · 1 prompt"
    assert parent_run_name("demo", {"method": ["base", "sift"]}, {"prompts_count": 6}) == "demo · base,sift · 6 prompts"
    assert parent_run_name("my own name", cfg, {"prompts_count": 48}) == "my own name"  # the caller's choice stays
    assert parent_run_name("evaluate", cfg, {}) == "evaluate"  # no prompt count: nothing to say
    assert parent_run_name("tune s1", cfg, {"prompts_count": 4}) == "tune s1"


def test_ui_columns_are_bpb_after_per_method_then_paired_means():
    keys = ["nn/bpb_after", "nn/code/bpb_after", "sift/bpb_after", "paired/sift-vs-nn/mean",
            "paired/sift-vs-nn/ci_low", "sift/bpb_gain", "paired/sift_vs_nn/bpb_after_diff"]
    assert ui_columns(keys) == ["nn/bpb_after", "sift/bpb_after", "paired/sift-vs-nn/mean"]


@pytest.mark.slow  # logs 12 child runs: ~5 s of sqlite commits on 2 busy cores
def test_evaluation_run_is_named_lists_columns_and_children_last_their_compute(client):
    rows = make_result_rows(prompts=4, methods=("nn", "sift"))
    for row in rows:  # real compute is minutes; the synthetic rows say seconds
        row["seconds"]["total"] = 120.0 + row["steps"]
    config = EvaluateConfig(method=["nn", "sift"])
    with tracking_run(config, experiment="tracking-test-names", run_name="evaluate", system_metrics=False,
                      params={"prompts_count": 4}) as tracker:
        child_ids = [tracker.log_result(row) for row in rows]
        tracker.log_summary(rows)
        tracker.log_metrics({"paired/sift-vs-nn/mean": -0.01, "paired/sift-vs-nn/ci_low": -0.03})
    parent = client.get_run(tracker.run_id)
    assert parent.info.run_name == "evaluate · nn,sift · 4 prompts"
    columns = json.loads(client.get_experiment(tracker.experiment_id).tags[UI_COLUMNS_TAG])
    assert columns == ["nn/bpb_after", "sift/bpb_after", "paired/sift-vs-nn/mean"]
    for row, child_id in zip(rows, child_ids):
        child = client.get_run(child_id)
        duration = (child.info.end_time - child.info.start_time) / 1000
        assert duration == pytest.approx(row["seconds"]["total"], abs=2.0), "Duration must be the compute"
        assert child.info.start_time >= parent.info.start_time - 200_000
        note = child.data.tags["mlflow.note.content"]
        assert "bits per byte" in note and "uncertainty σ" in note and f"{row['seconds']['total']:.1f} s" in note


def test_result_description_shows_the_curves_first():
    row = make_result_rows(prompts=1, methods=("sift",))[0]
    text = result_description(row, 12.5)
    assert text.index("bits per byte") < text.index("uncertainty σ") < text.index("compute")
    assert f"{row['uncertainties'][0]:.3f} (0)" in text and f"({len(row['uncertainties']) - 1})" in text
    assert "12.5 s" in text
