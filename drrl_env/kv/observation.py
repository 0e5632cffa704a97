"""The deployable features of the block that leaves the window, per layer and storage level.

For layer l, block X_K, X_V (H_kv, n, d) (exact: they are still in the window), and the layer's
most recent queries Q (H, m, d) (m = ``cache.RECENT_QUERIES``) with their log-normalizers lse and
outputs o (``RecentQueries``):

- ``energy[l, kind, i]`` = 1 - ||X - X_i||_F^2 / ||X||_F^2: the energy level i keeps (X_i its
  reconstruction; 0 for evict, 1 for exact).  For a rank level this is the block's spectrum in the
  calibrated basis.
- ``estimate[l, kind, i]``: the change of the recent queries' attention output if the block were
  stored at level i, relative to ||o||, averaged over heads and queries (log1p, clipped):
  with a_j = exp(q k_j * s - lse) the attention the block's token j receives,
    keys:   sum_j a_j |delta_j| ||v_j - o||,  delta_j = q (k_j,i - k_j) * s  (first order in the score change)
    values: sum_j a_j ||v_j,i - v_j||         (exact for the values alone)
    evict:  ||sum_j a_j (o - v_j)|| / (1 - sum_j a_j)   (exact: the block's tokens removed)
  The key term linearizes the softmax, so it estimates rather than bounds; its rank correlation
  with the realized next-block excess NLL is reported by ``benchmarks/kv_frontier.py``.
- ``mass[l]`` = (sum_j a_j averaged over the recent queries and heads, the attention accumulated by
  the block's tokens since they entered divided by its readings: the recorded (sequence, head,
  query) triples that saw them, ``CompressedLayer.reads``), so both are a mean attention per
  reading, whatever share of each forward's queries was recorded: H2O's signal.  Before observation
  version 2 the second was divided by every head and token since insertion, though only the newest
  ``RECENT_QUERIES`` of each forward are recorded: 4x too small in the environment's blocks of 128,
  and near 0 after a long prefill.

Nothing here reads future tokens or an exact output the deployed model would not compute: the
queries, lse and outputs are the model's own, recorded by ``kv/attention.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from drrl_env.kv.cache import CompressedKVCache
from drrl_env.kv.levels import Evict

OBSERVATION_VERSION = 2  # bump when the features change meaning: trained agents' sidecars and cached exact runs name it


def block_features(cache: CompressedKVCache, index: int, clip: float) -> dict[str, np.ndarray]:
    """``energy`` (Ly, 2, R), ``estimate`` (Ly, 2, R) and ``mass`` (Ly, 2) of due block ``index``."""
    start, stop = cache.block_positions(index)
    stored = [i for i, level in enumerate(cache.ladder) if not isinstance(level, Evict)]
    evicted = [i for i, level in enumerate(cache.ladder) if isinstance(level, Evict)]
    rows = []
    with torch.no_grad():
        for layer_idx, layer in enumerate(cache.layers):
            entries = layer.span(start, stop)
            keys, values = layer.keys[:, :, entries].float(), layer.values[:, :, entries].float()  # (b, H_kv, n, d)
            recent = layer.recent
            b, heads, m, d = recent.queries.shape
            kv_heads = keys.shape[1]
            group = heads // kv_heads
            queries = recent.queries.float().reshape(b, kv_heads, group * m, d)  # (b, H_kv, g m, d)
            lse = recent.lse.reshape(b, kv_heads, group * m, 1)
            out = recent.outputs.float().reshape(b, kv_heads, group * m, d)
            scale = d**-0.5
            attn = torch.exp((queries @ keys.transpose(-1, -2)) * scale - lse)  # (b, H_kv, g m, n)
            out_norm = out.norm(dim=-1).clamp_min(1e-12)  # (b, H_kv, g m)
            # ||v_j - o|| = sqrt(||v_j||^2 + ||o||^2 - 2 v_j.o), (b, H_kv, g m, n)
            spread = (
                (
                    values.square().sum(-1)[:, :, None]
                    + out.square().sum(-1)[..., None]
                    - 2 * out @ values.transpose(-1, -2)
                )
                .clamp_min(0)
                .sqrt()
            )
            block_mass = attn.sum(-1)  # (b, H_kv, g m)
            accumulated = layer.mass[entries].sum() / layer.reads[entries].sum().clamp_min(1.0)
            # sum_j a_j (o - v_j) = mass o - A_blk V_blk, (b, H_kv, g m, d)
            removed = (block_mass[..., None] * out - attn @ values).norm(dim=-1) / (1 - block_mass).clamp_min(1e-6)
            angles = cache.block_angles(start, stop)
            rebuilt_keys = torch.stack(
                [cache.bases.rebuild_keys(layer_idx, keys, cache.ladder[i], angles) for i in stored]
            )  # (R', b, H_kv, n, d)
            rebuilt_values = torch.stack(
                [cache.bases.rebuild_values(layer_idx, values, cache.ladder[i]) for i in stored]
            )
            key_error, value_error = rebuilt_keys - keys, rebuilt_values - values
            delta = (queries @ key_error.transpose(-1, -2)) * scale  # (R', b, H_kv, g m, n)
            key_change = (attn * delta.abs() * spread).sum(-1) / out_norm  # (R', b, H_kv, g m)
            value_change = (attn @ value_error.norm(dim=-1)[..., None])[..., 0] / out_norm
            energy = torch.zeros(2, len(cache.ladder))
            estimate = torch.zeros(2, len(cache.ladder))
            energy[0, stored] = 1 - key_error.square().sum((1, 2, 3, 4)) / keys.square().sum().clamp_min(1e-30)
            energy[1, stored] = 1 - value_error.square().sum((1, 2, 3, 4)) / values.square().sum().clamp_min(1e-30)
            estimate[0, stored] = key_change.mean((1, 2, 3))
            estimate[1, stored] = value_change.mean((1, 2, 3))
            estimate[:, evicted] = (removed / out_norm).mean()
            rows.append((energy.clamp(0, 1), estimate, torch.stack([block_mass.mean(), accumulated.float()])))
    energy, estimate, mass = (torch.stack(parts).cpu().numpy().astype(np.float32) for parts in zip(*rows))
    return {
        "energy": energy,
        "estimate": np.log1p(np.minimum(estimate, clip)).astype(np.float32),
        "mass": np.clip(mass, 0.0, 1.0),
    }
