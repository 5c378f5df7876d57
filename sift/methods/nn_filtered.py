"""``nn-f``: nearest neighbours with duplicates filtered.

In the order of ``nn``, skip a candidate that is an exact copy of a kept pick, or a near-duplicate:
cos(x, s) > ``dedup_threshold`` (default 0.99) for some kept pick s. Returns fewer than n rows, with a
warning, when fewer candidates survive the filter.
"""

from __future__ import annotations

import warnings

import numpy as np

from sift.methods import Method, PickOptions, register_method
from sift.methods.kernel import Kernel
from sift.methods.nn import ranking


def pick_filtered(kernel: Kernel, n: int, options: PickOptions):
    """Each prompt's ranking, skipping (near-)duplicates of what was kept."""
    out = []
    for p in range(kernel.prompts):
        order, x, group = ranking(kernel, p)
        norms = np.sqrt(kernel.diag[p, : len(order)])
        unit = x / np.where(norms > 0, norms, 1.0)[:, None]
        blocked = np.zeros(len(order), dtype=bool)
        kept: list[int] = []
        for j in order:
            if blocked[j]:
                continue
            kept.append(j)
            if len(kept) == n:
                break
            blocked |= group == group[j]  # exact copies, whatever the threshold
            blocked |= unit @ unit[j] > options.dedup_threshold
        if len(kept) < n:
            warnings.warn(f"nn-f: only {len(kept)} candidates are not near-duplicates (cosine > "
                          f"{options.dedup_threshold}) of each other; returning {len(kept)} < n={n}", stacklevel=5)
        out.append(np.array(kept, dtype=np.int64))
    return out, None


register_method(Method("nn-f", pick_filtered, "nearest neighbours without (near-)duplicates", color="#17becf"))
