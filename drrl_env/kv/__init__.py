"""The KV-cache layer: what DRRL-KV-v0 and a serving cache share, in torch alone (no gymnasium).

- ``levels.py``: the storage levels of a block (evict, rank r in a calibrated basis, int8/int4, exact),
  each with its byte count and its reconstruction; a ladder is an ordered tuple of them.
- ``bases.py``: per-layer, per-K/V-head bases fitted on training documents (keys before or after
  RoPE, values), and the rotary helpers that move keys between the two.
- ``cache.py``: ``CompressedKVCache``, a ``transformers.Cache``: sinks and a recent window exact,
  every older block stored once at the level a policy chose; byte accounting.  Two paths: memory
  (stored blocks rebuilt dense in place: the environment's) and speed (stored blocks in groups of
  their own, rank levels kept as coefficients: ``drrl generate``'s default).
- ``attention.py``: the attention of a forward over that cache, on either path, which also records
  what the observation reads (the newest queries' attention mass, outputs and log-normalizers).
- ``observation.py``: the deployable features of the block that leaves the window.
- ``budget.py``: the byte budget and the projection of a requested action onto what fits.
- ``controller.py``: the block controller: which block leaves the window, the budget it sees, and
  the storage of the level decided.
- ``config.py``: ``KVConfig``, the environment's defaults in one place.
- ``episode.py``: one document decoded block by block over the cache (the environment's and the
  exact reference's one loop).
- ``output_errors.py``: for the fast mode, each decision's isolated attention-output error energy
  (per step, layer, K/V and level), exact within the layer.
- ``fast.py``: the fast mode's surrogate: excess NLL as a non-negative combination of those errors
  (fitted by NNLS), plans projected on the budget and scored thousands of times per second.

The layering: ``drrl_env.kv`` imports torch, numpy, scipy (``fast.py``'s NNLS) and transformers'
cache base class; the environment (``drrl_env/kv_env.py``) and ``drrl generate`` import it,
never the reverse.
"""
