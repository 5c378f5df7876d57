"""What one tuning trial does: sample (λ′, α), evaluate SIFT there on the tuning split, report, prune.

Choices (each one the simplest that keeps the study honest):

- **Search space.** ``lam`` is log-uniform on [lam_min, lam_max]. Adaptive stopping is a categorical
  ``stopping`` ∈ {"adaptive", "never"}; only for "adaptive" is ``alpha`` sampled, log-uniform on
  ``alpha_range(N, λ′)`` ∩ [alpha_min, alpha_max]: only where α can change a run. The library trains
  on the first t picks with σ_j ≤ 1/(α·j) for all j ≤ t (``sift.select.stop_index``). With unit-norm
  embeddings (the embedder normalises) the prior variance of a prompt is 1 and falls with each pick
  of noise λ′, so 1 ≥ σ_j² ≥ λ′/(j + λ′) (j picks of the prompt itself reduce it most). Hence
  - α ≤ 1/N never stops (j·σ_j ≤ N for every j ≤ N): the same as ``stopping = never``, which names
    that corner exactly, so α is not sampled below 1/N;
  - α > 1/σ_1 trains on nothing, and σ_1 ≥ sqrt(λ′/(1 + λ′)), so α > sqrt((1 + λ′)/λ′) trains 0 steps
    on every prompt, whatever the corpus: α is not sampled above that either (at λ′ = 0.1 that is
    3.3, where the old fixed range ran to 100 and spent trials on zero-step runs).
  Zero steps stays a real candidate below that bound, on prompts whose σ_1 is large. The range
  depends on the trial's λ′, so each trial's α distribution is narrowed from the study's stored
  [alpha_min, alpha_max] (Optuna allows a float parameter's range to vary between trials).
- **Objective** (single, minimised): ``bpb`` = mean bits per byte after fine-tuning over the tuning
  split; ``bpb+compute`` = that + W × mean steps (W = ``compute_weight`` bits per byte per step).
- **A fixed budget** (``--budget STEPS``, ``sift.budget``): every trial spends the same total steps
  over the tuning split, split by ``--allocate``, so compute is fixed and the objective is the bits
  per byte that budget buys (the budgeted form of ``bpb+compute``: W × steps is the same for every
  trial). The search is then λ′ and the policy's own parameter: γ of ``sigma``, uniform on
  [0, gamma_max] (0 is the uniform split); ``alpha`` derives its α from the budget and ``uniform``
  has none, so α is not searched.
  One scalar rather than an NSGA-II Pareto study, because Optuna's pruners only work for single-
  objective studies and pruning is what makes tuning affordable on a CPU.
- **Pruning.** After each tuning prompt the running objective is reported (step i = prompts done − 1;
  prompts come in the same order in every trial, so step i always means the same prompts). The
  study's ``MedianPruner`` (``flows.study.open_study``) stops trials whose running value is worse
  than the median of earlier trials at the same step.
- **Splits.** Prompts are split deterministically (sha256 of seed and prompt id) into a tuning split
  (``tune_fraction``) and a disjoint report split; the flow writes both next to ``best.json`` so the
  final report runs ``sift-ttft evaluate --prompts report_prompts.jsonl --params best.json``.
- **Caching.** Trials call the evaluate flow's cached per-prompt tasks: the index is loaded, never
  rebuilt, and an identical (prompt, λ′, α) selection and fine-tuning is served from the cache.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
from typing import Callable, Optional

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from flows.config import EvaluateConfig, TuneConfig

STOPPING_CHOICES = ("adaptive", "never")


# ----------------------------------------------------------------------------------------------
# Search space and points


def search_space(config: TuneConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """The distributions of ``lam``, ``stopping`` and (conditional on stopping="adaptive") ``alpha``;
    with ``config.budget``: ``lam`` and, for ``allocate="sigma"``, ``gamma``."""
    for name in ("lam_min", "lam_max", "alpha_min", "alpha_max"):
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"{name} must be > 0 (log-uniform range), got {value}")
    if config.lam_min >= config.lam_max:
        raise ValueError(f"empty λ′ range: lam_min={config.lam_min} must be < lam_max={config.lam_max}")
    if config.alpha_min >= config.alpha_max:
        raise ValueError(f"empty α range: alpha_min={config.alpha_min} must be < alpha_max={config.alpha_max}")
    if config.budget is not None:
        space = {"lam": FloatDistribution(config.lam_min, config.lam_max, log=True)}
        if config.allocate == "sigma":
            space["gamma"] = FloatDistribution(0.0, config.gamma_max)
        return space
    return {
        "lam": FloatDistribution(config.lam_min, config.lam_max, log=True),
        "stopping": CategoricalDistribution(STOPPING_CHOICES),
        "alpha": FloatDistribution(config.alpha_min, config.alpha_max, log=True),
    }


def alpha_range(n: int, lam: float, alpha_min: float, alpha_max: float) -> tuple[float, float]:
    """Where α can change a run of N = ``n`` picks at noise λ′ = ``lam``, within [alpha_min, alpha_max].

    ``(max(alpha_min, 1/N), min(alpha_max, sqrt((1 + λ′)/λ′)))``: below 1/N no prompt ever stops, above
    sqrt((1 + λ′)/λ′) every prompt trains 0 steps (the derivation is in the module docstring). When the
    configured range lies wholly outside, the nearest end of it is returned as a single point.
    """
    low = max(alpha_min, 1.0 / n)
    high = min(alpha_max, math.sqrt((1.0 + lam) / lam))
    if low > high:  # the configured range misses the useful one: its end nearest to it
        low = high = alpha_max if alpha_max < low else alpha_min
    return low, high


def suggest_params(trial: optuna.Trial, config: TuneConfig) -> dict[str, Optional[float]]:
    """Sample one point; returns ``{"lam": λ′, "alpha": α or None}`` (the ``--params`` format)."""
    # Must match search_space(), which is what the study stores and compares on resume (α's range is
    # narrowed per trial by alpha_range, inside the stored one).
    lam = trial.suggest_float("lam", config.lam_min, config.lam_max, log=True)
    if config.budget is not None:  # the budget decides where prompts stop: λ′ and the policy's γ
        gamma = trial.suggest_float("gamma", 0.0, config.gamma_max) if config.allocate == "sigma" else None
        return {"lam": float(lam), "alpha": None, **({} if gamma is None else {"gamma": float(gamma)})}
    stopping = trial.suggest_categorical("stopping", STOPPING_CHOICES)
    alpha = None
    if stopping == "adaptive":
        low, high = alpha_range(config.n, lam, config.alpha_min, config.alpha_max)
        alpha = trial.suggest_float("alpha", low, high, log=True)
    return {"lam": float(lam), "alpha": None if alpha is None else float(alpha)}


def params_of(trial: optuna.trial.FrozenTrial) -> dict[str, Optional[float]]:
    """A finished trial's point in the ``--params`` format ``{"lam": ..., "alpha": ... or null}`` (and
    ``"gamma"`` when the study searched it)."""
    alpha = trial.params.get("alpha") if trial.params.get("stopping", "adaptive") == "adaptive" else None
    point = {"lam": float(trial.params["lam"]), "alpha": None if alpha is None else float(alpha)}
    if "gamma" in trial.params:
        point["gamma"] = float(trial.params["gamma"])
    return point


def best_params(study: optuna.Study) -> Optional[dict[str, Optional[float]]]:
    """The best COMPLETE trial's point in ``--params`` format, or None if no trial completed."""
    try:
        return params_of(study.best_trial)
    except ValueError:  # Optuna: "no trials are completed yet"
        return None


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


# ----------------------------------------------------------------------------------------------
# The objective and its pruning


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
    if "gamma" in params:
        values["gamma"] = params["gamma"]
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
