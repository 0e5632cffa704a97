"""Calibrated bases for the KV cache, and the rotary helpers that move keys across RoPE.

Per layer and K/V head, the eigenvectors of the uncentered second moment of the keys and of the
values over training documents, by descending eigenvalue (``calibration.fit_bases``):

    U_K = eigvecs(sum_docs K^T K),  U_V = eigvecs(sum_docs V^T V)        (Ly, H_kv, d, d) each

``key_space`` says which keys: ``"post_rope"`` (as the cache receives them) or ``"pre_rope"`` (the
keys with the rotary embedding of their position undone, k = R(-theta p) k_rot; RoPE mixes a
key's spectrum across positions, so pre-RoPE keys are lower rank).  A pre-RoPE store un-rotates
each stored key at its position, projects it, and rotates it back once, when the block is stored:
the dense cache then holds post-RoPE keys again, and decode pays nothing per step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from drrl_env.cache import code_version
from drrl_env.calibration import fit_bases, load_or_fit
from drrl_env.kv.levels import Level

KEY_SPACES = ("post_rope", "pre_rope")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The 90-degree rotation of each RoPE plane (Llama's pairing of dims i and i + d/2)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def unrotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Pre-RoPE keys from post-RoPE ``keys`` (..., n, d) at angles ``cos``, ``sin`` (n, d): R(-theta) k."""
    return keys * cos - rotate_half(keys) * sin


def rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Post-RoPE keys from pre-RoPE ``keys`` (..., n, d): R(theta) k (``apply_rotary_pos_emb``)."""
    return keys * cos + rotate_half(keys) * sin


def rotary_angles(model: torch.nn.Module, positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (n, d) float32, of the model's rotary embedding at ``positions`` (n,)."""
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    if rotary is None:
        raise ValueError(
            f"{type(model).__name__} has no rotary embedding (model.rotary_emb); use key_space='post_rope'"
        )
    probe = torch.zeros(1, len(positions), head_dim, device=positions.device)
    cos, sin = rotary(probe, positions[None])
    return cos[0].float(), sin[0].float()


@dataclass(frozen=True)
class KVBases:
    """Key and value bases (Ly, H_kv, d, d), columns by descending energy, keys in ``key_space``."""

    key_space: str
    keys: torch.Tensor
    values: torch.Tensor

    def to(self, device: torch.device) -> KVBases:
        return dataclasses.replace(self, keys=self.keys.to(device), values=self.values.to(device))

    def rebuild_keys(
        self, layer: int, keys: torch.Tensor, level: Level, angles: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor | None:
        """What attention reads for post-RoPE ``keys`` (..., H_kv, n, d) of ``layer`` stored at ``level``, rebuilt
        in the key space: pre-RoPE keys are un-rotated at their positions' ``angles`` (cos, sin) (n, d),
        rebuilt, and rotated back.  None: evicted."""
        basis = self.keys[layer]
        if self.key_space == "post_rope":
            return level.reconstruct(keys, basis, "key")
        if angles is None:
            raise ValueError("pre-RoPE key bases need the keys' rotary angles")
        rebuilt = level.reconstruct(unrotate(keys, *angles), basis, "key")
        return None if rebuilt is None else rotate(rebuilt, *angles)

    def rebuild_values(self, layer: int, values: torch.Tensor, level: Level) -> torch.Tensor | None:
        """What attention reads for ``values`` (..., H_kv, n, d) of ``layer`` stored at ``level``; None: evicted."""
        return level.reconstruct(values, self.values[layer], "value")

    def nbytes(self, max_rank: int) -> int:
        """fp16 bytes of the bases a deployment stores: the top ``max_rank`` columns of each, keys and values."""
        layers, heads, dim, _ = self.keys.shape
        return 2 * 2 * layers * heads * dim * max_rank


def fit_kv_bases(source, documents: int, key_space: str, cache_folder: Path | None) -> KVBases:
    """Bases fitted on documents 0..documents-1 of ``source`` (a training-split ``HFAttentionSource``),
    read from ``cache_folder`` when fitted before (content-hashed: model, tokens, key space, code)."""
    if key_space not in KEY_SPACES:
        raise ValueError(f"key_space={key_space!r} is not allowed; choose one of {list(KEY_SPACES)}")
    count = min(documents, len(source.document_names))
    keys = [source.document_key(i) for i in range(count)]
    digest = hashlib.sha256(json.dumps({"kv_bases": key_space, "code": code_version(), "documents": keys}).encode())
    path = None if cache_folder is None else Path(cache_folder) / "calibration" / f"kv-{digest.hexdigest()}.pt"

    def traces():
        for i in range(count):
            trace = source.trace(i)
            if key_space == "pre_rope":
                cos, sin = rotary_angles(
                    source.model, torch.arange(trace.keys.shape[-2], device=trace.keys.device), trace.keys.shape[-1]
                )
                trace = dataclasses.replace(trace, keys=unrotate(trace.keys, cos, sin))
            yield trace

    key_basis, value_basis = load_or_fit(path, lambda: fit_bases(traces()))
    return KVBases(key_space, key_basis.to(source.device), value_basis.to(source.device))
