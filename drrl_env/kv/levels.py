"""Storage levels of a KV-cache block, and ladders of them.

A level says how one block of ``n`` tokens of one layer's keys (or values) is kept once it leaves
the recent window, per K/V head of width ``d``:

| level     | stored (per head)                                            | bytes per head (fp16 = 2 bytes)    |
|-----------|--------------------------------------------------------------|------------------------------------|
| ``evict`` | nothing: the block's tokens are dropped from the cache       | 0                                  |
| ``rR``    | coefficients X U_R (n, R) in the layer's calibrated basis U  | 2 n R                              |
| ``intB``  | B-bit integers, KIVI-style: keys per channel (a scale and a  | n d B / 8 + 4 d (keys),            |
|           | zero point per channel and block), values per token (one per | n d B / 8 + 4 n (values)           |
|           | token)                                                       |                                    |
| ``exact`` | the block as computed                                        | 2 n d                              |

The basis itself (d x d per layer, head and kind) is stored once per model and counted by the
budget as a fixed cost (``cache.py``), not per block.  Reconstruction is what attention reads:
``X U_R U_R^T`` for a rank level, ``scale * q + zero`` for an integer level.

A ladder is a tuple of levels in ascending bytes (``parse_ladder("evict,r8,r16,int4,exact")``);
an action picks an index into it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

KINDS = ("key", "value")
FP16_BYTES = 2


class Level(ABC):
    """How a block is stored: its bytes and its reconstruction (module docstring)."""

    name: str

    @abstractmethod
    def block_bytes(self, n_tokens: int, head_dim: int, kind: str) -> int:
        """Bytes one K/V head of an ``n_tokens`` block occupies at this level."""

    @abstractmethod
    def reconstruct(self, x: torch.Tensor, basis: torch.Tensor, kind: str) -> torch.Tensor | None:
        """What attention reads back for ``x`` (H_kv, n, d) stored at this level; ``basis`` (H_kv, d, d)
        holds the calibrated basis, columns by descending energy.  None: the tokens are evicted."""

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Evict(Level):
    name: str = "evict"

    def block_bytes(self, n_tokens: int, head_dim: int, kind: str) -> int:
        return 0

    def reconstruct(self, x: torch.Tensor, basis: torch.Tensor, kind: str) -> None:
        return None


@dataclass(frozen=True)
class Exact(Level):
    name: str = "exact"

    def block_bytes(self, n_tokens: int, head_dim: int, kind: str) -> int:
        return FP16_BYTES * n_tokens * head_dim

    def reconstruct(self, x: torch.Tensor, basis: torch.Tensor, kind: str) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class Rank(Level):
    """Rank ``rank`` in the calibrated basis: X -> (X U_r) U_r^T."""

    rank: int

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"r{self.rank}"

    def block_bytes(self, n_tokens: int, head_dim: int, kind: str) -> int:
        return FP16_BYTES * n_tokens * min(self.rank, head_dim)

    def reconstruct(self, x: torch.Tensor, basis: torch.Tensor, kind: str) -> torch.Tensor:
        top = basis[..., : self.rank]  # (H_kv, d, r)
        return (x @ top) @ top.transpose(-1, -2)  # (H_kv, n, r) -> (H_kv, n, d)


@dataclass(frozen=True)
class Quantized(Level):
    """``bits``-bit asymmetric integers (KIVI): keys share a scale and zero point per channel over the
    block (the outlier channels of keys), values per token."""

    bits: int

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"int{self.bits}"

    def block_bytes(self, n_tokens: int, head_dim: int, kind: str) -> int:
        groups = head_dim if kind == "key" else n_tokens  # one (scale, zero) pair in fp16 per group
        return -(-n_tokens * head_dim * self.bits // 8) + 2 * FP16_BYTES * groups

    def reconstruct(self, x: torch.Tensor, basis: torch.Tensor, kind: str) -> torch.Tensor:
        axis = -2 if kind == "key" else -1  # keys: min/max over tokens per channel; values: over channels per token
        low, high = x.amin(axis, keepdim=True), x.amax(axis, keepdim=True)
        scale = (high - low).clamp_min(1e-8) / (2**self.bits - 1)
        return torch.round((x - low) / scale) * scale + low


_PATTERNS = (
    (re.compile(r"evict"), lambda m: Evict()),
    (re.compile(r"exact"), lambda m: Exact()),
    (re.compile(r"r([1-9][0-9]*)"), lambda m: Rank(int(m.group(1)))),
    (re.compile(r"int(2|4|8)"), lambda m: Quantized(int(m.group(1)))),
)


def parse_level(text: str) -> Level:
    """``"evict"``, ``"exact"``, ``"r<R>"`` (R >= 1) or ``"int<B>"`` (B in 2, 4, 8)."""
    for pattern, build in _PATTERNS:
        match = pattern.fullmatch(text.strip())
        if match:
            return build(match)
    raise ValueError(
        f"level {text!r} is not allowed; use 'evict', 'exact', 'r<rank>' (e.g. r16) or 'int<bits>' with bits 2, 4 or 8"
    )


def parse_ladder(levels: str | tuple[str, ...] | list[str], head_dim: int, block: int) -> tuple[Level, ...]:
    """The ladder named by ``levels`` (comma-separated text or a sequence), checked: distinct levels, ranks
    below ``head_dim``, in ascending bytes for a block of ``block`` tokens (keys and values alike)."""
    names = [part for part in (levels.split(",") if isinstance(levels, str) else levels) if str(part).strip()]
    ladder = tuple(parse_level(str(name)) for name in names)
    if not ladder:
        raise ValueError("the level ladder is empty; pass e.g. 'evict,r8,r16,int4,exact'")
    if len({level.name for level in ladder}) != len(ladder):
        raise ValueError(f"levels {[lv.name for lv in ladder]} repeat a level")
    for level in ladder:
        if isinstance(level, Rank) and level.rank >= head_dim:
            raise ValueError(f"level {level.name} needs a rank below head_dim={head_dim}; use 'exact' for full rank")
    for kind in KINDS:
        sizes = [level.block_bytes(block, head_dim, kind) for level in ladder]
        if sizes != sorted(sizes):
            order = sorted(ladder, key=lambda lv: lv.block_bytes(block, head_dim, kind))
            raise ValueError(
                f"levels must be in ascending bytes ({kind}s of a {block}-token block); "
                f"got {[lv.name for lv in ladder]}, use {','.join(lv.name for lv in order)}"
            )
    return ladder
