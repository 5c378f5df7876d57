"""Choosing a prompt's training data: exact SIFT and the baselines it is compared against.

The surrogate model (Hübotter et al., arXiv 2410.08020): a linear kernel k(x, x') = <φ(x), φ(x')> on
embeddings, observation noise λ′. After fine-tuning on the multiset X = (x_1..x_n) the posterior
variance of the prompt x* (summed over its m embedding rows) is

    σ²_X(x*) = Σ_rows [ k(x*, x*) − k_X(x*)ᵀ (K_XX + λ′ I)⁻¹ k_X(x*) ].

SIFT picks greedily x_{n+1} = argmin_x σ²_{X_n ∪ {x}}(x*) over all K candidates, already picked ones
included. In incremental form the gain of x is Σ_rows k_n(x*, x)² / (k_n(x, x) + λ′), where k_n is the
kernel conditioned on the first n picks; conditioning on a pick s is the rank-one update

    k_{n+1}(a, b) = k_n(a, b) − k_n(a, s) k_n(s, b) / (k_n(s, s) + λ′).

Only the kernel columns of the picks are ever needed, so exact greedy costs O(N·K·(d + N)) and never
forms the K×K kernel. Those columns are computed in blocks (one matrix product for several likely
picks instead of one matrix-vector product per pick): the block holds the pick plus the candidates
with the largest current gains, the ones most likely to be picked next. Speculation only decides
which exact columns are computed early; it never changes a pick.

Cost: exactness needs k(x_j, s) for every candidate j and every distinct pick s, i.e. at least
K·d multiply-adds per distinct pick. A block of up to 16 columns costs about one pass over the K×d
float64 candidates, but the picks cannot be foreseen well (SIFT's later picks come from anywhere in
the initial ranking, not just its top), so about three columns are computed per distinct pick.
``benchmarks/select.py`` prints both, and the time of that floor measured on the machine.

Numerics: inner products and all updates are float64 (float32 embeddings are exact in float64).
Exact ties are real here: duplicate candidates (and x versus −x) have identical gains, but rounding
can make the computed gains differ in the last bits. So the greedy argmax (SIFT, US) is
tolerance-aware: among candidates whose score is within ``TIE_RTOL``·best + ``TIE_ATOL``·scale of the
best, the lowest index wins. The tolerance is far above float64 rounding (~1e-15 relative) and far
below any real gap. Nearest neighbours give byte-identical rows one shared score instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

METHODS = ("sift", "nn", "nn-f", "us", "random")
DEFAULT_DEDUP_THRESHOLD = 0.99  # nn-f: cosine above this counts as a near-duplicate of a kept pick
TIE_RTOL = 1e-9  # scores within this fraction of the best one tie (then the lowest index wins)
TIE_ATOL = 1e-15  # ... or within this fraction of the prior variance (all-zero gains tie exactly)

# select_batch on CPU: a candidate set up to this size (float64) stays in a core's cache, the greedy
# is bound by per-step overhead and prompts are vectorised in groups of up to GROUP; a larger set
# is bound by streaming X from memory, and interleaving prompts would only evict each other's X,
# so those run one at a time (measured: benchmarks/select.py).
SMALL_SET_BYTES = 2 * 2**20
GROUP = 64
# Speculative kernel-column blocks: X @ [16 columns] costs less than two matrix-vector products at
# K=1000, d=1024 (streaming X dominates), and the next few picks are usually among the 16
# best-scoring candidates, so a miss computes this many columns at once.
BLOCK = 16  # columns per block: the pick + the (BLOCK - 1) best-scoring candidates without a column


@dataclass(frozen=True, eq=False)  # eq would compare numpy arrays elementwise: ambiguous
class Selection:
    """What one selection chose for one prompt.

    indices: int64 (n,), rows of ``candidates`` in pick order (SIFT and US may repeat a row).
    variances: float64 (n+1,), σ²_t(x*) after the first t picks, t = 0..n, summed over the query
        rows, with the same λ′ whatever the method.
    stop: number of leading picks to train on (``len(indices)`` unless adaptive stopping cut it).
    """

    indices: np.ndarray
    variances: np.ndarray
    stop: int
    method: str
    lam: float
    alpha: float | None = None

    @property
    def sigmas(self) -> np.ndarray:
        """σ_t = sqrt(σ²_t) for t = 0..n (the uncertainties adaptive stopping compares)."""
        return np.sqrt(self.variances)

    @property
    def chosen(self) -> np.ndarray:
        """The picks to train on: ``indices[:stop]``."""
        return self.indices[: self.stop]


# ----------------------------------------------------------------------------------------------
# Public API


def select(
    query: Any,
    candidates: Any,
    n: int,
    method: str = "sift",
    lam: float = 0.1,
    alpha: float | None = None,
    seed: int = 0,
    dedup_threshold: float = DEFAULT_DEDUP_THRESHOLD,
) -> Selection:
    """Choose ``n`` training rows of ``candidates`` (K, d) for a prompt ``query`` ((d,) or (m, d)).

    Methods (``METHODS``):
    - ``"sift"``: exact greedy SIFT(λ′=lam): x_{t+1} = argmax_x Σ_rows k_t(x*, x)² / (k_t(x, x) + λ′),
      i.e. the pick that minimises σ²_{X_t ∪ {x}}(x*); picked rows stay eligible, so n > K is fine.
    - ``"nn"``: the n largest Σ_rows <x, x*_row> (ties: lowest index).
    - ``"nn-f"``: nearest neighbours in the same order, skipping exact duplicates of a kept pick and
      near-duplicates (cosine > ``dedup_threshold``, default 0.99) of any kept pick.
    - ``"us"``: uncertainty sampling, undirected: x_{t+1} = argmax_x k_t(x, x) (may repeat).
    - ``"random"``: a seeded sample without replacement.
    nn, nn-f and random cannot give more than K (for nn-f: non-duplicate) rows; they return fewer
    with a warning.

    ``variances`` is computed from the picks for every method (see ``Selection``). Adaptive stopping
    (``alpha``): with σ_t = sqrt(variances[t]), ``stop`` is the largest t such that
    σ_j ≤ 1/(α·j) for every j = 1..t, i.e. selection is truncated at the first violation; when the
    very first pick already violates it, ``stop`` = 0 (train on nothing: keep the base model).
    activeft instead drops the violating points and keeps later ones.
    Numpy arrays and torch tensors (CPU or GPU) are accepted; the heavy products run on the
    input's device, in float64.
    """
    _check_options(n, method, lam, alpha, dedup_threshold)
    (q,) = _queries_list([query], "query")
    (x,) = _candidates_list([candidates], "candidates")
    _check_pair(q, x, "query", "candidates")
    return _select_many([q], [x], n, method, float(lam), alpha, [seed], dedup_threshold)[0]


def select_batch(
    queries: Any,
    candidates: Any,
    n: int,
    method: str = "sift",
    lam: float = 0.1,
    alpha: float | None = None,
    seed: int | Sequence[int] = 0,
    dedup_threshold: float = DEFAULT_DEDUP_THRESHOLD,
) -> list[Selection]:
    """``select`` for P prompts at once, vectorised across prompts; same picks as P ``select`` calls.

    queries: (P, d), (P, m, d), or a list of (d,) / (m_i, d). candidates: (P, K, d) or a list of
    (K_i, d) (sizes may differ: shorter sets are padded and the padding is never picked).
    seed: one int for every prompt (as P calls with that seed would use) or one per prompt.
    """
    _check_options(n, method, lam, alpha, dedup_threshold)
    qs = _queries_list(_split_first(queries, "queries", (2, 3)), "queries")
    xs = _candidates_list(_split_first(candidates, "candidates", (3,)), "candidates")
    if len(qs) != len(xs):
        raise ValueError(f"queries has {len(qs)} prompts but candidates has {len(xs)} candidate sets")
    if len(qs) == 0:
        raise ValueError("queries: no prompts given")
    for p, (q, x) in enumerate(zip(qs, xs)):
        _check_pair(q, x, f"queries[{p}]", f"candidates[{p}]")
    seeds = [int(seed)] * len(qs) if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if len(seeds) != len(qs):
        raise ValueError(f"seed: got {len(seeds)} seeds for {len(qs)} prompts")
    return _select_many(qs, xs, n, method, float(lam), alpha, seeds, dedup_threshold)


def posterior_variance(query: Any, candidates: Any, indices: Any, lam: float) -> float:
    """The closed form σ²_X(x*) = Σ_rows [k(x*,x*) − k_X(x*)ᵀ (K_XX + λ′ I)⁻¹ k_X(x*)], O(n³).

    X = candidates[indices] as a multiset (repeats count again); float64 throughout. This is the
    reference the incremental selection is tested against.
    """
    if not (isinstance(lam, (int, float, np.floating)) and math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0, got {lam!r}")
    (q,) = _queries_list([query], "query")
    (x,) = _candidates_list([candidates], "candidates")
    _check_pair(q, x, "query", "candidates")
    q64 = q.to("cpu", torch.float64).numpy()
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= x.shape[0]):
        raise ValueError(f"indices must lie in [0, {x.shape[0]}), got {idx.min()}..{idx.max()}")
    prior = float(np.einsum("md,md->", q64, q64))
    if idx.size == 0:
        return prior
    picked = x[torch.as_tensor(idx, device=x.device)].to("cpu", torch.float64).numpy()
    kernel = picked @ picked.T + lam * np.eye(len(idx))
    cross = picked @ q64.T  # (n, m): k_X(x*) for each query row
    return prior - float(np.sum(cross * np.linalg.solve(kernel, cross)))


def stop_index(variances: np.ndarray, alpha: float | None) -> int:
    """Adaptive stopping: the largest t with σ_j ≤ 1/(α·j) for all j = 1..t (0 if j = 1 fails).

    Without ``alpha`` every pick is used: len(variances) − 1.
    """
    n = len(variances) - 1
    if alpha is None:
        return n
    sigma = np.sqrt(np.maximum(np.asarray(variances[1:], dtype=np.float64), 0.0))
    steps = np.arange(1, n + 1)
    violated = np.nonzero(sigma * steps * alpha > 1.0)[0]
    return int(violated[0]) if violated.size else n


# ----------------------------------------------------------------------------------------------
# Input checking: every complaint names the argument.


def _check_options(n: Any, method: Any, lam: Any, alpha: Any, dedup_threshold: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not (isinstance(lam, (int, float, np.floating)) and math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0, got {lam!r}")
    if alpha is not None and not (
        isinstance(alpha, (int, float, np.floating)) and math.isfinite(alpha) and alpha > 0
    ):
        raise ValueError(f"alpha must be None or a finite number > 0, got {alpha!r}")
    if not (isinstance(dedup_threshold, (int, float, np.floating)) and -1 <= dedup_threshold <= 1):
        raise ValueError(f"dedup_threshold must be a cosine in [-1, 1], got {dedup_threshold!r}")


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    """A floating tensor on the value's own device (numpy and lists → CPU), without copying if possible."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            arr = np.asarray(value)
        except Exception as err:  # noqa: BLE001 - any conversion failure is the caller's bad input
            raise ValueError(f"{name} must be an array or tensor: {err}") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr)) if arr.flags.writeable else torch.tensor(arr)
    if t.is_complex():
        raise ValueError(f"{name} must be real, got {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def _split_first(value: Any, name: str, array_ndims: tuple[int, ...]) -> list[Any]:
    """A batch given as one array → list of its first-axis slices; a list stays a list."""
    if isinstance(value, (list, tuple)):
        return list(value)
    t = _as_tensor(value, name)
    if t.dim() not in array_ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, array_ndims))} dimensions "
                         f"(or be a list), got shape {tuple(t.shape)}")
    return list(t.unbind(0))


def _queries_list(values: list[Any], name: str) -> list[torch.Tensor]:
    out = []
    for p, value in enumerate(values):
        label = name if len(values) == 1 and name == "query" else f"{name}[{p}]"
        t = _as_tensor(value, label)
        if t.dim() == 1:
            t = t.unsqueeze(0)
        if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
            raise ValueError(f"{label} must be (d,) or (m, d) with m, d >= 1, got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{label} contains NaN or inf")
        out.append(t)
    return out


def _candidates_list(values: list[Any], name: str) -> list[torch.Tensor]:
    out = []
    for p, value in enumerate(values):
        label = name if len(values) == 1 and name == "candidates" else f"{name}[{p}]"
        t = _as_tensor(value, label)
        if t.dim() != 2:
            raise ValueError(f"{label} must be (K, d), got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"{label} is empty: need at least one candidate")
        if t.shape[1] == 0:
            raise ValueError(f"{label} has zero-length rows (d = 0)")
        out.append(t)
    return out


def _check_pair(q: torch.Tensor, x: torch.Tensor, q_name: str, x_name: str) -> None:
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"{q_name} has dimension d={q.shape[1]} but {x_name} has d={x.shape[1]}")


# ----------------------------------------------------------------------------------------------
# Shared machinery


class _Kernel:
    """Base kernel k(x, x') = <x, x'> of P padded candidate sets, float64 on the inputs' device.

    Finiteness of the candidates is checked through the row norms (NaN or inf in a row makes its
    squared norm non-finite), which costs O(K) instead of another pass over K·d values.
    """

    def __init__(self, queries: list[torch.Tensor], candidates: list[torch.Tensor]):
        device = candidates[0].device
        self.sizes = np.array([x.shape[0] for x in candidates])
        self.m_sizes = np.array([q.shape[0] for q in queries])
        P, K, M, d = len(candidates), int(self.sizes.max()), int(self.m_sizes.max()), candidates[0].shape[1]
        if P == 1:
            self.x = candidates[0].to(device, torch.float64).contiguous().unsqueeze(0)
            self.q = queries[0].to(device, torch.float64).unsqueeze(0)
        else:  # zero padding: a zero query row adds nothing, padded candidates are masked out
            self.x = torch.empty((P, K, d), dtype=torch.float64, device=device)
            self.q = torch.zeros((P, M, d), dtype=torch.float64, device=device)
            for p, (q, x) in enumerate(zip(queries, candidates)):
                self.x[p, : x.shape[0]] = x.to(device, torch.float64)
                self.x[p, x.shape[0] :] = 0.0
                self.q[p, : q.shape[0]] = q.to(device, torch.float64)
        self.valid = np.arange(K)[None, :] < self.sizes[:, None]  # (P, K)
        # k(x, x) in one pass over X (torch's einsum here becomes K tiny matrix products: slow)
        if device.type == "cpu":
            norms = np.einsum("pkd,pkd->pk", self.x.numpy(), self.x.numpy())
        else:
            norms = torch.linalg.vecdot(self.x, self.x).cpu().numpy()
        bad = ~np.isfinite(norms)
        if bad.any():
            p = int(np.nonzero(bad.any(axis=1))[0][0])
            label = "candidates" if P == 1 else f"candidates[{p}]"
            raise ValueError(f"{label} contains NaN or inf (or values too large to square)")
        self.diag = norms
        self.cross = torch.bmm(self.x, self.q.transpose(1, 2)).cpu().numpy()  # (P, K, M): k(x, x*)
        self.prior = np.einsum("pmd,pmd->p", *(2 * [self.q.cpu().numpy()]))  # σ²_0 per prompt

    def columns(self, prompts: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """k(x_j, x_r) for all j, for each prompt p in ``prompts`` and r in its ``rows``: (len, B, K)."""
        # X_p @ rows.T (K, B) is the layout BLAS streams X_p through fastest; transposed on the way
        # out. One product per prompt: gathering the prompts' X for one batched product would copy
        # every X_p, which costs as much as the products.
        r = torch.as_tensor(rows, device=self.x.device)
        if len(prompts) == 1:  # the single-prompt loop: skip the stacking (it matters at small K)
            xp = self.x[int(prompts[0])]
            return (xp @ xp[r[0]].T).cpu().numpy().T[None]
        out = [self.x[p] @ self.x[p, r[i]].T for i, p in enumerate(prompts.tolist())]
        return torch.stack(out).cpu().numpy().transpose(0, 2, 1)

    def rows(self, p: int, indices: np.ndarray) -> np.ndarray:
        return self.x[p, torch.as_tensor(indices, device=self.x.device)].cpu().numpy()


def _tie_argmax(score: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per row: the lowest index whose score is within the tie tolerance of the row's best."""
    best = score.max(axis=1)
    tol = TIE_RTOL * np.abs(best) + TIE_ATOL * scale
    return np.argmax(score >= (best - tol)[:, None], axis=1)


def _variance_path(kernel: _Kernel, p: int, picks: np.ndarray, lam: float) -> np.ndarray:
    """σ²_t for t = 0..n along a pick sequence, by one Cholesky factorisation of K_XX + λ′I.

    Forward substitution with the Cholesky factor L is exactly sequential conditioning: row t of
    W = L⁻¹ k_X(x*) is k_{t}(x_t, x*)/sqrt(k_t(x_t, x_t) + λ′), so σ²_{t+1} = σ²_t − ||W_t||².
    """
    q = kernel.q[p, : kernel.m_sizes[p]].cpu().numpy()
    prior = float(kernel.prior[p])
    if len(picks) == 0:
        return np.array([prior])
    x = kernel.rows(p, picks)
    chol = np.linalg.cholesky(x @ x.T + lam * np.eye(len(picks)))
    w = np.linalg.solve(chol, x @ q.T)  # L⁻¹ k_X(x*): a triangular solve (LAPACK's is fine here)
    reduction = np.cumsum(np.einsum("nm,nm->n", w, w))
    return np.maximum(prior - np.concatenate([[0.0], reduction]), 0.0)


def _select_many(queries, candidates, n, method, lam, alpha, seeds, dedup_threshold) -> list[Selection]:
    """Select for each prompt, vectorised over groups of prompts (see ``SMALL_SET_BYTES``).

    On a GPU every prompt goes in one group.
    """
    if candidates[0].device.type != "cpu":
        group = len(candidates)
    else:
        largest = max(x.shape[0] for x in candidates) * candidates[0].shape[1] * 8
        group = GROUP if largest <= SMALL_SET_BYTES else 1
    out = []
    for start in range(0, len(candidates), group):
        part = slice(start, start + group)
        out += _select_group(queries[part], candidates[part], n, method, lam, alpha, seeds[part], dedup_threshold)
    return out


def _select_group(queries, candidates, n, method, lam, alpha, seeds, dedup_threshold) -> list[Selection]:
    kernel = _Kernel(queries, candidates)
    if method in ("sift", "us"):
        if len(candidates) == 1:  # the common case gets a loop without per-prompt indexing
            picks, drops = _greedy_single(kernel, n, lam, directed=(method == "sift"))
            picks, drops = [picks], [drops]
        else:
            picks, drops = _greedy(kernel, n, lam, directed=(method == "sift"))
    else:
        picks, drops = [], None
        for p in range(len(candidates)):
            size = int(kernel.sizes[p])
            if method == "random":
                if n > size:
                    warnings.warn(f"random: n={n} > K={size} candidates; returning {size}", stacklevel=4)
                rng = np.random.default_rng(seeds[p])
                picks.append(rng.choice(size, size=min(n, size), replace=False).astype(np.int64))
            else:
                picks.append(_nearest(kernel, p, n, method, dedup_threshold))
    out = []
    for p, idx in enumerate(picks):
        idx = np.asarray(idx, dtype=np.int64)
        if drops is None:
            variances = _variance_path(kernel, p, idx, lam)
        else:  # the greedy already has σ²_t − σ²_{t+1} = ||k_t(x*, s_t)||² / (k_t(s_t, s_t) + λ′)
            steps = np.concatenate([[0.0], np.cumsum(drops[p])])
            variances = np.maximum(float(kernel.prior[p]) - steps, 0.0)
        out.append(Selection(idx, variances, stop_index(variances, alpha), method, lam, alpha))
    return out


# ----------------------------------------------------------------------------------------------
# SIFT and uncertainty sampling: exact greedy with rank-one updates, all prompts in lockstep.


def _greedy(kernel: _Kernel, n: int, lam: float, directed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Picks (P, n) of greedy SIFT (``directed``) or uncertainty sampling, exact, and the variance
    drop σ²_t − σ²_{t+1} of each pick (P, n).

    State per prompt, after t picks: C = k_t(x_j, x*) (K, m), D = k_t(x_j, x_j) (K,), and the
    conditioning factors U[:, τ] = k_τ(x, s_τ)/sqrt(k_τ(s_τ, s_τ) + λ′), so that
    k_t(x, s) = k(x, s) − Σ_{τ<t} U_τ(x) U_τ(s): one base column k(·, s) per pick is all we need.
    Per step: O(K·(t + m)) here plus, amortised, O(K·d) for the base column.
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
    # Kernel-column cache: slot[p, j] = position of k(·, x_j) in cols[p], or -1.
    slot = np.full((P, K), -1, dtype=np.int64)
    # At most min(K, n·BLOCK) columns per prompt; zeros() is lazily committed, so the unused part
    # of this buffer costs no memory.
    cols = np.zeros((P, min(K, n * BLOCK), K))
    used = np.zeros(P, dtype=np.int64)
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
        s = _tie_argmax(score, scale)
        where = slot[rows, s]
        if (where < 0).any():
            width = min(K, BLOCK, n - t)
            cols, used = _fill_columns(kernel, np.nonzero(where < 0)[0], s, score, slot, cols, used, width)
            where = slot[rows, s]
        column = cols[rows, where]  # (P, K): k(x_j, s), a fresh copy
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


def _greedy_single(kernel: _Kernel, n: int, lam: float, directed: bool) -> tuple[np.ndarray, np.ndarray]:
    """``_greedy`` for one prompt, on 1-D arrays: the same arithmetic with fewer, cheaper numpy calls.

    (At K=1000 a step is ~15 vector operations, so per-call overhead is a real share of the time.)
    ``select_batch`` runs ``_greedy``; tests check that both give the same picks.
    """
    K = kernel.valid.shape[1]
    C = kernel.cross[0]  # (K, M)
    c = C[:, 0].copy() if C.shape[1] == 1 else None  # one query row: keep a flat vector
    C = C.copy()
    d_lam = kernel.diag[0] + lam  # k_t(x, x) + λ′, kept shifted: it is only ever used so
    U = np.empty((n, K))  # row τ = conditioning factor of pick τ
    picks = np.empty(n, dtype=np.int64)
    drops = np.empty(n)
    scale = float(kernel.prior[0]) if directed else float(kernel.diag[0].max())
    slot = np.full(K, -1, dtype=np.int64)  # row of k(·, x_j) in cols, or -1
    cols = np.empty((min(K, 4 * BLOCK), K))
    used = 0
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
        if slot[s] < 0:  # the pick + the best-scoring candidates without a column
            width = min(BLOCK, n - t, K - used)
            ranked = np.where(slot < 0, score, -np.inf)
            ranked[s] = np.inf
            block = np.argpartition(ranked, K - width)[K - width :]
            if used + width > len(cols):
                cols = np.concatenate([cols[:used], np.empty((min(K, 2 * len(cols) + width), K))])
            cols[used : used + width] = kernel.columns(np.zeros(1, dtype=np.int64), block[None])[0]
            slot[block] = np.arange(used, used + width)
            used += width
        column = U[t]
        if t:
            np.subtract(cols[slot[s]], U[:t, s] @ U[:t], out=column)
        else:
            column[:] = cols[slot[s]]
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


def _fill_columns(kernel, prompts, picks, score, slot, cols, used, width):
    """Compute kernel columns for each prompt that misses its pick: the pick + the best-scoring uncached."""
    ranked = score[prompts].copy()
    uncached = (slot[prompts] < 0) & kernel.valid[prompts]
    ranked[~uncached] = -np.inf
    width = min(width, int(uncached.sum(axis=1).min()))  # never recompute a cached column
    ranked[np.arange(len(prompts)), picks[prompts]] = np.inf  # the pick itself always comes first
    block = np.argpartition(-ranked, width - 1, axis=1)[:, :width] if width < ranked.shape[1] else \
        np.tile(np.arange(width), (len(prompts), 1))
    new = kernel.columns(prompts, block)  # (len, width, K)
    positions = used[prompts][:, None] + np.arange(width)[None, :]
    cols[prompts[:, None], positions] = new
    slot[prompts[:, None], block] = positions
    used = used.copy()
    used[prompts] += width
    return cols, used


# ----------------------------------------------------------------------------------------------
# Nearest neighbours (plain and filtered)


def _nearest(kernel: _Kernel, p: int, n: int, method: str, dedup_threshold: float) -> np.ndarray:
    """Top-n by Σ_rows <x, x*_row>, ties by lowest index; ``nn-f`` skips (near-)duplicates.

    Exact duplicate rows are grouped first (byte equality) and share the score of the group's
    lowest index, so that rounding can never order two copies of one vector by anything but index.
    """
    size = int(kernel.sizes[p])
    x = kernel.x[p, :size].cpu().numpy()
    first, group = _duplicate_groups(x)
    score = kernel.cross[p, :size].sum(axis=1)[first][group]
    order = np.argsort(-score, kind="stable")
    if method == "nn":
        if n > size:
            warnings.warn(f"nn: n={n} > K={size} candidates; returning {size}", stacklevel=5)
        return order[:n]
    norms = np.sqrt(kernel.diag[p, :size])
    unit = x / np.where(norms > 0, norms, 1.0)[:, None]
    blocked = np.zeros(size, dtype=bool)
    kept = []
    for j in order:
        if blocked[j]:
            continue
        kept.append(j)
        if len(kept) == n:
            break
        blocked |= group == group[j]  # exact copies, whatever the threshold
        blocked |= unit @ unit[j] > dedup_threshold
    if len(kept) < n:
        warnings.warn(f"nn-f: only {len(kept)} candidates are not near-duplicates (cosine > "
                      f"{dedup_threshold}) of each other; returning {len(kept)} < n={n}", stacklevel=5)
    return np.array(kept, dtype=np.int64)


def _duplicate_groups(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, group): group[j] labels row j's set of byte-identical rows; first[g] = its lowest row."""
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, group = np.unique(rows, return_index=True, return_inverse=True)
    return first, group.reshape(-1)
