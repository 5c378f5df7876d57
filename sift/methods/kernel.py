"""The surrogate model's kernel, shared by every selection method.

k(x, x') = <φ(x), φ(x')> on embeddings, float64, for P prompts at once (candidate sets padded to the
largest K). Methods read ``cross`` = k(x_j, x*), ``diag`` = k(x_j, x_j) and ``prior`` = σ²_0(x*), and
ask a column cache for k(·, s) of the candidates they condition on.

Numerics: inner products and all updates are float64 (float32 embeddings are exact in float64).
Exact ties are real here: duplicate candidates (and x versus −x) have identical gains, but rounding
can make the computed gains differ in the last bits. So greedy argmaxes are tolerance-aware: among
candidates whose score is within ``TIE_RTOL``·best + ``TIE_ATOL``·scale of the best, the lowest index
wins. The tolerance is far above float64 rounding (~1e-15 relative) and far below any real gap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported inside the methods: the registry (and so the CLI's --help) must not load it.

TIE_RTOL = 1e-9  # scores within this fraction of the best one tie (then the lowest index wins)
TIE_ATOL = 1e-15  # ... or within this fraction of the prior variance (all-zero gains tie exactly)
# Speculative kernel-column blocks: X @ [16 columns] costs less than two matrix-vector products at
# K=1000, d=1024 (streaming X dominates), and the next few picks are usually among the 16
# best-scoring candidates, so a miss computes this many columns at once.
BLOCK = 16


class Kernel:
    """Base kernel k(x, x') = <x, x'> of P padded candidate sets, float64 on the inputs' device.

    x: (P, K, d) candidates; q: (P, M, d) query rows (zero rows pad shorter queries: they add
    nothing); valid: (P, K) which candidates are real; diag: k(x_j, x_j) (P, K); cross: k(x_j, x*)
    (P, K, M); prior: σ²_0 = Σ_rows k(x*, x*) (P,).
    Finiteness of the candidates is checked through the row norms (NaN or inf in a row makes its
    squared norm non-finite), which costs O(K) instead of another pass over K·d values.
    """

    def __init__(self, queries: list["torch.Tensor"], candidates: list["torch.Tensor"]):
        import torch

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

    @property
    def prompts(self) -> int:
        return self.valid.shape[0]

    def columns(self, prompts: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """k(x_j, x_r) for all j, for each prompt p in ``prompts`` and r in its ``rows``: (len, B, K)."""
        import torch

        # X_p @ rows.T (K, B) is the layout BLAS streams X_p through fastest; transposed on the way
        # out. One product per prompt: gathering the prompts' X for one batched product would copy
        # every X_p, which costs as much as the products.
        r = torch.as_tensor(rows, device=self.x.device)
        if len(prompts) == 1:  # the single-prompt loop: skip the stacking (it matters at small K)
            xp = self.x[int(prompts[0])]
            # X @ (contiguous rows.T): measured the fastest layout for every block width >= 2 at
            # K = 1000..20000, d = 384..1024 (a non-contiguous rows.T makes the BLAS repack it)
            return (xp @ xp[r[0]].T.contiguous()).cpu().numpy().T[None]
        out = [self.x[p] @ self.x[p, r[i]].T for i, p in enumerate(prompts.tolist())]
        return torch.stack(out).cpu().numpy().transpose(0, 2, 1)

    def rows(self, p: int, indices: np.ndarray) -> np.ndarray:
        """Candidate vectors ``indices`` of prompt ``p`` as a float64 numpy array."""
        import torch

        if self.x.device.type == "cpu":  # numpy's take copies rows several times faster than torch's indexing
            return np.take(self.x[p].numpy(), indices, axis=0)
        return self.x[p, torch.as_tensor(indices, device=self.x.device)].cpu().numpy()

    def query(self, p: int) -> np.ndarray:
        """Prompt ``p``'s query rows (m, d), float64."""
        return self.q[p, : self.m_sizes[p]].cpu().numpy()


class ColumnCache:
    """One job: hold base kernel columns k(·, s), each computed once, in as few products as possible.

    Batched loop (``column``): on a miss the pick's column is computed together with the columns of
    the (BLOCK − 1) candidates that currently score best without one (the likeliest next picks): one
    matrix product instead of several matrix-vector products. Single-prompt loop (``fill_one``): the
    loop says which columns to compute (its lookahead's forecast). Either way the forecast only decides
    which exact columns are computed early; it never changes a pick.
    """

    def __init__(self, kernel: Kernel, n: int):
        P, K = kernel.valid.shape
        self.kernel, self.n, self.K = kernel, n, K
        self.slot = np.full((P, K), -1, dtype=np.int64)  # position of k(·, x_j) in cols[p], or -1
        # At most min(K, n·BLOCK) columns per prompt; zeros() is lazily committed, so the unused
        # part of this buffer costs no memory. One prompt grows its buffer on demand instead.
        self.cols = np.zeros((P, min(K, n * BLOCK), K)) if P > 1 else np.empty((1, min(K, 4 * BLOCK), K))
        self.used = np.zeros(P, dtype=np.int64)
        self.computed = 0  # columns computed so far (benchmarks report columns per distinct pick)

    def column(self, picks: np.ndarray, score: np.ndarray, t: int) -> np.ndarray:
        """(P, K): a fresh copy of k(·, picks[p]) for every prompt p (``score``: current gains, step t)."""
        rows = np.arange(len(picks))
        where = self.slot[rows, picks]
        missing = np.nonzero(where < 0)[0]
        if len(missing):
            self._fill(missing, picks, score, min(self.K, BLOCK, self.n - t))
            where = self.slot[rows, picks]
        return self.cols[rows, where]

    def fill_one(self, block: np.ndarray) -> None:
        """Compute the base columns k(·, x_b) of the single prompt for every b in ``block`` (uncached), in one product."""
        used, width = int(self.used[0]), len(block)
        if used + width > self.cols.shape[1]:  # never past K: a column is computed at most once
            grown = np.empty((1, min(self.K, max(used + width, 2 * self.cols.shape[1])), self.K))
            grown[0, :used] = self.cols[0, :used]
            self.cols = grown
        self.cols[0, used : used + width] = self.kernel.columns(np.zeros(1, dtype=np.int64), block[None])[0]
        self.slot[0, block] = np.arange(used, used + width)
        self.used[0] += width
        self.computed += width

    def _fill(self, prompts: np.ndarray, picks: np.ndarray, score: np.ndarray, width: int) -> None:
        """Columns for each prompt that misses its pick: the pick + the best-scoring uncached."""
        ranked = score[prompts].copy()
        uncached = (self.slot[prompts] < 0) & self.kernel.valid[prompts]
        ranked[~uncached] = -np.inf
        width = min(width, int(uncached.sum(axis=1).min()))  # never recompute a cached column
        ranked[np.arange(len(prompts)), picks[prompts]] = np.inf  # the pick itself always comes first
        block = np.argpartition(-ranked, width - 1, axis=1)[:, :width] if width < ranked.shape[1] else \
            np.tile(np.arange(width), (len(prompts), 1))
        new = self.kernel.columns(prompts, block)  # (len, width, K)
        need = int(self.used[prompts].max()) + width
        if need > self.cols.shape[1]:  # never past K: a column is computed at most once per prompt
            grown = np.zeros((self.cols.shape[0], min(self.K, max(need, 2 * self.cols.shape[1])), self.K))
            grown[:, : self.cols.shape[1]] = self.cols
            self.cols = grown
        positions = self.used[prompts][:, None] + np.arange(width)[None, :]
        self.cols[prompts[:, None], positions] = new
        self.slot[prompts[:, None], block] = positions
        self.used[prompts] += width
        self.computed += width * len(prompts)


def tie_argmax(score: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per row: the lowest index whose score is within the tie tolerance of the row's best."""
    best = score.max(axis=1)
    tol = TIE_RTOL * np.abs(best) + TIE_ATOL * scale
    return np.argmax(score >= (best - tol)[:, None], axis=1)


def variance_path(kernel: Kernel, p: int, picks: np.ndarray, lam: float) -> np.ndarray:
    """σ²_t for t = 0..n along a pick sequence, by one Cholesky factorisation of K_XX + λ′I.

    Forward substitution with the Cholesky factor L is exactly sequential conditioning: row t of
    W = L⁻¹ k_X(x*) is k_t(x_t, x*)/sqrt(k_t(x_t, x_t) + λ′), so σ²_{t+1} = σ²_t − ||W_t||².
    """
    prior = float(kernel.prior[p])
    if len(picks) == 0:
        return np.array([prior])
    x = kernel.rows(p, picks)
    chol = np.linalg.cholesky(x @ x.T + lam * np.eye(len(picks)))
    w = np.linalg.solve(chol, x @ kernel.query(p).T)  # L⁻¹ k_X(x*): a triangular solve (LAPACK's is fine here)
    reduction = np.cumsum(np.einsum("nm,nm->n", w, w))
    return np.maximum(prior - np.concatenate([[0.0], reduction]), 0.0)
