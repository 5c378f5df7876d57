"""The ``tune`` flow: an Optuna study over SIFT's λ′ and the adaptive-stopping α.

Choices (each one the simplest that keeps the study honest):

- **Search space.** ``lam`` is log-uniform on [lam_min, lam_max]. Adaptive stopping is a categorical
  ``stopping`` ∈ {"adaptive", "never"}; only for "adaptive" is ``alpha`` sampled, log-uniform on
  [alpha_min, alpha_max]. The library trains on the first t picks with σ_j ≤ 1/(α·j) for all
  j ≤ t, so α > 1/σ_1 trains on nothing, 1/(2σ_2) < α ≤ 1/σ_1 stops after one step, and only
  α ≤ min_j 1/(j·σ_j) (≈ 1/(N·σ_N)) never stops: a bound that depends on corpus and prompt. With
  unit-norm embeddings σ_j ≤ 1, so the default range 0.1 … 100 spans "stop at once" to "rarely
  stops", and the categorical "never" names the last corner exactly instead of hoping the low end
  of the α range reaches it.
- **Objective** (single, minimised): ``bpb`` = mean bits per byte after fine-tuning over the tuning
  split; ``bpb+compute`` = that + W × mean steps (W = ``compute_weight`` bits per byte per step).
  One scalar rather than an NSGA-II Pareto study, because Optuna's pruners only work for single-
  objective studies and pruning is what makes tuning affordable on a CPU.
- **Pruning.** After each tuning prompt the running objective is reported (step i = prompts done − 1;
  prompts come in the same order in every trial, so step i always means the same prompts). A
  ``MedianPruner`` (5 start-up trials, judging from the second prompt on) stops trials whose running
  value is worse than the median of earlier trials at the same step.
- **Splits.** Prompts are split deterministically (sha256 of seed and prompt id) into a tuning split
  (``tune_fraction``) and a disjoint report split; both are written next to ``best.json`` so the final
  report runs ``sift-ttft evaluate --prompts report_prompts.jsonl --params best.json``.
- **Storage.** sqlite in ``<state>/optuna/optuna.db`` by default, any Optuna RDB URL otherwise. The
  study's definition (search space, objective, evaluation settings, index fingerprint, tuning
  prompts) is stored in its user attributes; resuming a name with a different definition is refused
  before anything is written. On sqlite every transaction takes the write lock at BEGIN, so parallel
  workers cannot claim the same queued trial (see ``_serialise_sqlite_transactions``).
- **--trials with several processes.** ``trials`` counts the trials *this process* runs (like
  Optuna's ``n_trials``): two workers with ``--trials 5`` on one study add 10 trials. This count is
  exact with no race between workers; a fixed study-wide total would need a lock Optuna does not
  have. Trials of a crashed worker are detected by the storage heartbeat, marked FAIL and re-queued
  once (``RetryHeartbeatStaleTrialCallback``), so no trial is silently lost.
- **Caching.** Trials call the evaluate flow's cached per-prompt tasks: the index is loaded, never
  rebuilt, and an identical (prompt, λ′, α) selection and fine-tuning is served from the cache.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import math
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    distribution_to_json,
)
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from prefect import flow, get_run_logger

from flows.config import EvaluateConfig, TuneConfig
from sift.env import state_dir

STUDY_DEFINITION_ATTR = "sift_ttft.definition"
STOPPING_CHOICES = ("adaptive", "never")
# Evaluation settings that change what a trial's value means; a resumed study must keep them.
_DEFINING_SETTINGS = ("n", "k", "model", "lr", "eps", "max_tokens", "split", "seed", "lora_rank", "method")
# A crashed worker's RUNNING trial is failed (and retried once) after this long without a heartbeat.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


# ----------------------------------------------------------------------------------------------
# Storage and study


def optuna_dir() -> Path:
    """``<state>/optuna``: the default sqlite storage and one folder of outputs per study."""
    path = state_dir() / "optuna"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_storage_url() -> str:
    """``sqlite:////<state>/optuna/optuna.db`` (absolute path: four slashes)."""
    return f"sqlite:///{optuna_dir() / 'optuna.db'}"


def study_dir(study_name: str) -> Path:
    """``<state>/optuna/<study name made file-safe>``: best.json and the prompt splits."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", study_name).strip("._") or "study"
    path = optuna_dir() / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_storage(
    url: Optional[str] = None,
    heartbeat: bool = True,
    heartbeat_seconds: int = HEARTBEAT_SECONDS,
    grace_seconds: int = GRACE_SECONDS,
) -> RDBStorage:
    """Open (creating its tables if needed) the Optuna RDB storage at ``url`` (default: the state folder).

    sqlite gets a 60 s busy timeout so parallel workers wait for each other's writes instead of
    failing with "database is locked". With ``heartbeat``, a running trial writes a heartbeat every
    ``heartbeat_seconds``; when a worker starts a trial, trials silent for ``grace_seconds`` (their
    process died) are marked FAIL and re-queued once with the same parameters. Raises ``ValueError``
    naming ``storage`` when the URL cannot be parsed, its driver is missing, or the database cannot
    be opened.
    """
    url = url or default_storage_url()
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    extra: dict[str, Any] = {}
    if heartbeat:
        extra = dict(
            heartbeat_interval=heartbeat_seconds,
            grace_period=grace_seconds,
            heartbeat_stale_trial_callback=_retry_stale_trials(),
        )
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8; we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, engine_kwargs=engine_kwargs, **extra)
            break
        except Exception as exc:  # sqlalchemy's ArgumentError/OperationalError, ImportError for a driver
            if "already exists" in str(exc) and attempt < 2:
                continue  # two workers created the tables of a new sqlite file at once: the loser retries
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(
                f"storage {url!r} cannot be opened ({cause}); give an Optuna RDB URL such as "
                f"sqlite:////absolute/path/optuna.db (four slashes) or postgresql://user@host/db"
            ) from None
    if storage.engine.name == "sqlite":
        _serialise_sqlite_transactions(storage.engine)
    return storage


def _retry_stale_trials() -> RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8; the replacement of the deprecated one
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=1)


def _serialise_sqlite_transactions(engine) -> None:
    """Make every sqlite transaction ``BEGIN IMMEDIATE`` (take the write lock at its start).

    Why: Optuna claims a queued (WAITING) trial by reading its state and then updating it, relying
    on ``SELECT ... FOR UPDATE``, which sqlite ignores; two workers (threads or processes) can then
    both claim the same enqueued trial and run it twice (optuna/optuna#4002, #4621; seen here with
    ``--jobs 2``). With the write lock taken at BEGIN, the second worker's read waits for the first
    one's commit and sees RUNNING. Costs nothing that matters at one write per prompt.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_pysqlite_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below emit BEGIN itself

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections predate the hooks


def search_space(config: TuneConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """The distributions of ``lam``, ``stopping`` and (conditional on stopping="adaptive") ``alpha``."""
    for name in ("lam_min", "lam_max", "alpha_min", "alpha_max"):
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"{name} must be > 0 (log-uniform range), got {value}")
    if config.lam_min >= config.lam_max:
        raise ValueError(f"empty λ′ range: lam_min={config.lam_min} must be < lam_max={config.lam_max}")
    if config.alpha_min >= config.alpha_max:
        raise ValueError(f"empty α range: alpha_min={config.alpha_min} must be < alpha_max={config.alpha_max}")
    return {
        "lam": FloatDistribution(config.lam_min, config.lam_max, log=True),
        "stopping": CategoricalDistribution(STOPPING_CHOICES),
        "alpha": FloatDistribution(config.alpha_min, config.alpha_max, log=True),
    }


def study_definition(config: TuneConfig, tune_prompts: list[dict], index_fingerprint: str) -> dict[str, Any]:
    """What a study's values mean, as JSON-able dict: search space, objective, settings, prompts.

    Two runs may share a study only if these are equal; anything else (trials, jobs, storage,
    tracking) may differ between runs and workers.
    """
    return {
        "search_space": {name: json.loads(distribution_to_json(d)) for name, d in search_space(config).items()},
        "objective": config.objective,
        "compute_weight": config.compute_weight if config.objective == "bpb+compute" else None,
        "settings": {name: _jsonable(getattr(config, name)) for name in _DEFINING_SETTINGS},
        "index": index_fingerprint,
        "tune_prompt_ids": [p["id"] for p in tune_prompts],
    }


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def index_fingerprint_of(config: TuneConfig) -> str:
    """The index's content fingerprint (what the values depend on; its folder may move)."""
    from flows.evaluate import read_manifest, resolve_index

    return read_manifest(resolve_index(config))["fingerprint"]


def open_study(storage: RDBStorage, name: str, definition: dict[str, Any], seed: Optional[int] = None):
    """Create study ``name`` or resume it; returns ``(study, created)``.

    A study that exists with a different definition raises ``ValueError`` listing what differs,
    before anything is written to it. A study that exists without a definition is adopted only if
    it has no trials (a creator that died between creating and labelling it); otherwise refused.
    The sampler is TPE with ``constant_liar`` (on by default in Optuna 5) so parallel workers do
    not propose the same point; it is seeded only when ``seed`` is given (workers sharing a seed
    would repeat each other's random start-up trials).
    """
    sampler = optuna.samplers.TPESampler(seed=seed)
    # Judge a trial from its second prompt on: one prompt's response to λ′ says little about the mean.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    created = True
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction="minimize", sampler=sampler, pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:
        created = False
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
    if created or not _matches_definition(study, definition):
        study.set_user_attr(STUDY_DEFINITION_ATTR, definition)
    return study, created


def check_existing_study(storage: RDBStorage, name: str, definition: dict[str, Any]) -> None:
    """Raise ``ValueError`` if study ``name`` exists with another definition; never writes anything."""
    try:
        study = optuna.load_study(storage=storage, study_name=name)
    except KeyError:  # Optuna's "no such study": it will be created
        return
    _matches_definition(study, definition)


def _matches_definition(study: optuna.Study, definition: dict[str, Any]) -> bool:
    """True if the study carries ``definition``; False if it carries none and has no trials (adopt it).

    Raises ``ValueError`` naming what differs when it carries another definition, or when it has
    trials but no definition (a study made by something else).
    """
    name = study.study_name
    stored = study.user_attrs.get(STUDY_DEFINITION_ATTR)
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise ValueError(
                f"study {name!r} exists in this storage but was not created by `sift-ttft tune`; "
                f"choose another --study name"
            )
        return False
    definition = json.loads(json.dumps(definition))  # compare as stored: tuples become lists
    if stored != definition:
        differ = sorted(k for k in set(stored) | set(definition) if stored.get(k) != definition.get(k))
        raise ValueError(
            f"study {name!r} exists with a different search space or objective (differs in: "
            f"{', '.join(differ)}); resume it with the same settings, or choose another --study name"
        )
    return True


# ----------------------------------------------------------------------------------------------
# Prompts


def split_prompts(prompts: list[dict], tune_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split prompts into a tuning split and a disjoint report split, deterministically.

    Each prompt is ranked by sha256(f"{seed}:{id}"); the first round(tune_fraction · P) of that
    order (at least 1, at most P − 1) tune, the rest report. Ranking by id (not by position) keeps a
    prompt on the same side when prompts are added to or removed from the file. Both splits keep
    the file's order. Raises ``ValueError`` for fewer than 2 prompts, repeated ids, or a fraction
    outside (0, 1).
    """
    if not 0 < tune_fraction < 1:
        raise ValueError(f"tune_fraction must be in (0, 1), got {tune_fraction}")
    if len(prompts) < 2:
        raise ValueError(f"tuning needs at least 2 prompts (a tuning and a report split), got {len(prompts)}")
    ids = [p["id"] for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt ids must be unique to split prompts into tuning and report sets")
    n_tune = min(max(round(tune_fraction * len(prompts)), 1), len(prompts) - 1)
    rank = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    tune_ids = set(rank[:n_tune])
    return [p for p in prompts if p["id"] in tune_ids], [p for p in prompts if p["id"] not in tune_ids]


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file private to this process and thread, then rename: workers sharing a
    study write the same files, and a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _write_json(path: Path, value: Any) -> None:
    _write_atomic(path, json.dumps(value, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# Trials


def suggest_params(trial: optuna.Trial, config: TuneConfig) -> dict[str, Optional[float]]:
    """Sample one point; returns ``{"lam": λ′, "alpha": α or None}`` (the ``--params`` format)."""
    # Must match search_space(), which is what the study stores and compares on resume.
    lam = trial.suggest_float("lam", config.lam_min, config.lam_max, log=True)
    stopping = trial.suggest_categorical("stopping", STOPPING_CHOICES)
    alpha = trial.suggest_float("alpha", config.alpha_min, config.alpha_max, log=True) if stopping == "adaptive" else None
    return {"lam": float(lam), "alpha": None if alpha is None else float(alpha)}


def params_of(trial: optuna.trial.FrozenTrial) -> dict[str, Optional[float]]:
    """A finished trial's point in the ``--params`` format ``{"lam": ..., "alpha": ... or null}``."""
    alpha = trial.params.get("alpha") if trial.params.get("stopping", "adaptive") == "adaptive" else None
    return {"lam": float(trial.params["lam"]), "alpha": None if alpha is None else float(alpha)}


def objective_of(rows: list[dict], objective: str, compute_weight: float) -> float:
    """Mean bits per byte after fine-tuning (+ W × mean steps for ``bpb+compute``) over ``rows``.

    A row without ``bpb_after`` (a prompt the evaluation skipped) counts as the base model's
    ``bpb_before`` with 0 steps, so skipping can never look better than fine-tuning.
    """
    if not rows:
        raise ValueError("no evaluation rows to average")
    bpb = [r["bpb_after"] if r.get("bpb_after") is not None else r["bpb_before"] for r in rows]
    value = sum(bpb) / len(bpb)
    if objective == "bpb+compute":
        value += compute_weight * sum(r.get("steps") or 0 for r in rows) / len(rows)
    elif objective != "bpb":
        raise ValueError(f"objective must be 'bpb' or 'bpb+compute', got {objective!r}")
    return float(value)


class PruningReporter:
    """``on_result`` for the evaluation: report the running objective, prune hopeless trials.

    After the i-th row (0-based) it calls ``trial.report(objective_of(rows[:i+1]), step=i)`` and
    raises ``optuna.TrialPruned`` when ``trial.should_prune()``.
    """

    def __init__(self, trial: optuna.Trial, objective: str, compute_weight: float) -> None:
        self.trial, self.objective, self.compute_weight = trial, objective, compute_weight
        self.rows: list[dict] = []

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        step = len(self.rows) - 1
        self.trial.report(objective_of(self.rows, self.objective, self.compute_weight), step=step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"running objective at prompt {step} is worse than the median")


def _summarise(rows: list[dict]) -> dict[str, float]:
    """Per-trial means logged as user attributes (and so as MLflow metrics)."""
    out = {"prompts": float(len(rows))}
    for key in ("bpb_before", "bpb_after", "steps", "flops"):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            out[f"mean_{key}"] = float(sum(values) / len(values))
    return out


def trial_config(config: TuneConfig, params: dict[str, Optional[float]]) -> EvaluateConfig:
    """The evaluate flow's config for one trial: SIFT only, this (λ′, α), no MLflow of its own.

    ``tracking`` is off because the tuning callback logs the trial; ``limit``/``params``/``out`` are
    dropped because the tuning split was already chosen and the point comes from the trial.
    """
    values = {name: getattr(config, name) for name in EvaluateConfig.model_fields}
    values.update(
        method=["sift"], lam=params["lam"], alpha=params["alpha"], tracking=False, limit=None, params=None, out=None
    )
    return EvaluateConfig.model_validate(values)


def _run_evaluation(config: EvaluateConfig, prompts: list[dict], on_result: Callable[[dict], None]):
    """The evaluate flow's cached per-prompt work; returns ``(rows, task state counts)``."""
    from flows.evaluate import EvaluationStats, run_evaluation  # late: imports the model stack

    stats = EvaluationStats()
    rows = run_evaluation(config, prompts=prompts, on_result=on_result, stats=stats)
    return rows, stats


def make_objective(config: TuneConfig, tune_prompts: list[dict]) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: evaluate SIFT at the trial's point on the tuning split.

    Optuna runs ``--jobs`` > 1 trials in threads, which do not inherit the Prefect flow's context
    (a ``contextvars`` context); each trial runs in a copy of the context captured here, so its
    tasks belong to the running ``tune`` flow and use its caches.
    """
    flow_context = contextvars.copy_context()

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, config)
        reporter = PruningReporter(trial, config.objective, config.compute_weight)
        rows, stats = flow_context.copy().run(_run_evaluation, trial_config(config, params), tune_prompts, reporter)
        # "tasks_cached" shows the reuse: a trial at an already-evaluated point is all cache hits.
        summary = {**_summarise(rows), "tasks_cached": float(sum(v for k, v in stats.items() if k.endswith(":Cached")))}
        summary["tasks"] = float(sum(stats.values()))
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        return objective_of(rows, config.objective, config.compute_weight)

    return objective


def best_params(study: optuna.Study) -> Optional[dict[str, Optional[float]]]:
    """The best COMPLETE trial's point in ``--params`` format, or None if no trial completed."""
    try:
        return params_of(study.best_trial)
    except ValueError:  # Optuna: "no trials are completed yet"
        return None


def _load_prompts(config: TuneConfig) -> list[dict]:
    """The evaluate flow's prompts: ``config.prompts`` (default: the held-out prompts), ``limit`` applied."""
    from flows.evaluate import limit_prompts, load_prompts  # late, as above

    return limit_prompts(load_prompts(config), config.limit)


# ----------------------------------------------------------------------------------------------
# Tracking and plots


def _prepare_tracking_store() -> None:
    """Check the MLflow store is reachable and, for sqlite, create its tables under a file lock.

    Why the lock: workers started together on a fresh sqlite store would all run MLflow's schema
    migrations at once, and all but one fail ("Online migration expected to match one row").
    """
    import fcntl

    from mlflow import MlflowClient

    from tracking.store import check_reachable, sqlite_path

    uri = check_reachable()
    db = sqlite_path(uri)
    if db is None:
        return
    with open(db.with_name(db.name + ".init-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        MlflowClient(uri).search_experiments(max_results=1)  # creates or migrates the tables


def _history_figure(study: optuna.Study):
    """Objective of every finished trial by trial number, with the best-so-far line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    fig, ax = plt.subplots(figsize=(6, 4))
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", color="tab:blue")
    ax.scatter(
        [t.number for t in pruned],
        [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
        label="pruned (last running value)", color="tab:gray", marker="x",
    )
    best, xs, ys = math.inf, [], []
    for t in done:
        best = min(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"objective ({study.user_attrs.get(STUDY_DEFINITION_ATTR, {}).get('objective', 'bpb')})")
    ax.set_title(f"tuning history: {study.study_name}")
    ax.legend()
    fig.tight_layout()
    return fig


def _log_tuning(run_logger, study: optuna.Study, summary: dict[str, Any], split: dict[str, list[str]]) -> None:
    """Log the summary, split, best point and the plots (history, λ′/α landscape) to the parent run."""
    run_logger.log_metrics(
        {"best_value": summary["best_value"], **{f"trials_{k.lower()}": v for k, v in summary["trials"].items()}}
    )
    if not run_logger.enabled:
        return
    run_logger.client.log_dict(run_logger.run_id, split, "split.json")
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    if done:
        run_logger.client.log_dict(run_logger.run_id, summary["best_params"], "best.json")
        run_logger.log_figure(_history_figure(study), "plots/tuning_history.png")
        # Trials with stopping="never" have alpha None: plot_landscape draws them in a strip below the α axis.
        run_logger.log_landscape([params_of(t) for t in done], [t.value for t in done], objective=summary["objective"])


# ----------------------------------------------------------------------------------------------
# The flow


@flow(name="tune")
def tune(config: TuneConfig = TuneConfig()) -> dict[str, Any]:
    """Run ``config.trials`` trials of the study ``config.study`` in this process; return a summary.

    Returns ``{"study", "storage", "objective", "best_params", "best_value", "best_json", "trials"
    (the study's counts per state), "tune_prompt_ids", "report_prompt_ids", "parent_run_id"}``.
    Writes ``<state>/optuna/<study>/best.json`` (and ``config.out``) as ``{"lam": ..., "alpha": ...}``,
    plus ``split.json``, ``tune_prompts.jsonl`` and ``report_prompts.jsonl`` beside it. With
    tracking, one parent run in experiment ``<experiment>-tune`` holds one child run per trial.
    """
    from tracking.log import tracking_run
    from tracking.optuna_mlflow import MLflowTrialLogger

    logger = get_run_logger()
    if config.method != ["sift"]:
        raise ValueError(f"tune evaluates --method sift only (λ′ and α are SIFT's), got {config.method}")
    storage_url = config.storage or default_storage_url()
    storage = open_storage(storage_url)  # fail fast, before loading prompts or models
    if config.tracking:
        _prepare_tracking_store()  # fail fast too, before a study is created

    prompts = _load_prompts(config)
    tune_prompts, report_prompts = split_prompts(prompts, config.tune_fraction, config.seed)
    definition = study_definition(config, tune_prompts, index_fingerprint_of(config))
    study, created = open_study(storage, config.study, definition)
    split = {"tune_prompt_ids": [p["id"] for p in tune_prompts], "report_prompt_ids": [p["id"] for p in report_prompts]}
    out_dir = study_dir(config.study)
    _write_json(out_dir / "split.json", split)
    _write_jsonl(out_dir / "tune_prompts.jsonl", tune_prompts)
    _write_jsonl(out_dir / "report_prompts.jsonl", report_prompts)
    if created and config.lam_min <= config.lam <= config.lam_max:
        # The first trial is the configured point, so tuning never ends worse than the defaults.
        start: dict[str, Any] = {"lam": config.lam, "stopping": "never"}
        if config.alpha is not None and config.alpha_min <= config.alpha <= config.alpha_max:
            start = {"lam": config.lam, "stopping": "adaptive", "alpha": config.alpha}
        study.enqueue_trial(start)

    with tracking_run(
        config,
        experiment=f"{config.experiment}-tune",
        run_name=f"tune {config.study}",
        enabled=config.tracking,
        params={"storage": storage_url, "tune_prompts": len(tune_prompts), "report_prompts": len(report_prompts)},
        tags={"sift_ttft.flow": "tune", "optuna.study": config.study},
    ) as run_logger:
        callbacks = []
        if run_logger.enabled:
            callbacks.append(MLflowTrialLogger(run_logger.experiment_id, run_logger.run_id, run_logger.tracking_uri))
        logger.info(
            "study %r in %s: %d trials in this process (%d tuning prompts, %d held out for the report)",
            config.study, storage_url, config.trials, len(tune_prompts), len(report_prompts),
        )
        study.optimize(
            make_objective(config, tune_prompts), n_trials=config.trials, n_jobs=config.jobs, callbacks=callbacks
        )

        best = best_params(study)
        best_value = study.best_value if best is not None else math.nan
        best_json = out_dir / "best.json"
        if best is not None:
            _write_json(best_json, best)
            if config.out is not None:
                _write_json(Path(config.out), best)
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        summary = {
            "study": config.study,
            "storage": storage_url,
            "objective": config.objective,
            "best_params": best,
            "best_value": best_value,
            "best_json": str(best_json) if best is not None else None,
            "trials": counts,
            **split,
            "parent_run_id": run_logger.run_id,
        }
        _log_tuning(run_logger, study, summary, split)

    logger.info("best %s (objective %.4f) → %s; trials %s", best, best_value, best_json, counts)
    return summary


def print_tune_summary(summary: dict[str, Any]) -> None:
    """Print the best point, where it was written, and the next commands (dashboard, final report)."""
    from rich.console import Console

    console = Console()
    trials = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary["trials"].items()))
    console.print(f"study {summary['study']!r}: {trials} ({summary['objective']} objective)")
    if summary["best_params"] is None:
        console.print("no trial completed yet: no best point.")
        return
    console.print(f"best λ′/α: {summary['best_params']} → objective {summary['best_value']:.4f}")
    out_dir = Path(summary["best_json"]).parent
    console.print(f"written to {summary['best_json']}", soft_wrap=True)
    console.print(f"dashboard: optuna-dashboard {summary['storage']} --host 127.0.0.1", soft_wrap=True)
    console.print(
        f"final report on the held-out prompts: sift-ttft evaluate --prompts {out_dir / 'report_prompts.jsonl'} "
        f"--params {summary['best_json']}",
        soft_wrap=True,
    )
    if summary.get("parent_run_id"):
        console.print(f"MLflow run {summary['parent_run_id']} (one child run per trial): `sift-ttft ui`.")


def preflight(config: TuneConfig) -> None:
    """Check the cheap things before a flow run starts, so bad input is one clear ``ValueError``.

    Method, storage URL, prompts and their split, and (if the study exists) its definition; writes
    nothing. The flow repeats these checks: it can also be started without the CLI.
    """
    if config.method != ["sift"]:
        raise ValueError(f"tune evaluates --method sift only (λ′ and α are SIFT's), got {config.method}")
    storage = open_storage(config.storage, heartbeat=False)
    tune_prompts, _ = split_prompts(_load_prompts(config), config.tune_fraction, config.seed)
    check_existing_study(storage, config.study, study_definition(config, tune_prompts, index_fingerprint_of(config)))


def tune_cli(config: TuneConfig) -> dict[str, Any]:
    """``sift-ttft tune``: check the input, then run the flow with the configured task runner."""
    from flows.runners import make_task_runner

    preflight(config)
    return tune.with_options(task_runner=make_task_runner(config))(config=config)
