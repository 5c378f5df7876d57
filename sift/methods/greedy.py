"""Exact greedy conditioning on the surrogate kernel: the engine of SIFT and uncertainty sampling.

After t picks s_0..s_{t-1} the kernel conditioned on them is (rank-one updates)

    k_{t+1}(a, b) = k_t(a, b) − k_t(a, s_t) k_t(s_t, b) / (k_t(s_t, s_t) + λ′),

kept implicitly through the factors U_τ(x) = k_τ(x, s_τ)/sqrt(k_τ(s_τ, s_τ) + λ′), so that
k_t(x, s) = k(x, s) − Σ_{τ<t} U_τ(x) U_τ(s): one base column k(·, s) per pick is all we need
(``ColumnCache``), and the K×K kernel is never formed. State after t picks: C = k_t(x_j, x*) (K, m)
and D = k_t(x_j, x_j) (K,). Each step scores the candidates, takes the tolerance-aware argmax,
conditions C and D on it, and records the variance drop σ²_t − σ²_{t+1} = ||k_t(x*, s)||² /
(k_t(s, s) + λ′). Cost per step O(K·(t + m)), plus amortised O(K·d) for the base column; exact
greedy over N picks is O(N·K·(d + N)).

Two loops with the same arithmetic: ``condition_greedy`` for P prompts in lockstep (batched
selection of small candidate sets) and ``condition_greedy_one`` for one prompt (every large set, and
any single prompt). The second is measured 1.15–1.8× faster on one prompt at K = 200..1,000
(``benchmarks/select_before_after.py``), and it chooses its columns by lookahead: at large K a product
X @ [B columns] costs one pass over X (K·d float64 from memory) plus the arithmetic, so the count of
products matters more than the count of columns. From K = 2,000, on a cache miss it simulates the
next picks on a pool of the best-scoring candidates (``lookahead``) and computes all foreseen columns
in one product: ~1.1–1.4 columns per distinct pick in ~1 product per 6–8 picks, against ~3 columns per
distinct pick for speculative blocks of the best-scoring candidates, which it keeps below K = 2,000
where products are cheap (``benchmarks/select.py``). Tests check both loops pick the same.
"""

from __future__ import annotations

import math

import numpy as np

from sift.methods.kernel import BLOCK, TIE_ATOL, TIE_RTOL, ColumnCache, Kernel, tie_argmax

# The lookahead (``lookahead``): a pool of the best-scoring K/POOL_SHARE candidates, at least
# POOL_MIN and at most POOL_MAX, simulated for up to LOOKAHEAD steps. Measured (benchmarks/select.py,
# K = 200..20,000, d = 384..1,024, one thread): larger pools or horizons foresee few more picks
# (SIFT's later picks are often far down the current ranking, so some misses remain whatever the
# pool) and cost more to simulate; smaller ones miss more often.
POOL_SHARE, POOL_MIN, POOL_MAX = 8, 64, 512
LOOKAHEAD = 12
# Below this K a product of X with a few more columns costs less than simulating picks (a dozen
# Python-level steps per lookahead), so the lookahead only speculates: the pick and the BLOCK − 1
# best-scoring uncached candidates. Measured, greedy alone, one thread, median of 90 runs: K = 1,000
# speculating 4.7 ms (d = 384) and 8.7 ms (d = 1,024) against simulating 5.6 and 9.8 ms; K = 2,000,
# d = 384: 9.3 against 8.5 ms; K = 5,000, d = 384: 27.3 against 22.3 ms.
SIMULATE_FROM_K = 2000


def condition_greedy(kernel: Kernel, n: int, lam: float, directed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Picks (P, n) of the greedy and the variance drop of each pick (P, n), all prompts in lockstep.

    ``directed``: score_j = Σ_rows k_t(x*, x_j)² / (k_t(x_j, x_j) + λ′) (SIFT); else score_j =
    k_t(x_j, x_j) (uncertainty sampling). Padded candidates are never picked.
    """
    P, K = kernel.valid.shape
    rows = np.arange(P)
    C = kernel.cross.copy()  # (P, K, M)
    D = kernel.diag.copy()  # (P, K)
    U = np.zeros((P, n, K))  # row τ = conditioning factor of pick τ
    picks = np.zeros((P, n), dtype=np.int64)
    drops = np.zeros((P, n))
    scale = kernel.prior if directed else D.max(axis=1)
    invalid = ~kernel.valid if not kernel.valid.all() else None
    single_row = C.shape[2] == 1
    cache = ColumnCache(kernel, n)
    score = np.empty((P, K))
    for t in range(n):
        if directed:  # gain_j = Σ_rows C_j² / (D_j + λ′)
            if single_row:
                np.square(C[:, :, 0], out=score)
            else:
                np.einsum("pkm,pkm->pk", C, C, out=score)
            score /= D + lam
        else:
            score[:] = D
        if invalid is not None:
            score[invalid] = -np.inf
        s = tie_argmax(score, scale)
        column = cache.column(s, score, t)  # (P, K): k(x_j, s), a fresh copy
        if t:  # condition the base column on the earlier picks
            column -= np.matmul(U[rows, :t, s][:, None, :], U[:, :t])[:, 0]
        inv_sd = 1.0 / np.sqrt(D[rows, s] + lam)  # 1/sqrt(k_t(s, s) + λ′)
        column *= inv_sd[:, None]
        U[:, t] = column
        v = C[rows, s] * inv_sd[:, None]  # (P, M), read before C changes
        drops[:, t] = np.einsum("pm,pm->p", v, v)
        if single_row:
            C[:, :, 0] -= column * v
        else:
            C -= column[:, :, None] * v[:, None, :]
        D -= np.square(column, out=column)  # column is no longer needed after this
        picks[:, t] = s
    return picks, drops


class Conditioned:
    """Greedy state of one prompt after t picks, over a set of candidates (all K, or a lookahead pool).

    c or C = k_t(x_j, x*) (one value per candidate for one query row, else one row of m), d_lam =
    k_t(x_j, x_j) + λ′ (kept shifted: it is only ever used so), U[:t] the conditioning factors of the t
    picks so far (one row per pick, one column per candidate).
    ``best`` scores and takes the tolerance-aware argmax; ``condition`` conditions on a pick given its
    base column k(·, s) and returns the variance drop. Both loops of ``condition_greedy_one`` (the real
    one and the lookahead's) run this same arithmetic.
    """

    def __init__(self, cross: np.ndarray, d_lam: np.ndarray, U: np.ndarray, t: int, lam: float, directed: bool,
                 scale: float):
        self.c = cross[:, 0].copy() if cross.shape[1] == 1 else None  # one query row: a flat vector
        self.C = None if self.c is not None else cross.copy()
        self.d_lam, self.U, self.t, self.lam, self.directed, self.scale = d_lam, U, t, lam, directed, scale
        # scratch vectors: at large K a fresh temporary per operation costs a page-faulting allocation
        self.tmp = np.empty(len(d_lam))
        self.ties = np.empty(len(d_lam), dtype=bool)

    def best(self, score: np.ndarray) -> int:
        """Score every candidate into ``score`` and return the lowest index within the tie tolerance."""
        if not self.directed:
            np.subtract(self.d_lam, self.lam, out=score)
        else:
            if self.c is not None:
                np.multiply(self.c, self.c, out=score)
            else:
                np.einsum("km,km->k", self.C, self.C, out=score)
            score /= self.d_lam
        best = score.max()
        np.greater_equal(score, best - (TIE_RTOL * abs(best) + TIE_ATOL * self.scale), out=self.ties)
        return int(self.ties.argmax())

    def condition(self, s: int, base: np.ndarray) -> float:
        """Condition on pick ``s`` with base column ``base`` = k(·, x_s); returns σ²_t − σ²_{t+1}."""
        t, U, tmp = self.t, self.U, self.tmp
        column = U[t]
        if t:
            np.matmul(U[:t, s], U[:t], out=column)
            np.subtract(base, column, out=column)
        else:
            column[:] = base
        inv_sd = 1.0 / math.sqrt(self.d_lam[s])
        column *= inv_sd
        if self.c is not None:
            v = self.c[s] * inv_sd
            drop = v * v
            self.c -= np.multiply(column, v, out=tmp)
        else:
            v = self.C[s] * inv_sd
            drop = v @ v
            self.C -= np.outer(column, v)
        self.d_lam -= np.multiply(column, column, out=tmp)
        self.t = t + 1
        return float(drop)

    def restrict(self, pool: np.ndarray, steps: int) -> "Conditioned":
        """A copy of this state over the candidates ``pool`` (sorted), with room for ``steps`` more picks."""
        U = np.empty((self.t + steps, len(pool)))
        U[: self.t] = self.U[: self.t, pool]
        cross = self.c[pool, None] if self.c is not None else self.C[pool]
        return Conditioned(cross, self.d_lam[pool], U, self.t, self.lam, self.directed, self.scale)


def condition_greedy_one(kernel: Kernel, n: int, lam: float, directed: bool) -> tuple[np.ndarray, np.ndarray]:
    """``condition_greedy`` for a kernel of one prompt: picks (n,) and drops (n,).

    A pick without a cached base column triggers ``lookahead``, and the columns of the picks it
    foresees are computed in one block with it.
    """
    K = kernel.valid.shape[1]
    scale = float(kernel.prior[0]) if directed else float(kernel.diag[0].max())
    state = Conditioned(kernel.cross[0], kernel.diag[0] + lam, np.empty((n, K)), 0, lam, directed, scale)
    picks = np.empty(n, dtype=np.int64)
    drops = np.empty(n)
    cache = ColumnCache(kernel, n)
    slot = cache.slot[0]
    score = np.empty(K)
    for t in range(n):
        s = state.best(score)
        if slot[s] < 0:
            cache.fill_one(lookahead(kernel, cache, state, s, score, n - t))
        drops[t] = state.condition(s, cache.cols[0, slot[s]])
        picks[t] = s
    return picks, drops


def lookahead(kernel: Kernel, cache: ColumnCache, state: Conditioned, s: int, score: np.ndarray,
              steps: int) -> np.ndarray:
    """The candidates whose base columns to compute now: ``s`` (the current pick) and the next picks
    foreseen by the same greedy restricted to a pool of the best-scoring candidates.

    Within the pool the conditioning is exact (its base columns are products over the pool only,
    O(pool · d) per step instead of O(K · d)), so the foreseen picks are the real ones for as long
    as the real picks stay inside the pool; when one leaves it, the real loop misses the cache and
    looks ahead again from there. The forecast only decides which exact columns are computed early;
    it never changes a pick.
    """
    K = len(score)
    slot = cache.slot[0]
    if steps == 1:  # the last pick: nothing to foresee
        return np.array([s], dtype=np.int64)
    if K < SIMULATE_FROM_K:  # products are cheap: speculate instead of simulating
        width = min(BLOCK, steps, K - int(cache.used[0]))
        ranked = np.where(slot < 0, score, -np.inf)
        ranked[s] = np.inf
        return np.argpartition(ranked, K - width)[K - width:]
    steps = min(steps, LOOKAHEAD)
    size = min(K, max(POOL_MIN, min(POOL_MAX, K // POOL_SHARE)))
    if size < K:
        ranked = score.copy()
        ranked[s] = np.inf
        pool = np.sort(np.argpartition(ranked, K - size)[K - size:])
    else:
        pool = np.arange(K)
    sub = state.restrict(pool, steps)
    xa = kernel.rows(0, pool)  # (pool, d) float64
    wanted, seen = [s], {s}
    i = int(np.searchsorted(pool, s))
    sub_score = np.empty(size)
    for step in range(steps):
        if step:
            i = sub.best(sub_score)
        b = int(pool[i])
        if slot[b] >= 0:
            base = cache.cols[0, slot[b], pool]
        else:
            base = xa @ xa[i]
            if b not in seen:
                seen.add(b)
                wanted.append(b)
        if step + 1 < steps:
            sub.condition(i, base)
    return np.array(wanted, dtype=np.int64)


def run_greedy(kernel: Kernel, n: int, lam: float, directed: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """The greedy for every prompt of ``kernel``: (picks per prompt, drops (P, n))."""
    if kernel.prompts == 1:
        picks, drops = condition_greedy_one(kernel, n, lam, directed)
        return [picks], drops[None]
    picks, drops = condition_greedy(kernel, n, lam, directed)
    return list(picks), drops
