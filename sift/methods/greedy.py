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
selection) and ``condition_greedy_one`` on 1-D arrays for one prompt. The second exists because it
is measured 1.15–1.8× faster on one prompt (K=200..1000, d=384..1024, one thread;
``benchmarks/select_before_after.py``): at K=1000 a step is ~15 vector operations, so per-call overhead
is a real share of the time. Tests check both pick the same.
"""

from __future__ import annotations

import math

import numpy as np

from sift.methods.kernel import TIE_ATOL, TIE_RTOL, ColumnCache, Kernel, tie_argmax


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


def condition_greedy_one(kernel: Kernel, n: int, lam: float, directed: bool) -> tuple[np.ndarray, np.ndarray]:
    """``condition_greedy`` for a kernel of one prompt: picks (n,) and drops (n,)."""
    K = kernel.valid.shape[1]
    C = kernel.cross[0]  # (K, M)
    c = C[:, 0].copy() if C.shape[1] == 1 else None  # one query row: keep a flat vector
    C = C.copy()
    d_lam = kernel.diag[0] + lam  # k_t(x, x) + λ′, kept shifted: it is only ever used so
    U = np.empty((n, K))  # row τ = conditioning factor of pick τ
    picks = np.empty(n, dtype=np.int64)
    drops = np.empty(n)
    scale = float(kernel.prior[0]) if directed else float(kernel.diag[0].max())
    cache = ColumnCache(kernel, n)
    score = np.empty(K)
    for t in range(n):
        if directed:
            if c is not None:
                np.multiply(c, c, out=score)
            else:
                np.einsum("km,km->k", C, C, out=score)
            score /= d_lam
        else:
            np.subtract(d_lam, lam, out=score)
        best = score.max()
        s = int(np.argmax(score >= best - (TIE_RTOL * abs(best) + TIE_ATOL * scale)))
        base = cache.column_one(s, score, t)
        column = U[t]
        if t:
            np.subtract(base, U[:t, s] @ U[:t], out=column)
        else:
            column[:] = base
        inv_sd = 1.0 / math.sqrt(d_lam[s])
        column *= inv_sd
        if c is not None:
            v = c[s] * inv_sd
            drops[t] = v * v
            c -= v * column
        else:
            v = C[s] * inv_sd
            drops[t] = v @ v
            C -= np.outer(column, v)
        d_lam -= column * column
        picks[t] = s
    return picks, drops


def run_greedy(kernel: Kernel, n: int, lam: float, directed: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """The greedy for every prompt of ``kernel``: (picks per prompt, drops (P, n))."""
    if kernel.prompts == 1:
        picks, drops = condition_greedy_one(kernel, n, lam, directed)
        return [picks], drops[None]
    picks, drops = condition_greedy(kernel, n, lam, directed)
    return list(picks), drops
