"""A seeded generator of q, k, v with a controllable singular-value decay.

For layer l, head h and segment s the rows of Q and K are drawn as ``Z diag(sigma) W^T`` where
``W`` (head_dim x head_dim) is a random orthonormal basis shared by Q and K of the head (so that
queries and keys interact, as in a trained model), ``Z`` has i.i.d. N(0, 1) entries and

    sigma_i = i ** (-p),   p = decay * exp(head_variety * (g_h + g_s)),   i = 1..head_dim,

with ``g_h`` and ``g_s`` standard normal draws per head and per segment of 64 tokens.  A larger
``decay`` gives faster-decaying spectra (low rank suffices); ``head_variety`` spreads the decay
across heads and along the sequence (so the best rank varies).  ``sigma`` is scaled so that
q.k/sqrt(d) has unit variance.  V rows are N(0, 1).  Document ``i`` is generated from the seed
``(seed, i)``: the same index always gives the same tensors.  Documents whose index is a multiple
of 5 form the test split, the others the train split.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from drrl_env.sources.base import (
    SPLIT_MODULUS,
    TEST_BUCKETS,
    VALIDATION_BUCKETS,
    AttentionSource,
    AttentionTrace,
    SourceSpec,
    register_source,
    split_of,
)

if TYPE_CHECKING:
    from drrl_env.config import EnvConfig

BLOCK = 64
GENERATOR_VERSION = 1  # bump when the generator's output changes (invalidates cached analyses)


@register_source
class SyntheticSource(AttentionSource):
    name = "synthetic"

    @classmethod
    def from_config(cls, cfg: EnvConfig, device: torch.device) -> SyntheticSource:
        return cls(
            n_layers=cfg.synthetic_layers,
            n_heads=cfg.synthetic_heads,
            n_kv_heads=cfg.synthetic_kv_heads,
            head_dim=cfg.synthetic_head_dim,
            seq_len=cfg.max_seq_len or cfg.synthetic_seq_len,
            decay=cfg.synthetic_decay,
            head_variety=cfg.synthetic_head_variety,
            causal=cfg.synthetic_causal,
            n_documents=cfg.synthetic_documents,
            seed=cfg.synthetic_seed,
            split=cfg.split,
            device=device,
        )

    def __init__(
        self,
        *,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        seq_len: int,
        decay: float,
        head_variety: float,
        causal: bool,
        n_documents: int,
        seed: int,
        split: str = "all",
        device: torch.device | None = None,
    ) -> None:
        self.spec = SourceSpec(n_layers, n_heads, n_kv_heads, head_dim, seq_len, causal)
        self.decay = decay
        self.head_variety = head_variety
        self.seed = seed
        self.device = device or torch.device("cpu")
        self._ids = [i for i in range(n_documents) if split in ("all", split_of(i))]
        if not self._ids:
            raise ValueError(
                f"synthetic_documents={n_documents} leaves no {split!r} document "
                f"(draw i belongs to the split of bucket i % {SPLIT_MODULUS}: test {TEST_BUCKETS}, "
                f"validation {VALIDATION_BUCKETS}, else train); raise synthetic_documents"
            )

    @property
    def document_names(self) -> list[str]:
        return [f"synthetic-{i}" for i in self._ids]

    def document_key(self, index: int) -> str:
        return (
            f"synthetic v{GENERATOR_VERSION} {self.spec} decay={self.decay} variety={self.head_variety} "
            f"seed={self.seed} id={self._ids[index]}"
        )

    def trace(self, index: int) -> AttentionTrace:
        spec = self.spec
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._ids[index])
        n_layers, h_kv, d, length = spec.n_layers, spec.n_kv_heads, spec.head_dim, spec.max_seq_len
        n_blocks = math.ceil(length / BLOCK)
        basis, _ = torch.linalg.qr(torch.randn(n_layers, h_kv, d, d, generator=gen))  # (n_layers, h_kv, d, d)
        head_g = torch.randn(n_layers, h_kv, 1, generator=gen)
        block_g = torch.randn(n_layers, 1, n_blocks, generator=gen)
        power = self.decay * torch.exp(self.head_variety * (head_g + block_g))  # (n_layers, h_kv, n_blocks)
        index_d = torch.arange(1, d + 1, dtype=torch.float32)
        sigma = index_d ** -power[..., None]  # (n_layers, h_kv, n_blocks, d)
        sigma = sigma / sigma.norm(dim=-1, keepdim=True) * d**0.5  # E|q|^2 = d
        sigma = sigma.repeat_interleave(BLOCK, dim=2)[:, :, :length]  # (n_layers, h_kv, L, d)

        def draw(n_heads: int) -> torch.Tensor:
            z = torch.randn(n_layers, n_heads, length, d, generator=gen)
            scaled = z * sigma.repeat_interleave(n_heads // h_kv, dim=1)  # (n_layers, n_heads, L, d)
            return scaled @ basis.repeat_interleave(n_heads // h_kv, dim=1).transpose(-1, -2)

        queries = draw(spec.n_heads)  # (n_layers, n_heads, L, d)
        keys = draw(h_kv)  # (n_layers, h_kv, L, d)
        values = torch.randn(n_layers, h_kv, length, d, generator=gen)
        scaling = torch.full((n_layers,), d**-0.5)
        return AttentionTrace(
            queries.to(self.device), keys.to(self.device), values.to(self.device), scaling, spec.causal
        )
