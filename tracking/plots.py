"""Matplotlib figures of an evaluation or a tuning study (no MLflow here: callers log or save them).

Every function takes plain dicts — result rows as written by ``PromptResult.to_json()`` and the
summary of ``sift.stats.summarize`` — and returns a ``matplotlib.figure.Figure`` drawn with the
non-interactive Agg backend (no display needed). Callers close figures with ``plt.close(fig)``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: flows run on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sift.methods import METHODS  # noqa: E402
from sift.stats import final_uncertainty, spearman as _spearman  # noqa: E402


def method_color(method: str, fallback_index: int = 0) -> str:
    """The method's colour from the registry (matplotlib's tab10 cycle for methods without one)."""
    known = METHODS.get(method)
    return known.color if known is not None and known.color else f"C{fallback_index % 10}"


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ of ``sift.stats.spearman`` (finite pairs, average ranks for ties)."""
    return _spearman(x, y)["rho"]


def _methods_in_order(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(r["method"]) for r in rows))


def plot_bpb_by_method_domain(summary: dict[str, Any], metric: str = "bpb_after") -> Figure:
    """Grouped bars: mean ``metric`` per domain (and over all prompts), one bar per method, with the
    bootstrap 95 % interval of the mean as error bars (from ``summary["groups"]``)."""
    groups = summary.get("groups") or []
    if not groups:
        raise ValueError("summary has no groups: summarize at least one result row first")
    methods = list(summary.get("methods") or dict.fromkeys(g["method"] for g in groups))
    domains = list(summary.get("domains") or []) + ["all"]
    lookup = {(g["method"], g["domain"]): g for g in groups}
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(min(14.0, 3.0 + 0.42 * len(domains) * max(1, len(methods))), 4.2))
    x = np.arange(len(domains))
    for i, method in enumerate(methods):
        means, lows, highs = [], [], []
        for domain in domains:
            g = lookup.get((method, domain), {})
            mean = g.get(metric, float("nan"))
            means.append(mean)
            lows.append(mean - g.get(f"{metric}_lo", mean))
            highs.append(g.get(f"{metric}_hi", mean) - mean)
        offsets = x - 0.4 + width * (i + 0.5)
        ax.bar(offsets, means, width, label=method, color=method_color(method, i), alpha=0.85)
        ax.errorbar(offsets, means, yerr=[lows, highs], fmt="none", ecolor="black", capsize=3, lw=1)
    counts = [max((g.get("count", 0) for g in groups if g["domain"] == d), default=0) for d in domains]
    ax.set_xticks(x, [f"{d}\n(n={c})" for d, c in zip(domains, counts)])
    ax.axhline(0, color="black", lw=0.6)
    label, better = {"bpb_after": ("bits per byte after fine-tuning", "lower is better"),
                     "bpb_before": ("bits per byte before fine-tuning", "lower is better"),
                     "bpb_gain": ("gain: bits per byte before − after", "higher is better")}.get(metric, (metric, ""))
    ax.set_ylabel(f"{label}\n({better})" if better else label)
    ax.set_title(f"{label} by method and domain\n(mean over prompts, 95 % bootstrap interval)", fontsize=11)
    ax.legend(title="method", fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_uncertainty_vs_bpb(rows: Sequence[dict[str, Any]], y: str = "bpb_after") -> Figure:
    """Scatter σ_N (uncertainty after the trained picks) against ``y`` ("bpb_after" or "bpb_gain") per
    (prompt, method), with Spearman's ρ over all points and per method in the title/legend.

    Rows without uncertainties (the ``base`` method) are left out. On a multi-domain corpus raw bits
    per byte is dominated by the domain, so the gain (before − after) is the fairer target.
    """
    if y not in ("bpb_after", "bpb_gain"):
        raise ValueError(f"y must be 'bpb_after' or 'bpb_gain', got {y!r}")
    points = []
    for r in rows:
        sigma = final_uncertainty(r)
        if sigma is None or r.get("method") == "base":
            continue
        value = r["bpb_after"] if y == "bpb_after" else r["bpb_before"] - r["bpb_after"]
        points.append((str(r["method"]), sigma, float(value)))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    if not points:
        ax.text(0.5, 0.5, "no rows with uncertainties", ha="center", va="center", transform=ax.transAxes)
        return fig
    for i, method in enumerate(dict.fromkeys(p[0] for p in points)):
        xs = [p[1] for p in points if p[0] == method]
        ys = [p[2] for p in points if p[0] == method]
        rho = spearman(xs, ys)
        ax.scatter(xs, ys, s=28, alpha=0.8, color=method_color(method, i),
                   label=f"{method} (n={len(xs)}, ρ={rho:+.2f})" if math.isfinite(rho) else f"{method} (n={len(xs)})")
    rho_all = spearman([p[1] for p in points], [p[2] for p in points])
    target = "bits per byte after" if y == "bpb_after" else "gain (bits per byte before − after)"
    rho_text = f"Spearman ρ = {rho_all:+.2f}" if math.isfinite(rho_all) else "Spearman ρ undefined (< 3 points)"
    ax.set_title(f"σ_N against {target}\n{rho_text} over {len(points)} (prompt, method) pairs", fontsize=11)
    ax.set_xlabel("σ_N: uncertainty after the trained picks")
    ax.set_ylabel(target)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="method", loc="best")
    fig.tight_layout()
    return fig


def _bpb_points(row: dict[str, Any]) -> list[tuple[int, float]]:
    """(step, bpb) of a row: step 0 = before, intermediate evaluations, step ``steps`` = after."""
    points = {int(s): float(v) for s, v in (row.get("bpb_curve") or [])}
    points[0] = float(row["bpb_before"])
    points[int(row.get("steps") or 0)] = float(row["bpb_after"])
    return sorted(points.items())


def plot_curves(rows: Sequence[dict[str, Any]]) -> Figure:
    """Two panels against the step (= picks trained on): left, the change of bits per byte from step 0
    (so that prompts of different domains share one scale); right, the uncertainty σ_n. Thin lines are
    single prompts, thick lines the mean per method over prompts that reached that step."""
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    fig, (ax_bpb, ax_sigma) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, method in enumerate(_methods_in_order(rows)):
        color = method_color(method, i)
        mine = [r for r in rows if r["method"] == method]
        by_step: dict[int, list[float]] = {}
        for r in mine:
            pts = _bpb_points(r)
            base = pts[0][1]
            steps, deltas = [s for s, _ in pts], [v - base for _, v in pts]
            ax_bpb.plot(steps, deltas, color=color, alpha=0.25, lw=0.8, marker="." if len(pts) <= 3 else None)
            for s, d in zip(steps, deltas):
                by_step.setdefault(s, []).append(d)
        xs = sorted(by_step)
        ax_bpb.plot(xs, [np.mean(by_step[s]) for s in xs], color=color, lw=2.4, marker="o", ms=4,
                    label=f"{method} (mean of {len(mine)})")
        sigma_rows = [r["uncertainties"] for r in mine if r.get("uncertainties") and method != "base"]
        if sigma_rows:
            for sig in sigma_rows:
                ax_sigma.plot(range(len(sig)), sig, color=color, alpha=0.25, lw=0.8)
            longest = max(len(s) for s in sigma_rows)
            mean = [np.mean([s[n] for s in sigma_rows if len(s) > n]) for n in range(longest)]
            ax_sigma.plot(range(longest), mean, color=color, lw=2.4, label=f"{method} (mean)")
    ax_bpb.axhline(0, color="black", lw=0.6)
    ax_bpb.set_xlabel("step (gradient steps = picks trained on)")
    ax_bpb.set_ylabel("bits per byte − bits per byte at step 0")
    ax_bpb.set_title("bits per byte against steps (lower is better)", fontsize=11)
    ax_sigma.set_xlabel("n (picks)")
    ax_sigma.set_ylabel("σ_n: uncertainty about the prompt")
    ax_sigma.set_title("uncertainty σ_n against picks", fontsize=11)
    for ax in (ax_bpb, ax_sigma):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_paired(summary: dict[str, Any]) -> Figure:
    """Each method's paired difference to the reference (bits per byte after, method − reference),
    mean and 95 % bootstrap interval over prompts, with the wins; left of 0: better than the reference."""
    paired = summary.get("paired") or []
    if not paired:
        raise ValueError("summary has no paired comparisons (one method only?)")
    ref = summary["reference"]
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.55 * len(paired)))
    for i, p in enumerate(paired):
        color = method_color(p["method"], i)
        lo, hi = p["ci_low"], p["ci_high"]
        if math.isfinite(lo) and math.isfinite(hi):
            ax.plot([lo, hi], [i, i], color=color, lw=3, solid_capstyle="butt")
        ax.plot([p["mean"]], [i], "o", color=color, ms=8)
        ax.annotate(f"{p['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]   wins {p['wins']}/{p['n']}", (p["mean"], i),
                    xytext=(0, 9), textcoords="offset points", ha="center", fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(paired)), [p["method"] for p in paired])
    ax.set_ylim(-0.7, len(paired) - 0.2)
    ax.set_xlabel(f"bits per byte after: method − {ref} (paired over prompts; < 0: better than {ref})")
    ax.set_title(f"paired comparison with {ref}, 95 % bootstrap intervals", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_step_curves(summary: dict[str, Any]) -> Figure:
    """Mean bits per byte after each step, one line per method (from ``summary["step_curves"]``)."""
    curves = {m: c for m, c in (summary.get("step_curves") or {}).items() if c}
    if not curves:
        raise ValueError("summary has no step curves")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (method, curve) in enumerate(curves.items()):
        ax.plot([p["step"] for p in curve], [p["mean_bpb"] for p in curve], color=method_color(method, i),
                marker="o", ms=3, lw=2, label=method)
    ax.set_xlabel("step (gradient steps = picks trained on)")
    ax.set_ylabel("mean bits per byte over prompts")
    ax.set_title("bits per byte after each step (lower is better)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_alpha_sweep(summary: dict[str, Any], method: str = "sift") -> Figure:
    """Adaptive stopping at each α (steps saved against bits per byte lost, from the stored curves)
    beside the uniform cut (every prompt stops after the same step): below the cut's line is better."""
    sweep = [r for r in (summary.get("alpha_sweep") or {}).get(method, []) if r["alpha"] is not None]
    cut = (summary.get("truncation_reference") or {}).get(method, [])
    if not sweep:
        raise ValueError(f"summary has no α sweep for {method!r} (needs per-step curves: --eval-every 1)")
    fig, ax = plt.subplots(figsize=(7, 4.4))
    if cut:
        ax.plot([100 * r["steps_saved"] for r in cut], [100 * r["bpb_loss_relative"] for r in cut], color="#7f7f7f",
                marker="s", ms=4, lw=1.5, label="uniform cut: every prompt stops after s steps")
    ax.plot([100 * r["steps_saved"] for r in sweep], [100 * r["bpb_loss_relative"] for r in sweep],
            color=method_color(method), marker="o", ms=5, lw=2, label=f"{method} with adaptive stopping (α)")
    for r in sweep:
        ax.annotate(f"α={r['alpha']:g}", (100 * r["steps_saved"], 100 * r["bpb_loss_relative"]), xytext=(4, -10),
                    textcoords="offset points", fontsize=7)
    ax.set_xlabel("steps saved (%)")
    ax.set_ylabel("bits per byte lost (%, relative to all steps)")
    ax.set_title(f"compute against quality: {method}, {sweep[0]['n']} prompts", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_budget_frontier(summary: dict[str, Any], method: str = "sift") -> Figure:
    """Left: mean bits per byte against steps per prompt for each budget policy (``sift.budget``), read
    off the per-step curves. Right: each policy − uniform at the same budget with its 95 % interval
    (below 0: the policy spends the same steps better)."""
    frontier = (summary.get("budget_frontier") or {}).get(method)
    if not frontier:
        raise ValueError(f"summary has no budget frontier for {method!r} (needs per-step curves: --eval-every 1)")
    policies = list(dict.fromkeys(p["policy"] for p in frontier["points"]))
    colors = {"uniform": "#7f7f7f", "alpha": "#ff7f0e", "sigma": "#2ca02c"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, policy in enumerate(policies):
        pts = [p for p in frontier["points"] if p["policy"] == policy]
        color = colors.get(policy, f"C{i}")
        left.plot([p["mean_steps"] for p in pts], [p["mean_bpb"] for p in pts], marker="o", ms=4, lw=2, color=color,
                  label=policy)
        if policy != "uniform":
            offset = 0.12 * (i - (len(policies) - 1) / 2)
            xs = [p["per_prompt"] + offset for p in pts]
            ys = [p["vs_uniform"]["mean"] for p in pts]
            err = [[y - p["vs_uniform"]["ci_low"] for y, p in zip(ys, pts)],
                   [p["vs_uniform"]["ci_high"] - y for y, p in zip(ys, pts)]]
            right.errorbar(xs, ys, yerr=err, fmt="o", color=color, capsize=3, label=f"{policy} − uniform")
    right.axhline(0, color="black", lw=0.8)
    left.set_xlabel("steps per prompt (mean)")
    left.set_ylabel("mean bits per byte after")
    left.set_title(f"{method}: one step budget for {frontier['n']} prompts", fontsize=11)
    right.set_xlabel("budget: steps per prompt (mean)")
    right.set_ylabel("bits per byte, policy − uniform (95 %)")
    right.set_title(f"paired with uniform; sigma's γ chosen on the other half {frontier['gamma_chosen']}", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_landscape(params: Sequence[dict[str, Any]], values: Sequence[float], x: str = "lam", y: str = "alpha",
                   objective: str = "objective (lower is better)") -> Figure:
    """The tuning landscape: each finished trial at (λ′, α) on log axes coloured by its objective value,
    the best (lowest) trial starred. Trials without ``y`` (e.g. α = None, never stop) are drawn in a
    strip below the axis; with no ``y`` at all it becomes value against λ′."""
    if len(params) != len(values):
        raise ValueError(f"params and values differ in length: {len(params)} != {len(values)}")
    trials = [(p, float(v)) for p, v in zip(params, values) if v is not None and math.isfinite(float(v))]
    if not trials:
        raise ValueError("no finished trial with a finite value: nothing to plot")
    best_params, best_value = min(trials, key=lambda t: t[1])
    xs = np.array([float(p[x]) for p, _ in trials])
    vals = np.array([v for _, v in trials])
    has_y = [p.get(y) is not None for p, _ in trials]
    fig, ax = plt.subplots(figsize=(6.6, 4.8))
    best_text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best_params.items())
    if any(has_y):
        ys = np.array([float(p[y]) if p.get(y) is not None else np.nan for p, _ in trials])
        floor = np.nanmin(ys) / 3  # trials without y sit in a strip below every real value
        ys_drawn = np.where(np.isnan(ys), floor, ys)
        sc = ax.scatter(xs, ys_drawn, c=vals, cmap="viridis_r", s=60, edgecolors="black", linewidths=0.4)
        if not all(has_y):
            ax.axhline(floor * 1.6, color="gray", lw=0.6, ls="--")
            ax.annotate("α = None (never stop)" if y == "alpha" else f"{y} = None", (0.99, floor * 1.25), xycoords=("axes fraction", "data"), fontsize=8,
                        color="dimgray", ha="right", va="bottom", bbox={"fc": "white", "ec": "none", "alpha": 0.8})
        best_y = best_params.get(y)
        ax.scatter([float(best_params[x])], [float(best_y) if best_y is not None else floor], marker="*", s=320,
                   color="red", edgecolors="black", label=f"best: {best_value:.4g}")
        ax.set_yscale("log")
        ax.set_ylabel({"alpha": "α (adaptive stopping)"}.get(y, y))
        fig.colorbar(sc, ax=ax, label=objective)
    else:
        ax.scatter(xs, vals, color="C0", s=40)
        ax.scatter([float(best_params[x])], [best_value], marker="*", s=320, color="red", edgecolors="black",
                   label=f"best: {best_value:.4g}")
        ax.set_ylabel(objective)
    ax.set_xscale("log")
    ax.set_xlabel({"lam": "λ′ (SIFT regularisation)"}.get(x, x))
    ax.set_title(f"tuning landscape: {len(trials)} trials\nbest {best_text}", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_gap_vs_size(table: Sequence[dict[str, Any]], leave_out: Sequence[str] = ("base",)) -> Figure:
    """Each method's paired difference to the reference (bits per byte after, method − reference) against
    the data-space size in sequences (log x): mean and 95 % bootstrap interval per size, one line per
    method label (the data-size flow's table: entries with ``size``, ``label``, ``method``, ``gap``,
    ``ci_low``, ``ci_high``). Below 0: better than the reference; the paper expects SIFT's line to fall
    as the space grows. ``leave_out``: methods not drawn (the untrained base model's gap, some 0.3 bits
    per byte, would flatten every other line; the table keeps it)."""
    entries = [e for e in table if e.get("gap") is not None and e["method"] not in leave_out]
    if not entries:
        raise ValueError("the table has no paired comparisons (is the reference among the methods?)")
    labels = list(dict.fromkeys(e["label"] for e in entries))
    sizes = sorted({int(e["size"]) for e in entries})
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    spread = 1.04  # labels side by side at each size, so their intervals do not hide each other
    for i, label in enumerate(labels):
        mine = sorted((e for e in entries if e["label"] == label), key=lambda e: e["size"])
        shift = spread ** (i - (len(labels) - 1) / 2)
        x = [e["size"] * shift for e in mine]
        y = [e["gap"] for e in mine]
        lo = [e["gap"] - e["ci_low"] for e in mine]
        hi = [e["ci_high"] - e["gap"] for e in mine]
        same_method = sum(1 for e in entries if e["method"] == mine[0]["method"] and e["size"] == mine[0]["size"])
        color = method_color(mine[0]["method"], i) if same_method == 1 else f"C{i}"  # several λ′: a colour each
        ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", color=color, capsize=4, lw=1.6, label=f"{label} − {mine[0]['reference']}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("data-space size (sequences, log scale)")
    ax.set_ylabel("bits per byte after: method − reference")
    ax.set_title("the gap to the reference against the data-space size (paired, 95 % intervals)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig
