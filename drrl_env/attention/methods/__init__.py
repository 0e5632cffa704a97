"""Low-rank methods: one file each, registered by name (``base.py`` for the interface)."""

from drrl_env.attention.methods import calibrated, loki, shared_key, svd  # noqa: F401  (registers the built-ins)
from drrl_env.attention.methods.base import (
    LowRankMethod,
    get_method,
    method_class,
    method_for,
    method_names,
    register_method,
)

__all__ = ["LowRankMethod", "get_method", "method_class", "method_for", "method_names", "register_method"]
