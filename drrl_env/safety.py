"""The safety guardrail: ranks whose output-perturbation bound exceeds epsilon_t are unsafe.

The bound b(r) is the relative bound on the attention output error of rank r against exact
attention, sqrt(sum_h bound_h(r, d)^2) / ||O||_F (``linalg.py``); it falls with r and is 0 at
full rank, so the safe ranks are always {r >= r_min} and full rank is always safe.

Adaptive threshold (an error budget spread over the episode): with n steps in the episode,
epsilon the base threshold and b_k the bound of the rank taken at step k,

    epsilon_t = clip((epsilon * n - sum_{k < t} b_k) / (n - t), epsilon_min, epsilon_max).

Choosing safer ranks early leaves more budget (a looser threshold) for later steps, and the
other way round; the clip keeps the rule from masking everything or nothing.

A latency budget adds a second mask (:func:`budget_feasible`): the ranks after which the episode
could still end within the budget.  The env intersects the two, and where nothing is in both it
allows the highest budget-feasible rank; :func:`nearest_safe` replaces a disallowed action.
"""

from __future__ import annotations

import numpy as np


def adaptive_epsilon(
    epsilon: float, epsilon_min: float, epsilon_max: float, n_steps: int, step: int, spent: float
) -> float:
    remaining = max(n_steps - step, 1)
    return float(np.clip((epsilon * n_steps - spent) / remaining, epsilon_min, epsilon_max))


def safe_mask(bounds: np.ndarray, threshold: float) -> np.ndarray:
    """``bounds <= threshold``, with the last (full) rank always safe.  bounds: (..., R)."""
    mask = bounds <= threshold
    mask[..., -1] = True
    return mask


def nearest_safe(index: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace each disallowed rank index by the smallest allowed one above it, or, where none is
    above (a latency budget can forbid the high ranks), the largest allowed one below it.

    index: (...) rank indices; mask: (..., R) with at least one allowed rank per row.  For the
    safety mask alone (allowed = {r >= r_min}) this is max(index, r_min).
    """
    positions = np.arange(mask.shape[-1])
    above = np.where(mask & (positions >= index[..., None]), positions, mask.shape[-1]).min(-1)
    below = np.where(mask, positions, -1).max(-1)
    return np.where(above < mask.shape[-1], above, below)


def budget_feasible(used: float, step_share: np.ndarray, future_minimum: float, budget: float) -> np.ndarray:
    """(R,) whether taking each rank now still leaves a way to end the episode within ``budget``.

    All in fractions of the episode's exact attention cost: ``used`` spent so far, ``step_share``
    (R,) this step's cost at each rank, ``future_minimum`` the cheapest possible cost of the steps
    after this one.  If the cheapest rank was feasible at the step before, it stays feasible now,
    so a feasible start never runs out of actions."""
    return used + step_share + future_minimum <= budget * (1 + 1e-9)
