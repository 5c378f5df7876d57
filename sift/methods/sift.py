"""``sift``: SIFT(λ′), exact greedy (Hübotter et al., arXiv 2410.08020).

Posterior variance of the prompt x* after training on the multiset X (summed over its m rows):

    σ²_X(x*) = Σ_rows [ k(x*, x*) − k_X(x*)ᵀ (K_XX + λ′ I)⁻¹ k_X(x*) ],

    x_{t+1} = argmin_x σ²_{X_t ∪ {x}}(x*) = argmax_x Σ_rows k_t(x*, x)² / (k_t(x, x) + λ′)

over all K candidates, already picked ones included (a sequence may be trained on again when that
still cuts the uncertainty, so n > K is fine). Large λ′ → nearest neighbours; small λ′ → diversity.
The conditioning is ``sift.methods.greedy``.
"""

from sift.methods import Method, PickOptions, register_method
from sift.methods.greedy import run_greedy
from sift.methods.kernel import Kernel


def pick_sift(kernel: Kernel, n: int, options: PickOptions):
    """SIFT's picks and variance drops for every prompt of ``kernel``."""
    return run_greedy(kernel, n, options.lam, directed=True)


register_method(Method("sift", pick_sift, "SIFT: relevant and non-redundant, by the posterior variance", repeats=True, color="#d62728"))
