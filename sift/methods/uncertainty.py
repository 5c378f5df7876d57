"""``us``: uncertainty sampling, undirected: x_{t+1} = argmax_x k_t(x, x).

The candidate the surrogate knows least about after the picks so far, whatever the prompt (the
prompt only chose the K candidates). Repeats are allowed, as for SIFT.
"""

from sift.methods import Method, PickOptions, register_method
from sift.methods.greedy import run_greedy
from sift.methods.kernel import Kernel


def pick_uncertain(kernel: Kernel, n: int, options: PickOptions):
    """Uncertainty sampling's picks and variance drops for every prompt of ``kernel``."""
    return run_greedy(kernel, n, options.lam, directed=False)


register_method(Method("us", pick_uncertain, "uncertainty sampling: the least known candidate, undirected",
                       repeats=True, color="#9467bd"))
