"""What stands between a policy and the cache, in training and in serving alike: the observation of a
due block, and storing it within the byte budget.  ``KVCacheEnv`` and ``drrl generate`` both go
through one ``BlockController`` per document, so what an agent saw in training is what it sees
when it serves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drrl_env.kv.budget import ByteBudget, block_bytes, dimension_mask, project
from drrl_env.kv.cache import CompressedKVCache
from drrl_env.kv.observation import block_features

CONTEXT = (
    "block start / max_seq_len",
    "tokens seen / max_seq_len",
    "budget used",
    "budget left (of the free part)",
    "the block's exact bytes / bytes left (clipped at 10)",
)


@dataclass(frozen=True)
class Decision:
    """A stored block: executed and requested ladder indices ((Ly,), (2, Ly)), whether the budget lowered
    the request, and its bytes as a fraction of the block's exact bytes."""

    key_levels: np.ndarray
    value_levels: np.ndarray
    requested: np.ndarray
    projected: bool
    byte_fraction: float


class BlockController:
    """Observes due blocks and stores them within ``budget`` (``kv/budget.py``) for one document."""

    def __init__(
        self, budget: ByteBudget, n_layers: int, evict: int, max_seq_len: int, clip: float, token_bytes: int
    ) -> None:
        self.budget, self.n_layers, self.evict = budget, n_layers, evict
        self.max_seq_len, self.clip, self.token_bytes = max_seq_len, clip, token_bytes
        self.stored = 0
        self.layer_bytes = np.zeros(n_layers)

    @property
    def budget_used(self) -> float:
        """(reserved + stored bytes) / cap: at most 1."""
        return (self.budget.reserved + self.stored) / self.budget.cap

    def observe(self, cache: CompressedKVCache, index: int) -> dict[str, np.ndarray]:
        """The observation of due block ``index`` (``KVCacheEnv``'s observation space)."""
        start, _ = cache.block_positions(index)
        return {
            **block_features(cache, index, self.clip),
            **self.budget_view(cache.level_bytes(index), start, cache.seen),
        }

    def budget_view(self, sizes: np.ndarray, start: int, seen: int) -> dict[str, np.ndarray]:
        """The byte part of the observation of a block starting at ``start`` whose layers store ``sizes``
        (2, R) bytes per level, with ``seen`` tokens seen: layer bytes, context, the dimension mask."""
        left = self.budget.left(self.stored)
        mask = dimension_mask(sizes, left, self.n_layers, self.evict).reshape(-1).astype(np.int8)
        exact_layer = self.max_seq_len * self.token_bytes / self.n_layers
        free = self.budget.cap - self.budget.reserved
        context = np.array(
            [
                start / self.max_seq_len,
                seen / self.max_seq_len,
                self.budget_used,
                max(left, 0) / free,
                min(float(sizes[:, -1].sum()) * self.n_layers / max(left, 1), 10.0),
            ],
            dtype=np.float32,
        )
        return {
            "layer_bytes": np.minimum(self.layer_bytes / exact_layer, 1.0).astype(np.float32),
            "context": np.clip(context, 0.0, 10.0),
            "action_mask": mask,
        }

    def store(self, cache: CompressedKVCache, index: int, action: np.ndarray) -> Decision:
        """Stores due block ``index`` at ``action`` (2 Ly,) ladder indices (keys, then values), projected
        onto the budget."""
        decision = self.decide(cache.level_bytes(index), action)
        cache.store(index, decision.key_levels, decision.value_levels)
        return decision

    def decide(self, sizes: np.ndarray, action: np.ndarray) -> Decision:
        """Projects ``action`` (2 Ly,) for a block whose layers store ``sizes`` (2, R) bytes per level onto
        the bytes left, and counts the executed levels' bytes as stored."""
        requested = np.asarray(action, dtype=np.int64).reshape(2, self.n_layers)
        keys, values = project(requested[0], requested[1], sizes, self.budget.left(self.stored), self.evict)
        layer = np.where((keys == self.evict) | (values == self.evict), 0, sizes[0, keys] + sizes[1, values])
        self.stored += int(layer.sum())
        self.layer_bytes += layer
        top = np.full(self.n_layers, sizes.shape[1] - 1)
        return Decision(
            keys,
            values,
            requested,
            bool((keys != requested[0]).any() or (values != requested[1]).any()),
            int(layer.sum()) / block_bytes(top, top, sizes, None),
        )
