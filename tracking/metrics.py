"""What a run records as numbers and tables: child-run metrics and the selection table of one result row,
parent-run metrics and the CSV of a summary (``sift.stats.summarize``). Pure functions, no MLflow."""

from __future__ import annotations

import io
import math
from typing import Any, Mapping

from sift.stats import final_uncertainty, total, total_seconds
from tracking.keys import metric_key


def result_metrics(row: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """The child-run metrics of one result row as (key, value, step).

    ``uncertainty`` at step n = σ_n for n = 0..len(picks); ``bpb`` at step 0 (before), at every step of
    ``bpb_curve`` and at step ``steps`` (after); scalars at step 0: bpb_before, bpb_after,
    bpb_gain = before − after, steps, picks, repeats, unique_docs, stopped_early (0/1), uncertainty_final
    (σ_N after the trained picks), tokens/flops (or tokens_<part> for dicts), tokens_train/tokens_eval,
    candidate_count, eval_bytes, max_score, low_similarity, budget_steps when present, seconds_<phase>, and
    seconds_total (the row's ``seconds["total"]``, else the sum of the phases).
    """
    out: list[tuple[str, float, int]] = []
    for n, sigma in enumerate(row.get("uncertainties") or []):
        out.append(("uncertainty", float(sigma), n))
    before, after, steps = float(row["bpb_before"]), float(row["bpb_after"]), int(row.get("steps") or 0)
    curve = {int(s): float(v) for s, v in (row.get("bpb_curve") or [])}
    curve[0], curve[steps] = before, after  # the measured endpoints win over a curve's copies
    out += [("bpb", v, s) for s, v in sorted(curve.items())]
    picks = list(row.get("picked_seq_ids") or row.get("picked_ids") or [])
    scalars: dict[str, float] = {
        "bpb_before": before, "bpb_after": after, "bpb_gain": before - after, "steps": float(steps),
        "picks": float(len(picks)), "repeats": float(sum(bool(x) for x in row.get("repeated") or [])),
        "unique_docs": float(len(set(row.get("picked_ids") or []))),
        "stopped_early": float(bool(row.get("stopped_early"))),
    }
    sigma_final = final_uncertainty(dict(row))
    if sigma_final is not None:
        scalars["uncertainty_final"] = sigma_final
    for name in ("tokens", "flops"):
        value = row.get(name)
        if isinstance(value, Mapping):
            scalars.update({metric_key(f"{name}_{k}"): float(v) for k, v in value.items() if v is not None})
            scalars[name] = total(value)
        elif value is not None:
            scalars[name] = float(value)
    # Extra numbers PromptResult carries (tokens split, candidates, evaluated bytes, similarity flag).
    for name in ("tokens_train", "tokens_eval", "candidate_count", "eval_bytes", "max_score", "low_similarity",
                 "budget_steps"):
        value = row.get(name)
        if isinstance(value, (bool, int, float)):
            scalars[name] = float(value)
    seconds = row.get("seconds") or {}
    if isinstance(seconds, Mapping):
        scalars.update({metric_key(f"seconds_{k}"): float(v) for k, v in seconds.items() if v is not None})
    scalars["seconds_total"] = total_seconds(seconds) if seconds else float("nan")
    out += [(k, v, 0) for k, v in scalars.items() if math.isfinite(v)]
    return out


def selection_table(row: Mapping[str, Any]) -> dict[str, list]:
    """The prompt's picks, one row per pick in order: rank (1-based), seq_id, corpus_id (document id),
    domain, score (retrieval similarity), repeated (picked before), uncertainty_after (σ after this pick),
    trained (rank ≤ steps: adaptive stopping may leave the tail untrained)."""
    seq_ids = list(row.get("picked_seq_ids") or [])
    doc_ids = list(row.get("picked_ids") or [])
    count = max(len(seq_ids), len(doc_ids))
    sigmas = list(row.get("uncertainties") or [])
    steps = int(row.get("steps") or 0)

    def column(name: str) -> list:
        values = list(row.get(name) or [])
        return values + [None] * (count - len(values))

    return {
        "rank": list(range(1, count + 1)),
        "seq_id": (seq_ids + [None] * count)[:count],
        "corpus_id": (doc_ids + [None] * count)[:count],
        "domain": column("picked_domains")[:count],
        "score": column("picked_scores")[:count],
        "repeated": [bool(x) if x is not None else None for x in column("repeated")[:count]],
        "uncertainty_after": [sigmas[i + 1] if i + 1 < len(sigmas) else None for i in range(count)],
        "trained": [i < steps for i in range(count)],
    }


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Parent-run metrics from ``sift.stats.summarize``: ``<method>/<stat>`` over all prompts,
    ``<method>/<domain>/<stat>`` per domain, ``paired/<method>-vs-<reference>/{mean,ci_low,ci_high,wins}``
    (bits per byte after, method − reference, 95 % bootstrap interval over prompts), and per budget policy
    ``budget/<method>/<policy>/<steps per prompt>/{mean_bpb,vs_uniform_mean,vs_uniform_ci_low,...}``.
    Non-finite values (e.g. ρ of < 3 points) are left out."""
    stats = ("count", "bpb_before", "bpb_before_lo", "bpb_before_hi", "bpb_after", "bpb_after_lo", "bpb_after_hi",
             "bpb_gain", "bpb_gain_lo", "bpb_gain_hi", "steps", "tokens", "flops", "seconds_total",
             "uncertainty_final", "stopped_early", "spearman_sigma_bpb_after", "spearman_sigma_gain",
             "unique_sequences")
    out: dict[str, float] = {}
    for g in summary["groups"]:
        prefix = (g["method"],) if g["domain"] == "all" else (g["method"], g["domain"])
        for stat in stats:
            value = g.get(stat)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[metric_key(*prefix, stat)] = float(value)
    for p in summary.get("paired", []):  # paired/<method>-vs-<reference>/{mean,ci_low,ci_high,wins}
        for stat in ("mean", "ci_low", "ci_high", "wins"):
            if isinstance(p.get(stat), (int, float)) and math.isfinite(p[stat]):
                out[f"paired/{p['method']}-vs-{p['reference']}/{stat}"] = float(p[stat])
    for method, frontier in (summary.get("budget_frontier") or {}).items():  # budget/<m>/<policy>/<steps>/...
        for point in frontier["points"]:
            key = f"budget/{method}/{point['policy']}/{point['per_prompt']:g}"
            out[f"{key}/mean_bpb"] = float(point["mean_bpb"])
            for stat in ("mean", "ci_low", "ci_high", "wins"):
                value = (point.get("vs_uniform") or {}).get(stat)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    out[f"{key}/vs_uniform_{stat}"] = float(value)
    return out


def summary_csv(summary: Mapping[str, Any]) -> str:
    """The ``groups`` table of a summary as CSV text (one line per method × domain)."""
    import csv

    groups = summary["groups"]
    fields = list(dict.fromkeys(k for g in groups for k in g))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(groups)
    return buf.getvalue()
