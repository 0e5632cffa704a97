"""What a rank costs: cost models by name (``base.py``), FLOP counts (``counting.py``) and the FLOP cost
model (``flops.py``), measured latency
(``latency.py`` measures, ``measured.py`` serves it as a cost)."""

from drrl_env.costs import flops, measured  # noqa: F401  (registers the built-ins)
from drrl_env.costs.base import (
    AttentionShape,
    CostModel,
    cost_model_class,
    cost_model_names,
    make_cost_model,
    register_cost_model,
)

__all__ = [
    "AttentionShape",
    "CostModel",
    "cost_model_class",
    "cost_model_names",
    "make_cost_model",
    "register_cost_model",
]
