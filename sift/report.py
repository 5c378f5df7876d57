"""Aggregating per-prompt results: means per method and domain, paired bootstrap, Spearman.

Pure functions over lists of ``PromptResult`` objects or their ``to_json()`` dicts (e.g. read back
from an ``--out`` JSONL file), so flows, benchmarks and notebooks share one set of numbers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

MEAN_FIELDS = ("bpb_before", "bpb_after", "gain", "steps", "flops")


def as_record(result: Any) -> dict[str, Any]:
    """A plain dict for a ``PromptResult`` or a dict; ``gain`` (bpb_before − bpb_after) filled in."""
    record = result.to_json() if hasattr(result, "to_json") else dict(result)
    for key in ("prompt_id", "method", "bpb_before", "bpb_after"):
        if key not in record:
            raise ValueError(f"results: a record lacks {key!r} (have {sorted(record)})")
    record.setdefault("gain", float(record["bpb_before"]) - float(record["bpb_after"]))
    record.setdefault("domain", "")
    return record


def summarize(results: Iterable[Any], by: Sequence[str] = ("method",)) -> list[dict[str, Any]]:
    """Mean of bpb_before, bpb_after, gain, steps, flops (and seconds.total) per group.

    ``by``: record fields to group on, e.g. ("method",) or ("method", "domain"). Each row holds the
    group keys, ``count``, ``mean_<field>`` and ``relative_gain`` = mean gain / mean bpb_before.
    Rows come in first-seen order of their groups.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in map(as_record, results):
        groups[tuple(record.get(key, "") for key in by)].append(record)
    rows = []
    for key, records in groups.items():
        row: dict[str, Any] = dict(zip(by, key))
        row["count"] = len(records)
        for name in MEAN_FIELDS:
            values = [float(r[name]) for r in records if r.get(name) is not None]
            row[f"mean_{name}"] = float(np.mean(values)) if values else float("nan")
        seconds = [float(r["seconds"]["total"]) for r in records if isinstance(r.get("seconds"), dict)
                   and "total" in r["seconds"]]
        row["mean_seconds"] = float(np.mean(seconds)) if seconds else float("nan")
        before = row["mean_bpb_before"]
        row["relative_gain"] = row["mean_gain"] / before if before else float("nan")
        rows.append(row)
    return rows


def means_by_method(results: Iterable[Any]) -> list[dict[str, Any]]:
    """``summarize`` grouped by method."""
    return summarize(results, ("method",))


def means_by_method_and_domain(results: Iterable[Any]) -> list[dict[str, Any]]:
    """``summarize`` grouped by (method, domain)."""
    return summarize(results, ("method", "domain"))


def paired_values(results: Iterable[Any], method_a: str, method_b: str,
                  metric: str = "bpb_after") -> tuple[list[str], np.ndarray, np.ndarray]:
    """The prompts both methods ran on, sorted by id, with each method's ``metric`` on them."""
    values: dict[str, dict[str, float]] = {method_a: {}, method_b: {}}
    for record in map(as_record, results):
        if record["method"] in values:
            if metric not in record:
                raise ValueError(f"metric={metric!r} is not a field of the results")
            values[record["method"]][str(record["prompt_id"])] = float(record[metric])
    common = sorted(set(values[method_a]) & set(values[method_b]))
    a = np.array([values[method_a][p] for p in common], dtype=np.float64)
    b = np.array([values[method_b][p] for p in common], dtype=np.float64)
    return common, a, b


def paired_bootstrap(results: Iterable[Any], method_a: str, method_b: str, metric: str = "bpb_after",
                     n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap interval for mean(metric_a − metric_b) over the prompts both methods ran.

    Pairs by prompt_id (the same prompts, so the domain effect cancels); resamples prompts with
    replacement ``n_resamples`` times with a seeded generator; interval = the (1−c)/2 and (1+c)/2
    quantiles of the resampled means. For bpb, a negative difference means method_a is better.
    Returns {method_a, method_b, metric, n, mean_diff, low, high, confidence, excludes_zero}.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be strictly between 0 and 1")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r} must be >= 1")
    _, a, b = paired_values(results, method_a, method_b, metric)
    n = len(a)
    out: dict[str, Any] = {"method_a": method_a, "method_b": method_b, "metric": metric, "n": n,
                           "confidence": confidence}
    if n == 0:
        return out | {"mean_diff": float("nan"), "low": float("nan"), "high": float("nan"), "excludes_zero": False}
    diff = a - b
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    means = diff[draws].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return out | {"mean_diff": float(diff.mean()), "low": float(low), "high": float(high),
                  "excludes_zero": bool(low > 0 or high < 0)}


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman rank correlation ρ of x and y (average ranks for ties) with its two-sided p-value.

    Fewer than 3 pairs, or a constant side, give ρ = nan.
    """
    from scipy.stats import spearmanr

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape} vs {y.shape}")
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {"rho": float("nan"), "p_value": float("nan"), "n": int(len(x))}
    res = spearmanr(x, y)
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": int(len(x))}


def uncertainty_correlations(results: Iterable[Any], method: str = "sift") -> dict[str, dict[str, float]]:
    """Spearman ρ of the final uncertainty σ_N (the σ at the last step trained) against bpb after
    fine-tuning and against the gain (bpb before − after), over ``method``'s prompts.

    σ_N is ``uncertainties[steps]`` (the σ after the picks actually trained on).
    """
    sigma, after, gain = [], [], []
    for record in map(as_record, results):
        if record["method"] != method or not record.get("uncertainties"):
            continue
        u = record["uncertainties"]
        sigma.append(float(u[min(int(record.get("steps", len(u) - 1)), len(u) - 1)]))
        after.append(float(record["bpb_after"]))
        gain.append(float(record["gain"]))
    return {"sigma_vs_bpb_after": spearman(sigma, after), "sigma_vs_gain": spearman(sigma, gain)}


def format_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """A plain-text table (one line per row) of ``summarize`` rows, for terminals and logs."""
    if not rows:
        return "(no results)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else (f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}")
        return str(value)

    table = [columns] + [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
