"""sift.stats: means, paired comparisons, Spearman, the α sweep and the summary, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from sift.stats import (
    alpha_sweep,
    bootstrap_mean,
    final_uncertainty,
    paired_comparison,
    spearman,
    step_curve,
    summarize,
    truncation_reference,
    uncertainty_correlations,
    unique_trained,
)
from sift.ttft import PromptResult


def _result(prompt_id, method, domain, before, after, steps=4, sigmas=(1.0, 0.8, 0.6, 0.5, 0.4), curve=None,
            seq_ids=()):
    return PromptResult(
        prompt_id=prompt_id, method=method, domain=domain, bpb_before=before, bpb_after=after, steps=steps,
        uncertainties=list(sigmas), picked_ids=[], picked_seq_ids=list(seq_ids), picked_domains=[], picked_scores=[],
        repeated=[], seconds={"total": 2.0}, tokens=0, tokens_train=0, tokens_eval=0, flops=10.0,
        stopped_early=False, bpb_curve=curve or [(0, before), (steps, after)],
    )


def test_summary_means_per_method_and_domain_by_hand():
    rows = [_result("a", "nn", "code", 1.0, 0.8), _result("b", "nn", "wiki", 2.0, 1.7),
            _result("a", "sift", "code", 1.0, 0.7), _result("b", "sift", "wiki", 2.0, 1.5)]
    summary = summarize(rows)
    by = {(g["method"], g["domain"]): g for g in summary["groups"]}
    assert by[("nn", "all")]["bpb_after"] == pytest.approx(1.25)
    assert by[("sift", "code")]["bpb_gain"] == pytest.approx(0.3)
    assert by[("sift", "all")]["bpb_gain"] == pytest.approx(0.4)
    assert by[("sift", "all")]["uncertainty_final"] == pytest.approx(0.4)
    assert summary["methods"] == ["nn", "sift"] and summary["domains"] == ["code", "wiki"] and summary["prompts"] == 2
    assert summary["reference"] == "nn"
    (p,) = summary["paired"]
    assert (p["method"], p["reference"], p["n"], p["wins"]) == ("sift", "nn", 2, 2)
    assert p["mean"] == pytest.approx(-0.15)


def test_paired_comparison_pairs_by_prompt_counts_wins_and_is_seeded():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        difficulty = rng.uniform(0.5, 2.0)  # large per-prompt spread: pairing must cancel it
        rows.append(_result(f"p{i}", "nn", "d", difficulty + 0.2, difficulty))
        rows.append(_result(f"p{i}", "sift", "d", difficulty + 0.2, difficulty - 0.01 + 0.005 * (i % 2)))
    rows.append(_result("only-nn", "nn", "d", 1.0, 0.1))  # not shared: must be ignored
    a = paired_comparison(rows, "sift", "nn", seed=3)
    b = paired_comparison(rows, "sift", "nn", seed=3)
    assert a == b
    assert a["n"] == 30 and a["wins"] == 30
    assert a["mean"] == pytest.approx(-0.0075)
    assert a["ci_low"] < a["mean"] < a["ci_high"] < 0 and a["excludes_zero"]
    worse = paired_comparison(rows, "nn", "sift")
    assert worse["mean"] == pytest.approx(0.0075) and worse["wins"] == 0 and worse["ci_low"] > 0


def test_bootstrap_mean_edge_cases():
    mean, lo, hi = bootstrap_mean([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_mean([2.0]) == (2.0, 2.0, 2.0)
    assert bootstrap_mean([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    assert all(math.isnan(v) for v in bootstrap_mean([float("nan")]))


def test_spearman_matches_scipy_on_finite_pairs():
    x, y = [1, 2, 3, 4, 5, float("nan")], [2, 1, 4, 3, 5, 0]
    out = spearman(x, y)
    assert out["rho"] == pytest.approx(spearmanr([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]).statistic) and out["n"] == 5
    assert math.isnan(spearman([1, 2], [3, 4])["rho"])
    assert math.isnan(spearman([1, 1, 1], [3, 4, 5])["rho"])


def test_uncertainty_correlations_use_sigma_at_the_steps_trained():
    rows = [_result(f"p{i}", "sift", "d", 1.0, 1.0 - 0.1 * i, steps=i, sigmas=[1.0, 0.9, 0.8, 0.7, 0.6])
            for i in range(1, 5)]
    assert [final_uncertainty(r.to_json()) for r in rows] == [0.9, 0.8, 0.7, 0.6]
    corr = uncertainty_correlations(rows, "sift")
    assert corr["sigma_vs_gain"]["rho"] == pytest.approx(-1.0)
    assert corr["sigma_vs_bpb_after"]["rho"] == pytest.approx(1.0)


def _curved(pid, sigmas, curve):
    return _result(pid, "sift", "d", curve[0], curve[-1], steps=len(curve) - 1, sigmas=sigmas,
                   curve=list(enumerate(curve)))


def test_alpha_sweep_and_uniform_cut_read_the_curves_exactly():
    # p1: σ_n·n = 0.9, 1.4, 1.8 → with α=1 it stops before step 2 (1.4 > 1): stop = 1
    # p2: σ_n·n = 0.2, 0.4, 0.6 → never stops at α=1
    p1 = _curved("p1", [1.0, 0.9, 0.7, 0.6], [2.0, 1.8, 1.7, 1.6])
    p2 = _curved("p2", [1.0, 0.2, 0.2, 0.2], [1.0, 0.9, 0.8, 0.7])
    sweep = alpha_sweep([p1, p2], [1.0])
    full, a1 = sweep
    assert full["alpha"] is None and full["mean_steps"] == 3 and full["steps_saved"] == 0
    assert full["mean_bpb_after"] == pytest.approx((1.6 + 0.7) / 2)
    assert a1["mean_steps"] == pytest.approx(2.0) and a1["steps_saved"] == pytest.approx(1 / 3)
    assert a1["mean_bpb_after"] == pytest.approx((1.8 + 0.7) / 2)
    cut = truncation_reference([p1, p2])
    assert [c["stop"] for c in cut] == [0, 1, 2, 3]
    assert cut[1]["mean_bpb_after"] == pytest.approx((1.8 + 0.9) / 2) and cut[1]["steps_saved"] == pytest.approx(2 / 3)
    curve = step_curve([p1, p2], "sift")
    assert [round(c["mean_bpb"], 6) for c in curve] == [1.5, 1.35, 1.25, 1.15]


def test_rows_without_per_step_curves_give_no_sweep():
    assert alpha_sweep([_result("p", "sift", "d", 1.0, 0.8)], [1.0]) == []
    summary = summarize([_result("p", "sift", "d", 1.0, 0.8), _result("p", "nn", "d", 1.0, 0.9)], alphas=[1.0])
    assert summary["alpha_sweep"] == {} and summary["truncation_reference"] == {}


def test_unique_sequences_count_copies_once_in_a_duplicated_space():
    row = _result("p", "nn", "d", 1.0, 0.9, steps=4, seq_ids=[8, 9, 10, 11, 40]).to_json()
    assert unique_trained(row, duplicate=4) == 1  # rows 8..11 are copies of sequence 2; 40 was not trained on
    assert unique_trained(row, duplicate=1) == 4


def test_records_without_required_fields_are_rejected():
    with pytest.raises(ValueError, match="bpb_after"):
        summarize([{"prompt_id": "p", "method": "sift", "domain": "d", "bpb_before": 1.0}])
    with pytest.raises(ValueError, match="empty"):
        summarize([])
