"""The experiment is a flow: settings derived from one definition, methods from one registry, the
paired comparison, α sweep and per-step curves recorded on the evaluate flow's parent MLflow run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flow_helpers import read_rows
from typer.testing import CliRunner

from sift.settings import SelectionSettings, TrainingSettings, TTFTConfig


@pytest.fixture()
def fresh_state(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("SIFT_HOME", str(state))
    return state


def test_every_setting_reaches_the_cli_the_cache_keys_the_mlflow_params_and_the_study():
    """Each field of the library's settings models is a flag, part of its step's cache key, an MLflow
    param of the run, and part of a tuning study's definition (λ′ and α: its search space), with no
    list of names anywhere else: a field added to either model passes this test with no other edit."""
    from flows.cli import app
    from flows.config import EvaluateConfig, TuneConfig
    from flows.study import study_definition
    from tracking.log import run_params

    help_text = CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "250"}).output
    config = EvaluateConfig(method=["nn", "sift"])
    params = run_params(config)
    definition = study_definition(TuneConfig(), [{"id": "p"}], "fingerprint")
    for name in TTFTConfig.model_fields:
        assert f"--{name.replace('_', '-')}" in help_text, name
        assert name in params, name
        assert name in definition["settings"] or name in definition["search_space"], name
    assert set(config.selection("nn").model_dump()) == set(SelectionSettings.model_fields)
    assert set(config.training().model_dump()) == set(TrainingSettings.model_fields)
    assert set(SelectionSettings.model_fields) | set(TrainingSettings.model_fields) == set(TTFTConfig.model_fields)
    changed = EvaluateConfig(method=["nn"], leak_threshold=0.9, eval_every=2)
    assert changed.selection("nn").leak_threshold == 0.9 and changed.training().eval_every == 2


def test_method_names_come_from_the_registry():
    from flows.cli import app
    from flows.config import EvaluateConfig
    from sift.methods import METHODS

    help_text = CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "250"}).output
    for name in METHODS:
        assert name in help_text
    bogus = CliRunner().invoke(app, ["evaluate", "--method", "bogus"])
    assert bogus.exit_code == 2 and "bogus" in bogus.output and "nn-f" in bogus.output
    assert EvaluateConfig(method=list(METHODS)).method == list(METHODS)


@pytest.mark.usefixtures("prefect_server")
def test_a_method_registered_in_one_place_runs_through_sift_ttft_evaluate(fresh_state, tmp_path, tiny_index_dir,
                                                                         tiny_prompts_file, tiny_lm_dir):
    from flows.cli import app
    from sift.methods import Method, per_prompt, register_method, unregister_method

    @per_prompt
    def farthest(query, candidates, n, seed):
        """The n candidates least similar to the prompt."""
        return np.argsort(candidates @ query.sum(axis=0), kind="stable")[:n]

    register_method(Method("toy-far", farthest, "the n least similar candidates"))
    try:
        out = tmp_path / "rows.jsonl"
        args = ["evaluate", "--index", str(tiny_index_dir), "--prompts", str(tiny_prompts_file), "--model",
                str(tiny_lm_dir), "--method", "nn", "--method", "toy-far", "--n", "2", "--k", "8",
                "--max-tokens", "32", "--limit", "2", "--no-tracking", "--out", str(out)]
        result = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
        assert result.exit_code == 0, result.output
        assert "toy-far" in result.output
        rows = {(r["prompt_id"], r["method"]): r for r in read_rows(out)}
        for prompt in ("p-code", "p-wiki"):
            toy, nn = rows[(prompt, "toy-far")], rows[(prompt, "nn")]
            assert toy["steps"] == 2 and len(toy["uncertainties"]) == 3
            assert max(toy["picked_scores"]) < min(nn["picked_scores"])  # the farthest, not the nearest
    finally:
        unregister_method("toy-far")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_evaluate_records_the_paired_comparison_alpha_sweep_and_curves_on_the_parent_run(
        fresh_state, tmp_path, tiny_index_dir, tiny_prompts_file, tiny_lm_dir):
    from mlflow import MlflowClient

    from flows.cli import app
    from tracking.store import default_tracking_uri

    args = ["evaluate", "--index", str(tiny_index_dir), "--prompts", str(tiny_prompts_file), "--model",
            str(tiny_lm_dir), "--method", "nn", "--method", "sift", "--n", "3", "--k", "8", "--max-tokens", "32",
            "--eval-every", "1", "--alphas", "0.5", "--alphas", "2", "--lr", "0.01",
            "--experiment", "test-experiment"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "sift − nn:" in result.output and "adaptive stopping" in result.output
    client = MlflowClient(tracking_uri=default_tracking_uri())
    experiment = client.get_experiment_by_name("test-experiment")
    (parent,) = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    metrics = parent.data.metrics
    for stat in ("mean", "ci_low", "ci_high", "wins"):
        assert f"paired/sift-vs-nn/{stat}" in metrics, stat
    assert metrics["paired/sift-vs-nn/ci_low"] <= metrics["paired/sift-vs-nn/mean"] <= metrics["paired/sift-vs-nn/ci_high"]
    local = client.download_artifacts(parent.info.run_id, "summary.json", str(tmp_path))
    with open(local, encoding="utf-8") as fh:
        summary = json.load(fh)
    assert summary["reference"] == "nn"
    assert [r["alpha"] for r in summary["alpha_sweep"]["sift"]] == [None, 0.5, 2.0]
    assert [c["step"] for c in summary["step_curves"]["sift"]] == [0, 1, 2, 3]
    plots = {f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/paired_vs_nn.png", "plots/alpha_sweep_sift.png", "plots/step_curves.png"} <= plots


@pytest.mark.usefixtures("prefect_server")
def test_evaluate_warns_about_a_prompt_whose_text_is_in_the_corpus_under_another_id(
        fresh_state, tmp_path, tiny_corpus_file, tiny_encoder_dir, tiny_prompts_file, tiny_lm_dir):
    """Issue 17: a prompt whose doc_id names nothing while its text sits in the corpus (folder corpora
    name documents by path) is kept from its own text by the overlap guard, and the run says so once.
    Held-out prompts, absent from the corpus, raise no warning."""
    from flows.config import EvaluateConfig
    from flows.evaluate import evaluate
    from sift.embed import Embedder
    from sift.index import build_index_from_corpus
    from sift.model import load_causal_lm

    # Whole documents as sequences (the shared tiny index cuts them every 8 tokens, mid-word).
    index_dir = tmp_path / "index"
    build_index_from_corpus([tiny_corpus_file], index_dir, load_causal_lm(tiny_lm_dir)[1], Embedder(tiny_encoder_dir),
                            max_tokens=64, shard_dir=tmp_path / "shards", progress=False)
    prompts = tmp_path / "prompts.jsonl"
    own = {"id": "p-leak", "doc_id": "wiki/0.html", "domain": "wiki",
           "text": "Paris is the capital and most populous city of France."}  # corpus document "wiki-0"
    prompts.write_text(tiny_prompts_file.read_text() + json.dumps(own) + "\n")
    config = EvaluateConfig(index=index_dir, prompts=prompts, model=str(tiny_lm_dir), method=["nn"], n=2, k=8,
                            max_tokens=32, tracking=False)
    result = evaluate(config)
    rows = {r["prompt_id"]: r for r in result["rows"]}
    assert rows["p-leak"]["excluded_overlap"] >= 1 and "wiki-0" not in rows["p-leak"]["picked_ids"]
    assert result["leak_warning"] is not None and "'p-leak'" in result["leak_warning"]
    assert "'wiki/0.html'" in result["leak_warning"] and "p-code" not in result["leak_warning"]
    held_out = evaluate(config.model_copy(update={"prompts": tiny_prompts_file}))
    assert held_out["leak_warning"] is None
