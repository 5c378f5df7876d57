"""The ``sift-ttft`` command line: one subcommand per flow, flags generated from the pydantic configs.

Each config field is one flag (``lam`` → ``--lam``, ``max_tokens`` → ``--max-tokens``, booleans as
``--tracking/--no-tracking``, list fields repeatable: ``--method nn --method sift``), its help is the
field's description and default, and pydantic validates the values: the config classes in
``flows/config.py`` are the single source of truth for the CLI, the flows and the deployments.

Only typer and pydantic are imported at module level so that ``--help`` stays fast; Prefect, torch
and friends are imported inside the commands.

Adding a command for another config (how ``tune`` is wired)::

    @config_command(app, "tune", TuneConfig)
    def tune(config: TuneConfig) -> None:
        from flows.tune import ...   # heavy imports inside
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import typer
from pydantic import BaseModel, ValidationError

from flows.config import DataSizeConfig, DemoConfig, EvaluateConfig, IndexConfig, TuneConfig
from sift.inputs import InputError

app = typer.Typer(
    name="sift-ttft",
    help="Test-time fine-tuning on data chosen by SIFT, as Prefect flows tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

USAGE_ERROR = 2  # what click uses for bad flags; a config that fails validation, or an input the
# preflight refuses (flows/preflight.py: a missing path, a broken file, not a model folder), is a bad flag too


DEBUG_OPTION = inspect.Parameter(
    "debug", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
    default=typer.Option(False, "--debug", help="On a failure, print the full traceback and Prefect's own error "
                         "reports (also: SIFT_DEBUG=1). Without it a failure is one `error:` line naming the run "
                         "log (<state>/logs) that holds the traceback."),
)


def _option_type(annotation: Any) -> tuple[Any, bool]:
    """Map a field's annotation to the type typer parses, and whether the flag is repeatable."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _option_type(args[0])
    if origin is list:
        (inner,) = typing.get_args(annotation) or (str,)
        return list[inner], True
    if origin is Literal:
        return annotation, False
    return annotation, False


def _flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def config_options(config_cls: type[BaseModel]) -> list[inspect.Parameter]:
    """Typer parameters (keyword-only) for every field of ``config_cls``, defaulting to its defaults.

    The option's default is the field's default (a factory is called once, here), so ``--help``
    shows the real default and a flag left out validates to exactly the config's default.
    """
    params = []
    for name, field in config_cls.model_fields.items():
        hint, repeatable = _option_type(field.annotation)
        default = field.get_default(call_default_factory=True)
        help_text = field.description or ""
        if "{methods}" in help_text:  # the registry's names as they are now, never a copied list
            from sift.methods import method_names

            help_text = help_text.replace("{methods}", ", ".join(method_names()))
        if repeatable and "repeatable" not in help_text:
            help_text += " (repeatable)"
        decls = [f"{_flag_name(name)}/--no-{name.replace('_', '-')}"] if hint is bool else [_flag_name(name)]
        option = typer.Option(default, *decls, help=help_text, show_default=default not in (None, []))
        annotation = hint if default is not None else Optional[hint]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


def validation_message(exc: ValidationError) -> str:
    """One readable line: ``--flag: what is wrong (got VALUE)`` for each error, joined by '; '."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if not isinstance(x, int)]
        where = _flag_name(loc[0]) if loc else "config"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        got = err.get("input")
        shown = f" (got {got!r})" if loc and not isinstance(got, dict) else ""
        parts.append(f"{where}: {msg}{shown}")
    return "; ".join(parts)


def parse_config(config_cls: type[BaseModel], values: dict[str, Any]):
    """Validate CLI values into ``config_cls``; on failure print one line and exit 2."""
    try:
        return config_cls(**values)
    except ValidationError as exc:
        typer.echo(f"error: {validation_message(exc)}", err=True)
        raise typer.Exit(USAGE_ERROR) from None


def config_command(
    typer_app: typer.Typer, name: str, config_cls: type[BaseModel], help: str | None = None
) -> Callable[[Callable[[Any], None]], Callable[..., None]]:
    """Decorator: register ``fn(config)`` as command ``name`` whose flags are ``config_cls``'s fields.

    The command validates the flags into a ``config_cls`` (one line and exit 2 when invalid), calls
    ``sift.env.set_default_env()`` (telemetry off, hub offline, state folder), then ``fn(config)``.
    An ``InputError`` from ``fn`` (its preflight refused an input) becomes one ``error:`` line and
    exit 2. Any other exception is a failed run: one ``error:`` line (``flows.errors.failure_line``:
    which task failed, the exception, where the run log with its traceback is) and exit 1; with
    ``--debug`` (added to every command here, or ``SIFT_DEBUG=1``) the traceback is printed first.
    """

    def decorate(fn: Callable[[Any], None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def command(**values: Any) -> None:
            from flows import errors

            if values.pop("debug", False):
                errors.request_debug()
            config = parse_config(config_cls, values)
            from sift.env import set_default_env

            set_default_env()
            try:
                fn(config)
            except InputError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(USAGE_ERROR) from None
            except (typer.Exit, typer.Abort):
                raise
            except Exception as exc:  # noqa: BLE001 — a failed run ends in one line, its traceback in the log
                errors.record_failure(exc)
                if errors.debug_requested():
                    errors.print_traceback(exc)
                typer.echo(f"error: {errors.failure_line(exc)}", err=True)
                raise typer.Exit(1) from None

        params = config_options(config_cls) + [DEBUG_OPTION]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read our signature, not fn's
        typer_app.command(name, help=help or (config_cls.__doc__ or "").strip().splitlines()[0])(command)
        return fn

    return decorate


def _start_flow_run(name: str) -> None:
    """Before a flow runs from the CLI: Prefect's console without tracebacks (``flows.errors``), the run's
    log file, and Prefect's temporary server started under its lock with a watchdog that stops it if this
    process is killed (``flows.prefect_server``; nothing when PREFECT_API_URL is set)."""
    from flows.errors import open_run_log, quiet_prefect_console
    from flows.prefect_server import start_temporary_server

    quiet_prefect_console()
    open_run_log(name)
    start_temporary_server()


def _run_flow(flow_fn, config) -> Any:
    """Run a flow with the task runner the config names (thread or Dask), after ``_start_flow_run``."""
    from flows.runners import make_task_runner

    _start_flow_run(flow_fn.name)
    return flow_fn.with_options(task_runner=make_task_runner(config))(config=config)


@config_command(app, "demo", DemoConfig, help="The main job: default corpus → index → base/NN/SIFT on held-out prompts → MLflow → table.")
def demo(config: DemoConfig) -> None:
    from flows.preflight import preflight_demo

    preflight_demo(config)  # every input checked before Prefect is imported (exit 2, nothing written)
    from flows.demo import demo as demo_flow

    _run_flow(demo_flow, config)


@config_command(app, "index", IndexConfig, help="Build (or reuse) a Faiss index over a corpus: chunk, embed in cached shards, save.")
def index(config: IndexConfig) -> None:
    from flows.preflight import preflight_index

    preflight_index(config)  # corpus, embedder, model, --out: in seconds, before the flow loads anything
    from flows.build_index import build_index

    result = _run_flow(build_index, config)
    typer.echo(f"index: {result['path']}  ({result['count']} sequences, fingerprint {result['fingerprint']})")


@config_command(app, "evaluate", EvaluateConfig, help="Test-time fine-tune per (prompt, method) and measure bits per byte; log to MLflow.")
def evaluate(config: EvaluateConfig) -> None:
    from flows.preflight import preflight_evaluate

    preflight_evaluate(config)  # prompts, index, model: one clear line now rather than a failed flow run
    from flows.evaluate import print_summary
    from flows.evaluate import evaluate as evaluate_flow

    print_summary(_run_flow(evaluate_flow, config))


@config_command(app, "tune", TuneConfig, help="Optuna study over SIFT's λ′ and α on a tuning split of the prompts.")
def tune(config: TuneConfig) -> None:
    from flows.preflight import preflight_tune

    preflight_tune(config)  # method, storage, prompts, index, model, an existing study's definition
    from flows.tune import print_tune_summary, tune_cli

    _start_flow_run("tune")
    print_tune_summary(tune_cli(config))


@config_command(app, "data-size", DataSizeConfig, help="Does SIFT's lead over NN grow with the data space? Evaluate on "
                "nested data spaces of growing size; table, plot (log x), an MLflow evaluate run per size and λ′.")
def data_size(config: DataSizeConfig) -> None:
    from flows.preflight import preflight_data_size

    preflight_data_size(config)  # model, embedder, your --corpus and --prompts: before Prefect starts
    from flows.data_size import data_size as data_size_flow
    from flows.data_size import print_data_size

    print_data_size(_run_flow(data_size_flow, config))


@app.command("ui")
def ui(
    host: str = typer.Option("127.0.0.1", help="Interface to bind (the UI has no login: keep it on loopback)."),
    port: int = typer.Option(5000, help="Port of the MLflow UI."),
) -> None:
    """Serve the MLflow UI on the tracking store (runs, per-prompt child runs, plots) until Ctrl-C."""
    from sift.env import set_default_env

    set_default_env()
    from tracking import ui as tracking_ui

    tracking_ui.main(host=host, port=port)  # one-line errors (port in use, unreachable store), exit 1


@app.command("corpus")
def corpus(
    out: Optional[Path] = typer.Option(
        None, help="Output folder; default: <state>/corpus/default for the demo space, else "
        "<state>/corpus/<sources>-n<sequences>-t<max-tokens>-seed<seed>."),
    seed: int = typer.Option(0, help="Seed of the held-out prompt choice and document sampling."),
    sequences: Optional[int] = typer.Option(
        None, min=1, help="Size of the data space in sequences of at most --max-tokens tokens. Sizes with the same "
        "--sources, --max-tokens and --seed are nested (a smaller space is a subset of a larger one) and share the "
        "same held-out prompts. Default: the demo space (8000 sequences, demo sources)."),
    max_tokens: int = typer.Option(256, min=8, help="Tokens per sequence (the base model's tokenizer)."),
    sources: Optional[str] = typer.Option(
        None, help="Source preset: 'demo' (Python stdlib, pydoc, Wikipedia leads, fortunes, git docs) or 'all' (also "
        "Python and Perl docs, Linux kernel code and docs, Webster 1913, FOLDOC, Jargon File). "
        "Default: 'demo' without --sequences, 'all' with it. A source that cannot be fetched is skipped with a "
        "warning and recorded in the manifest."),
) -> None:
    """Assemble the embedded multi-domain corpus and its held-out prompts (idempotent): the demo space by
    default, a larger nested one with --sequences (e.g. --sequences 131072 --max-tokens 128)."""
    from sift.env import set_default_env

    set_default_env()
    from flows.tasks import default_corpus_dir
    from sift.default_corpus import (DEMO_MAX_TOKENS, DEMO_SEQUENCES, SOURCE_PRESETS, assemble_default_corpus,
                                     sized_corpus_dir)

    preset = sources or ("demo" if sequences is None else "all")
    if preset not in SOURCE_PRESETS:
        typer.echo(f"error: --sources: choose from {', '.join(SOURCE_PRESETS)} (got {preset!r})", err=True)
        raise typer.Exit(USAGE_ERROR)
    size = DEMO_SEQUENCES if sequences is None else sequences
    if out is None:  # the demo space keeps its folder (every cached index points at it)
        demo = preset == "demo" and size == DEMO_SEQUENCES and max_tokens == DEMO_MAX_TOKENS
        out = default_corpus_dir() if demo else sized_corpus_dir(preset, size, max_tokens, seed)
    import time

    t0 = time.perf_counter()
    try:
        corpus = assemble_default_corpus(out, seed=seed, max_tokens=max_tokens, data_sequences=size,
                                         debian_packages=SOURCE_PRESETS[preset], progress=True)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    manifest = corpus.manifest
    typer.echo(f"corpus: {corpus.corpus_path}\nprompts: {corpus.prompts_path}\nfingerprint: {corpus.fingerprint}")
    typer.echo(f"{manifest['sequences']} sequences of ≤ {max_tokens} tokens in {manifest['documents']} documents, "
               f"{manifest['prompts']} prompts, {len(manifest['domains'])} domains ({time.perf_counter() - t0:.1f} s)")
    if manifest["sequences"] < size:
        typer.echo(f"note: {manifest['sequences']} of the {size} sequences asked for: the split (one pass, smallest "
                   "domain first) ran out in its last domains")
    for domain, counts in manifest["domains"].items():
        typer.echo(f"  {domain:20s} {counts['sequences']:7d} sequences {counts['documents']:6d} documents "
                   f"{counts['prompts']:3d} prompts")
    for name, status in manifest["sources"].items():
        if not status["used"]:
            typer.echo(f"  skipped source {name}: {status['reason']}")


def main() -> None:  # pragma: no cover - `python -m flows.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
