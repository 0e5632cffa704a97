"""The lightweight Transformer policy network of DR-RL as an SB3 features extractor.

The observation becomes a short sequence of tokens:

    one token per head   [q_spectrum_h, k_spectrum_h, output_bound_h, change_bound_h,
                          tail_energy_h, band_energy_h]               (2d + 6R features)
    one token per rank   [cost_r, layer_bound_r (2), safe_r, mean over heads of
                          output_bound_r, change_bound_r, tail_energy_r (2), band_energy_r (2)]  (10 features)
    one context token    [context]                                    (6 features)

each projected to ``width`` and tagged with a learned type embedding (rank tokens also with a
learned embedding of their index), then a small pre-norm encoder (non-causal self-attention)
mixes them.  The features are the context token's output and every rank token's output,
concatenated: (R + 1) * width values, so a policy head can score each rank by what the encoder
learned about it.  Shapes come from the observation space: any head count, head dimension and
rank grid works without code changes.  The last forward pass's attention weights are kept in
``last_attention`` (one (B, n_heads, tokens, tokens) tensor per layer) for plots.
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class EncoderBlock(nn.Module):
    """Pre-norm self-attention + feed-forward block that keeps its attention weights."""

    def __init__(self, width: int, n_heads: int, ff_mult: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff_mult * width), nn.GELU(), nn.Linear(ff_mult * width, width))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(x)  # (B, N, width)
        attended, weights = self.attn(
            h, h, h, need_weights=True, average_attn_weights=False
        )  # weights (B, heads, N, N)
        x = x + attended
        return x + self.ff(self.norm2(x)), weights


class RankTransformerExtractor(BaseFeaturesExtractor):
    """Tokens per head, per rank and for the context -> ``n_layers`` encoder blocks -> features."""

    def __init__(self, observation_space: spaces.Dict, width: int = 64, n_layers: int = 2, n_heads: int = 4) -> None:
        shapes = {key: space.shape for key, space in observation_space.spaces.items()}
        missing = {"q_spectrum", "output_bound", "cost", "context", "action_mask"} - set(shapes)
        assert not missing, (
            f"RankTransformerExtractor needs a DRRL-v0 observation space; missing keys {sorted(missing)}"
        )
        assert width % n_heads == 0, f"width={width} must be a multiple of n_heads={n_heads}"
        heads, head_dim = shapes["q_spectrum"]
        n_ranks = shapes["cost"][0]
        super().__init__(observation_space, features_dim=(n_ranks + 1) * width)
        self.heads, self.n_ranks = heads, n_ranks
        self.head_proj = nn.Linear(2 * head_dim + 6 * n_ranks, width)
        self.rank_proj = nn.Linear(10, width)
        self.context_proj = nn.Linear(shapes["context"][0], width)
        self.type_embedding = nn.Parameter(torch.zeros(3, width))
        self.rank_embedding = nn.Parameter(torch.zeros(n_ranks, width))
        nn.init.normal_(self.type_embedding, std=0.02)
        nn.init.normal_(self.rank_embedding, std=0.02)
        self.blocks = nn.ModuleList(EncoderBlock(width, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(width)
        self.last_attention: list[torch.Tensor] = []

    def tokens(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H + R + 1, width) token embeddings before the encoder."""
        batch = obs["context"].shape[0]
        per_head = torch.cat(
            [
                obs["q_spectrum"],
                obs["k_spectrum"],
                obs["output_bound"],
                obs["change_bound"],
                obs["tail_energy"].flatten(2),
                obs["band_energy"].flatten(2),
            ],
            dim=-1,
        )  # (B, H, 2d + 6R)
        safe = obs["action_mask"].reshape(batch, -1, self.n_ranks).float().mean(1)  # (B, R), per-head masks averaged
        per_rank = torch.cat(
            [
                obs["cost"][..., None],
                obs["layer_bound"],
                safe[..., None],
                obs["output_bound"].mean(1)[..., None],
                obs["change_bound"].mean(1)[..., None],
                obs["tail_energy"].mean(1),
                obs["band_energy"].mean(1),
            ],
            dim=-1,
        )  # (B, R, 10)
        head_tokens = self.head_proj(per_head) + self.type_embedding[0]  # (B, H, width)
        rank_tokens = self.rank_proj(per_rank) + self.type_embedding[1] + self.rank_embedding  # (B, R, width)
        context_token = self.context_proj(obs["context"])[:, None] + self.type_embedding[2]  # (B, 1, width)
        return torch.cat([head_tokens, rank_tokens, context_token], dim=1)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.tokens(obs)  # (B, H + R + 1, width)
        weights = []
        for block in self.blocks:
            x, w = block(x)
            weights.append(w.detach())
        self.last_attention = weights
        x = self.norm(x)
        rank_out = x[:, self.heads : self.heads + self.n_ranks]  # (B, R, width)
        return torch.cat([x[:, -1], rank_out.flatten(1)], dim=-1)  # (B, (R + 1) * width)


class KVLayerTransformerExtractor(BaseFeaturesExtractor):
    """DRRL-KV-v0's Transformer policy network: one token per layer of the model, so that attention
    between tokens reads the cache's structure (which layers are sensitive, where the bytes go).

        one token per layer  [energy_l (2R), log1p(estimate_l) (2R), mass_l (2), layer_bytes_l,
                              the layer's action mask (2R)]                      (6R + 3 features)
        one context token    [context]                                           (5 features)

    each projected to ``width``, the layer tokens tagged with a learned embedding of their index and
    the context token with its own; then ``n_layers`` pre-norm encoder blocks (:class:`EncoderBlock`).
    The features are every layer token's output and the context token's, concatenated:
    (Ly + 1) * width values, from which SB3's action head scores each layer's levels.  Shapes come
    from the observation space (any layer count and ladder).
    """

    def __init__(self, observation_space: spaces.Dict, width: int = 32, n_layers: int = 2, n_heads: int = 4) -> None:
        shapes = {key: space.shape for key, space in observation_space.spaces.items()}
        missing = {"energy", "estimate", "mass", "layer_bytes", "context", "action_mask"} - set(shapes)
        assert not missing, (
            f"KVLayerTransformerExtractor needs a DRRL-KV-v0 observation space; missing keys {sorted(missing)}"
        )
        assert width % n_heads == 0, f"width={width} must be a multiple of n_heads={n_heads}"
        model_layers, _, n_levels = shapes["energy"]
        super().__init__(observation_space, features_dim=(model_layers + 1) * width)
        self.model_layers, self.n_levels = model_layers, n_levels
        self.layer_proj = nn.Linear(6 * n_levels + 3, width)
        self.context_proj = nn.Linear(shapes["context"][0], width)
        self.layer_embedding = nn.Parameter(torch.zeros(model_layers + 1, width))  # the last: the context token's
        nn.init.normal_(self.layer_embedding, std=0.02)
        self.blocks = nn.ModuleList(EncoderBlock(width, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(width)

    def tokens(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, Ly + 1, width) token embeddings before the encoder."""
        batch = obs["context"].shape[0]
        mask = obs["action_mask"].float().reshape(batch, 2, self.model_layers, self.n_levels)  # (B, 2, Ly, R)
        per_layer = torch.cat(
            [
                obs["energy"].flatten(2),  # (B, Ly, 2R)
                torch.log1p(obs["estimate"].clamp(min=0)).flatten(2),  # (B, Ly, 2R)
                obs["mass"],  # (B, Ly, 2)
                obs["layer_bytes"][..., None],  # (B, Ly, 1)
                mask.transpose(1, 2).flatten(2),  # (B, 2, Ly, R) -> (B, Ly, 2R)
            ],
            dim=-1,
        )  # (B, Ly, 6R + 3)
        layers = self.layer_proj(per_layer)  # (B, Ly, width)
        context = self.context_proj(obs["context"])[:, None]  # (B, 1, width)
        return torch.cat([layers, context], dim=1) + self.layer_embedding  # (B, Ly + 1, width)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.tokens(obs)  # (B, Ly + 1, width)
        for block in self.blocks:
            x, _ = block(x)
        return self.norm(x).flatten(1)  # (B, (Ly + 1) * width)
