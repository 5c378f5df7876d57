"""The selection methods, by name: ``METHODS`` is the one place their names are written.

Every other place that needs the names (``sift.select``, the settings' validation, the CLI's help,
the plots' colours) reads ``METHODS``. One module per method holds its formula in the docstring:

| name     | module               | picks                                                       |
|----------|----------------------|-------------------------------------------------------------|
| base     | ``base.py``          | nothing: the untouched base model                           |
| sift     | ``sift.py``          | argmax_x Σ k_t(x*, x)² / (k_t(x, x) + λ′), repeats allowed  |
| nn       | ``nn.py``            | the n largest <x, x*>                                       |
| nn-f     | ``nn_filtered.py``   | nearest neighbours without (near-)duplicates                |
| us       | ``uncertainty.py``   | argmax_x k_t(x, x), undirected                              |
| random   | ``random_pick.py``   | a seeded sample without replacement                         |

Adding a method is one call, anywhere before it is used::

    from sift.methods import Method, per_prompt, register_method

    @per_prompt
    def farthest(query, candidates, n, seed):   # float64 (m, d), (K, d) → indices into candidates
        return np.argsort(candidates @ query.sum(0))[:n]

    register_method(Method("farthest", farthest, "the n least similar candidates"))

after which ``sift.select(..., method="farthest")``, ``sift-ttft evaluate --method farthest`` and
the plots know it (within the process that registered it: Dask workers import ``sift`` anew, so a
method used there must be registered by a module they import).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from sift.methods.kernel import Kernel

DEFAULT_DEDUP_THRESHOLD = 0.99  # nn-f: cosine above this counts as a near-duplicate of a kept pick


@dataclass(frozen=True)
class PickOptions:
    """What a pick function may read besides the kernel: λ′, one seed per prompt, nn-f's threshold."""

    lam: float
    seeds: list[int]
    dedup_threshold: float = DEFAULT_DEDUP_THRESHOLD


# pick(kernel, n, options) → (indices per prompt, variance drops (P, n) or None)
PickFn = Callable[[Kernel, int, PickOptions], tuple[list[np.ndarray], Optional[np.ndarray]]]


@dataclass(frozen=True)
class Method:
    """A selection method: its name, how it picks, and a one-line description for ``--help``.

    ``pick`` returns, per prompt, indices into its candidates in pick order and optionally the
    variance drops σ²_t − σ²_{t+1} the greedy already knows (else ``sift.select`` computes the
    variance path from the picks). ``pick=None`` (``base``) selects and trains on nothing.
    ``repeats``: whether a candidate may be picked again (then n may exceed K).
    """

    name: str
    pick: Optional[PickFn]
    description: str
    repeats: bool = False
    retrieves: bool = field(default=True)
    color: Optional[str] = None  # the method's colour in every plot (None: matplotlib's cycle)

    def __post_init__(self) -> None:
        if self.pick is None and self.retrieves:
            object.__setattr__(self, "retrieves", False)


METHODS: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to ``METHODS`` (``replace=True`` to redefine an existing name)."""
    if not isinstance(method, Method):
        raise TypeError(f"register_method takes a Method, got {type(method).__name__}")
    if not method.name or method.name != method.name.strip() or "," in method.name:
        raise ValueError(f"method name {method.name!r} must be non-empty, without spaces at the ends or commas")
    if method.name in METHODS and not replace:
        raise ValueError(f"method {method.name!r} is already registered; pass replace=True to redefine it")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method (tests register toy methods and take them away again)."""
    METHODS.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method ``name``; a ValueError listing the known names otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"method {name!r} is unknown; choose from {method_names()}") from None


def method_names() -> list[str]:
    """The registered names, in registration order (built-ins first)."""
    return list(METHODS)


def selecting_method_names() -> list[str]:
    """The registered names of methods that pick data (all but ``base``)."""
    return [name for name, m in METHODS.items() if m.pick is not None]


def per_prompt(fn: Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]) -> PickFn:
    """A ``PickFn`` from a function of one prompt: ``fn(query (m, d), candidates (K, d), n, seed)``,
    float64 numpy arrays in, indices into the candidates out (at most n; repeats allowed)."""

    def pick(kernel: Kernel, n: int, options: PickOptions) -> tuple[list[np.ndarray], None]:
        out = []
        for p in range(kernel.prompts):
            size = int(kernel.sizes[p])
            idx = np.asarray(fn(kernel.query(p), kernel.rows(p, np.arange(size)), n, options.seeds[p]), dtype=np.int64)
            if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= size)) or idx.size > n:
                raise ValueError(f"{getattr(fn, '__name__', fn)!r} returned {idx.size} indices outside [0, {size}) "
                                 f"or more than n={n}")
            out.append(idx)
        return out, None

    pick.__doc__ = fn.__doc__
    return pick


# The built-in methods register themselves on import, in this order.
from sift.methods import base, sift, nn, nn_filtered, uncertainty, random_pick  # noqa: E402,F401

__all__ = ["DEFAULT_DEDUP_THRESHOLD", "METHODS", "Method", "PickOptions", "get_method", "method_names",
           "per_prompt", "register_method", "selecting_method_names", "unregister_method"]
