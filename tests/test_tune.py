"""The tune flow: Optuna over λ′ and α on the real evaluate flow, real sqlite storages, real MLflow.

Fast tests cover the pieces (split, objective, pruning reporter, storage and study checks, the
MLflow trial callback); slow ones run the real flow on the tiny fixtures (tiny LM, tiny encoder,
tiny corpus → a tiny index built with the real library), once in-process and once as two
concurrent `sift-ttft tune` worker processes on one study.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from pydantic import ValidationError

from flows.config import EvaluateConfig, TuneConfig
from flows.tune import (
    PruningReporter,
    check_existing_study,
    objective_of,
    open_storage,
    open_study,
    split_prompts,
    study_definition,
    suggest_params,
)

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _prompts(n: int) -> list[dict]:
    return [{"id": f"p{i}", "text": f"prompt {i}", "domain": "d", "doc_id": f"p{i}"} for i in range(n)]


def _row(bpb_after: float, steps: int = 4, bpb_before: float = 2.0) -> dict:
    return {"prompt_id": "x", "method": "sift", "bpb_before": bpb_before, "bpb_after": bpb_after, "steps": steps}


# ------------------------------------------------------------------------------------ the pieces


def test_split_is_deterministic_disjoint_and_stable_under_edits():
    prompts = _prompts(10)
    tune, report = split_prompts(prompts, 0.3, seed=0)
    assert len(tune) == 3 and len(report) == 7
    assert {p["id"] for p in tune}.isdisjoint({p["id"] for p in report})
    assert {p["id"] for p in tune} | {p["id"] for p in report} == {p["id"] for p in prompts}
    assert split_prompts(prompts, 0.3, seed=0) == (tune, report)  # same input → same split
    assert [p["id"] for p in tune] == sorted((p["id"] for p in tune), key=lambda i: int(i[1:]))  # file order kept
    # Ranked by id, not position: dropping a report prompt leaves every other prompt on its side.
    dropped = report[0]["id"]
    tune2, report2 = split_prompts([p for p in prompts if p["id"] != dropped], 0.3, seed=0)
    assert tune2 == tune and [p["id"] for p in report2] == [p["id"] for p in report if p["id"] != dropped]
    assert any(split_prompts(prompts, 0.3, seed=s) != (tune, report) for s in (1, 2, 3))  # the seed moves it
    # Both splits always hold at least one prompt.
    assert [len(s) for s in split_prompts(_prompts(2), 0.01)] == [1, 1]
    assert [len(s) for s in split_prompts(_prompts(2), 0.99)] == [1, 1]


@pytest.mark.parametrize(
    "prompts, fraction, message",
    [(_prompts(1), 0.5, "at least 2 prompts"), (_prompts(2) * 2, 0.5, "unique"), (_prompts(4), 1.0, "tune_fraction")],
)
def test_split_refuses_what_it_cannot_split(prompts, fraction, message):
    with pytest.raises(ValueError, match=message):
        split_prompts(prompts, fraction)


def test_objective_is_mean_bpb_plus_weighted_steps():
    rows = [_row(1.0, steps=10), _row(2.0, steps=0)]
    assert objective_of(rows, "bpb", 0.5) == pytest.approx(1.5)
    assert objective_of(rows, "bpb+compute", 0.01) == pytest.approx(1.5 + 0.01 * 5)
    # A skipped prompt (no bpb_after) counts as the base model, not as a free win.
    assert objective_of([{"bpb_before": 3.0, "bpb_after": None, "steps": 0}], "bpb", 0.0) == 3.0
    with pytest.raises(ValueError, match="objective"):
        objective_of(rows, "flops", 0.0)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"lam_min": 1.0, "lam_max": 1.0}, "λ′ range"),
        ({"lam_min": 2.0, "lam_max": 1.0}, "λ′ range"),
        ({"lam_min": 0.0}, "lam_min"),
        ({"lam_max": -1.0}, "lam_max"),
        ({"alpha_min": 5.0, "alpha_max": 5.0}, "α range"),
        ({"alpha_min": -1.0}, "alpha_min"),
        ({"tune_fraction": 1.0}, "tune_fraction"),
        ({"trials": 0}, "trials"),
    ],
)
def test_empty_or_non_positive_ranges_are_clear_errors(overrides, field):
    with pytest.raises(ValidationError) as err:
        TuneConfig(**overrides)
    assert field in str(err.value)


def test_alpha_is_sampled_only_where_it_can_change_a_run():
    """Below 1/N no prompt stops (σ ≤ 1); above sqrt((1 + λ′)/λ′) every prompt trains 0 steps (σ_1² ≥ λ′/(1 + λ′))."""
    import numpy as np

    from flows.objective import alpha_range
    from sift.select import stop_index

    n = 16
    for lam in (1e-3, 0.1, 1.0, 10.0):
        low, high = alpha_range(n, lam, 0.01, 1000.0)
        assert low == pytest.approx(1 / n) and high == pytest.approx(np.sqrt((1 + lam) / lam))
        never = np.ones(n + 1)  # the largest possible σ_j: the prompt learns nothing from any pick
        assert stop_index(never, low) == n  # α = 1/N never stops, whatever the σ's
        closest = np.array([1.0] + [lam / (j + lam) for j in range(1, n + 1)])  # the smallest possible σ_j²
        assert stop_index(closest, high * 1.0001) == 0  # above the bound: 0 steps even for the smallest σ_1
        assert stop_index(closest, high * 0.9999) >= 1  # just below it, a step is possible
    assert alpha_range(n, 0.1, 0.1, 100.0) == pytest.approx((0.1, np.sqrt(11)))  # the defaults: 0.1 … 3.3
    assert alpha_range(n, 0.1, 5.0, 100.0) == (5.0, 5.0)  # a range that misses the useful one: its nearest end
    study = optuna.create_study()
    config = TuneConfig(n=n)
    for _ in range(30):  # every sampled α lies in the narrowed range of its trial's λ′
        trial = study.ask()
        point = suggest_params(trial, config)
        if point["alpha"] is not None:
            low, high = alpha_range(n, point["lam"], config.alpha_min, config.alpha_max)
            assert low <= point["alpha"] <= high
        study.tell(trial, 1.0)


def test_cli_range_error_is_one_line_exit_2():
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["tune", "--lam-min", "5", "--lam-max", "1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "empty λ′ range" in lines[0], result.output


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--storage", "not a url"], "error: --storage: storage 'not a url' cannot be opened"),
        (["--method", "nn"], "error: --method: tune evaluates --method sift only"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_before_any_flow_runs(flags, message, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("SIFT_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["tune", *flags])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(message), result.output
    assert not (tmp_path / "optuna").exists()  # nothing was created


@pytest.mark.parametrize(
    "url, cause",
    [
        ("sqlite:////no/such/folder/optuna.db", "unable to open database file"),
        ("not a url", "Could not parse"),
        ("postgresql://user@127.0.0.1:1/db", "connection failed"),  # driver installed, no server there
    ],
)
def test_storage_that_cannot_be_opened_is_a_clear_error(url, cause):
    with pytest.raises(ValueError) as err:
        open_storage(url)
    message = str(err.value)
    assert message.startswith(f"storage {url!r} cannot be opened") and cause in message and "sqlite:////" in message


def _definition(**overrides) -> dict:
    return study_definition(TuneConfig(**overrides), _prompts(3), index_fingerprint="index-fingerprint")


def test_resuming_with_another_search_space_is_refused_and_writes_nothing(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat=False)
    study, created = open_study(storage, "s", _definition())
    assert created
    study.enqueue_trial({"lam": 0.1, "stopping": "never"})
    before = (study.user_attrs, len(study.trials), len(storage.get_all_studies()))

    again, created = open_study(storage, "s", _definition())  # same definition: resumes
    assert not created and again._study_id == study._study_id

    for other in (_definition(lam_max=5.0), _definition(objective="bpb+compute"), _definition(n=4)):
        with pytest.raises(ValueError, match="exists with a different search space or objective"):
            open_study(storage, "s", other)
        with pytest.raises(ValueError, match="differs in"):
            check_existing_study(storage, "s", other)
    reloaded = optuna.load_study(storage=storage, study_name="s")
    assert (reloaded.user_attrs, len(reloaded.trials), len(storage.get_all_studies())) == before

    check_existing_study(storage, "new", _definition(lam_max=5.0))  # a missing study is not created
    assert [s.study_name for s in storage.get_all_studies()] == ["s"]


def test_a_foreign_study_with_trials_is_refused(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat=False)
    foreign = optuna.create_study(storage=storage, study_name="theirs")
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(ValueError, match="not created by `sift-ttft tune`"):
        open_study(storage, "theirs", _definition())


def test_pruning_reporter_reports_running_objective_and_prunes(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat=False)
    study = optuna.create_study(
        storage=storage, pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1)
    )
    good = study.ask()
    reporter = PruningReporter(good, "bpb+compute", 0.1)
    for bpb in (1.0, 2.0, 3.0):
        reporter(_row(bpb, steps=2))
    study.tell(good, objective_of(reporter.rows, "bpb+compute", 0.1))
    assert study.trials[0].intermediate_values == pytest.approx({0: 1.2, 1: 1.7, 2: 2.2})

    bad = study.ask()
    reporter = PruningReporter(bad, "bpb+compute", 0.1)
    reporter(_row(9.0))  # step 0 is warm-up: never pruned
    with pytest.raises(optuna.TrialPruned):
        reporter(_row(9.0))  # step 1: worse than the median of earlier trials at step 1
    assert len(reporter.rows) == 2


def _plotted_study(n_trials: int, seed: int = 0) -> optuna.Study:
    """An in-memory study over the tune search space with a running objective per "prompt"."""
    config = TuneConfig()
    study = optuna.create_study(
        study_name="plotted", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, config)
        value = abs(params["lam"] - 0.3) + (0.0 if params["alpha"] is None else 1.0 / params["alpha"])
        for step in range(3):
            trial.report(value + step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=n_trials)
    return study


@pytest.mark.parametrize(
    "n_trials, expected",
    [
        (0, []),
        (1, ["tuning_history", "intermediate_values"]),  # one point: no slice, no importances
        (3, ["tuning_history", "intermediate_values", "slice"]),
        (20, ["tuning_history", "intermediate_values", "slice", "param_importances"]),
    ],
)
def test_tuning_figures_are_optunas_plots_guarded_for_few_trials(n_trials, expected):
    import warnings

    import matplotlib
    import matplotlib.pyplot as plt

    from flows.tune_tracking import MIN_TRIALS_FOR_IMPORTANCES, tuning_figures

    study = _plotted_study(n_trials)
    complete = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    assert ("param_importances" in expected) == (complete >= MIN_TRIALS_FOR_IMPORTANCES)
    style = matplotlib.rcParams["axes.facecolor"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)  # silenced where it is called
        figures = list(tuning_figures(study, "bpb"))
    try:
        assert [path for path, _ in figures] == [f"plots/{name}.png" for name in expected]
        if figures:
            assert figures[0][1].axes[0].get_ylabel() == "objective (bpb)"
    finally:
        for _, figure in figures:
            plt.close(figure)
    assert matplotlib.rcParams["axes.facecolor"] == style  # Optuna's ggplot style did not leak out


@pytest.mark.slow  # the first MLflow use of a test session creates the sqlite store: ~20 s on 2 busy cores
def test_mlflow_trial_logger_records_each_trial_as_a_run():
    from mlflow import MlflowClient

    from tracking.optuna_mlflow import MLflowTrialLogger

    from tracking.store import default_tracking_uri, get_or_create_experiment

    uri = default_tracking_uri()  # the session's store (a fresh sqlite store costs ~20 s of migrations)
    client = MlflowClient(uri)
    experiment = get_or_create_experiment("tune-logger-test", uri)
    parent = client.create_run(experiment).info.run_id
    logger = MLflowTrialLogger(experiment, parent, uri)
    study = optuna.create_study(study_name="logged", pruner=optuna.pruners.ThresholdPruner(upper=5.0))

    def objective(trial: optuna.Trial) -> float:
        lam = trial.suggest_float("lam", 1e-3, 10, log=True)
        for step in range(2):
            trial.report(lam * (step + 1), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        trial.set_user_attr("mean_steps", 3.0)
        return lam

    study.enqueue_trial({"lam": 0.5})
    study.enqueue_trial({"lam": 8.0})  # 8 > 5: pruned at step 0
    study.optimize(objective, n_trials=2, callbacks=[logger])

    assert set(logger.run_ids) == {0, 1}
    done, pruned = (client.get_run(logger.run_ids[i]) for i in (0, 1))
    assert done.info.status == "FINISHED" and pruned.info.status == "KILLED"
    assert done.data.params["lam"] == "0.5" and done.data.metrics["objective"] == 0.5
    assert done.data.metrics["mean_steps"] == 3.0
    assert done.data.tags["mlflow.parentRunId"] == parent and done.data.tags["optuna.trial"] == "0"
    assert done.data.tags["sift.pid"] == str(os.getpid())  # owner tags: a crashed trial's run gets reaped
    history = client.get_metric_history(done.info.run_id, "running_objective")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 1.0)]
    assert "objective" not in pruned.data.metrics and pruned.data.tags["optuna.state"] == "PRUNED"


# ---------------------------------------------------------------------------- the real flow, tiny


@pytest.fixture(scope="module")
def tiny_index(prefect_server, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, tmp_path_factory) -> Path:
    """A tiny Faiss index built by the real build_index flow from the tiny corpus."""
    from flow_helpers import tiny_index_config

    from flows.build_index import build_index

    out = tmp_path_factory.mktemp("tune-index") / "index"
    build_index(tiny_index_config(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, out, shard_size=64))
    return out


def _tune_config(index: Path, prompts: Path, lm: Path, **overrides) -> TuneConfig:
    values = dict(index=index, prompts=prompts, model=str(lm), n=2, k=8, max_tokens=32, trials=2, study="tiny",
                  tracking=True, experiment="tune-test")
    values.update(overrides)
    return TuneConfig(**values)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_tune_flow_logs_trials_writes_best_and_reuses_cached_work(
    tiny_index, tiny_prompts_file, tiny_lm_dir, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    from flows.tune import default_storage_url, study_dir, tune

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "state"))  # own storage and result caches
    index_before = _snapshot(tiny_index)
    out = tmp_path / "best-out.json"
    # jobs=2: both trials run at once in Optuna's threads, inside this flow's context.
    config = _tune_config(tiny_index, tiny_prompts_file, tiny_lm_dir, out=out, jobs=2)
    first = tune(config)

    # Storage: the state folder's sqlite, four slashes.
    assert first["storage"] == default_storage_url() == f"sqlite:///{tmp_path / 'state' / 'optuna' / 'optuna.db'}"
    assert first["storage"].startswith("sqlite:////")
    storage = open_storage(first["storage"], heartbeat=False)
    study = optuna.load_study(storage=storage, study_name="tiny")
    trials = study.trials
    assert [t.number for t in trials] == [0, 1] and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert trials[0].params == {"lam": 0.1, "stopping": "never"}  # the configured point runs first
    assert set(trials[1].params) in ({"lam", "stopping"}, {"lam", "stopping", "alpha"})
    # Tuning and report splits: disjoint, recorded, 2 + 2 of the 4 prompts.
    split = json.loads((study_dir("tiny") / "split.json").read_text())
    assert len(split["tune_prompt_ids"]) == 2 and len(split["report_prompt_ids"]) == 2
    assert set(split["tune_prompt_ids"]).isdisjoint(split["report_prompt_ids"])
    assert len(trials[0].intermediate_values) == 2  # one running value per tuning prompt
    # best.json is in the format `evaluate --params` takes, in the study folder and at --out.
    best = json.loads(Path(first["best_json"]).read_text())
    assert set(best) == {"lam", "alpha"} and best == json.loads(out.read_text()) == first["best_params"]
    evaluate_config = EvaluateConfig(params=Path(first["best_json"]))
    assert (evaluate_config.lam, evaluate_config.alpha) == (best["lam"], best["alpha"])

    # MLflow: one parent run with the plots, one child run per trial.
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("tune-test-tune")
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    # Traceability: the study records this process's Prefect flow run and MLflow run; the run names the flow run.
    from flows.trace import FLOW_RUN_ID_TAG, STUDY_RUN_ATTR

    records = {k: v for k, v in study.user_attrs.items() if k.startswith(STUDY_RUN_ATTR)}
    assert list(records) == [STUDY_RUN_ATTR + parent.data.tags[FLOW_RUN_ID_TAG]]
    record = records[STUDY_RUN_ATTR + parent.data.tags[FLOW_RUN_ID_TAG]]
    assert record["mlflow_run_id"] == parent.info.run_id and record["mlflow_run_url"].endswith(parent.info.run_id)
    assert record["prefect_flow_run_url"].endswith("/runs/flow-run/" + record["prefect_flow_run_id"])
    plots = {f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
    # Optuna's history and running-objective plots, its slice plot (2 complete trials), and our landscape.
    expected = {"plots/tuning_history.png", "plots/intermediate_values.png", "plots/slice.png", "plots/landscape.png"}
    assert expected <= plots, plots
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1]
    assert all("lam" in r.data.params for r in children)

    # Resume by name; a point that was evaluated before is served from the task cache.
    study.enqueue_trial({"lam": 0.1, "stopping": "never"})
    second = tune(config.model_copy(update={"trials": 1, "jobs": 1}))
    assert sum(second["trials"].values()) == 3
    repeat = optuna.load_study(storage=storage, study_name="tiny").trials[2]
    assert repeat.params == trials[0].params
    assert repeat.user_attrs["tasks"] == 4  # select + finetune_evaluate for each of 2 tuning prompts
    assert repeat.user_attrs["tasks_cached"] == repeat.user_attrs["tasks"]
    if trials[0].state.name == "COMPLETE":
        assert repeat.value == trials[0].value
    assert _snapshot(tiny_index) == index_before  # the index was read, never rebuilt


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_worker_processes_share_one_study_without_losing_or_repeating_trials(
    backend, tiny_index, tiny_prompts_file, tiny_lm_dir, tmp_path, request
):
    """Two `sift-ttft tune` processes on one study: in a sqlite file (--storage), and in a real PostgreSQL
    server given as a plain postgresql:// URL in $SIFT_OPTUNA_STORAGE (the driver is mapped)."""
    from flow_helpers import prefect_api_url
    from mlflow import MlflowClient

    env = {**os.environ, "PREFECT_API_URL": prefect_api_url(), "SIFT_HOME": str(tmp_path / "state")}
    if backend == "sqlite":
        storage_url = f"sqlite:///{tmp_path / 'shared.db'}"
        open_storage(storage_url)  # create the tables once, as a user would by running one worker first
        storage_flags = ["--storage", storage_url]
    else:  # both workers create the tables of an empty database at once
        storage_url = request.getfixturevalue("postgres_server").create_database("tune_workers")
        assert storage_url.startswith("postgresql://")
        env["SIFT_OPTUNA_STORAGE"] = storage_url
        storage_flags = []
    experiment = f"tune-workers-{backend}"
    flags = [
        "tune", "--index", str(tiny_index), "--prompts", str(tiny_prompts_file), "--model", str(tiny_lm_dir),
        "--n", "2", "--k", "8", "--max-tokens", "32", "--trials", "2", "--study", "shared", *storage_flags,
        "--experiment", experiment,
    ]
    code = "import sys; from flows.cli import app; sys.argv = ['sift-ttft'] + sys.argv[1:]; app()"
    workers = [
        subprocess.Popen([sys.executable, "-c", code, *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]

    study = optuna.load_study(storage=open_storage(storage_url, heartbeat=False), study_name="shared")
    # Each worker ran exactly its 2 trials: 4 in all, numbered 0..3, each finished exactly once.
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    # The one enqueued starting point ran once, not once per worker.
    assert sum(t.params == {"lam": 0.1, "stopping": "never"} for t in study.trials) == 1

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(f"{experiment}-tune")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in parents)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_killed_workers_trial_is_failed_and_requeued_by_a_live_worker_within_the_bound(tmp_path):
    """kill -9 a worker mid-trial: a live worker's watchdog (not only its next trial start) fails the silent
    trial and queues its point again within grace + 2 × heartbeat; the next trial reruns that point."""
    from flows.study import StaleTrialWatchdog

    heartbeat, grace = 1, 2
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url, heartbeat_seconds=heartbeat, grace_seconds=grace)
    # The tune flow hands the stale-trial callback its MLflow trial logger: the killed trial reaches MLflow.
    from mlflow import MlflowClient

    from tracking.optuna_mlflow import MLflowTrialLogger
    from tracking.store import get_or_create_experiment

    experiment_id = get_or_create_experiment("tune-crash")
    storage.get_heartbeat_stale_trial_callback().also.append(MLflowTrialLogger(experiment_id))
    optuna.create_study(storage=storage, study_name="crash")
    started = tmp_path / "started"
    code = (
        "import sys, time, pathlib, optuna\n"
        "from flows.tune import open_storage\n"
        f"storage = open_storage(sys.argv[1], heartbeat_seconds={heartbeat}, grace_seconds={grace})\n"
        "study = optuna.load_study(storage=storage, study_name='crash')\n"
        "def hang(trial):\n"
        "    trial.suggest_float('lam', 1e-3, 10, log=True)\n"
        "    pathlib.Path(sys.argv[2]).touch()\n"
        "    time.sleep(600)\n"
        "study.optimize(hang, n_trials=1)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code, url, str(started)], cwd=REPO)
    try:
        for _ in range(600):
            if started.exists() or worker.poll() is not None:
                break
            time.sleep(0.1)
        assert started.exists(), "the worker never started its trial"
    finally:
        worker.kill()  # SIGKILL: no cleanup runs
        worker.wait()
    killed_at = time.monotonic()
    study = optuna.load_study(storage=storage, study_name="crash")
    assert study.trials[0].state.name == "RUNNING"  # what a crash leaves behind

    # A live worker (this process) in the middle of its own long trial: only its watchdog can notice.
    with StaleTrialWatchdog(study, interval=heartbeat):
        while study.trials[0].state.name == "RUNNING":
            assert time.monotonic() - killed_at < grace + 2 * heartbeat + 3, "the dead trial was not failed in time"
            time.sleep(0.2)
        failed_after = time.monotonic() - killed_at
    first, queued = study.trials
    assert first.state.name == "FAIL" and failed_after <= grace + 2 * heartbeat + 3
    assert queued.state.name == "WAITING" and queued.params == first.params  # its point, queued again
    logged = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_runs([experiment_id])
    assert [(r.data.tags["optuna.trial"], r.info.status) for r in logged] == [("0", "FAILED")]
    study.optimize(lambda t: t.suggest_float("lam", 1e-3, 10, log=True), n_trials=1)
    retry = study.trials[1]
    assert retry.state.name == "COMPLETE" and retry.params == first.params


def test_with_a_budget_the_search_is_lambda_and_sigmas_gamma(tmp_path):
    """--budget fixes the compute of every trial: α is not searched (the budget decides where prompts stop),
    γ is, for --allocate sigma; the point goes to evaluate as its config and to best.json as 'gamma'."""
    from flows.objective import params_of, search_space, suggest_params, trial_config

    sigma = TuneConfig(budget=40, allocate="sigma", gamma_max=3.0)
    assert set(search_space(sigma)) == {"lam", "gamma"}
    assert (search_space(sigma)["gamma"].low, search_space(sigma)["gamma"].high) == (0.0, 3.0)
    assert set(search_space(TuneConfig(budget=40, allocate="alpha"))) == {"lam"}
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat=False))
    trial = study.ask()
    point = suggest_params(trial, sigma)
    assert set(point) == {"lam", "alpha", "gamma"} and point["alpha"] is None and 0 <= point["gamma"] <= 3
    study.tell(trial, 1.0)
    assert params_of(study.best_trial) == point
    config = trial_config(sigma, point)
    assert (config.budget, config.allocate, config.gamma, config.alpha) == (40, "sigma", point["gamma"], None)
    best = tmp_path / "best.json"
    best.write_text(json.dumps(point))
    assert EvaluateConfig(params=best).gamma == point["gamma"]
    with pytest.raises(ValueError, match="do not go together"):
        TuneConfig(budget=40, alpha=2.0)



@pytest.mark.slow
def test_tune_with_a_budget_runs_trials_that_each_spend_it(tiny_index, tiny_prompts_file, tiny_lm_dir, tmp_path,
                                                           monkeypatch):
    from flows.tune import tune

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "state"))
    config = _tune_config(tiny_index, tiny_prompts_file, tiny_lm_dir, budget=3, allocate="sigma", study="budgeted",
                          tracking=False, gamma=1.0)
    result = tune(config)
    trials = optuna.load_study(storage=open_storage(result["storage"], heartbeat=False), study_name="budgeted").trials
    assert trials[0].params == {"lam": 0.1, "gamma": 1.0}  # the configured point first, in the budgeted space
    assert all(set(t.params) == {"lam", "gamma"} for t in trials)
    # 2 tuning prompts × n=2 picks, a budget of 3: no trial trains more than 3 steps in all
    assert all(t.user_attrs["mean_steps"] * t.user_attrs["prompts"] <= 3 for t in trials if t.state.name == "COMPLETE")
    assert set(json.loads(Path(result["best_json"]).read_text())) == {"lam", "alpha", "gamma"}


def _children(pid: int, needle: str) -> list[int]:
    """PIDs of the live child processes of ``pid`` whose command line contains ``needle``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid and needle in cmdline:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_workers_on_a_fresh_state_do_not_race_migrations_and_a_killed_one_leaves_no_server(
    tiny_index, tiny_prompts_file, tiny_lm_dir, tmp_path
):
    """Two `sift-ttft tune` workers started at once on a fresh state folder, without PREFECT_API_URL: each
    starts Prefect's temporary server on the same new database (one migration at a time, under the start
    lock). kill -9 of one of them mid-trial: its server goes too; the other finishes its trials."""
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    open_storage(storage_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(SIFT_HOME=str(tmp_path / "fresh-state"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true")
    flags = [
        "tune", "--index", str(tiny_index), "--prompts", str(tiny_prompts_file), "--model", str(tiny_lm_dir),
        "--n", "2", "--k", "8", "--max-tokens", "32", "--study", "fresh", "--storage", storage_url, "--no-tracking",
    ]
    code = "import sys; from flows.cli import app; sys.argv = ['sift-ttft'] + sys.argv[1:]; app()"
    logs = [tmp_path / "victim.log", tmp_path / "survivor.log"]
    victim, survivor = (
        subprocess.Popen([sys.executable, "-c", code, *flags, "--trials", trials], cwd=REPO, env=env,
                         stdout=log.open("w"), stderr=subprocess.STDOUT)
        for log, trials in zip(logs, ("50", "2"))
    )
    try:
        deadline = time.monotonic() + 240
        servers: list[int] = []
        storage = open_storage(storage_url, heartbeat=False)
        while True:  # the victim's temporary server is up and a trial is running
            servers = servers or _children(victim.pid, "uvicorn")
            try:
                trials = optuna.load_study(storage=storage, study_name="fresh").trials if servers else []
            except KeyError:  # the study is not created yet
                trials = []
            if servers and any(t.state.name == "RUNNING" for t in trials):
                break
            assert victim.poll() is None, logs[0].read_text()[-3000:]
            assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
            time.sleep(0.2)
        victim.kill()  # kill -9: no atexit, no cleanup
        victim.wait()
        for _ in range(100):
            if not any(_alive(pid) for pid in servers):
                break
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in servers), "the killed worker's Prefect server is still running"
        assert survivor.wait(timeout=300) == 0, logs[1].read_text()[-3000:]
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.kill()
                process.wait()
    output = "\n".join(log.read_text() for log in logs)
    assert "duplicate column" not in output and "Online migration" not in output
    done = [t for t in optuna.load_study(storage=storage, study_name="fresh").trials
            if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) >= 2  # the survivor's two trials
