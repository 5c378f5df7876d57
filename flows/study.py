"""Where a tuning study lives and what it is: Optuna storage, opening a study, the definition guard.

- **Storage.** ``--storage``, else ``$SIFT_OPTUNA_STORAGE``, else sqlite in ``<state>/optuna/optuna.db``
  (``storage_url``); any Optuna RDB URL, a plain ``postgresql://`` mapped to the installed driver
  (``tracking.store.database_url``: psycopg 3 from the ``postgres`` extra). On sqlite every
  transaction takes the write lock at BEGIN, so parallel workers cannot claim the same queued trial
  (see ``_serialise_sqlite_transactions``).
- **Definition.** A study's definition (search space, objective, evaluation settings, index
  fingerprint, tuning prompts) is stored in its user attributes; resuming a name with a different
  definition is refused before anything is written (``open_study``, ``check_existing_study``).
- **--trials with several processes.** ``trials`` counts the trials *this process* runs (like
  Optuna's ``n_trials``): two workers with ``--trials 5`` on one study add 10 trials. This count is
  exact with no race between workers; a fixed study-wide total would need a lock Optuna does not
  have. Trials of a crashed worker are detected by the storage heartbeat, marked FAIL and re-queued
  once (``RetryHeartbeatStaleTrialCallback``), so no trial is silently lost. **Bound:** a running
  trial writes a heartbeat every ``HEARTBEAT_SECONDS`` (10 s); every live worker checks the study for
  trials silent longer than ``GRACE_SECONDS`` (60 s) every ``HEARTBEAT_SECONDS`` (``StaleTrialWatchdog``),
  not only when it starts its next trial as Optuna does; so a dead worker's trial is FAIL and its
  parameters are queued again at most ``GRACE_SECONDS + 2 × HEARTBEAT_SECONDS`` (80 s) after the worker
  died, while any worker of the study lives (else when the next one starts).
- **Pruner.** ``MedianPruner`` with 5 start-up trials, judging from the second prompt (step 1) on.
"""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.distributions import distribution_to_json
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from flows.config import TuneConfig
from flows.objective import search_space
from sift.env import state_dir
from tracking.store import database_url, masked_url
from sift.settings import BudgetSettings, TTFTConfig

STUDY_DEFINITION_ATTR = "sift_ttft.definition"
# Evaluation settings that change what a trial's value means, so a resumed study must keep them:
# every field of the library's settings and of the budget (derived, never listed) but the searched λ′, α
# and γ, and the model.
_DEFINING_SETTINGS = tuple(name for name in (*TTFTConfig.model_fields, *BudgetSettings.model_fields)
                           if name not in ("lam", "alpha", "gamma")) + ("model",)
# A crashed worker's RUNNING trial is failed (and retried once) after GRACE_SECONDS without a heartbeat;
# live workers write one every HEARTBEAT_SECONDS and look for silent trials as often (see the bound above).
# The grace is 6 heartbeats: a worker whose 2 cores are busy fine-tuning still gets its beat in.
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
# `--storage` left out: this variable, then the state folder's sqlite file.
STORAGE_ENV = "SIFT_OPTUNA_STORAGE"


# ----------------------------------------------------------------------------------------------
# Storage


def optuna_dir() -> Path:
    """``<state>/optuna``: the default sqlite storage and one folder of outputs per study."""
    path = state_dir() / "optuna"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_storage_url() -> str:
    """``sqlite:////<state>/optuna/optuna.db`` (absolute path: four slashes)."""
    return f"sqlite:///{optuna_dir() / 'optuna.db'}"


def configured_storage(explicit: Optional[str] = None) -> Optional[str]:
    """The Optuna storage the user named: ``explicit`` (``--storage``), else ``$SIFT_OPTUNA_STORAGE``, else
    None (creates nothing: the preflight asks this before anything may be written)."""
    return explicit or os.environ.get(STORAGE_ENV, "").strip() or None


def storage_url(explicit: Optional[str] = None) -> str:
    """The Optuna storage a command uses: ``configured_storage(explicit)``, else ``default_storage_url()``;
    as written (``open_storage`` maps the driver)."""
    return configured_storage(explicit) or default_storage_url()


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
    url = url or storage_url()
    shown = masked_url(url)  # never a password in a message
    try:
        driver_url = database_url(url)  # postgresql:// → postgresql+psycopg:// (the installed driver)
    except ValueError as err:
        raise ValueError(f"storage {shown!r} cannot be opened ({err})") from None
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
                storage = RDBStorage(driver_url, engine_kwargs=engine_kwargs, **extra)
            break
        except Exception as exc:  # sqlalchemy's ArgumentError/OperationalError, ImportError for a driver
            if ("already exists" in str(exc) or "duplicate key" in str(exc)) and attempt < 2:
                continue  # two workers created the tables of a new sqlite file at once: the loser retries
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(
                f"storage {shown!r} cannot be opened ({cause.replace(url, shown)}); give an Optuna RDB URL such as "
                f"sqlite:////absolute/path/optuna.db (four slashes) or postgresql://user@host/db"
            ) from None
    if storage.engine.name == "sqlite":
        _serialise_sqlite_transactions(storage.engine)
    return storage


class StaleTrialCallback:
    """What happens to a trial whose worker died: FAIL (Optuna), re-queued once with the same parameters
    (``RetryHeartbeatStaleTrialCallback``), then every callback in ``also`` (the tune flow adds its
    MLflow trial logger, so the killed trial reaches MLflow as a FAILED run)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8; the replacement of the deprecated one
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
        self.also: list = []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.retry(study, trial)
        for callback in list(self.also):
            callback(study, trial)


def _retry_stale_trials() -> StaleTrialCallback:
    return StaleTrialCallback()


class StaleTrialWatchdog:
    """A daemon thread that fails (and re-queues) a study's stale trials every ``interval`` seconds.

    Why: Optuna looks for stale trials only when a worker starts a trial, so a trial of a dead worker
    stays RUNNING until some live worker finishes the trial it is on (minutes). Use as a context
    manager around ``study.optimize``; a check that fails (database briefly away) is retried next time.
    """

    def __init__(self, study: optuna.Study, interval: float = HEARTBEAT_SECONDS) -> None:
        self.study, self.interval = study, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-stale-trials", daemon=True)

    def check(self) -> None:
        """Fail the stale trials now (Optuna's own check, which also runs the stale-trial callback)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # noqa: BLE001 — a busy or briefly unreachable database: try again next time
                pass

    def __enter__(self) -> "StaleTrialWatchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 30)


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


# ----------------------------------------------------------------------------------------------
# The study and its definition


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
    from flows.preflight import resolve_index
    from sift.index import read_index_manifest

    return read_index_manifest(resolve_index(config))["fingerprint"]


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
