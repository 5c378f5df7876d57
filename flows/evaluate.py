"""The ``evaluate`` flow: test-time fine-tune per (prompt, method), measure bits per byte, summarise.

Per (prompt, method) two cached tasks (flows/tasks.py):
``select`` (prompt hash, index fingerprint, method, K, N, λ′, α, seed, split) → ``finetune_evaluate``
(the chosen texts, the model fingerprint, the training settings). Changing λ′ reruns the selections;
a fine-tuning reruns only when its chosen texts changed; changing nothing reruns nothing.

``run_evaluation`` is the reusable core (the tune flow calls it for every Optuna trial); the
``evaluate`` flow wraps it with MLflow logging (one parent run, one child run per row) and the
summary per method and domain.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from flows.config import EvaluateConfig

# Reading and checking the inputs lives in flows/preflight.py (one place for every command, without
# Prefect); the names stay importable from here.
from flows.preflight import limit_prompts, load_prompts, preflight_evaluate, resolve_index  # noqa: F401
from flows.tasks import (
    cached,
    finetune_task,
    load_tokenizer,
    model_fingerprint_of,
    prompt_hash,
    select_task,
)
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

# ------------------------------------------------------------------------------------------ results


def plan_of(prompt: dict, cfg, selection: dict, model: Optional[str], budget: Optional[tuple[int, str]] = None):
    """Step 2's input for a cached selection: the library's ``plan_training`` (texts only), cut to the
    ``(steps, reason)`` a run's budget granted the prompt."""
    from sift.jsonable import dataclass_from_jsonable
    from sift.pipeline import plan_training
    from sift.records import PromptSelection

    tokenizer = load_tokenizer(model) if cfg.split is not None else None
    return plan_training(prompt, dataclass_from_jsonable(PromptSelection, selection), cfg, tokenizer, budget)


def allocate_budget(config: EvaluateConfig, jobs: list, selections: list[dict]) -> tuple[dict, dict]:
    """``config.budget`` split across the prompts of each method by ``sift.budget.allocate``, from the
    uncertainty paths of their selections (capped by each selection's picks). Returns
    ``({job index: (steps, reason)}, {method: Allocation})``; the library owns the policy, the flow
    only hands it the selections."""
    from sift.budget import allocate

    grants, allocations = {}, {}
    for method in config.method:
        mine = [i for i, (_, cfg) in enumerate(jobs) if cfg.method == method]
        paths = [[math.sqrt(max(v, 0.0)) for v in selections[i]["variances"]] for i in mine]
        alloc = allocate(paths, config.budget, config.allocate, gamma=config.gamma,
                         caps=[int(selections[i]["stop"]) for i in mine])
        allocations[method] = alloc
        grants.update({i: (s, r) for i, s, r in zip(mine, alloc.steps, alloc.reasons)})
    return grants, allocations


def compose_result(prompt: dict, cfg, selection: dict, outcome: dict, plan) -> dict:
    """The ``PromptResult.to_json()`` row of one (prompt, method) from its cached parts, assembled by
    the library exactly as ``sift.pipeline.run_prompt`` does; ``seconds.total`` is the sum of the
    phases, i.e. the compute the row cost when it was first computed (cached rows keep it).
    """
    from sift.jsonable import dataclass_from_jsonable
    from sift.pipeline import assemble_result
    from sift.records import PromptSelection, TrainingOutcome

    return assemble_result(prompt, cfg, dataclass_from_jsonable(PromptSelection, selection),
                           dataclass_from_jsonable(TrainingOutcome, outcome), plan).to_json()


# ------------------------------------------------------------------------------------- the core


class EvaluationStats(Counter):
    """Counts of task final states by ``"<task>:<state name>"`` (e.g. ``select:Cached``)."""


def run_evaluation(
    config: EvaluateConfig,
    prompts: Optional[list[dict]] = None,
    on_result: Optional[Callable[[dict], None]] = None,
    *,
    stats: Optional[EvaluationStats] = None,
) -> list[dict]:
    """Evaluate every (prompt, method) of ``config`` inside the running flow; return the rows
    (``PromptResult.to_json()`` dicts) in prompt order, methods in ``config.method`` order.

    ``prompts``: default ``limit_prompts(load_prompts(config), config.limit, config.skip)``. ``on_result(row)``
    is called after each row, in that order; if it raises, nothing further is collected and the
    exception propagates (Optuna pruning). ``stats`` (optional) counts task states
    (``select:Cached``, ``finetune_evaluate:Completed``, ...).

    Thread runner: one task after the other in prompt order (the tasks share this process's model).
    Dask runner: every ``select`` is submitted at once, each ``finetune_evaluate`` as soon as its
    selection is back, and rows are collected in prompt order. When the running flow's runner is not
    the kind ``config.task_runner`` names (a deployment whose parameters ask for Dask), the work runs
    in a subflow on the configured runner and ``on_result`` is called as its rows come back.
    With ``config.budget``, every selection runs first, then ``allocate_budget`` splits the budget and
    each prompt fine-tunes on the steps it was granted (``steps``, ``budget_steps``, ``stop_reason``).
    """
    from flows.runners import current_runner_matches, is_dask_runner, make_task_runner
    from sift.index import read_index_manifest

    ctx = FlowRunContext.get()
    if ctx is None:
        raise RuntimeError("run_evaluation must be called inside a running Prefect flow")
    prompts = prompts if prompts is not None else limit_prompts(load_prompts(config), config.limit, config.skip)
    stats = stats if stats is not None else EvaluationStats()
    if not current_runner_matches(config):
        rows, sub_stats = _evaluate_subflow.with_options(task_runner=make_task_runner(config))(config, prompts)
        stats.update(sub_stats)
        for row in rows:
            if on_result is not None:
                on_result(row)
        return rows

    logger = get_run_logger()
    index_dir = str(resolve_index(config))
    index_fingerprint = read_index_manifest(index_dir)["fingerprint"]
    model_id = model_fingerprint_of(config.model)
    training = config.training().model_dump()
    select, finetune = cached(select_task), cached(finetune_task)
    jobs = [(p, config.ttft(m)) for p in prompts for m in config.method]

    def select_call(prompt: dict, cfg) -> dict:
        return dict(prompt=prompt, prompt_key=prompt_hash(prompt), index_dir=index_dir,
                    index_fingerprint=index_fingerprint, model=config.model,
                    tokenizer_key=model_id if cfg.split is not None else None,
                    settings=config.selection(cfg.method).model_dump())

    def finetune_call(plan) -> dict:
        return dict(eval_text=plan.eval_text, eval_context=plan.eval_context, train_texts=plan.train_texts,
                    model=config.model, model_id=model_id, settings=training)

    def outcome_of(name: str, run) -> Any:
        """Wait for a future (or take a state), count its final state, return its result."""
        if hasattr(run, "wait"):
            run.wait()
            run = run.state
        stats[f"{name}:{run.name}"] += 1
        return run.result()

    parallel = is_dask_runner(ctx.task_runner)
    budgeted = config.budget is not None
    selections: list[Any] = []
    if parallel:  # every selection at once
        selections = [select.submit(**select_call(p, cfg)) for p, cfg in jobs]
    elif budgeted:  # a budget is split only once every prompt's selection is known
        selections = [select(**select_call(p, cfg), return_state=True) for p, cfg in jobs]
    if parallel or budgeted:
        selections = [outcome_of("select", s) for s in selections]
    grants, allocations = allocate_budget(config, jobs, selections) if budgeted else ({}, {})
    for method, alloc in allocations.items():
        logger.info("budget %d steps (%s) for %s: %d granted over %d prompts%s", config.budget, config.allocate,
                    method, alloc.total, len(alloc.steps), f", α = {alloc.alpha:.4g}" if alloc.alpha is not None else "")
    pending = []
    if parallel:  # each fine-tuning as soon as its plan is known
        for i, (prompt, cfg) in enumerate(jobs):
            plan = plan_of(prompt, cfg, selections[i], config.model, grants.get(i))
            pending.append((plan, finetune.submit(**finetune_call(plan))))
    rows: list[dict] = []
    started = time.perf_counter()
    for i, (prompt, cfg) in enumerate(jobs):
        if parallel:
            selection, (plan, future) = selections[i], pending[i]
            outcome = outcome_of("finetune_evaluate", future)
        else:
            selection = selections[i] if budgeted else outcome_of(
                "select", select(**select_call(prompt, cfg), return_state=True))
            plan = plan_of(prompt, cfg, selection, config.model, grants.get(i))
            outcome = outcome_of("finetune_evaluate", finetune(**finetune_call(plan), return_state=True))
        row = compose_result(prompt, cfg, selection, outcome, plan)
        rows.append(row)
        logger.info(
            "[%d/%d] %s %s: bpb %.4f → %.4f, %d steps (%.0f s elapsed)", i + 1, len(jobs), row["prompt_id"],
            cfg.method, row["bpb_before"], row["bpb_after"], row["steps"], time.perf_counter() - started,
        )
        if on_result is not None:
            on_result(row)
    return rows


@flow(name="evaluate-prompts", task_runner=ThreadPoolTaskRunner(max_workers=1))
def _evaluate_subflow(config: EvaluateConfig, prompts: list[dict]) -> tuple[list[dict], dict]:
    """The per-prompt work as its own flow, for a caller whose task runner is not the configured one."""
    stats = EvaluationStats()
    return run_evaluation(config, prompts, stats=stats), dict(stats)


# ------------------------------------------------------------------------------------- the flow


@task(name="summary", cache_policy=NO_CACHE)
def summarize_task(rows: list[dict], tracker, config: EvaluateConfig) -> dict:
    """The run's statistics (``sift.stats.summarize``: means per method and domain, paired comparisons
    with ``config.reference``, σ_N correlations, the α sweep at ``config.alphas`` and per-step curves
    where the rows have them), recorded with the tracker (MLflow parent run, or nothing with
    --no-tracking)."""
    from sift.stats import summarize

    summary = summarize(rows, reference=config.reference, alphas=config.alphas, seed=config.seed,
                        duplicate=config.duplicate, budgets_per_prompt=config.budgets)
    return tracker.log_summary(rows, summary)


def warn_prompts_found_under_other_ids(prompts: list[dict], rows: list[dict], index_dir: Path) -> Optional[str]:
    """One warning for prompts whose doc_id (and id) name no document of the index although the corpus
    holds their text: the text-overlap guard dropped candidates for them (``excluded_overlap``), so only
    that guard kept their own text out of training. Held-out prompts, absent from the corpus, are the
    normal case and are not warned about. Returns the message (None when there is nothing to say)."""
    from flows.tasks import load_corpus_index
    from sift.leakage import unmatched_doc_ids, unmatched_doc_ids_message

    overlapped = {str(r["prompt_id"]) for r in rows if r.get("excluded_overlap")}
    suspects = [p for p in prompts if str(p["id"]) in overlapped]
    if not suspects:
        return None
    unmatched = unmatched_doc_ids(suspects, load_corpus_index(index_dir).doc_ids())
    message = unmatched_doc_ids_message(unmatched, total_prompts=len(prompts))
    if message:
        message = ("the corpus holds these prompts' text under other ids (the text-overlap guard dropped "
                   "candidates for them): " + message)
        get_run_logger().warning(message)
    return message


@flow(name="evaluate", task_runner=ThreadPoolTaskRunner(max_workers=1))
def evaluate(config: EvaluateConfig = EvaluateConfig()) -> dict:
    """Evaluate ``config.method`` on the prompts; log to MLflow; return ``{"summary", "rows", "stats",
    "mlflow_run_id", "leak_warning"}`` (``rows`` also written to ``config.out`` as JSONL when set)."""
    return evaluate_in_flow(config)


DATA_SPACE_TAG = "data_space.sequences"  # every evaluate run: the size of the data space it selected from


def evaluate_in_flow(config: EvaluateConfig, *, parent_run_id: Optional[str] = None,
                     tags: Optional[dict[str, str]] = None) -> dict:
    """The ``evaluate`` flow's body, callable from another flow (``demo``, ``data-size``) without a subflow.
    ``parent_run_id``/``tags``: nest the MLflow run under the caller's run, with the caller's tags. Every
    run is tagged ``data_space.sequences`` with the size of its data space (index sequences × --duplicate)."""
    from flows.trace import flow_run_tags, link_flow_run_to_mlflow
    from tracking.inputs import evaluation_inputs
    from tracking.log import tracking_run

    inputs = preflight_evaluate(config)  # first: a deployment or the demo does not pass through the CLI
    prompts = limit_prompts(inputs.prompts, config.limit, config.skip)
    index_dir, manifest = inputs.index_dir, inputs.manifest
    stats = EvaluationStats()
    params = {"index_fingerprint": manifest["fingerprint"], "embedder_id": manifest.get("embedder_id"),
              "data_space_sequences": int(manifest["count"]) * config.duplicate,  # --duplicate stores each d times
              "index_path": str(index_dir), "prompts_count": len(prompts),
              "model_fingerprint": model_fingerprint_of(config.model)}
    with tracking_run(config, experiment=config.experiment, run_name="evaluate", enabled=config.tracking,
                      params=params, datasets=evaluation_inputs(manifest, index_dir, prompts, config.prompts),
                      tags={DATA_SPACE_TAG: str(params["data_space_sequences"]), **flow_run_tags(), **(tags or {})},
                      parent_run_id=parent_run_id) as tracker:
        trace = link_flow_run_to_mlflow(tracker) or {}  # the flow run's link artifact to this MLflow run
        rows = run_evaluation(config, prompts, tracker.log_result, stats=stats)
        summary = summarize_task(rows, tracker, config)
    leak_warning = warn_prompts_found_under_other_ids(prompts, rows, index_dir)
    if config.out is not None:
        from sift.atomic import write_jsonl

        write_jsonl(Path(config.out).expanduser(), rows)
    get_run_logger().info("task states: %s", dict(stats))
    return {"summary": summary, "rows": rows, "stats": dict(stats), "mlflow_run_id": tracker.run_id,
            "mlflow_run_url": trace.get("mlflow_run_url"), "leak_warning": leak_warning}


# ----------------------------------------------------------------------------------------- output


def summary_table(summary: dict, title: str = "bits per byte by method (lower is better)"):
    """A rich Table: per method, mean bpb before/after, gain, σ_N, steps and seconds (all domains)."""
    from rich.table import Table

    table = Table(title=title)
    for name in ("method", "prompts", "bpb before", "bpb after", "gain", "σ_N", "steps", "seconds"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for group in summary["groups"]:
        if group.get("domain") != "all":
            continue
        table.add_row(
            str(group["method"]), str(group.get("count", "")), _fmt(group.get("bpb_before")), _fmt(group.get("bpb_after")),
            _fmt(group.get("bpb_gain")), _fmt(group.get("uncertainty_final")), _fmt(group.get("steps"), 1),
            _fmt(group.get("seconds_total"), 1),
        )
    return table


def _fmt(value: Any, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and value != value) else f"{float(value):.{digits}f}"


def comparison_lines(summary: dict) -> list[str]:
    """Plain lines under the table: each paired comparison with the reference, σ_N correlations, the α sweep."""
    lines = []
    for p in summary.get("paired", []):
        lines.append(f"{p['method']} − {p['reference']}: {p['mean']:+.4f} bits per byte after, 95 % interval "
                     f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}], lower on {p['wins']} of {p['n']} prompts")
    for method, c in summary.get("correlations", {}).items():
        lines.append(f"{method}: Spearman ρ(σ_N, gain) {c['sigma_vs_gain']['rho']:+.2f}, "
                     f"ρ(σ_N, bpb after) {c['sigma_vs_bpb_after']['rho']:+.2f}")
    for method, sweep in summary.get("alpha_sweep", {}).items():
        parts = [f"α={r['alpha']:g}: {100 * r['steps_saved']:.0f} % steps saved, {100 * r['bpb_loss_relative']:+.2f} % bpb"
                 for r in sweep if r["alpha"] is not None]
        lines.append(f"{method} adaptive stopping: " + "; ".join(parts))
    for method, frontier in summary.get("budget_frontier", {}).items():
        lines.append(f"{method} step budget, each policy − uniform at the same steps (sigma's γ chosen on the other "
                     f"half of the prompts: {frontier['gamma_chosen']}):")
        for p in frontier["points"]:
            if "vs_uniform" in p:
                v = p["vs_uniform"]
                lines.append(f"  {p['per_prompt']:g} steps/prompt, {p['policy']}: {p['mean_bpb']:.4f} bits per byte, "
                             f"{v['mean']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}], lower on {v['wins']} of {v['n']}")
    for method, spent in summary.get("allocation", {}).items():
        lines.append(f"{method} budget: {spent['steps']} steps over {spent['prompts']} prompts; stops: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(spent["reasons"].items())))
    return lines


def print_summary(result: dict) -> None:
    """Print the summary table and the cache statistics of an ``evaluate`` result."""
    from rich.console import Console

    console = Console()
    summary = result["summary"]
    console.print(summary_table(summary))
    for line in comparison_lines(summary):
        console.print(line)
    stats = result.get("stats") or {}
    cached = sum(v for k, v in stats.items() if k.endswith(":Cached"))
    console.print(f"{len(result['rows'])} (prompt, method) results; {cached} of {sum(stats.values())} tasks "
                  "reused from the cache.")
    if result.get("mlflow_run_id"):
        from flows.trace import LOCAL_UI_URL

        url = result.get("mlflow_run_url") or ""  # a tracking server's page, or the local store's on `sift-ttft ui`
        where = url if url and not url.startswith(LOCAL_UI_URL) else "browse it with `sift-ttft ui`"
        console.print(f"MLflow run {result['mlflow_run_id']}: {where}", soft_wrap=True)
