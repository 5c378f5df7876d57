"""The ``data-size`` flow: does SIFT's lead over nearest neighbours grow with the data space?

The paper's first claim (Hübotter et al. 2024, Fig. 1 and §5) is that SIFT beats NN and that the gap
grows with the size of the data space. This flow asks it of our product, through the product:

1. per data space (``--sizes`` assembled like ``sift-ttft corpus --sequences S``, nested and sharing
   one prompt set; or the user's own ``--corpus`` files with ``--prompts``):
   the ``build_index`` body (cached embedding shards), then the ``evaluate`` body once per λ′
   (the first λ′ with every ``--method``, the others with sift and ``--reference``);
2. every evaluate run is an MLflow run of its own, tagged ``data_space.sequences`` and nested under
   this flow's run, which holds the table (``data_size.json``) and the plot of each comparison with
   the reference against the size (``plots/data_size_gap.png``, log x).

Everything heavy is a cached task of the flows it calls, so a rerun (or ``sift-ttft evaluate`` with
the same settings before it) costs only what changed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flows.build_index import build_index_in_flow
from flows.config import DataSizeConfig, EvaluateConfig, IndexConfig
from flows.evaluate import evaluate_in_flow
from flows.preflight import preflight_data_size
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner


@task(name="assemble_sized_corpus", cache_policy=NO_CACHE)
def assemble_sized_corpus_task(sources: str, sequences: int, max_tokens: int, seed: int) -> dict:
    """``sift-ttft corpus --sources S --sequences N --max-tokens T --seed X`` (idempotent: a second call
    reads the manifest); returns the paths of its corpus and prompts files and its sequence count."""
    from sift.default_corpus import SOURCE_PRESETS, assemble_default_corpus, sized_corpus_dir

    out = sized_corpus_dir(sources, sequences, max_tokens, seed)
    corpus = assemble_default_corpus(out, seed=seed, max_tokens=max_tokens, data_sequences=sequences,
                                     debian_packages=SOURCE_PRESETS[sources])
    return {"corpus": str(corpus.corpus_path), "prompts": str(corpus.prompts_path),
            "sequences": int(corpus.manifest["sequences"])}


def data_spaces(config: DataSizeConfig) -> list[dict]:
    """The data spaces to evaluate, smallest first: ``{"corpus", "prompts", "label"}`` each. Assembled
    spaces share the held-out prompts by construction; the user's spaces use ``--prompts``."""
    if config.corpus:
        return [{"corpus": str(path), "prompts": str(config.prompts), "label": Path(path).stem}
                for path in config.corpus]
    spaces = []
    for size in config.sizes:
        built = assemble_sized_corpus_task(config.sources, size, config.max_tokens, config.corpus_seed)
        spaces.append({"corpus": built["corpus"], "prompts": str(config.prompts or built["prompts"]),
                       "label": f"n{size}"})
    return spaces


def comparison_label(method: str, lam: float, lams: list[float]) -> str:
    """A method's name in the table: SIFT's carries its λ′ when several are compared."""
    return f"{method} λ′={lam:g}" if method == "sift" and len(lams) > 1 else method


def size_entries(summary: dict, size: int, lam: float, lams: list[float], label: str) -> list[dict]:
    """The table's entries of one evaluate run: per method its mean bits per byte after fine-tuning,
    and its paired comparison with the reference (``sift.stats.paired_comparison``, from the summary)."""
    paired = {p["method"]: p for p in summary.get("paired", [])}
    entries = []
    for group in summary["groups"]:
        if group.get("domain") != "all":
            continue
        method = group["method"]
        entry = {"size": size, "space": label, "lam": lam, "method": method,
                 "label": comparison_label(method, lam, lams), "prompts": group.get("count"),
                 "bpb_after": group.get("bpb_after"), "bpb_before": group.get("bpb_before"),
                 "steps": group.get("steps")}
        if method in paired:
            p = paired[method]
            entry.update(reference=p["reference"], gap=p["mean"], ci_low=p["ci_low"], ci_high=p["ci_high"],
                         wins=p["wins"], n=p["n"])
        entries.append(entry)
    return entries


@flow(name="data-size", task_runner=ThreadPoolTaskRunner(max_workers=1))
def data_size(config: DataSizeConfig = DataSizeConfig()) -> dict[str, Any]:
    """Run the experiment; return ``{"table", "runs", "mlflow_run_id", "seconds"}`` (``table``: the
    entries of ``size_entries`` for every size and λ′; ``runs``: per evaluate run its size, λ′, MLflow
    run id and task states). Writes the table to ``config.out`` (JSON) and the plot beside it (``.png``)
    when set."""
    from flows.runners import current_runner_matches, make_task_runner
    from flows.trace import flow_run_tags, link_flow_run_to_mlflow
    from sift.atomic import write_json
    from tracking.log import tracking_run
    from tracking.plots import plot_gap_vs_size

    preflight_data_size(config)  # first: a deployment does not pass through the CLI
    if not current_runner_matches(config):
        return data_size.with_options(task_runner=make_task_runner(config))(config=config)
    started = time.perf_counter()
    logger = get_run_logger()
    spaces = data_spaces(config)
    table: list[dict] = []
    runs: list[dict] = []
    with tracking_run(config, experiment=config.experiment, run_name=f"data-size · {len(spaces)} spaces",
                      enabled=config.tracking, params={"spaces": len(spaces)},
                      tags={"sift_ttft.flow": "data-size", **flow_run_tags()}) as tracker:
        trace = link_flow_run_to_mlflow(tracker) or {}
        for i, space in enumerate(spaces):
            logger.info("data space %d/%d: %s", i + 1, len(spaces), space["corpus"])
            index = build_index_in_flow(IndexConfig(
                corpus=[space["corpus"]], embedder=config.embedder, model=config.model, max_tokens=config.max_tokens,
                index_type=config.index_type, task_runner=config.task_runner, dask_address=config.dask_address,
                dask_workers=config.dask_workers))
            size = int(index["count"]) * config.duplicate
            for j, lam in enumerate(config.lam):
                methods = config.method if j == 0 else [m for m in config.method if m in ("sift", config.reference)]
                if not methods:
                    continue
                run_config: EvaluateConfig = config.evaluate_config(lam, Path(index["path"]), Path(space["prompts"]),
                                                                    methods)
                logger.info("%d sequences, λ′ = %g: %s on %s prompts", size, lam, ", ".join(methods),
                            config.limit or "all")
                result = evaluate_in_flow(run_config, parent_run_id=tracker.run_id,
                                          tags={"data_space.label": space["label"], "sift.lam": f"{lam:g}"})
                entries = size_entries(result["summary"], size, lam, config.lam, space["label"])
                table.extend(e for e in entries if j == 0 or e["method"] == "sift")
                runs.append({"size": size, "space": space["label"], "lam": lam, "mlflow_run_id": result["mlflow_run_id"],
                             "stats": result["stats"], "index": index["path"]})
        tracker.log_metrics({f"data_size/{e['label']}/{e['size']}/{key}": e[key] for e in table
                             for key in ("gap", "ci_low", "ci_high", "bpb_after") if e.get(key) is not None})
        if any(e.get("gap") is not None for e in table):
            figure = plot_gap_vs_size(table)
            if config.out is not None:  # beside the table, for a README or a report
                figure.savefig(Path(config.out).expanduser().with_suffix(".png"), dpi=110)
            tracker.log_figure(figure, "plots/data_size_gap.png")  # closes the figure
        result = {"table": table, "runs": runs, "mlflow_run_id": tracker.run_id,
                  "mlflow_run_url": trace.get("mlflow_run_url"), "seconds": time.perf_counter() - started}
        tracker.log_dict(result, "data_size.json")
    if config.out is not None:
        write_json(Path(config.out).expanduser(), result, indent=2)
    return result


def size_table_rows(table: list[dict]) -> list[tuple[str, ...]]:
    """The printed table: one row per (size, method), the comparison with the reference beside it."""
    rows = []
    for e in table:
        gap = (f"{e['gap']:+.4f} [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]" if e.get("gap") is not None else "–")
        wins = f"{e['wins']} of {e['n']}" if e.get("wins") is not None else "–"
        rows.append((f"{e['size']:,}", e["label"], f"{e['bpb_after']:.4f}", gap, wins))
    return rows


def print_data_size(result: dict) -> None:
    """Print the table and where its runs are."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    reference = next((e["reference"] for e in result["table"] if e.get("reference")), "the reference")
    table = Table(title=f"bits per byte after fine-tuning, by data-space size (− {reference}: paired, 95 % interval)")
    for name in ("sequences", "method", "bpb after", f"− {reference}", "lower on"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for row in size_table_rows(result["table"]):
        table.add_row(*row)
    console.print(table)
    console.print(f"{len(result['runs'])} evaluate runs in {result['seconds']:.0f} s")
    if result.get("mlflow_run_id"):
        console.print(f"MLflow run {result['mlflow_run_id']} (plots/data_size_gap.png; one evaluate run per size and λ′ "
                      f"nested under it): {result.get('mlflow_run_url') or '`sift-ttft ui`'}", soft_wrap=True)
