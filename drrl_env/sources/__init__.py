"""Attention sources: where the environment's q, k, v come from."""

from drrl_env.sources.base import AttentionSource, AttentionTrace, SourceSpec
from drrl_env.sources.synthetic import SyntheticSource

__all__ = ["AttentionSource", "AttentionTrace", "SourceSpec", "SyntheticSource"]
