"""The project's statistics, defined once: over result rows (``PromptResult.to_json()`` dicts or objects).

- ``bootstrap_mean``: a mean and its 95 % interval (``scipy.stats.bootstrap``, percentile method:
  BCa needs a non-degenerate jackknife, which few prompts or ties often are not).
- ``paired_comparison``: method − reference on the prompts both ran (the prompt's difficulty cancels),
  its mean, bootstrap interval over prompts, and ``wins`` (prompts where the method is lower).
- ``spearman``: ``scipy.stats.spearmanr`` on the finite pairs.
- ``alpha_sweep`` / ``truncation_reference`` / ``step_curve``: what adaptive stopping, a uniform cut
  and more steps would have given, read exactly off per-step curves (``eval_every=1``).
- ``budget_frontier``: what each step-budget policy (``sift.budget``) would have given at each budget,
  read off the same curves, its parameter chosen on the other half of the prompts.
- ``summarize``: all of it per method and domain, the one summary the flows log and print.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000


def as_record(result: Any) -> dict[str, Any]:
    """A plain dict for a ``PromptResult`` or a dict; ``gain`` (bpb_before − bpb_after) filled in."""
    record = result.to_json() if hasattr(result, "to_json") else dict(result)
    for key in ("prompt_id", "method", "bpb_before", "bpb_after"):
        if key not in record:
            raise ValueError(f"results: a record lacks {key!r} (have {sorted(record)})")
    record.setdefault("gain", float(record["bpb_before"]) - float(record["bpb_after"]))
    record.setdefault("domain", "")
    return record


def total(value: Any) -> float:
    """A number from a scalar or a dict of parts (e.g. tokens {"train": .., "eval": ..} → their sum)."""
    if value is None:
        return float("nan")
    if isinstance(value, dict):
        return float(sum(float(v) for v in value.values() if v is not None))
    return float(value)


def total_seconds(seconds: Any) -> float:
    """Wall seconds of a row: its ``seconds["total"]`` when given, else the sum of the phases."""
    if isinstance(seconds, dict) and seconds.get("total") is not None:
        return float(seconds["total"])
    return total(seconds)


def final_uncertainty(row: dict[str, Any]) -> float | None:
    """σ_N of a row: ``uncertainties[steps]``, the uncertainty after the picks actually trained on
    (so adaptive stopping is accounted for); None when the row has no uncertainties."""
    sigmas = row.get("uncertainties") or []
    if not sigmas:
        return None
    steps = int(row.get("steps") or 0)
    return float(sigmas[min(max(steps, 0), len(sigmas) - 1)])


def bootstrap_mean(values: Sequence[float], confidence: float = CONFIDENCE, n_resamples: int = RESAMPLES,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) over the finite values: the percentile bootstrap interval of the mean
    (``scipy.stats.bootstrap``, seeded). One value: low = high = mean; none: NaNs."""
    from scipy.stats import bootstrap

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) == 1 or np.all(x == x[0]):
        return mean, mean, mean
    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    vectorized=True, rng=np.random.default_rng(seed))
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_values(results: Iterable[Any], method: str, reference: str,
                  metric: str = "bpb_after") -> tuple[list[str], np.ndarray, np.ndarray]:
    """The prompts both methods ran on, sorted by id, with each method's ``metric`` on them."""
    values: dict[str, dict[str, float]] = {method: {}, reference: {}}
    for record in map(as_record, results):
        if record["method"] in values:
            if metric not in record:
                raise ValueError(f"metric={metric!r} is not a field of the results")
            values[record["method"]][str(record["prompt_id"])] = float(record[metric])
    common = sorted(set(values[method]) & set(values[reference]))
    a = np.array([values[method][p] for p in common], dtype=np.float64)
    b = np.array([values[reference][p] for p in common], dtype=np.float64)
    return common, a, b


def paired_comparison(results: Iterable[Any], method: str, reference: str, metric: str = "bpb_after",
                      confidence: float = CONFIDENCE, n_resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """mean(metric_method − metric_reference) over the prompts both ran, with its bootstrap interval.

    Resamples prompts (pairs), so each prompt's difficulty cancels. For bits per byte a negative mean
    means ``method`` is better; ``wins`` counts prompts where ``method``'s value is strictly lower.
    Returns {method, reference, metric, n, mean, ci_low, ci_high, wins, excludes_zero, confidence}.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be strictly between 0 and 1")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r} must be >= 1")
    _, a, b = paired_values(results, method, reference, metric)
    diff = a - b
    mean, low, high = bootstrap_mean(diff, confidence, n_resamples, seed) if len(diff) > 1 else \
        (float(diff.mean()) if len(diff) else float("nan"), float("nan"), float("nan"))
    return {"method": method, "reference": reference, "metric": metric, "n": int(len(diff)), "mean": mean,
            "ci_low": low, "ci_high": high, "wins": int(np.sum(a < b)),
            "excludes_zero": bool(low > 0 or high < 0), "confidence": confidence}


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman's ρ (average ranks for ties) over the pairs where both values are finite, with its
    two-sided p-value; ρ = NaN for fewer than 3 such pairs or a constant side."""
    from scipy.stats import spearmanr

    x = np.asarray([np.nan if v is None else v for v in x], dtype=np.float64)
    y = np.asarray([np.nan if v is None else v for v in y], dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {"rho": float("nan"), "p_value": float("nan"), "n": int(len(x))}
    res = spearmanr(x, y)
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": int(len(x))}


def uncertainty_correlations(results: Iterable[Any], method: str = "sift") -> dict[str, dict[str, float]]:
    """Spearman ρ of σ_N (``final_uncertainty``) against bits per byte after and against the gain,
    over ``method``'s prompts. (On a multi-domain corpus bpb after is dominated by the domain; the gain
    is the fairer target.)"""
    rows = [r for r in map(as_record, results) if r["method"] == method and r.get("uncertainties")]
    sigma = [final_uncertainty(r) for r in rows]
    return {"sigma_vs_bpb_after": spearman(sigma, [float(r["bpb_after"]) for r in rows]),
            "sigma_vs_gain": spearman(sigma, [float(r["gain"]) for r in rows])}


def curve_of(row: dict[str, Any]) -> dict[int, float]:
    """step → bits per byte of a row: step 0 = before, intermediate evaluations, ``steps`` = after."""
    points = {int(s): float(v) for s, v in (row.get("bpb_curve") or [])}
    points[0] = float(row["bpb_before"])
    points[int(row.get("steps") or 0)] = float(row["bpb_after"])
    return points


def has_full_curve(row: dict[str, Any]) -> bool:
    """Whether a row's curve has a point at every step 0..steps (an evaluation after every step)."""
    return set(range(int(row.get("steps") or 0) + 1)) <= set(curve_of(row))


def _curved_rows(results: Iterable[Any], method: str) -> list[dict[str, Any]]:
    """``method``'s rows that have a bpb point after every step they took."""
    return [r for r in map(as_record, results) if r["method"] == method and has_full_curve(r)]


def _cut(rows: list[dict[str, Any]], stops: list[int]) -> dict[str, float]:
    """What stopping each row at ``stops`` gives, against running every row to its end: steps saved
    (fraction), mean bits per byte at the stops, and that mean's relative loss."""
    full_steps = sum(int(r["steps"]) for r in rows)
    full_bpb = float(np.mean([float(r["bpb_after"]) for r in rows]))
    mean_bpb = float(np.mean([curve_of(r)[s] for r, s in zip(rows, stops)]))
    return {"steps_saved": 1 - sum(stops) / full_steps if full_steps else 0.0, "mean_bpb_after": mean_bpb,
            "bpb_loss_relative": mean_bpb / full_bpb - 1}


def alpha_sweep(results: Iterable[Any], alphas: Sequence[float], method: str = "sift") -> list[dict[str, Any]]:
    """What adaptive stopping at each α would have given, read exactly off the rows' per-step curves.

    Each prompt stops at ``stop_index(σ², α)`` (the rule ``sift.select`` applies: the first step n
    with σ_n > 1/(α·n)), capped by the steps it took; its bpb is its curve at that step. Needs rows
    evaluated after every step (``eval_every=1``); rows without a full curve are left out (``n``).
    α = None is the run as it was. Returns per α: mean steps, steps saved and relative bpb lost
    against the run's own steps and mean bpb.
    """
    from sift.select import stop_index

    rows = _curved_rows(results, method)
    out = []
    for alpha in ([None, *alphas] if rows else []):
        stops = [min(stop_index(np.square(np.asarray(r["uncertainties"], dtype=np.float64)), alpha), int(r["steps"]))
                 for r in rows]
        out.append({"alpha": alpha, "n": len(rows), "mean_steps": float(np.mean(stops)), **_cut(rows, stops)})
    return out


def truncation_reference(results: Iterable[Any], method: str = "sift") -> list[dict[str, Any]]:
    """The reference adaptive stopping must beat: every prompt stops after the same number of steps s
    (no uncertainty used), read off the same curves; steps saved against bpb lost for each s."""
    rows = _curved_rows(results, method)
    longest = max((int(r["steps"]) for r in rows), default=-1)
    return [{"stop": stop, **_cut(rows, [min(stop, int(r["steps"])) for r in rows])} for stop in range(longest + 1)]


def step_curve(results: Iterable[Any], method: str) -> list[dict[str, float]]:
    """Mean bits per byte after each step over the prompts with a point there (``eval_every`` set)."""
    by_step: dict[int, list[float]] = {}
    for r in map(as_record, results):
        if r["method"] == method:
            for s, v in curve_of(r).items():
                by_step.setdefault(s, []).append(v)
    return [{"step": s, "mean_bpb": float(np.mean(v)), "n": len(v)} for s, v in sorted(by_step.items())]


GAMMA_GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)


def split_halves(rows: Sequence[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Two halves of the rows' indices: rows taken domain by domain (domains in first-seen order, rows in
    order within each), alternately to each half, so the halves differ by at most one row and split every
    domain as evenly as it can be (a policy's parameter is chosen on one and reported on the other)."""
    domains = list(dict.fromkeys(str(r.get("domain", "")) for r in rows))
    order = sorted(range(len(rows)), key=lambda i: (domains.index(str(rows[i].get("domain", ""))), i))
    return sorted(order[0::2]), sorted(order[1::2])


def _policy_bpb(rows: Sequence[dict[str, Any]], budget: int, policy: str, gamma: float) -> tuple[list[float], int]:
    """Per row, bits per byte at the steps ``policy`` grants it out of ``budget``; and the steps spent.
    Exact: the allocation depends only on the uncertainties, and the curve has every step."""
    from sift.budget import allocate

    alloc = allocate([r["uncertainties"] for r in rows], budget, policy, gamma=gamma,
                     caps=[int(r["steps"]) for r in rows])
    return [curve_of(r)[s] for r, s in zip(rows, alloc.steps)], alloc.total


def budget_frontier(results: Iterable[Any], per_prompt: Sequence[float], method: str = "sift",
                    gammas: Sequence[float] = GAMMA_GRID, seed: int = 0) -> dict[str, Any]:
    """Mean bits per byte against total steps for every ``sift.budget`` policy, read exactly off
    per-step curves (``eval_every=1``): each policy's decisions depend only on the uncertainties, so
    a prompt granted s steps has the bits per byte its full run had after step s.

    Budgets: ``per_prompt`` steps per prompt on average. Cross-fitted so that no prompt is reported
    with a parameter chosen on it: the prompts split into two halves (``split_halves``); on each
    half, sigma's γ is the value of ``gammas`` with the lowest mean bits per byte over the budgets
    (ties: the smaller γ), and it is applied to the *other* half; every policy spends
    round(per_prompt × half size) steps within each half. Each policy is compared with ``uniform``
    at the same budget, prompt by prompt (method − uniform, bootstrap 95 % interval, wins = prompts
    lower). Rows without a full curve are left out. Returns {method, n, gamma_chosen: [γ on half 0,
    γ on half 1], points: [{policy, per_prompt, budget, steps, mean_steps, mean_bpb, vs_uniform}]}.
    """
    from sift.budget import POLICIES

    rows = [r for r in _curved_rows(results, method) if r.get("budget_steps") is None]
    if len(rows) < 2 or not per_prompt:
        return {}
    halves = [[rows[i] for i in h] for h in split_halves(rows)]

    def budget_of(half: list[dict[str, Any]], avg: float) -> int:
        return max(1, int(round(avg * len(half))))

    def tuned_gamma(half: list[dict[str, Any]]) -> float:
        scores = [float(np.mean([np.mean(_policy_bpb(half, budget_of(half, a), "sigma", g)[0]) for a in per_prompt]))
                  for g in gammas]
        return float(gammas[int(np.argmin(scores))])

    chosen = [tuned_gamma(h) for h in halves]
    applied = [chosen[1], chosen[0]]  # each half gets the γ chosen on the other
    points, uniform_bpb = [], {}
    for avg in per_prompt:
        for policy in ("uniform", *[p for p in POLICIES if p != "uniform"]):
            bpb, steps = [], 0
            for half, gamma in zip(halves, applied):
                values, spent = _policy_bpb(half, budget_of(half, avg), policy, gamma)
                bpb += values
                steps += spent
            point = {"policy": policy, "per_prompt": float(avg), "budget": sum(budget_of(h, avg) for h in halves),
                     "steps": steps, "mean_steps": steps / len(rows), "mean_bpb": float(np.mean(bpb))}
            if policy == "uniform":
                uniform_bpb[avg] = np.asarray(bpb)
            else:
                diff = np.asarray(bpb) - uniform_bpb[avg]
                mean, low, high = bootstrap_mean(diff, seed=seed)
                point["vs_uniform"] = {"mean": mean, "ci_low": low, "ci_high": high, "wins": int(np.sum(diff < 0)),
                                       "n": len(diff), "excludes_zero": bool(low > 0 or high < 0)}
            points.append(point)
    return {"method": method, "n": len(rows), "gamma_chosen": chosen, "points": points}


def unique_trained(row: dict[str, Any], duplicate: int = 1) -> int:
    """Distinct sequences a row trained on (copies of one sequence in a duplicated space count once)."""
    ids = (row.get("picked_seq_ids") or [])[: int(row.get("steps") or 0)]
    return len({int(s) // max(1, duplicate) for s in ids})


def _group(rows: list[dict[str, Any]], method: str, domain: str, seed: int, duplicate: int) -> dict[str, Any]:
    before = [float(r["bpb_before"]) for r in rows]
    after = [float(r["bpb_after"]) for r in rows]
    gain = [b - a for b, a in zip(before, after)]
    sigma = [final_uncertainty(r) for r in rows]
    out: dict[str, Any] = {"method": method, "domain": domain, "count": len(rows)}
    for name, vals in (("bpb_before", before), ("bpb_after", after), ("bpb_gain", gain)):
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_mean(vals, n_resamples=2000, seed=seed)
    for name, vals in (("steps", [float(r.get("steps") or 0) for r in rows]),
                       ("unique_sequences", [float(unique_trained(r, duplicate)) for r in rows]),
                       ("tokens", [total(r.get("tokens")) for r in rows]),
                       ("flops", [total(r.get("flops")) for r in rows]),
                       ("seconds_total", [total_seconds(r.get("seconds")) for r in rows]),
                       ("uncertainty_final", [float("nan") if s is None else s for s in sigma]),
                       ("stopped_early", [float(bool(r.get("stopped_early"))) for r in rows])):
        finite = [v for v in vals if math.isfinite(v)]
        out[name] = float(np.mean(finite)) if finite else float("nan")
    out["spearman_sigma_bpb_after"] = spearman(sigma, after)["rho"]
    out["spearman_sigma_gain"] = spearman(sigma, gain)["rho"]
    return out


def summarize(rows: Sequence[Any], reference: str | None = "nn", alphas: Sequence[float] = (), seed: int = 0,
              duplicate: int = 1, budgets_per_prompt: Sequence[float] = ()) -> dict[str, Any]:
    """Aggregate result rows per method, over all prompts and per domain: the one summary of a run.

    Returns a JSON-ready dict:
    - ``methods``, ``domains`` (first-seen order), ``prompts`` (distinct prompt count);
    - ``groups``: per (method, domain ∈ domains + ["all"]): count, means of bpb_before / bpb_after /
      bpb_gain with 95 % bootstrap intervals (``*_lo``, ``*_hi``), mean steps, unique sequences trained
      on, tokens, flops, seconds_total, σ_N, stopped_early (fraction), Spearman ρ of σ_N with bpb_after
      and with the gain;
    - ``reference``: the method the others are compared with (``reference`` if it ran, else the first);
    - ``paired``: ``paired_comparison(method, reference)`` for every other method;
    - ``correlations``, ``alpha_sweep`` (at ``alphas``), ``truncation_reference``, ``step_curves``:
      per method, where the rows carry what they need (per-step curves for the last three);
    - ``budget_frontier``: per method with per-step curves, ``budget_frontier`` at ``budgets_per_prompt``;
    - ``allocation``: per method, when rows carry a budget's ``stop_reason``: steps spent and the count of
      each reason.
    """
    rows = [as_record(r) for r in rows]
    if not rows:
        raise ValueError("rows is empty: there is nothing to summarise")
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    domains = list(dict.fromkeys(str(r["domain"]) for r in rows))
    groups = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        for domain in domains:
            part = [r for r in mine if r["domain"] == domain]
            if part:
                groups.append(_group(part, method, domain, seed, duplicate))
        groups.append(_group(mine, method, "all", seed, duplicate))
    ref = reference if reference in methods else methods[0]
    paired = [paired_comparison(rows, m, ref, seed=seed) for m in methods if m != ref]
    trained = [m for m in methods if any(r.get("uncertainties") and len(r["uncertainties"]) > 1 for r in rows
                                         if r["method"] == m)]
    return {
        "methods": methods, "domains": domains, "prompts": len({str(r["prompt_id"]) for r in rows}),
        "groups": groups, "reference": ref, "paired": paired,
        "correlations": {m: uncertainty_correlations(rows, m) for m in trained},
        "alpha_sweep": {m: sweep for m in trained if (sweep := alpha_sweep(rows, alphas, m))},
        "truncation_reference": {m: cut for m in trained if (cut := truncation_reference(rows, m))},
        "step_curves": {m: step_curve(rows, m) for m in methods},
        "budget_frontier": {m: f for m in trained if (f := budget_frontier(rows, budgets_per_prompt, m, seed=seed))},
        "allocation": {m: allocation_summary(rows, m) for m in methods
                       if any(r.get("budget_steps") is not None for r in rows if r["method"] == m)},
    }


def allocation_summary(rows: Sequence[dict[str, Any]], method: str) -> dict[str, Any]:
    """How a budgeted run spent its steps for ``method``: total steps, and prompts per stop reason."""
    mine = [r for r in rows if r["method"] == method]
    reasons: dict[str, int] = {}
    for r in mine:
        reasons[str(r.get("stop_reason"))] = reasons.get(str(r.get("stop_reason")), 0) + 1
    return {"steps": int(sum(int(r.get("steps") or 0) for r in mine)), "prompts": len(mine), "reasons": reasons}


def group_of(summary: dict[str, Any], method: str, domain: str = "all") -> dict[str, Any] | None:
    """The summary's group for (method, domain), or None."""
    return next((g for g in summary["groups"] if g["method"] == method and g["domain"] == domain), None)
