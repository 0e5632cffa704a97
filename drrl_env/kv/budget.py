"""The KV cache's byte budget, and the projection of a requested action onto what fits.

The cap is ``budget`` times the exact cache at the episode's *maximum* length (known when serving:
the prompt plus ``max_new_tokens``), in fp16 on both sides.  Reserved up front: the sinks, the
window and one block being decoded (exact), and the bases.  What is left pays for stored blocks;
since a block can always be evicted, a cache that never stores past the cap exists, and the
projection keeps to it:

    while bytes(executed) > left: lower the (layer, kind) whose level stores the most bytes by
    one rung of the ladder (ties: the later one in the order keys of layers 0..Ly-1, then values)

A rung down to ``evict`` evicts the block in that layer, keys and values alike.  sb3-contrib masks
each ``MultiDiscrete`` dimension on its own and cannot say "the sum fits", so the environment
projects and reports the executed action in ``info``; ``dimension_mask`` gives each dimension's
levels that fit on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ByteBudget:
    """``cap`` bytes in all; ``reserved`` of them taken by what stays exact and the bases."""

    cap: int
    reserved: int

    def __post_init__(self) -> None:
        if self.reserved > self.cap:
            raise ValueError(
                f"the budget of {self.cap} bytes cannot hold the sinks, window, decoding block and bases "
                f"({self.reserved} bytes); raise budget, or shorten window or block"
            )

    def left(self, stored: int) -> int:
        """Bytes still free for blocks when ``stored`` bytes of blocks are stored."""
        return self.cap - self.reserved - stored


def block_bytes(key_levels: np.ndarray, value_levels: np.ndarray, level_bytes: np.ndarray, evict: int | None) -> int:
    """Bytes of a block stored at ``key_levels``, ``value_levels`` (Ly,) given ``level_bytes`` (2, R)
    per layer; a layer where either is ``evict`` (a ladder index) stores nothing."""
    total = level_bytes[0, key_levels] + level_bytes[1, value_levels]
    if evict is not None:
        total = np.where((key_levels == evict) | (value_levels == evict), 0, total)
    return int(total.sum())


def project(
    key_levels: np.ndarray, value_levels: np.ndarray, level_bytes: np.ndarray, left: int, evict: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The executed (key levels, value levels) (Ly,): the request lowered until it fits in ``left``
    bytes (module docstring); unchanged when it fits."""
    levels = np.stack([np.asarray(key_levels, dtype=np.int64), np.asarray(value_levels, dtype=np.int64)])  # (2, Ly)
    if evict is not None:
        gone = (levels == evict).any(0)
        levels[:, gone] = evict
        cheapest = sum(min(b for i, b in enumerate(row) if i != evict) for row in level_bytes)
        if left < cheapest:  # no layer can store anything: the loop below would evict them all, one rung at a time
            return np.full_like(levels[0], evict), np.full_like(levels[1], evict)
    while block_bytes(levels[0], levels[1], level_bytes, evict) > left:
        stored = (
            np.where(levels == evict, -1, np.take_along_axis(level_bytes, levels, axis=1))
            if evict is not None
            else np.take_along_axis(level_bytes, levels, axis=1)
        )
        flat = stored.reshape(-1)
        pick = len(flat) - 1 - int(np.argmax(flat[::-1]))  # the last of the largest
        kind, layer = divmod(pick, levels.shape[1])
        if levels[kind, layer] == 0:
            raise ValueError("no level of the ladder fits the budget; the ladder must start with 'evict'")
        levels[kind, layer] -= 1
        if evict is not None and levels[kind, layer] == evict:
            levels[:, layer] = evict
    return levels[0], levels[1]


def dimension_mask(level_bytes: np.ndarray, left: int, n_layers: int, evict: int | None) -> np.ndarray:
    """(2 Ly, R) levels each dimension may take on its own: its bytes plus the other kind's cheapest
    stored level fit in ``left`` (evict always)."""
    cheapest = [min((b for i, b in enumerate(row) if i != evict), default=0) for row in level_bytes]
    fits = np.stack([level_bytes[kind] + cheapest[1 - kind] <= left for kind in (0, 1)])  # (2, R)
    if evict is not None:
        fits[:, evict] = True
    return np.repeat(fits, n_layers, axis=0)
