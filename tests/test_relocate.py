"""A relocatable state folder: copy SIFT_HOME, move the original away, and the copy still finds its default
index, reuses its cached tasks, and records MLflow runs with its own artifacts, never the original's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_a_copied_state_folder_keeps_its_index_caches_and_runs(prefect_server, tmp_path, monkeypatch, tiny_corpus_file,
                                                                tiny_encoder_dir, tiny_lm_dir, tiny_prompts_file):
    from flow_helpers import comparable, tiny_evaluate_config, tiny_index_config
    from mlflow import MlflowClient

    from flows.build_index import build_index, record_default_index
    from flows.evaluate import evaluate
    from tracking.store import default_tracking_uri

    original, copy = tmp_path / "original", tmp_path / "copy"
    monkeypatch.setenv("SIFT_HOME", str(original))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the state folder's own sqlite store
    built = build_index(tiny_index_config(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, out=None))
    assert Path(built["path"]).parent == original / "indices"  # inside the state folder
    record_default_index(Path(built["path"]), built["fingerprint"])  # as a build on the default corpus does
    config = tiny_evaluate_config(None, tiny_prompts_file, tiny_lm_dir, method=["base", "sift"], n=2, k=8, limit=2,
                                  tracking=True, experiment="relocate")
    first = evaluate(config)

    shutil.copytree(original, copy)
    moved = original.rename(tmp_path / "original-moved")  # the original's paths no longer exist
    before = _files(moved)
    monkeypatch.setenv("SIFT_HOME", str(copy))
    again = evaluate(config)  # no --index: the copy's own default index

    assert comparable(again["rows"]) == comparable(first["rows"])
    assert again["stats"] and all(key.endswith(":Cached") for key in again["stats"]), again["stats"]
    client = MlflowClient(default_tracking_uri())
    run = client.get_run(again["mlflow_run_id"])
    assert run.data.params["index_path"].startswith(str(copy))
    assert run.info.artifact_uri.startswith((copy / "mlflow" / "artifacts").as_uri())
    old_run = client.get_run(first["mlflow_run_id"])  # the copied run's artifacts are the copy's too
    assert old_run.info.artifact_uri.startswith((copy / "mlflow" / "artifacts").as_uri())
    assert {f.path for f in client.list_artifacts(first["mlflow_run_id"])}  # and readable there
    assert _files(moved) == before  # nothing was written into the original
