"""Aggregation over per-prompt results: means, paired bootstrap, Spearman."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sift.report import (
    format_table,
    means_by_method,
    means_by_method_and_domain,
    paired_bootstrap,
    spearman,
    summarize,
    uncertainty_correlations,
)
from sift.ttft import PromptResult


def _result(prompt_id, method, domain, before, after, steps=4, sigmas=(1.0, 0.8, 0.6, 0.5, 0.4)):
    return PromptResult(
        prompt_id=prompt_id, method=method, domain=domain, bpb_before=before, bpb_after=after, steps=steps,
        uncertainties=list(sigmas), picked_ids=[], picked_seq_ids=[], picked_domains=[], picked_scores=[],
        repeated=[], seconds={"total": 2.0}, tokens=0, tokens_train=0, tokens_eval=0, flops=10.0,
        stopped_early=False, bpb_curve=[(0, before), (steps, after)],
    )


def test_means_per_method_and_domain_by_hand():
    results = [
        _result("a", "nn", "code", 1.0, 0.9),
        _result("b", "nn", "wiki", 2.0, 1.6),
        _result("a", "sift", "code", 1.0, 0.8),
        _result("b", "sift", "wiki", 2.0, 1.5).to_json(),  # dicts and dataclasses mix
    ]
    rows = {r["method"]: r for r in means_by_method(results)}
    assert rows["nn"]["count"] == 2
    assert rows["nn"]["mean_bpb_after"] == pytest.approx(1.25)
    assert rows["sift"]["mean_gain"] == pytest.approx(0.35)
    assert rows["sift"]["relative_gain"] == pytest.approx(0.35 / 1.5)
    by_domain = {(r["method"], r["domain"]): r for r in means_by_method_and_domain(results)}
    assert by_domain[("nn", "wiki")]["mean_bpb_after"] == pytest.approx(1.6)
    assert len(by_domain) == 4
    table = format_table(summarize(results), ["method", "count", "mean_bpb_after"])
    assert table.splitlines()[0].split() == ["method", "count", "mean_bpb_after"]
    assert "1.2500" in table


def test_paired_bootstrap_is_seeded_and_pairs_by_prompt():
    rng = np.random.default_rng(1)
    before = rng.uniform(0.6, 1.5, size=40)
    results = []
    for i, b in enumerate(before):
        results.append(_result(f"p{i}", "nn", "x", b, b - 0.02 + rng.normal(0, 0.002)))
        results.append(_result(f"p{i}", "sift", "x", b, b - 0.05 + rng.normal(0, 0.002)))
    results.append(_result("only-nn", "nn", "x", 9.0, 9.0))  # unpaired: ignored
    ci = paired_bootstrap(results, "sift", "nn", n_resamples=2000, seed=3)
    assert ci["n"] == 40
    assert ci["mean_diff"] == pytest.approx(-0.03, abs=0.002)
    assert ci["low"] < ci["mean_diff"] < ci["high"] < 0
    assert ci["excludes_zero"]
    # Pairing matters: the between-prompt spread (~0.25) would swamp a 0.03 difference unpaired.
    assert ci["high"] - ci["low"] < 0.01
    assert paired_bootstrap(results, "sift", "nn", n_resamples=2000, seed=3) == ci
    json.dumps(ci)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(results, "sift", "nn", confidence=1.0)
    assert math.isnan(paired_bootstrap(results, "sift", "us")["mean_diff"])


def test_spearman_and_uncertainty_correlations():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40])["rho"] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2], [3, 4])["rho"])
    with pytest.raises(ValueError, match="differ"):
        spearman([1, 2, 3], [1, 2])
    # Lower final σ, larger gain: rho(σ_N, gain) = -1; σ_N is read at index `steps`.
    results = [
        _result(f"p{i}", "sift", "x", 1.0, 1.0 - g, steps=2, sigmas=(1.0, 0.9, s, 0.0))
        for i, (g, s) in enumerate([(0.1, 0.5), (0.2, 0.4), (0.3, 0.3), (0.4, 0.2)])
    ]
    corr = uncertainty_correlations(results, "sift")
    assert corr["sigma_vs_gain"]["rho"] == pytest.approx(-1.0)
    assert corr["sigma_vs_bpb_after"]["rho"] == pytest.approx(1.0)


def test_records_without_required_fields_are_rejected():
    with pytest.raises(ValueError, match="bpb_after"):
        summarize([{"prompt_id": "a", "method": "nn", "bpb_before": 1.0}])
