"""The ``demo`` flow, the README's main job: default corpus → index → base / NN / SIFT → MLflow → table.

Everything is cached (flows/tasks.py), so a second run only loads the model and reads cached
results. The printed table holds, per method, mean bits per byte before/after fine-tuning, the gain,
the final uncertainty σ_N, the steps taken and the compute seconds; below it: where to look next.
"""

from __future__ import annotations

import time

from flows.build_index import assemble_default_corpus_task, build_index_in_flow
from flows.config import DemoConfig, IndexConfig
from flows.evaluate import comparison_lines, evaluate_in_flow, summary_table
from flows.preflight import preflight_demo
from flows.tasks import default_corpus_dir
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner


@flow(name="demo", task_runner=ThreadPoolTaskRunner(max_workers=1))
def demo(config: DemoConfig = DemoConfig()) -> dict:
    """Run the demo end to end; return the evaluate result plus ``{"index", "seconds"}``."""
    from flows.runners import current_runner_matches, make_task_runner

    preflight_demo(config)  # first: a deployment does not pass through the CLI
    if not current_runner_matches(config):
        return demo.with_options(task_runner=make_task_runner(config))(config=config)
    started = time.perf_counter()
    logger = get_run_logger()
    logger.info("1/3 default corpus: %s", default_corpus_dir())
    corpus = assemble_default_corpus_task(str(default_corpus_dir()))
    logger.info("2/3 index (embedding shards are cached; a rerun reuses them)")
    index = build_index_in_flow(
        IndexConfig(
            task_runner=config.task_runner, dask_address=config.dask_address, dask_workers=config.dask_workers,
            model=config.model, max_tokens=config.max_tokens,
        )
    )
    logger.info("3/3 test-time fine-tuning: %s on %s prompts", ", ".join(config.method), config.limit or "all")
    evaluate_config = config.model_copy(update={"index": index["path"], "prompts": config.prompts or corpus["prompts"]})
    result = evaluate_in_flow(evaluate_config)
    result["index"] = index
    result["seconds"] = time.perf_counter() - started
    print_demo(result)
    return result


def print_demo(result: dict) -> None:
    """The demo's closing screen: the table, what was reused, and where to look next."""
    from rich.console import Console

    console = Console()
    console.print(summary_table(result["summary"]))
    for line in comparison_lines(result["summary"]):
        console.print(line)
    stats = result.get("stats") or {}
    cached = sum(v for k, v in stats.items() if k.endswith(":Cached"))
    console.print(
        f"{len(result['rows'])} (prompt, method) results from {sum(stats.values())} tasks, {cached} of them "
        f"reused from the cache; {result['seconds']:.0f} s in all. Index: {result['index']['path']}"
    )
    console.print("Where to look next:")
    if result.get("mlflow_run_id"):
        console.print(f"  • MLflow (runs, per-prompt child runs, plots): `sift-ttft ui` → run {result['mlflow_run_id']}")
    import os

    home = os.environ.get("PREFECT_HOME", "")
    console.print(f"  • Prefect (flow and task runs, cache hits): `PREFECT_HOME={home} prefect server start`, "
                  "then http://127.0.0.1:4200")
    console.print("  • Tune λ′ and α: `sift-ttft tune`; compare methods on your corpus: `sift-ttft index --corpus ...`")
