"""The analytic cost: FLOPs of a segment's attention at each rank, relative to exact attention."""

from __future__ import annotations

import numpy as np

from drrl_env.costs.base import AttentionShape, CostModel, register_cost_model
from drrl_env.costs.counting import flop_ratios


@register_cost_model
class FlopCostModel(CostModel):
    """Analytic FLOP ratio (:func:`attention_flops`): deterministic, any key length, no device."""

    name = "flops"
    deterministic = True
    measures_device = False

    def cost_ratios(self, shape: AttentionShape) -> np.ndarray:
        return flop_ratios(shape)
