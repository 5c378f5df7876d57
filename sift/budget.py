"""One step budget for a batch of prompts: how many gradient steps each prompt gets.

Test-time fine-tuning takes one gradient step per picked sequence. With a fixed budget of B steps
for P prompts (a nightly evaluation, a GPU-hour allowance), the question is where the steps pay
most. Selection runs first for every prompt (it is cheap), so each prompt's uncertainty path
σ_0 ≥ σ_1 ≥ … ≥ σ_n (``PromptSelection.uncertainties``) is known before any step is spent; a policy
turns those paths into steps s_i with Σ s_i ≤ B and s_i ≤ n_i (a prompt cannot train on more
picks than it has).

Policies (``POLICIES``):
- ``uniform``: every prompt the same number of steps, ⌊B/P⌋ or one more (the first B mod P
  prompts in input order), steps a capped prompt cannot use going round-robin to the others.
- ``alpha``: SIFT's per-prompt stopping rule (stop before step t when σ_t > 1/(α·t),
  ``sift.select.stop_index``) with the one α for the batch that spends most of B without passing
  it; α = None (no stopping) when every pick fits.
- ``sigma``: steps in proportion to the gain each prompt's selection predicts. The predicted gain
  of prompt i after s steps is modelled as w_i · H(s), with a shape H(s) = 1 + 1/2 + … + 1/s common
  to all prompts (each further step pays less) and a weight

      w_i = (1 − σ_{n_i} / σ_0)^γ,

  the share of the prompt's uncertainty its picks can remove. Steps are granted greedily to the
  largest marginal predicted gain w_i / (s_i + 1), which maximises Σ w_i H(s_i) under the budget
  (H is concave, so the greedy is exact) and gives s_i ≈ B · w_i / Σ w_j, capped at n_i.
  γ = 0 is ``uniform``.

Why the weight and not the current σ_t: a prompt with a *low* σ_n had data close to it, and such a
prompt gains *more* from fine-tuning (Spearman ρ(σ_n, gain) ≈ −0.7 on our runs), so granting the next
step to the prompt with the largest current σ_t spends the budget where it pays least. The
reduction 1 − σ_n/σ_0 ranks prompts by how much relevant data they have; γ sharpens or flattens the
split (chosen on tuning prompts, ``sift.stats.budget_frontier``).

Deterministic: ties go to the earlier prompt. Pure: lists and arrays in, an ``Allocation`` out.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

POLICIES = ("uniform", "alpha", "sigma")
DEFAULT_GAMMA = 1.0

# Why a prompt stops where it does (``Allocation.reasons``, ``stop_reason`` in the results).
ALL_PICKS = "all_picks"  # it trains on every pick it has
BUDGET = "budget"  # the policy gave its steps to other prompts
ALPHA = "alpha"  # the α rule stopped it
NO_PICKS = "no_picks"  # it has nothing to train on


@dataclass(frozen=True)
class Allocation:
    """Steps per prompt (input order) with why each stops there, and the policy's own parameter."""

    policy: str
    budget: int
    steps: list[int]
    reasons: list[str]
    alpha: float | None = None  # the α the "alpha" policy chose (None: no stopping, or another policy)
    gamma: float | None = None  # the γ of "sigma"
    weights: list[float] = field(default_factory=list)  # w_i of "sigma"

    @property
    def total(self) -> int:
        """Σ s_i, never above ``budget``."""
        return int(sum(self.steps))


def check_budget(budget: int, prompts: int, policy: str) -> None:
    """Refuse a budget no allocation can honour, with a message that says what to change.

    ``budget`` must be an integer ≥ 1; ``uniform`` gives every prompt at least one step, so it needs
    ``budget ≥ prompts``.
    """
    if policy not in POLICIES:
        raise ValueError(f"allocate={policy!r} is not a policy; choose one of {', '.join(POLICIES)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a whole number of steps >= 1, got {budget!r}")
    if policy == "uniform" and budget < prompts:
        raise ValueError(f"a budget of {budget} steps is below the {prompts} prompts, and allocate=uniform gives every prompt "
                         "at least one step: raise the budget, evaluate fewer prompts, or allocate by sigma or alpha")


def predicted_weights(uncertainties: Sequence[Sequence[float]], gamma: float = DEFAULT_GAMMA) -> list[float]:
    """w_i = (1 − σ_{n_i}/σ_0)^γ per prompt: the share of its uncertainty its picks remove, sharpened by
    γ (0 for a prompt without picks or with σ_0 = 0)."""
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    weights = []
    for sigmas in uncertainties:
        if len(sigmas) < 2 or not sigmas[0] > 0:
            weights.append(0.0)
            continue
        reduction = min(max(1.0 - float(sigmas[-1]) / float(sigmas[0]), 0.0), 1.0)
        weights.append(reduction ** gamma if gamma > 0 else 1.0)
    return weights


def greedy_steps(marginals: Sequence[Sequence[float]], caps: Sequence[int], budget: int) -> list[int]:
    """Grant ``budget`` steps one at a time to the prompt whose next step has the largest predicted gain
    ``marginals[i][s_i]`` (s_i: steps granted so far), ties to the lower i, never past ``caps[i]``; stops
    early when every prompt is capped. With marginals that do not increase in s this maximises the
    summed predicted gain (each prompt's gain is concave in its steps)."""
    steps = [0] * len(caps)
    heap = [(-float(m[0]), i) for i, (m, c) in enumerate(zip(marginals, caps)) if c > 0]
    heapq.heapify(heap)
    for _ in range(budget):
        if not heap:
            break
        _, i = heapq.heappop(heap)
        steps[i] += 1
        if steps[i] < caps[i]:
            heapq.heappush(heap, (-float(marginals[i][steps[i]]), i))
    return steps


def _alpha_steps(variances: list[np.ndarray], caps: Sequence[int], alpha: float | None) -> list[int]:
    from sift.select import stop_index

    return [min(stop_index(v, alpha), c) for v, c in zip(variances, caps)]


def _alpha_for_budget(variances: list[np.ndarray], caps: Sequence[int], budget: int) -> float | None:
    """The α whose stopping spends the most steps ≤ ``budget``: None when every pick fits, else a
    value strictly between two consecutive breakpoints 1/(t·σ_t) of the rule (steps only change at
    those), found by bisection since the total is non-increasing in α."""
    if sum(caps) <= budget:
        return None
    points = sorted({1.0 / (t * s) for v, c in zip(variances, caps)
                     for t, s in enumerate(np.sqrt(np.maximum(v[1:c + 1], 0.0)), start=1) if s > 0})
    # candidates: just above each breakpoint (geometric midpoint to the next one; twice the last)
    candidates = [math.sqrt(a * b) for a, b in zip(points, points[1:])] + [2 * points[-1]] if points else []
    lo, hi = 0, len(candidates)  # first candidate whose total fits the budget
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(_alpha_steps(variances, caps, candidates[mid])) <= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo == len(candidates):  # nothing fits (cannot happen: the last stops every prompt at step 0)
        return candidates[-1]
    return candidates[lo]


def allocate(uncertainties: Sequence[Sequence[float]], budget: int, policy: str = "sigma", *,
             gamma: float = DEFAULT_GAMMA, caps: Sequence[int] | None = None) -> Allocation:
    """Split ``budget`` gradient steps across prompts by ``policy`` (see the module docstring).

    uncertainties: per prompt, σ_0..σ_n after each of its picks (its selection's path).
    caps: per prompt, the most steps it may take (default: its n picks); a prompt never gets more.
    Returns steps per prompt in input order with Σ ≤ budget, and each prompt's reason for stopping.
    """
    paths = [np.asarray(u, dtype=np.float64) for u in uncertainties]
    caps = [len(p) - 1 for p in paths] if caps is None else [min(int(c), len(p) - 1) for c, p in zip(caps, paths)]
    if len(caps) != len(paths):
        raise ValueError(f"caps has {len(caps)} entries for {len(paths)} prompts")
    active = sum(1 for c in caps if c > 0)
    check_budget(budget, active, policy)
    alpha, weights = None, []
    if policy == "alpha":
        variances = [np.square(p) for p in paths]
        alpha = _alpha_for_budget(variances, caps, int(budget))
        steps = _alpha_steps(variances, caps, alpha)
    else:
        weights = predicted_weights(paths, gamma if policy == "sigma" else 0.0)
        steps = greedy_steps([[w / t for t in range(1, c + 1)] for w, c in zip(weights, caps)], caps, int(budget))
    reasons = [NO_PICKS if c == 0 else ALL_PICKS if s >= c else (ALPHA if policy == "alpha" else BUDGET)
               for s, c in zip(steps, caps)]
    return Allocation(policy=policy, budget=int(budget), steps=steps, reasons=reasons, alpha=alpha,
                      gamma=gamma if policy == "sigma" else None, weights=weights if policy == "sigma" else [])


__all__ = ["ALL_PICKS", "ALPHA", "Allocation", "BUDGET", "DEFAULT_GAMMA", "NO_PICKS", "POLICIES", "allocate",
           "check_budget", "greedy_steps", "predicted_weights"]
