"""Aggregation of result rows for the tracking layer: means with intervals per method and domain.

Paired differences and Spearman ρ come from ``sift.report`` (one set of numbers for flows, benchmarks
and MLflow); what it does not offer — a bootstrap interval for each group's mean, and the grouping
into the JSON/CSV summary the parent run records — lives here. Works on ``PromptResult.to_json()`` dicts.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from sift.report import paired_bootstrap
from tracking.plots import final_uncertainty, spearman


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


def bootstrap_mean(values: Sequence[float], n_boot: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and its percentile-bootstrap interval (resampling values with replacement).

    One value gives lo = hi = mean; no finite value gives NaNs.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return mean, float(lo), float(hi)


def _group(rows: list[dict[str, Any]], method: str, domain: str, n_boot: int, seed: int) -> dict[str, Any]:
    before = [float(r["bpb_before"]) for r in rows]
    after = [float(r["bpb_after"]) for r in rows]
    gain = [b - a for b, a in zip(before, after)]
    sigma = [final_uncertainty(r) for r in rows]
    sigma = [float("nan") if s is None else s for s in sigma]
    seconds = [total_seconds(r.get("seconds")) for r in rows]
    out: dict[str, Any] = {"method": method, "domain": domain, "count": len(rows)}
    for name, vals in (("bpb_before", before), ("bpb_after", after), ("bpb_gain", gain)):
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_mean(vals, n_boot, seed=seed)
    for name, vals in (("steps", [float(r.get("steps") or 0) for r in rows]),
                       ("tokens", [total(r.get("tokens")) for r in rows]),
                       ("flops", [total(r.get("flops")) for r in rows]),
                       ("seconds_total", seconds),
                       ("uncertainty_final", sigma),
                       ("stopped_early", [float(bool(r.get("stopped_early"))) for r in rows])):
        finite = [v for v in vals if math.isfinite(v)]
        out[name] = float(np.mean(finite)) if finite else float("nan")
    out["spearman_sigma_bpb_after"] = spearman(sigma, after)
    out["spearman_sigma_gain"] = spearman(sigma, gain)
    return out


def summarize(rows: Sequence[dict[str, Any]], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Aggregate result rows (``PromptResult.to_json()`` dicts) per method, over all prompts and per domain.

    Returns a JSON-ready dict:
    - ``methods``, ``domains`` (first-seen order), ``prompts`` (distinct prompt count);
    - ``groups``: one dict per (method, domain ∈ domains + ["all"]) with count, means of bpb_before /
      bpb_after / bpb_gain (= before − after) and their 95 % bootstrap intervals (``*_lo``, ``*_hi``),
      mean steps, tokens, flops, seconds_total, uncertainty_final (σ_N), stopped_early (fraction) and
      Spearman ρ of σ_N against bpb_after and against the gain;
    - ``paired``: per pair of methods (a, b), the mean over shared prompts of bpb_after(a) − bpb_after(b)
      with a paired bootstrap interval (``sift.report.paired_bootstrap``: resampling prompts, so
      per-prompt difficulty cancels), and whether the interval excludes zero.
    """
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("rows is empty: there is nothing to summarise")
    for key in ("prompt_id", "method", "domain", "bpb_before", "bpb_after"):
        missing = [i for i, r in enumerate(rows) if key not in r]
        if missing:
            raise ValueError(f"rows[{missing[0]}] has no {key!r} (expected PromptResult.to_json() dicts)")
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    domains = list(dict.fromkeys(str(r["domain"]) for r in rows))
    groups = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        for domain in domains:
            part = [r for r in mine if r["domain"] == domain]
            if part:
                groups.append(_group(part, method, domain, n_boot, seed))
        groups.append(_group(mine, method, "all", n_boot, seed))
    paired = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            # Resampling prompts, not rows: each prompt's difficulty cancels in a − b.
            pb = paired_bootstrap(rows, a, b, "bpb_after", n_resamples=n_boot, seed=seed)
            paired.append({"method_a": a, "method_b": b, "metric": "bpb_after", "count": pb["n"],
                           "mean_diff": pb["mean_diff"], "lo": pb["low"], "hi": pb["high"],
                           "excludes_zero": pb["excludes_zero"]})
    return {"methods": methods, "domains": domains, "prompts": len({str(r["prompt_id"]) for r in rows}),
            "groups": groups, "paired": paired}
