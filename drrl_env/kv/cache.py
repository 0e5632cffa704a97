"""``CompressedKVCache``: a ``transformers.Cache`` that keeps sinks and a recent window exact and stores
every older block once, at the level a policy chose.

Tokens are grouped in blocks of ``block`` positions: block k holds positions [k B, (k + 1) B).  The
first ``sinks`` positions stay exact for good.  Block k *leaves the window* once the cache has seen
``(k + 1) B + window`` tokens, and is then due: it is stored, in every layer, at a level of the
ladder for its keys and one for its values (``levels.py``), and never raised again.  A block whose
key or value level is ``evict`` is dropped whole (a value without its key receives no attention).

Memory path: each layer keeps what attention reads, dense: (batch, H_kv, S, d) keys and values of
the S stored tokens (sinks, stored blocks rebuilt once at their level, the window), and their
positions (S,).  Evicted tokens are removed, so ``get_seq_length`` (tokens seen) exceeds S, and
``get_mask_sizes`` reports (S + q, seen - S): the stored tokens all precede the queries, the new ones
are causal among themselves.  ``nbytes`` counts what a deployment stores instead: exact tokens in
fp16, stored blocks at their levels' bytes, plus the bases.

Speed path (``path="speed"``): every block leaves the dense tensors when it is stored, for a *stored
group* of the layer keyed by (key rank, value rank), 0 for a dense side.  A group holds what a
deployment stores for a rank level, the coefficients C = X U_r (b, H_kv, n, r), and the rebuilt
block for any other level.  Attention scores each group in its own coordinates (``attention.py``):
r numbers read per token instead of d, and the dense tensors, which every forward extends by
concatenation (as ``DynamicCache`` does), hold only the sinks, the window and the undecided tokens,
so a decode step no longer copies the whole cache.  Pre-RoPE keys stay dense: their rotation depends
on the position, so Q (R(p) U_r) is not one projection per layer.  Integer levels are rebuilt dense
on both paths (PyTorch has no CPU kernel that reads them packed).  ``path="speed-bf16"`` is the speed
path with the stored groups held in bfloat16: half their bytes, scored by the CPU's or GPU's bf16
matmul.  Its rounding makes it differ from the other two paths, which the environment rewards, so its
perplexity is measured (``drrl generate --eval``), not assumed.

Decisions come either from the caller (``store``: the environment decides each due block) or from
``policy``, called for every due block when layer 0 of the next forward arrives (``generate``).
Batches share one decision per block (equal-length sequences, no padding).  Beam search and other
reorderings are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicLayer

from drrl_env.kv.bases import KVBases
from drrl_env.kv.levels import FP16_BYTES, KINDS, Evict, Level, Rank

RECENT_QUERIES = 32  # queries each layer keeps for the observation (the newest ones)
KV_LAYER = "drrl_kv_layer"  # attribute that tags the keys a CompressedLayer hands to attention
# (cache, block index) -> None: decides due block ``index`` and stores it (``cache.store``)
BlockPolicy = Callable[["CompressedKVCache", int], None]
# dense K/V rebuilt from what is stored, or stored groups (rank levels read as coefficients) held in the
# model's dtype or in bfloat16
PATHS = ("memory", "speed", "speed-bf16")
GROUP_DTYPES = {"speed": None, "speed-bf16": torch.bfloat16}  # None: the model's dtype


@dataclass
class RecentQueries:
    """The last ``limit`` queries a layer saw, with what attention computed for them (deployable: the
    model computes these anyway): queries (b, H, m, d) post-RoPE, their log-normalizers (b, H, m) and
    outputs (b, H, m, d)."""

    limit: int
    queries: torch.Tensor | None = None
    lse: torch.Tensor | None = None
    outputs: torch.Tensor | None = None

    def add(self, queries: torch.Tensor, lse: torch.Tensor, outputs: torch.Tensor) -> None:
        def keep(old: torch.Tensor | None, new: torch.Tensor, axis: int) -> torch.Tensor:
            both = new if old is None else torch.cat([old, new], dim=axis)
            return both.narrow(axis, max(0, both.shape[axis] - self.limit), min(self.limit, both.shape[axis]))

        self.queries, self.lse, self.outputs = (
            keep(self.queries, queries, -2),
            keep(self.lse, lse, -1),
            keep(self.outputs, outputs, -2),
        )


@dataclass
class StoredGroup:
    """Stored blocks of one layer on the speed path, at one (key rank, value rank) (module docstring).
    ``keys`` (b, H_kv, n, r_k) are coefficients in ``key_basis`` (H_kv, d, r_k), or rebuilt dense keys
    (b, H_kv, n, d) when it is None; ``values`` likewise in ``value_basis``."""

    key_basis: torch.Tensor | None
    value_basis: torch.Tensor | None
    keys: torch.Tensor
    values: torch.Tensor

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys = torch.cat([self.keys, keys], dim=-2)  # (b, H_kv, n + n', r_k or d)
        self.values = torch.cat([self.values, values], dim=-2)


class CompressedLayer(DynamicLayer):
    """One layer's stored keys and values (module docstring), their positions, the attention mass each
    stored token has received since it entered from the recorded queries (summed over batch, heads and
    queries: H2O's signal) and ``reads``, the count of those (sequence, head, query) readings.
    ``groups`` holds the speed path's stored groups by (key rank, value rank), 0 for a dense side; their
    tokens have left the dense tensors (and ``positions``, ``mass``, ``reads``: they are decided for good)."""

    is_croppable = False

    def __init__(self, recent: int) -> None:
        super().__init__()
        self.seen = 0
        self.positions = torch.zeros(0, dtype=torch.long)
        self.mass = torch.zeros(0)
        self.reads = torch.zeros(0)
        self.recent = RecentQueries(recent)
        self.groups: dict[tuple[int, int], StoredGroup] = {}
        self.speed = False  # the speed path's attention, set by the cache (``attention.py``)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.positions, self.mass, self.reads = (x.to(self.device) for x in (self.positions, self.mass, self.reads))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self.keys = torch.cat([self.keys, key_states], dim=-2)  # (b, H_kv, S + n, d)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.positions = torch.cat([self.positions, torch.arange(self.seen, self.seen + n, device=self.device)])
        self.mass = torch.cat([self.mass, torch.zeros(n, device=self.device)])
        self.reads = torch.cat([self.reads, torch.zeros(n, device=self.device)])
        self.seen += n
        setattr(self.keys, KV_LAYER, self)  # the attention function finds the layer through its keys
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.stored
        return stored + query_length, self.seen - stored

    def get_seq_length(self) -> int:
        return self.seen

    @property
    def stored(self) -> int:
        return 0 if self.keys is None or self.keys.dim() < 4 else self.keys.shape[-2]

    def span(self, start: int, stop: int) -> slice:
        """The stored entries of positions [start, stop), which must all still be stored (contiguous)."""
        first = int(torch.searchsorted(self.positions, start))
        last = int(torch.searchsorted(self.positions, stop))
        if last - first != stop - start:
            raise RuntimeError(f"positions {start}..{stop} are no longer all stored; a block is stored only once")
        return slice(first, last)

    def replace(self, entries: slice, keys: torch.Tensor | None, values: torch.Tensor | None) -> None:
        """Entries ``entries`` rebuilt as ``keys``/``values`` (b, H_kv, n, d), or removed (None)."""
        if keys is None:
            keep = torch.ones(self.stored, dtype=torch.bool, device=self.device)
            keep[entries] = False
            self.keys, self.values = self.keys[:, :, keep], self.values[:, :, keep]
            self.positions, self.mass, self.reads = self.positions[keep], self.mass[keep], self.reads[keep]
        else:
            self.keys[:, :, entries] = keys.to(self.keys.dtype)
            self.values[:, :, entries] = values.to(self.values.dtype)

    def move_to_group(
        self,
        entries: slice,
        key_basis: torch.Tensor | None,
        value_basis: torch.Tensor | None,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> None:
        """Entries ``entries`` moved out of the dense tensors to the stored group of their bases' ranks, as
        ``keys``, ``values`` (``StoredGroup``'s shapes)."""
        ranks = tuple(0 if basis is None else basis.shape[-1] for basis in (key_basis, value_basis))
        group = self.groups.get(ranks)
        if group is None:
            self.groups[ranks] = StoredGroup(key_basis, value_basis, keys, values)
        else:
            group.append(keys, values)
        self.replace(entries, None, None)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError(
            "CompressedKVCache shares one decision per block across the batch: beam search, "
            "assisted decoding and other reorderings are not supported"
        )


@dataclass
class StoredBlock:
    """A decided block: its positions and the ladder indices of its keys and values per layer (Ly,)."""

    start: int
    stop: int
    key_levels: np.ndarray
    value_levels: np.ndarray
    nbytes: int = field(default=0)


class CompressedKVCache(Cache):
    """See the module docstring.  ``angles(positions) -> (cos, sin)`` is needed for pre-RoPE bases."""

    def __init__(
        self,
        n_layers: int,
        *,
        ladder: tuple[Level, ...],
        bases: KVBases,
        block: int,
        window: int,
        sinks: int,
        policy: BlockPolicy | None = None,
        angles: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        path: str = "memory",
    ) -> None:
        if path not in PATHS:
            raise ValueError(f"path={path!r} is not allowed; choose one of {list(PATHS)}")
        if window % block or window < 0 or block < 1:
            raise ValueError(f"window={window} must be a non-negative multiple of block={block}")
        if not 0 <= sinks <= block:
            raise ValueError(f"sinks={sinks} must lie in 0..block={block}")
        if bases.key_space == "pre_rope" and angles is None:
            raise ValueError("pre-RoPE key bases need the model's rotary angles (angles=...)")
        super().__init__(layers=[CompressedLayer(RECENT_QUERIES) for _ in range(n_layers)])
        for layer in self.layers:
            layer.speed = path != "memory"
        self.ladder, self.bases, self.block, self.window, self.sinks = ladder, bases, block, window, sinks
        self.policy, self.angles, self.path = policy, angles, path
        self._angles: tuple[tuple[int, int] | None, Any] = (None, None)  # the last block's rotary angles
        self.blocks: list[StoredBlock] = []
        self.head_dim, self.n_kv_heads = bases.keys.shape[-1], bases.keys.shape[1]
        self.batch = 1
        self.max_rank = max((getattr(level, "rank", 0) for level in ladder), default=0)

    # -- the cache contract -------------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx == 0:
            self.batch = key_states.shape[0]
            if self.policy is not None:
                while (due := self.due_block()) is not None:
                    self.policy(self, due)
                    if self.due_block() == due:
                        raise RuntimeError(f"the cache's policy did not store due block {due}")
        return self.layers[layer_idx].update(key_states, value_states)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.layers[0].reorder_cache(beam_idx)

    # -- decisions ------------------------------------------------------------------------------------
    @property
    def seen(self) -> int:
        """Tokens seen (every layer has seen the same once a forward is complete)."""
        return self.layers[0].seen

    def due_block(self) -> int | None:
        """The next undecided block if it has left the window, else None."""
        k = len(self.blocks)
        return k if (k + 1) * self.block + self.window <= self.seen else None

    def block_positions(self, index: int) -> tuple[int, int]:
        """[start, stop) of block ``index``'s compressible positions (the sinks excluded)."""
        return max(index * self.block, self.sinks), (index + 1) * self.block

    def level_bytes(self, index: int) -> np.ndarray:
        """(2, R) bytes one layer stores for block ``index`` at each ladder level (all K/V heads and
        sequences of the batch), keys then values."""
        start, stop = self.block_positions(index)
        heads = self.n_kv_heads * self.batch
        return np.array(
            [[level.block_bytes(stop - start, self.head_dim, kind) * heads for level in self.ladder] for kind in KINDS]
        )

    def store(self, index: int, key_levels: np.ndarray, value_levels: np.ndarray) -> StoredBlock:
        """Stores due block ``index`` at ladder indices ``key_levels``, ``value_levels`` (Ly,) per layer."""
        if index != len(self.blocks) or self.due_block() != index:
            raise RuntimeError(
                f"block {index} is not due (next undecided: {len(self.blocks)}, "
                f"tokens seen: {self.seen}); blocks are stored once, in order, after leaving the window"
            )
        key_levels, value_levels = np.asarray(key_levels, dtype=np.int64), np.asarray(value_levels, dtype=np.int64)
        start, stop = self.block_positions(index)
        nbytes = 0
        for layer_idx, layer in enumerate(self.layers):
            key_level, value_level = self.ladder[key_levels[layer_idx]], self.ladder[value_levels[layer_idx]]
            entries = layer.span(start, stop)
            if isinstance(key_level, Evict) or isinstance(value_level, Evict):
                layer.replace(entries, None, None)
                continue
            key_basis = self.group_basis(layer_idx, key_level, "key")
            value_basis = self.group_basis(layer_idx, value_level, "value")
            keys, values = layer.keys[:, :, entries], layer.values[:, :, entries]  # (b, H_kv, n, d)
            if key_basis is None:
                keys = self.bases.rebuild_keys(layer_idx, keys, key_level, self.block_angles(start, stop))
            else:
                keys = keys @ key_basis  # (b, H_kv, n, d) @ (H_kv, d, r) -> (b, H_kv, n, r): the coefficients
            if value_basis is None:
                values = self.bases.rebuild_values(layer_idx, values, value_level)
            else:
                values = values @ value_basis
            if self.path == "memory":
                layer.replace(entries, keys, values)
            else:
                dtype = GROUP_DTYPES[self.path] or layer.keys.dtype
                layer.move_to_group(
                    entries,
                    None if key_basis is None else key_basis.to(dtype),
                    None if value_basis is None else value_basis.to(dtype),
                    keys.to(dtype),
                    values.to(dtype),
                )
            heads = self.n_kv_heads * self.batch
            nbytes += heads * (
                key_level.block_bytes(stop - start, self.head_dim, "key")
                + value_level.block_bytes(stop - start, self.head_dim, "value")
            )
        block = StoredBlock(start, stop, key_levels, value_levels, nbytes)
        self.blocks.append(block)
        return block

    def group_basis(self, layer_idx: int, level: Level, kind: str) -> torch.Tensor | None:
        """The top-r basis columns (H_kv, d, r) in which the speed path keeps ``kind`` at rank level ``level``
        of layer ``layer_idx``; None where it is kept dense (memory path, other levels, pre-RoPE keys)."""
        if self.path == "memory" or not isinstance(level, Rank):
            return None
        if kind == "key" and self.bases.key_space != "post_rope":
            return None
        basis = self.bases.keys if kind == "key" else self.bases.values
        return basis[layer_idx, :, :, : level.rank].to(self.layers[layer_idx].keys.dtype)

    def block_angles(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The rotary (cos, sin) (n, d) of positions [start, stop) for pre-RoPE bases (computed once per block)."""
        if self.bases.key_space == "post_rope":
            return None
        if self._angles[0] != (start, stop):
            device = self.layers[0].device
            self._angles = ((start, stop), self.angles(torch.arange(start, stop, device=device)))
        return self._angles[1]

    # -- bytes ----------------------------------------------------------------------------------------
    def token_bytes(self) -> int:
        """fp16 bytes of one exact token in all layers, keys and values."""
        return 2 * FP16_BYTES * len(self.layers) * self.n_kv_heads * self.head_dim * self.batch

    def nbytes(self) -> int:
        """Bytes a deployment stores now: exact tokens (sinks, window, undecided), stored blocks, the bases."""
        decided = sum(block.stop - block.start for block in self.blocks)
        return (
            (self.seen - decided) * self.token_bytes()
            + sum(block.nbytes for block in self.blocks)
            + self.bases.nbytes(self.max_rank)
        )
