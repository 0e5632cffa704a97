"""The attention function registered in ``transformers.AttentionInterface`` for every drrl model.

Models are loaded with ``attn_implementation="drrl"``.  Each attention call of a forward pass
receives the per-head ``query`` (B, H, L, d), ``key`` and ``value`` (B, H_kv, L, d) exactly as the
model's own kernel would (after rotary embeddings, before the grouped-query expansion), and the
keyword arguments of the model call, which transformers passes down to it.  What it does depends
on those arguments, so no module state is involved:

- ``drrl_records=[...]``: append the call's q, k, v, scaling and causality, then compute the real
  output with PyTorch's SDPA (the forward pass is unchanged): capture.
- ``drrl_plan=LowRankPlan(...)``: compute the attention segment by segment at the plan's ranks,
  through the same workload and ``SegmentView.attention`` as the reward, timing it: the low-rank
  model forward.
- ``drrl_layer=f``: the call's output is ``f(LayerInputs)`` (H, L, d): a closed-loop episode
  (``episode.py``) decides each layer's ranks from the q, k, v that the ranks of the layers
  before it produced, and returns the output it computed at those ranks.
- keys handed out by a ``CompressedKVCache`` (tagged by it, so ``generate`` needs no extra argument):
  attention over the compressed KV cache (``kv/attention.py``), which records what the KV
  observation reads: DRRL-KV-v0 and ``drrl generate``.
- none of these: plain SDPA.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from drrl_env.kv.attention import kv_attention
from drrl_env.kv.cache import KV_LAYER
from drrl_env.sources.base import LayerInputs, LowRankPlan

ATTENTION = "drrl"


def _drrl_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    drrl_records: list[dict[str, Any]] | None = None,
    drrl_plan: LowRankPlan | None = None,
    drrl_layer: Callable[[LayerInputs], torch.Tensor] | None = None,
    **kwargs: Any,
):
    kv_layer = getattr(key, KV_LAYER, None)
    if kv_layer is not None:
        return kv_attention(
            kv_layer, query, key, value, query.shape[-1] ** -0.5 if scaling is None else float(scaling)
        ), None
    if drrl_layer is not None:
        inputs = LayerInputs(
            query[0],
            key[0],
            value[0],
            query.shape[-1] ** -0.5 if scaling is None else float(scaling),
            is_causal(module, attention_mask, query.shape[2], key.shape[2]),
        )
        return drrl_layer(inputs).to(query.dtype).transpose(0, 1)[None], None  # (H, L, d) -> (1, L, H, d)
    if drrl_plan is not None:
        return _low_rank(
            drrl_plan,
            query,
            key,
            value,
            query.shape[-1] ** -0.5 if scaling is None else scaling,
            is_causal(module, attention_mask, query.shape[2], key.shape[2]),
        ), None
    if drrl_records is not None:
        drrl_records.append(
            {
                "query": query[0].detach(),  # (H, L, d)
                "key": key[0].detach(),  # (H_kv, L, d)
                "value": value[0].detach(),  # (H_kv, L, d)
                "scaling": query.shape[-1] ** -0.5 if scaling is None else float(scaling),
                "causal": is_causal(module, attention_mask, query.shape[2], key.shape[2]),
            }
        )
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


AttentionInterface.register(ATTENTION, _drrl_attention)


def _low_rank(
    plan: LowRankPlan, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, causal: bool
) -> torch.Tensor:
    """The call's attention at the plan's ranks for this layer (batch of one) -> (1, L, H, d)."""
    layer, plan.calls = plan.calls, plan.calls + 1
    _synchronize(query.device)  # CUDA runs asynchronously: time the kernels, not their launches
    begin = time.perf_counter()
    q = query[0]  # (H, L, d)
    out = torch.empty_like(q)
    for segment, view in enumerate(
        plan.workload.views(q, key[0], value[0], causal, plan.method, layer=layer, segments=plan.segments)
    ):
        out[:, view.start : view.stop] = view.attention(int(plan.ranks[layer, segment]), scaling, plan.compress_values)
    _synchronize(query.device)
    plan.seconds += time.perf_counter() - begin
    return out.transpose(0, 1)[None]  # (1, L, H, d)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_causal(module: torch.nn.Module, mask: torch.Tensor | None, q_len: int, k_len: int) -> bool:
    """Whether the call's mask is causal; raises for patterns the environment does not model."""
    if mask is None:
        return bool(getattr(module, "is_causal", False)) and q_len > 1
    allowed = mask[0, 0] if mask.dtype == torch.bool else mask[0, 0] > torch.finfo(mask.dtype).min / 2
    if bool(allowed.all()):
        return False
    if torch.equal(allowed, torch.ones(q_len, k_len, dtype=torch.bool, device=mask.device).tril()):
        return True
    raise ValueError(
        "the model's attention mask is neither full nor causal (sliding window or padding?); "
        "the environment supports full and causal attention only"
    )
