"""``nn``: nearest neighbours (TTT-NN, Hardt & Sun): the n largest Σ_rows <x, x*_row>.

Ties go to the lowest index. Exact duplicate rows are grouped first (byte equality) and share the
score of the group's lowest index, so that rounding can never order two copies of one vector by
anything but index. Cannot give more than K rows: returns fewer, with a warning.
"""

from __future__ import annotations

import warnings

import numpy as np

from sift.methods import Method, PickOptions, register_method
from sift.methods.kernel import Kernel


def duplicate_groups(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, group): group[j] labels row j's set of byte-identical rows; first[g] = its lowest row."""
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, group = np.unique(rows, return_index=True, return_inverse=True)
    return first, group.reshape(-1)


def ranking(kernel: Kernel, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, x, group) of prompt p: candidates by decreasing Σ_rows <x, x*>, copies sharing one score."""
    size = int(kernel.sizes[p])
    x = kernel.x[p, :size].cpu().numpy()
    first, group = duplicate_groups(x)
    score = kernel.cross[p, :size].sum(axis=1)[first][group]
    return np.argsort(-score, kind="stable"), x, group


def pick_nearest(kernel: Kernel, n: int, options: PickOptions):
    """The top-n of each prompt's ranking."""
    out = []
    for p in range(kernel.prompts):
        order, _, _ = ranking(kernel, p)
        if n > len(order):
            warnings.warn(f"nn: n={n} > K={len(order)} candidates; returning {len(order)}", stacklevel=5)
        out.append(order[:n])
    return out, None


register_method(Method("nn", pick_nearest, "nearest neighbours by inner product (TTT-NN)", color="#1f77b4"))
