"""The data-size flow on tiny fixtures: two nested data spaces, every method, two λ′, MLflow and the cache."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture()
def fresh_state(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("SIFT_HOME", str(state))
    return state


@pytest.fixture()
def nested_corpora(tmp_path, tiny_corpus_file):
    """The tiny corpus (the larger space) and its every-other-document subset (the smaller one)."""
    lines = tiny_corpus_file.read_text().splitlines()
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(lines[::2]) + "\n")
    return [small, tiny_corpus_file]


def test_data_size_flow_evaluates_every_space_and_lam_and_records_them(
        fresh_state, tmp_path, nested_corpora, tiny_prompts_file, tiny_lm_dir, tiny_encoder_dir):
    from mlflow import MlflowClient

    from flows.config import DataSizeConfig
    from flows.data_size import data_size
    from sift.stats import paired_comparison
    from tracking.store import default_tracking_uri

    out = tmp_path / "table.json"
    config = DataSizeConfig(corpus=nested_corpora, prompts=tiny_prompts_file, model=str(tiny_lm_dir),
                            embedder=str(tiny_encoder_dir), method=["base", "nn", "nn-f", "sift"], lam=[0.1, 5.0],
                            n=3, k=12, max_tokens=16, limit=None, experiment="test-data-size", out=out)
    first = data_size(config)
    sizes = sorted({e["size"] for e in first["table"]})
    assert len(sizes) == 2 and sizes[0] < sizes[1]
    for size in sizes:
        labels = [e["label"] for e in first["table"] if e["size"] == size]
        assert labels == ["base", "nn", "nn-f", "sift λ′=0.1", "sift λ′=5"]
        for e in first["table"]:
            if e["size"] == size and e["method"] != "nn":
                assert e["reference"] == "nn" and e["n"] == 4 and e["ci_low"] <= e["gap"] <= e["ci_high"]
    assert json.loads(out.read_text())["table"] == first["table"] and out.with_suffix(".png").stat().st_size > 10_000

    # The second λ′ of a size reuses the first's NN fine-tunings (same texts): only SIFT's can be new.
    second_lam = [r for r in first["runs"] if r["lam"] == 5.0]
    assert all(r["stats"].get("finetune_evaluate:Cached", 0) >= 4 for r in second_lam)

    # MLflow: one parent run for the flow; nested under it one evaluate run per size and λ′, tagged with
    # the size; the table and the plot on the parent; each run's gap equals the statistic on its own rows.
    client = MlflowClient(tracking_uri=default_tracking_uri())
    experiment = client.get_experiment_by_name("test-data-size")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 1 and top[0].info.run_id == first["mlflow_run_id"]
    evaluations = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first["mlflow_run_id"]]
    assert sorted((int(r.data.tags["data_space.sequences"]), r.data.tags["sift.lam"]) for r in evaluations) == \
        sorted((s, lam) for s in sizes for lam in ("0.1", "5"))
    artifacts = {a.path for a in client.list_artifacts(first["mlflow_run_id"])} | \
        {a.path for a in client.list_artifacts(first["mlflow_run_id"], "plots")}
    assert {"data_size.json", "plots/data_size_gap.png"} <= artifacts
    run = next(r for r in evaluations if r.data.tags["sift.lam"] == "0.1" and int(r.data.tags["data_space.sequences"]) == sizes[1])
    assert run.data.params["data_space_sequences"] == str(sizes[1])

    # Everything again: served from the cache, the same table.
    again = data_size(config.model_copy(update={"out": None}))
    assert again["table"] == first["table"]
    for r in again["runs"]:
        assert set(r["stats"]) <= {"select:Cached", "finetune_evaluate:Cached"}, r["stats"]

    # The gap is the library's paired statistic on the evaluate flow's own rows (same settings: all cached).
    from flows.evaluate import evaluate

    run = next(r for r in again["runs"] if r["lam"] == 0.1 and r["size"] == sizes[1])
    rows = evaluate(config.evaluate_config(0.1, run["index"], tiny_prompts_file, ["base", "nn", "nn-f", "sift"])
                    .model_copy(update={"tracking": False}))["rows"]
    expected = paired_comparison(rows, "sift", "nn")
    entry = next(e for e in first["table"] if e["size"] == sizes[1] and e["label"] == "sift λ′=0.1")
    assert entry["gap"] == pytest.approx(expected["mean"]) and entry["wins"] == expected["wins"]


def test_plot_gap_vs_size_draws_one_line_per_comparison():
    import matplotlib.pyplot as plt

    from tracking.plots import plot_gap_vs_size

    table = [{"size": s, "label": label, "method": label.split(" ")[0], "reference": "nn", "gap": g,
              "ci_low": g - 0.01, "ci_high": g + 0.01}
             for s, g0 in ((8192, 0.0), (32768, -0.01), (131072, -0.02))
             for label, g in (("sift λ′=0.1", g0), ("sift λ′=1", g0 / 2), ("nn-f", 0.001))]
    table += [{"size": 8192, "label": "nn", "method": "nn", "bpb_after": 1.0},  # the reference: no gap, not drawn
              {"size": 8192, "label": "base", "method": "base", "reference": "nn", "gap": 0.3, "ci_low": 0.2,
               "ci_high": 0.4}]  # the untrained model: left out by default
    fig = plot_gap_vs_size(table)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.get_legend().get_texts()) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="no paired comparisons"):
        plot_gap_vs_size([{"size": 1, "label": "nn", "method": "nn"}])


def test_cli_data_size_refuses_bad_inputs_in_one_line(fresh_state, tmp_path, tiny_corpus_file):
    from flows.cli import app

    runner = CliRunner()
    no_prompts = runner.invoke(app, ["data-size", "--corpus", str(tiny_corpus_file), "--no-tracking"])
    assert no_prompts.exit_code == 2 and "--corpus needs --prompts" in no_prompts.output
    with_index = runner.invoke(app, ["data-size", "--index", str(tmp_path), "--no-tracking"])
    assert with_index.exit_code == 2 and "builds one index per data space" in with_index.output
    missing = runner.invoke(app, ["data-size", "--corpus", str(tmp_path / "nope.jsonl"), "--prompts",
                                  str(tiny_corpus_file), "--no-tracking"])
    assert missing.exit_code == 2 and "nope.jsonl" in missing.output
    bad_lam = runner.invoke(app, ["data-size", "--lam", "0", "--no-tracking"])
    assert bad_lam.exit_code == 2 and "λ′" in bad_lam.output


def test_params_file_adds_the_tuned_lam_only(tmp_path):
    from flows.config import DataSizeConfig

    best = tmp_path / "best.json"
    best.write_text(json.dumps({"lam": 0.42, "alpha": 3.0, "gamma": 2.0}))
    config = DataSizeConfig(params=best)
    assert config.lam == [0.1, 0.42] and config.alpha is None  # α would change every method's runs
    run = config.evaluate_config(0.42, tmp_path, tmp_path / "p.jsonl", ["nn", "sift"])
    assert (run.lam, run.alpha, run.method, run.limit, run.max_tokens) == (0.42, None, ["nn", "sift"], 48, 128)
    assert DataSizeConfig(params=best, lam=[0.42]).lam == [0.42]  # no repeat
