"""``random``: a seeded uniform sample of n candidates without replacement (numpy's default_rng(seed)).

Cannot give more than K rows: returns K, with a warning.
"""

from __future__ import annotations

import warnings

import numpy as np

from sift.methods import Method, PickOptions, register_method
from sift.methods.kernel import Kernel


def pick_random(kernel: Kernel, n: int, options: PickOptions):
    """A sample per prompt, from that prompt's seed."""
    out = []
    for p in range(kernel.prompts):
        size = int(kernel.sizes[p])
        if n > size:
            warnings.warn(f"random: n={n} > K={size} candidates; returning {size}", stacklevel=5)
        rng = np.random.default_rng(options.seeds[p])
        out.append(rng.choice(size, size=min(n, size), replace=False).astype(np.int64))
    return out, None


register_method(Method("random", pick_random, "a seeded random sample of the candidates", color="#bcbd22"))
