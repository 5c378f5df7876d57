"""Choosing a prompt's training data: the public API over the registered methods (``sift.methods``).

The surrogate model (Hübotter et al., arXiv 2410.08020): a linear kernel k(x, x') = <φ(x), φ(x')> on
embeddings, observation noise λ′. After fine-tuning on the multiset X = (x_1..x_n) the posterior
variance of the prompt x* (summed over its m embedding rows) is

    σ²_X(x*) = Σ_rows [ k(x*, x*) − k_X(x*)ᵀ (K_XX + λ′ I)⁻¹ k_X(x*) ].

Every method's ``Selection`` carries σ²_t after its first t picks, with the same λ′ whatever the
method, so methods compare on one uncertainty. Each method's own rule is in its module under
``sift/methods/`` (SIFT's exact greedy: ``sift/methods/sift.py`` and ``greedy.py``).

Cost of exact SIFT: exactness needs k(x_j, s) for every candidate j and every distinct pick s, i.e.
at least K·d multiply-adds per distinct pick; from K = 2,000 the single-prompt greedy computes 1.1–1.4
columns per distinct pick, in one product per 6–8 picks (below it, 2–3 columns per distinct pick in
cheap speculative blocks); ``benchmarks/select.py`` prints both, and the time of that exact floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported where tensors are made: `import sift` (and the CLI's --help) must not load it.

from sift.methods import DEFAULT_DEDUP_THRESHOLD, METHODS, PickOptions, get_method
from sift.methods.kernel import Kernel, variance_path

# select_batch on CPU: a candidate set up to this size (float64) stays in a core's cache, the greedy
# is bound by per-step overhead and prompts are vectorised in groups of up to GROUP; a larger set
# is bound by streaming X from memory, and interleaving prompts would only evict each other's X,
# so those run one at a time (measured: benchmarks/select.py).
SMALL_SET_BYTES = 2 * 2**20
GROUP = 64


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

    ``method``: a name of ``sift.METHODS`` (sift, nn, nn-f, us, random, base, or one registered
    with ``sift.methods.register_method``); each method's rule is in its module's docstring.
    nn, nn-f and random cannot give more than K (for nn-f: non-duplicate) rows; they return fewer
    with a warning. ``base`` picks nothing.

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
    import torch

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
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if not (isinstance(lam, (int, float, np.floating)) and math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0, got {lam!r}")
    if alpha is not None and not (
        isinstance(alpha, (int, float, np.floating)) and math.isfinite(alpha) and alpha > 0
    ):
        raise ValueError(f"alpha must be None or a finite number > 0, got {alpha!r}")
    if not (isinstance(dedup_threshold, (int, float, np.floating)) and -1 <= dedup_threshold <= 1):
        raise ValueError(f"dedup_threshold must be a cosine in [-1, 1], got {dedup_threshold!r}")


def _as_tensor(value: Any, name: str) -> "torch.Tensor":
    """A floating tensor on the value's own device (numpy and lists → CPU), without copying if possible."""
    import torch

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


def _queries_list(values: list[Any], name: str) -> list["torch.Tensor"]:
    import torch

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


def _candidates_list(values: list[Any], name: str) -> list["torch.Tensor"]:
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


def _check_pair(q: "torch.Tensor", x: "torch.Tensor", q_name: str, x_name: str) -> None:
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"{q_name} has dimension d={q.shape[1]} but {x_name} has d={x.shape[1]}")


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
    """One group: build the kernel once, let the method pick, and derive σ²_t from the picks."""
    kernel = Kernel(queries, candidates)
    chosen = get_method(method)
    if chosen.pick is None:
        picks, drops = [np.zeros(0, dtype=np.int64)] * len(candidates), None
    else:
        picks, drops = chosen.pick(kernel, n, PickOptions(lam, list(seeds), dedup_threshold))
    out = []
    for p, idx in enumerate(picks):
        idx = np.asarray(idx, dtype=np.int64)
        if drops is None:
            variances = variance_path(kernel, p, idx, lam)
        else:  # the greedy already has σ²_t − σ²_{t+1} = ||k_t(x*, s_t)||² / (k_t(s_t, s_t) + λ′)
            steps = np.concatenate([[0.0], np.cumsum(drops[p])])
            variances = np.maximum(float(kernel.prior[p]) - steps, 0.0)
        out.append(Selection(idx, variances, stop_index(variances, alpha), method, lam, alpha))
    return out
