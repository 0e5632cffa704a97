"""The safety guardrail: ranks whose output-perturbation bound exceeds epsilon_t are unsafe.

The bound b(r) is the relative bound on the attention output error of rank r against exact
attention, sqrt(sum_h bound_h(r, d)^2) / ||O||_F (``linalg.py``); it falls with r and is 0 at
full rank, so the safe ranks are always {r >= r_min} and full rank is always safe.

Adaptive threshold (an error budget spread over the episode): with n steps in the episode,
epsilon the base threshold and b_k the bound of the rank taken at step k,

    epsilon_t = clip((epsilon * n - sum_{k < t} b_k) / (n - t), epsilon_min, epsilon_max).

Choosing safer ranks early leaves more budget (a looser threshold) for later steps, and the
other way round; the clip keeps the rule from masking everything or nothing.
"""

from __future__ import annotations

import numpy as np


def adaptive_epsilon(epsilon: float, epsilon_min: float, epsilon_max: float, n_steps: int,
                     step: int, spent: float) -> float:
    remaining = max(n_steps - step, 1)
    return float(np.clip((epsilon * n_steps - spent) / remaining, epsilon_min, epsilon_max))


def safe_mask(bounds: np.ndarray, threshold: float) -> np.ndarray:
    """``bounds <= threshold``, with the last (full) rank always safe.  bounds: (..., R)."""
    mask = bounds <= threshold
    mask[..., -1] = True
    return mask


def nearest_safe(index: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace each unsafe rank index by the smallest safe one above it.

    index: (...) rank indices; mask: (..., R) with every row's safe set of the form {r >= r_min}.
    """
    lowest_safe = mask.argmax(-1)  # first True
    return np.maximum(index, lowest_safe)
