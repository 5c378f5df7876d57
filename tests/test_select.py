"""sift.select: exact greedy SIFT against a brute-force greedy, the baselines, stopping, bad input."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

import sift
from sift.methods import selecting_method_names

SELECTING = selecting_method_names()  # every registered method that picks data (not base)

import sift.select  # noqa: E402  (the module; `sift.select` the attribute is the function)

select_module = sys.modules["sift.select"]
kernel_module = sys.modules["sift.methods.kernel"]


# ----------------------------------------------------------------------------------------------
# Brute force: recompute the closed form for every candidate at every step (no incremental state).


def closed_form(q: np.ndarray, x: np.ndarray, picks: list[int], lam: float) -> float:
    """Σ_rows k(q,q) − k_X(q)ᵀ (K_XX + λI)⁻¹ k_X(q) in float64, written independently of sift."""
    q = np.atleast_2d(q).astype(np.float64)
    prior = float(np.sum(q * q))
    if not picks:
        return prior
    a = x[picks].astype(np.float64)
    cross = a @ q.T
    return prior - float(np.sum(cross * np.linalg.solve(a @ a.T + lam * np.eye(len(picks)), cross)))


def conditioned_variance(x: np.ndarray, picks: list[int], lam: float) -> np.ndarray:
    """k_X(x, x) for every candidate x (uncertainty sampling's score), closed form."""
    x = x.astype(np.float64)
    diag = np.einsum("kd,kd->k", x, x)
    if not picks:
        return diag
    a = x[picks]
    cross = a @ x.T
    return diag - np.einsum("nk,nk->k", cross, np.linalg.solve(a @ a.T + lam * np.eye(len(picks)), cross))


def tie_pick(score: np.ndarray, scale: float) -> int:
    """The documented tie rule: lowest index among scores within RTOL·best + ATOL·scale of the best."""
    best = score.max()
    tol = kernel_module.TIE_RTOL * abs(best) + kernel_module.TIE_ATOL * scale
    return int(np.nonzero(score >= best - tol)[0][0])


def brute_force_sift(q, x, n, lam) -> list[int]:
    picks: list[int] = []
    prior = closed_form(q, x, [], lam)
    for _ in range(n):
        current = closed_form(q, x, picks, lam)
        gains = np.array([current - closed_form(q, x, picks + [j], lam) for j in range(len(x))])
        picks.append(tie_pick(gains, prior))
    return picks


def brute_force_us(x, n, lam) -> list[int]:
    picks: list[int] = []
    scale = float(conditioned_variance(x, [], lam).max())
    for _ in range(n):
        picks.append(tie_pick(conditioned_variance(x, picks, lam), scale))
    return picks


def planted(rng, k=36, d=12, m=1, copies=6):
    """Random candidates with `copies` exact duplicates planted at random positions."""
    x = rng.standard_normal((k, d)).astype(np.float32)
    src = rng.choice(k, size=copies, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(k), src), size=copies, replace=False)
    x[dst] = x[src]
    q = (x[:3].mean(axis=0) + 0.5 * rng.standard_normal((m, d))).astype(np.float32)
    return q if m > 1 else q[0], x


# ----------------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("lam", [0.01, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("m", [1, 3])
def test_sift_equals_brute_force_greedy(lam, m):
    rng = np.random.default_rng(int(lam * 100) + m)
    q, x = planted(rng, m=m)
    n = 14
    sel = sift.select(q, x, n, lam=lam)
    assert sel.indices.dtype == np.int64 and sel.variances.dtype == np.float64
    assert sel.indices.tolist() == brute_force_sift(q, x, n, lam)


def test_sift_repeats_when_n_exceeds_k():
    rng = np.random.default_rng(5)
    q, x = planted(rng, k=6, d=8, copies=1)
    sel = sift.select(q, x, 15, lam=0.05)
    assert len(sel.indices) == 15 and len(set(sel.indices.tolist())) < 15
    assert sel.indices.tolist() == brute_force_sift(q, x, 15, 0.05)


def test_duplicates_tie_to_lowest_index_even_for_negated_rows():
    # x and −x have identical gains (the gain depends on k(x, x*)²): the lower index must win.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((10, 6))
    x = np.concatenate([-x, x])  # row j+10 is −row j
    q = rng.standard_normal(6)
    sel = sift.select(q, x, 8, lam=0.1)
    assert sel.indices.max() < 10
    assert sel.indices.tolist() == brute_force_sift(q, x, 8, 0.1)


@pytest.mark.parametrize("lam", [0.01, 1.0])
def test_uncertainty_sampling_equals_brute_force(lam):
    q, x = planted(np.random.default_rng(3), k=20)
    sel = sift.select(q, x, 10, method="us", lam=lam)
    assert sel.indices.tolist() == brute_force_us(x, 10, lam)


def test_speculative_column_blocks_never_change_picks(monkeypatch):
    # the batched loop (two prompts in one group) computes its columns in speculative blocks
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 300, 24))
    q = rng.standard_normal((2, 2, 24))
    reference = [s.indices for s in sift.select_batch(q, x, 40, lam=0.05)]
    for block in (1, 3, 300):
        monkeypatch.setattr(kernel_module, "BLOCK", block)
        assert all(np.array_equal(s.indices, r) for s, r in zip(sift.select_batch(q, x, 40, lam=0.05), reference))


@pytest.mark.parametrize("method", ["sift", "us"])
@pytest.mark.parametrize("m", [1, 2])
def test_lookahead_never_changes_picks(monkeypatch, method, m):
    """The single-prompt loop computes the columns its lookahead foresees: speculation (small K),
    simulation on the default pool, a pool of one, of everything, no horizon or a long one must all
    give the brute-force greedy's picks."""
    from sift.methods import greedy

    q, x = planted(np.random.default_rng(40 + m), k=120, d=10, m=m, copies=8)
    lam, n = 0.05, 30
    reference = brute_force_sift(q, x, n, lam) if method == "sift" else brute_force_us(x, n, lam)
    assert sift.select(q, x, n, method=method, lam=lam).indices.tolist() == reference  # speculation
    monkeypatch.setattr(greedy, "SIMULATE_FROM_K", 0)  # simulate whatever the set's size
    for share, low, high, steps in ((8, 64, 512, 12), (1, 1, 1, 12), (1, 120, 120, 50), (1, 1000, 1000, 1)):
        monkeypatch.setattr(greedy, "POOL_SHARE", share)
        monkeypatch.setattr(greedy, "POOL_MIN", low)
        monkeypatch.setattr(greedy, "POOL_MAX", high)
        monkeypatch.setattr(greedy, "LOOKAHEAD", steps)
        assert sift.select(q, x, n, method=method, lam=lam).indices.tolist() == reference


def test_lookahead_at_k_5000_picks_as_the_batched_loop_and_foresees_picks():
    """At K = 5,000 (embedding-like rows, so later picks come from far down the first ranking) the
    single-prompt loop with its lookahead picks exactly what the batched loop picks, and its lookahead
    foresees picks: fewer products than distinct picks, not many more columns than distinct picks."""
    from sift.methods.greedy import condition_greedy, condition_greedy_one
    from sift.methods.kernel import Kernel

    rng = np.random.default_rng(50)
    d = 48
    x = rng.standard_normal((5000, d)) * (1.0 + np.arange(d)) ** -0.5 + 0.4 * rng.standard_normal(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:3].mean(axis=0) + 0.1 * rng.standard_normal(d)
    kernel = Kernel([torch.from_numpy(q[None])], [torch.from_numpy(x)])
    products, columns = [], []
    original = Kernel.columns

    def counting(self, prompts, rows):
        products.append(1)
        columns.append(np.asarray(rows).size)
        return original(self, prompts, rows)

    Kernel.columns = counting
    try:
        one, drops_one = condition_greedy_one(kernel, 50, 0.1, True)
    finally:
        Kernel.columns = original
    batched, drops_batched = condition_greedy(kernel, 50, 0.1, True)
    assert np.array_equal(one, batched[0])
    np.testing.assert_allclose(drops_one, drops_batched[0], rtol=1e-9, atol=1e-12)
    distinct = len(np.unique(one))
    assert len(products) < distinct / 2 and sum(columns) < 2 * distinct


@pytest.mark.parametrize("method", SELECTING)
def test_variances_are_the_closed_form_of_each_prefix_and_non_increasing(method):
    rng = np.random.default_rng(21)
    q, x = planted(rng, k=40, m=2)
    lam = 0.3
    sel = sift.select(q, x, 12, method=method, lam=lam, seed=4)
    assert len(sel.variances) == len(sel.indices) + 1
    expected = [closed_form(q, x, sel.indices[:t].tolist(), lam) for t in range(len(sel.indices) + 1)]
    np.testing.assert_allclose(sel.variances, expected, rtol=1e-10, atol=1e-12 * expected[0])
    public = [sift.posterior_variance(q, x, sel.indices[:t], lam) for t in range(len(sel.indices) + 1)]
    np.testing.assert_allclose(public, expected, rtol=1e-12)
    assert np.all(np.diff(sel.variances) <= 0)
    np.testing.assert_allclose(sel.sigmas, np.sqrt(sel.variances))


def test_sift_reduces_variance_at_least_as_fast_as_baselines_at_first_pick():
    rng = np.random.default_rng(2)
    q, x = planted(rng, k=50)
    first = {m: sift.select(q, x, 5, method=m, lam=0.1).variances[1] for m in SELECTING}
    assert all(first["sift"] <= v + 1e-12 for v in first.values())


# ----------------------------------------------------------------------------------------------
# Limits and the duplicate story


def test_huge_lambda_follows_nearest_neighbour_order():
    # λ′ → ∞: gain ≈ k(x, x*)²/λ′ and conditioning vanishes. With repeats allowed SIFT keeps
    # re-picking the nearest neighbour; one pick at a time without replacement gives NN's order.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((25, 10))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:5].mean(axis=0)
    x = x * np.sign(x @ q)[:, None]  # positive inner products: NN order = order by k(x, x*)²
    nn = sift.select(q, x, 10, method="nn").indices
    assert sift.select(q, x, 10, lam=1e8).indices.tolist() == [nn[0]] * 10
    remaining, order = list(range(len(x))), []
    for _ in range(10):
        pick = remaining[int(sift.select(q, x[remaining], 1, lam=1e8).indices[0])]
        order.append(pick)
        remaining.remove(pick)
    assert order == nn.tolist()


def test_duplicating_candidates_leaves_sift_vectors_unchanged_and_collapses_nn():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((30, 16)).astype(np.float32)
    q = (x[:4].mean(axis=0) + 0.3 * rng.standard_normal(16)).astype(np.float32)
    tripled = np.concatenate([x, x, x])
    perm = rng.permutation(len(tripled))  # interleave copies so that index order is not block order
    shuffled = tripled[perm]
    n = 12
    base = sift.select(q, x, n, lam=0.1)
    dup = sift.select(q, shuffled, n, lam=0.1)
    np.testing.assert_array_equal(shuffled[dup.indices], x[base.indices])
    np.testing.assert_allclose(dup.variances, base.variances, rtol=1e-9)

    nn_base = sift.select(q, x, n, method="nn")
    nn_dup = sift.select(q, shuffled, n, method="nn")
    assert len({tuple(v) for v in shuffled[nn_dup.indices]}) == n // 3  # every vector thrice
    assert nn_dup.variances[-1] > nn_base.variances[-1]
    # copies of one vector come out consecutively in index order (ties by index)
    first = nn_dup.indices[:3]
    assert list(first) == sorted(first)


def test_nn_f_skips_exact_and_near_duplicates():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((20, 32))
    q = x[0] + 0.1 * rng.standard_normal(32)
    near = x[0] + 1e-3 * rng.standard_normal(32)  # cosine with x[0] ≈ 0.999999
    candidates = np.concatenate([x, x[:5], near[None]])
    nn = sift.select(q, candidates, 6, method="nn").indices
    assert len({tuple(v) for v in candidates[nn]}) < 6
    filtered = sift.select(q, candidates, 6, method="nn-f").indices
    assert filtered.tolist() == sift.select(q, x, 6, method="nn").indices.tolist()
    exact_only = sift.select(q, candidates, 6, method="nn-f", dedup_threshold=1.0).indices
    assert 25 in exact_only.tolist()  # the near-duplicate is kept when only exact copies are skipped
    assert len({tuple(v) for v in candidates[exact_only]}) == 6


def test_nn_orders_by_inner_product_with_ties_by_index():
    x = np.array([[1.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 1.0], [-3.0, 0.0]])
    assert sift.select([1.0, 0.0], x, 4, method="nn").indices.tolist() == [1, 2, 0, 3]


def test_random_is_seeded_distinct_and_clamped():
    x = np.random.default_rng(0).standard_normal((10, 4))
    a = sift.select(x[0], x, 6, method="random", seed=3).indices
    assert np.array_equal(a, sift.select(x[0], x, 6, method="random", seed=3).indices)
    assert not np.array_equal(a, sift.select(x[0], x, 6, method="random", seed=4).indices)
    assert len(set(a.tolist())) == 6
    with pytest.warns(UserWarning, match="n=12 > K=10"):
        assert len(sift.select(x[0], x, 12, method="random").indices) == 10
    with pytest.warns(UserWarning, match="n=12 > K=10"):
        assert len(sift.select(x[0], x, 12, method="nn").indices) == 10


# ----------------------------------------------------------------------------------------------
# Adaptive stopping


def test_adaptive_stop_truncates_at_first_violation():
    rng = np.random.default_rng(6)
    q, x = planted(rng, k=40)
    full = sift.select(q, x, 20, lam=0.1)
    sigma = np.sqrt(full.variances)
    assert full.stop == 20
    # pick α so that step 1 holds and some later step fails
    alpha = 1.01 / (4 * sigma[4])
    sel = sift.select(q, x, 20, lam=0.1, alpha=alpha)
    steps = np.arange(1, 21)
    ok = sigma[1:] * steps * alpha <= 1
    expected = int(np.argmin(ok)) if not ok.all() else 20
    assert 0 < sel.stop == expected < 20
    assert np.array_equal(sel.chosen, full.indices[:expected])
    assert np.array_equal(sel.indices, full.indices)  # stopping never changes the picks
    assert sift.select(q, x, 20, lam=0.1, alpha=10.0 / sigma[1]).stop == 0  # first pick violates
    assert sift.select(q, x, 20, lam=0.1, alpha=1e-9).stop == 20
    # σ = 1, .5, .45, .1: with α = 2, n·σ_n·α = 1.0 (ok), 1.8 (violates), 0.6 (ok again): truncated at 1
    assert select_module.stop_index(np.array([1.0, 0.25, 0.2025, 0.01]), alpha=2.0) == 1


# ----------------------------------------------------------------------------------------------
# Batches and tensors


@pytest.mark.parametrize("method", SELECTING)
def test_batch_equals_one_by_one(method):
    rng = np.random.default_rng(30)
    sizes, rows = [40, 25, 40, 33], [1, 3, 2, 1]
    xs = [rng.standard_normal((k, 10)).astype(np.float32) for k in sizes]
    xs[1][5] = xs[1][2]  # a planted duplicate
    qs = [(x[:2].mean(0) + 0.5 * rng.standard_normal((m, 10))).astype(np.float32) for x, m in zip(xs, rows)]
    batch = sift.select_batch(qs, xs, 12, method=method, lam=0.2, alpha=0.3, seed=[1, 2, 3, 4])
    for p, sel in enumerate(batch):
        one = sift.select(qs[p], xs[p], 12, method=method, lam=0.2, alpha=0.3, seed=p + 1)
        assert sel.indices.tolist() == one.indices.tolist()
        np.testing.assert_allclose(sel.variances, one.variances, rtol=1e-10)
        assert sel.stop == one.stop


@pytest.mark.parametrize("group, small_bytes", [(3, 2**30), (64, 0)])
def test_batch_grouping_does_not_change_picks(monkeypatch, group, small_bytes):
    # groups of 3 prompts (several groups, the last one short), or every prompt on its own
    monkeypatch.setattr(select_module, "GROUP", group)
    monkeypatch.setattr(select_module, "SMALL_SET_BYTES", small_bytes)
    rng = np.random.default_rng(34)
    xs = [rng.standard_normal((k, 8)) for k in (30, 50, 20, 50, 41, 9, 50)]
    qs = [rng.standard_normal(8) for _ in xs]
    for sel, q, x in zip(sift.select_batch(qs, xs, 20, lam=0.05), qs, xs):
        assert sel.indices.tolist() == brute_force_sift(q, x, 20, 0.05)


def test_batch_accepts_stacked_arrays_and_tensors():
    rng = np.random.default_rng(31)
    x = rng.standard_normal((5, 60, 16)).astype(np.float32)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    from_arrays = sift.select_batch(q, x, 15, lam=0.1)
    from_tensors = sift.select_batch(torch.from_numpy(q), torch.from_numpy(x), 15, lam=0.1)
    for p in range(5):
        one = sift.select(q[p], x[p], 15, lam=0.1)
        assert from_arrays[p].indices.tolist() == one.indices.tolist()
        assert from_tensors[p].indices.tolist() == one.indices.tolist()


def test_torch_inputs_match_numpy():
    rng = np.random.default_rng(32)
    x = rng.standard_normal((50, 12)).astype(np.float32)
    q = rng.standard_normal((2, 12)).astype(np.float32)
    a = sift.select(q, x, 10)
    b = sift.select(torch.from_numpy(q), torch.from_numpy(x), 10)
    assert isinstance(b.indices, np.ndarray) and b.indices.tolist() == a.indices.tolist()
    np.testing.assert_allclose(b.variances, a.variances)
    assert sift.posterior_variance(torch.from_numpy(q), torch.from_numpy(x), b.indices, 0.1) == \
        pytest.approx(a.variances[-1], rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_match_cpu():
    rng = np.random.default_rng(33)
    x = rng.standard_normal((3, 400, 64)).astype(np.float32)
    q = rng.standard_normal((3, 2, 64)).astype(np.float32)
    cpu = sift.select_batch(q, x, 30)
    gpu = sift.select_batch(torch.from_numpy(q).cuda(), torch.from_numpy(x).cuda(), 30)
    for c, g in zip(cpu, gpu):
        assert c.indices.tolist() == g.indices.tolist()
        np.testing.assert_allclose(c.variances, g.variances, rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument


GOOD_Q = np.ones(4)
GOOD_X = np.eye(4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(query=np.array([1.0, np.nan, 0, 0])), "query"),
        (dict(query=np.array([1.0, np.inf, 0, 0])), "query"),
        (dict(candidates=np.array([[1.0, 0, 0, np.inf]] + [[0.0] * 4] * 3)), "candidates"),
        (dict(candidates=np.array([[np.nan] * 4])), "candidates"),
        (dict(query=np.ones(5)), "query has dimension d=5"),
        (dict(query=np.ones((3, 5))), "query has dimension d=5"),
        (dict(query=np.ones((2, 2, 4))), "query"),
        (dict(candidates=np.zeros((0, 4))), "candidates is empty"),
        (dict(candidates=np.ones(4)), "candidates"),
        (dict(n=0), "n must"),
        (dict(n=2.5), "n must"),
        (dict(lam=0.0), "lam"),
        (dict(lam=-1.0), "lam"),
        (dict(lam=float("nan")), "lam"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=-2.0), "alpha"),
        (dict(method="knn"), "method"),
        (dict(dedup_threshold=1.5), "dedup_threshold"),
        (dict(query=np.array(["a", "b", "c", "d"])), "query"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(query=GOOD_Q, candidates=GOOD_X, n=2) | kwargs
    with pytest.raises(ValueError, match=match):
        sift.select(**args)


def test_bad_batch_and_posterior_variance_input():
    with pytest.raises(ValueError, match="queries has 2 prompts but candidates has 3"):
        sift.select_batch([GOOD_Q] * 2, [GOOD_X] * 3, 2)
    with pytest.raises(ValueError, match=r"candidates\[1\] contains NaN"):
        sift.select_batch([GOOD_Q] * 2, [GOOD_X, GOOD_X * np.nan], 2)
    with pytest.raises(ValueError, match=r"queries\[0\] has dimension d=3"):
        sift.select_batch([np.ones(3)], [GOOD_X], 2)
    with pytest.raises(ValueError, match="seed"):
        sift.select_batch([GOOD_Q] * 2, [GOOD_X] * 2, 2, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="lam"):
        sift.posterior_variance(GOOD_Q, GOOD_X, [0], lam=0)
    with pytest.raises(ValueError, match="indices"):
        sift.posterior_variance(GOOD_Q, GOOD_X, [4], lam=0.1)


def test_no_warning_for_valid_sift_calls():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sift.select(GOOD_Q, GOOD_X, 10)  # n > K is fine for SIFT


@pytest.mark.parametrize("m", [1, 3])
def test_both_greedy_loops_pick_the_same_on_one_prompt(m):
    """sift/methods/greedy.py keeps a single-prompt loop beside the batched one (measured faster): on one
    prompt both must give the same picks and drops, far past the column cache's first allocation."""
    from sift.methods.greedy import condition_greedy, condition_greedy_one
    from sift.methods.kernel import Kernel

    rng = np.random.default_rng(30 + m)
    x = rng.standard_normal((400, 16))
    q = rng.standard_normal((m, 16))
    kernel = Kernel([torch.from_numpy(q)], [torch.from_numpy(x)])
    for directed in (True, False):
        one, drops_one = condition_greedy_one(kernel, 120, 0.01, directed)
        batched, drops_batched = condition_greedy(kernel, 120, 0.01, directed)
        assert np.array_equal(one, batched[0])
        np.testing.assert_allclose(drops_one, drops_batched[0], rtol=1e-9, atol=1e-12)
