"""The Prefect flows on tiny fixtures: caching by content, equality with the library, Dask, MLflow, CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from flow_helpers import comparable, prefect_api_url, read_rows, tiny_evaluate_config, tiny_index_config
from prefect import flow
from typer.testing import CliRunner

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture()
def fresh_state(tmp_path, monkeypatch):
    """A private state folder, hence a private Prefect result storage (cache records live there)."""
    state = tmp_path / "state"
    monkeypatch.setenv("SIFT_HOME", str(state))
    return state


# ------------------------------------------------------------------------------------- build_index


def test_build_index_is_cached_by_content(fresh_state, tmp_path, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir):
    from flows.build_index import build_index
    from sift.index import load_index

    config = tiny_index_config(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, tmp_path / "index")
    first = build_index(config)
    assert not first["reused"] and first["shards"] == {"Completed": 15}
    emb_first = np.load(tmp_path / "index" / "embeddings.npy")

    # Same content again: the index folder is reused as is.
    assert build_index(config)["reused"]

    # The index is lost and its corpus copied elsewhere: every shard comes from the cache.
    shutil.rmtree(tmp_path / "index")
    moved = tmp_path / "elsewhere" / "renamed.jsonl"
    moved.parent.mkdir()
    shutil.copy(tiny_corpus_file, moved)
    again = build_index(config.model_copy(update={"corpus": [str(moved)]}))
    assert again["shards"] == {"Cached": 15} and again["fingerprint"] == first["fingerprint"]
    assert np.array_equal(np.load(tmp_path / "index" / "embeddings.npy"), emb_first)
    assert len(load_index(tmp_path / "index")) == first["count"] == 114

    # Another max_tokens is other content: new sequences, new shards.
    other = build_index(config.model_copy(update={"max_tokens": 16, "out": tmp_path / "index16"}))
    assert other["fingerprint"] != first["fingerprint"] and "Cached" not in other["shards"]


# ---------------------------------------------------------------------------------------- evaluate


def test_evaluate_reruns_only_what_changed(fresh_state, tiny_index_dir, tiny_prompts_file, tiny_lm_dir):
    from flows.evaluate import evaluate

    config = tiny_evaluate_config(tiny_index_dir, tiny_prompts_file, tiny_lm_dir)
    first = evaluate(config)
    jobs = 4 * 3  # prompts × methods
    assert first["stats"]["select:Completed"] == jobs
    assert len(first["rows"]) == jobs and [r["method"] for r in first["rows"][:3]] == ["base", "nn", "sift"]

    # Changing nothing reruns nothing, and gives back the very same rows.
    second = evaluate(config)
    assert second["stats"] == {"select:Cached": jobs, "finetune_evaluate:Cached": jobs}
    assert second["rows"] == first["rows"]

    # Changing λ′ reruns every selection, but a fine-tuning only where the chosen texts changed.
    third = evaluate(config.model_copy(update={"lam": 100.0}))
    assert third["stats"]["select:Completed"] == jobs
    by_key = {(r["prompt_id"], r["method"]): r for r in first["rows"]}
    changed = [r for r in third["rows"]
               if r["picked_seq_ids"][: r["steps"]] != by_key[(r["prompt_id"], r["method"])]["picked_seq_ids"][: r["steps"]]]
    assert changed, "λ′ 0.1 → 100 should change at least one SIFT selection on the tiny corpus"
    assert all(r["method"] == "sift" for r in changed)
    assert 1 <= third["stats"].get("finetune_evaluate:Completed", 0) <= len(changed)
    for row in third["rows"]:
        if row not in changed:  # same texts, same fine-tuning: identical bits per byte
            assert row["bpb_after"] == by_key[(row["prompt_id"], row["method"])]["bpb_after"]


def test_rows_equal_the_library_pipeline(fresh_state, tiny_index_dir, tiny_prompts_file, tiny_lm_dir):
    """The flow splits run_prompt into cached tasks; its rows must equal run_prompt's (timings aside)."""
    from flows.evaluate import evaluate, load_prompts
    from flows.tasks import index_embedder, load_corpus_index, load_model
    from sift.ttft import run_prompt

    config = tiny_evaluate_config(tiny_index_dir, tiny_prompts_file, tiny_lm_dir, split=0.5, method=["nn", "sift"])
    rows = evaluate(config)["rows"]
    model, tokenizer, _ = load_model(config.model)
    index, embedder = load_corpus_index(tiny_index_dir), index_embedder(tiny_index_dir)
    expected = [run_prompt(p, model, tokenizer, embedder, index, config.ttft(m)).to_json()
                for p in load_prompts(config) for m in config.method]
    assert comparable(rows) == comparable(expected)


def test_run_evaluation_calls_back_in_order_and_can_abort(fresh_state, tiny_index_dir, tiny_prompts_file, tiny_lm_dir):
    from flows.evaluate import EvaluationStats, run_evaluation

    class Pruned(Exception):
        pass

    config = tiny_evaluate_config(tiny_index_dir, tiny_prompts_file, tiny_lm_dir, method=["sift"])
    seen: list[str] = []
    stats = EvaluationStats()

    def on_result(row: dict) -> None:
        seen.append(row["prompt_id"])
        if len(seen) == 2:
            raise Pruned

    @flow
    def trial() -> list[dict]:
        return run_evaluation(config, on_result=on_result, stats=stats)

    with pytest.raises(Pruned):
        trial()
    assert seen == ["p-code", "p-wiki"]  # prompt order; nothing after the abort
    assert sum(v for k, v in stats.items() if k.startswith("finetune")) == 2

    with pytest.raises(RuntimeError, match="inside a running Prefect flow"):
        run_evaluation(config)


def test_cli_evaluate_prints_table_writes_rows_and_logs_mlflow(fresh_state, tmp_path, tiny_index_dir,
                                                               tiny_prompts_file, tiny_lm_dir):
    from mlflow import MlflowClient

    from flows.cli import app
    from tracking.store import default_tracking_uri

    out = tmp_path / "rows.jsonl"
    args = ["evaluate", "--index", str(tiny_index_dir), "--prompts", str(tiny_prompts_file), "--model",
            str(tiny_lm_dir), "--method", "base", "--method", "nn", "--n", "2", "--k", "8", "--max-tokens", "32",
            "--limit", "2", "--out", str(out), "--experiment", "test-flows-cli"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "bpb after" in result.output and "nn" in result.output
    rows = read_rows(out)
    assert [(r["prompt_id"], r["method"]) for r in rows] == [("p-code", "base"), ("p-code", "nn"),
                                                              ("p-wiki", "base"), ("p-wiki", "nn")]
    client = MlflowClient(tracking_uri=default_tracking_uri())
    experiment = client.get_experiment_by_name("test-flows-cli")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].data.params["index_fingerprint"]


# Bad inputs (missing index, prompts, default index; exit 2, one line, nothing written): tests/test_preflight.py.


def test_limit_takes_prompts_round_robin_across_domains():
    from flows.evaluate import limit_prompts

    prompts = [{"id": f"{d}{i}", "domain": d} for d in "aab" for i in range(2)]  # a0 a1 a0 a1 b0 b1
    prompts = [dict(p, id=f"{p['id']}-{n}") for n, p in enumerate(prompts)]
    chosen = limit_prompts(prompts, 3)
    assert [p["domain"] for p in chosen] == ["a", "a", "b"] and chosen[0] is prompts[0] and chosen[2] is prompts[4]
    assert limit_prompts(prompts, None) == prompts


def test_skip_leaves_out_exactly_the_prompts_a_limit_takes():
    from flows.evaluate import limit_prompts

    prompts = [{"id": f"{d}{i}", "domain": d} for d in "abc" for i in range(5)]
    for limit in (1, 3, 4, 7):
        evaluated = {p["id"] for p in limit_prompts(prompts, limit)}
        rest = limit_prompts(prompts, None, skip=limit)
        assert evaluated.isdisjoint(p["id"] for p in rest) and len(evaluated) + len(rest) == len(prompts)
    # skip then limit: the next prompts of the same round-robin order, one more per domain
    assert [p["id"] for p in limit_prompts(prompts, 3, skip=3)] == ["a1", "b1", "c1"]
    assert limit_prompts(prompts, 4, skip=0) == limit_prompts(prompts, 4)


# -------------------------------------------------------------------------------------------- Dask


def test_dask_runner_settings(monkeypatch):
    from flows.config import EvaluateConfig
    from flows.runners import make_task_runner

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    local = make_task_runner(EvaluateConfig(task_runner="dask", dask_workers=3))
    # Workers of a LocalCluster will find this process's (here: the test harness's) API in their environment.
    assert __import__("os").environ["PREFECT_API_URL"] == prefect_api_url()
    assert type(local).__name__ == "DaskTaskRunner"
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["threads_per_worker"] == 1
    remote = make_task_runner(EvaluateConfig(task_runner="dask", dask_address="tcp://10.0.0.1:8786"))
    assert remote.address == "tcp://10.0.0.1:8786"


@pytest.mark.slow
def test_dask_results_equal_sequential(fresh_state, tmp_path, monkeypatch, tiny_index_dir, tiny_corpus_file,
                                       tiny_encoder_dir, tiny_lm_dir, tiny_prompts_file):
    """A real 2-worker LocalCluster (one thread each): same index, same rows as the thread runner."""
    from distributed import LocalCluster

    from flows.build_index import build_index
    from flows.evaluate import evaluate

    config = tiny_evaluate_config(tiny_index_dir, tiny_prompts_file, tiny_lm_dir, method=["nn", "sift"], limit=2)
    sequential = evaluate(config)["rows"]
    budgeted = config.model_copy(update={"budget": 3})  # every selection first, then the split, on either runner
    sequential_budgeted = evaluate(budgeted)["rows"]

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "dask-state"))  # nothing cached from the sequential runs
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url())  # workers report to the test server
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask = {"task_runner": "dask", "dask_address": cluster.scheduler_address}
        # Called like a deployment would (decorator's thread runner): the flow moves its work onto Dask.
        built = build_index(tiny_index_config(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, tmp_path / "index",
                                              **dask))
        assert built["shards"] == {"Completed": 15}
        assert np.array_equal(np.load(tmp_path / "index" / "embeddings.npy"),
                              np.load(tiny_index_dir / "embeddings.npy"))
        result = evaluate(config.model_copy(update={**dask, "index": tmp_path / "index"}))
        dask_budgeted = evaluate(budgeted.model_copy(update={**dask, "index": tmp_path / "index"}))["rows"]
    assert result["stats"]["select:Completed"] == len(sequential)
    assert comparable(result["rows"]) == comparable(sequential)
    assert comparable(dask_budgeted) == comparable(sequential_budgeted)
    for method in ("nn", "sift"):
        assert sum(r["steps"] for r in dask_budgeted if r["method"] == method) <= 3
