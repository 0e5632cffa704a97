"""The math of low-rank attention.

- ``kernels.py``: the causal mask and the fused attention kernel every method ends in.
- ``methods/``: one file per low-rank method (``svd``, ``shared_key``), registered by name.
- ``workload.py``: the segment loop shared by the reward, the model forward and the latency timer.
- ``linalg.py``: factorizations, energies, the exact score change and the output bounds.
"""

from drrl_env.attention.methods import LowRankMethod, get_method, method_names, register_method

__all__ = ["LowRankMethod", "get_method", "method_names", "register_method"]
