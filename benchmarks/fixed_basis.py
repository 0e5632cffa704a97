"""Attention on fixed width-r bases (no per-segment decomposition) against exact attention.

    python benchmarks/fixed_basis.py [--device cpu|cuda] [--dtype float32|bfloat16] [--ranks 8,16,32,48]
                                     [--prefill 4096] [--decode 4096,16384] [--heads 9] [--kv-heads 3] [--batch 1]

The kernel side of a calibrated method (Eigen Attention-style): each K/V head has fixed bases
P_K, P_V (d x r, orthonormal; random here, since only the time is measured).  SmolLM2-135M's
shapes by default (9 query heads over 3 K/V heads, head dim 64), grouped-query attention through
SDPA's ``enable_gqa`` on both sides; ``--batch`` sequences at once (a GPU at batch 1 is bound by
kernel launches, a server batches).

- prefill, causal over L tokens: exact is SDPA(q, k, v).  Low rank times everything done at
  inference: projecting q, k and v on the bases (2Ldr each), SDPA at width r, and the output's
  back-projection (2Lrd).
- decode, one new token over a cache of N tokens: exact is SDPA over the (N, d) cache; low rank
  keeps the cache at width r and times the new token's projections, SDPA over the (N, r) cache and
  the back-projection.

Interleaved rounds (``drrl_env.costs.latency.time_interleaved``, 3 warm-ups, 15 rounds; CUDA events on
CUDA): the median within-round ratio to exact.  Not a test.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from drrl_env.costs.latency import DTYPES, machine_description, time_interleaved

F = torch.nn.functional


def _cases(
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    heads: int,
    kv_heads: int,
    d: int,
    ranks: list[int],
    query_len: int,
    key_len: int,
) -> list[Callable[[], torch.Tensor]]:
    """Calls for each rank, then exact attention: one query block of ``query_len`` over ``key_len`` keys
    (prefill when they are equal: causal, everything projected; decode otherwise: cache at width r)."""
    gen = torch.Generator(device=device).manual_seed(0)
    prefill = query_len == key_len

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    q = randn(batch, heads, query_len, d)  # (B, H, T, d)
    k, v = randn(batch, kv_heads, key_len, d), randn(batch, kv_heads, key_len, d)  # (B, H_kv, N, d)
    new_kv = randn(batch, kv_heads, query_len, d)  # decode: the new token's key (and value)
    group = heads // kv_heads
    calls = []
    for r in ranks:
        p_k = torch.linalg.qr(randn(kv_heads, d, r).float())[0].to(dtype)  # (H_kv, d, r)
        p_v = torch.linalg.qr(randn(kv_heads, d, r).float())[0].to(dtype)
        p_kq = p_k.repeat_interleave(group, 0)  # (H, d, r): each query head on its K/V head's basis
        p_vq = p_v.repeat_interleave(group, 0)
        if prefill:

            def call(p_k=p_k, p_v=p_v, p_kq=p_kq, p_vq=p_vq):
                out = F.scaled_dot_product_attention(
                    q @ p_kq, k @ p_k, v @ p_v, is_causal=True, scale=d**-0.5, enable_gqa=True
                )  # (B, H, L, r)
                return out @ p_vq.transpose(-1, -2)  # (B, H, L, d)
        else:
            k_r, v_r = k @ p_k, v @ p_v  # (B, H_kv, N, r): the cache, kept at width r

            def call(p_k=p_k, p_v=p_v, p_kq=p_kq, p_vq=p_vq, k_r=k_r, v_r=v_r):
                new_k, new_v = new_kv @ p_k, new_kv @ p_v  # the new token enters the cache at width r
                k_r[:, :, -1:], v_r[:, :, -1:] = new_k, new_v
                out = F.scaled_dot_product_attention(q @ p_kq, k_r, v_r, scale=d**-0.5, enable_gqa=True)
                return out @ p_vq.transpose(-1, -2)

        calls.append(call)
    calls.append(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=prefill, enable_gqa=True))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--ranks", default="8,16,32,48")
    parser.add_argument("--prefill", default="4096", help="prefill lengths (comma-separated; empty = none)")
    parser.add_argument("--decode", default="4096,16384", help="decode cache lengths (comma-separated)")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1, help="sequences per call")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    ranks = [int(r) for r in args.ranks.split(",")]
    print(
        f"{machine_description(device)}, {args.dtype}; {args.heads} query / {args.kv_heads} K/V heads, "
        f"head dim {args.head_dim}, batch {args.batch}; ratio to exact SDPA "
        "(median of 15 interleaved rounds; spread = IQR/median)"
    )
    print(f"{'workload':>22} {'exact':>10} " + " ".join(f"{'r=' + str(r):>14}" for r in ranks))
    work = [("prefill", int(n), int(n)) for n in args.prefill.split(",") if n]
    work += [("decode", 1, int(n)) for n in args.decode.split(",") if n]
    with torch.no_grad():
        for name, query_len, key_len in work:
            timings = time_interleaved(
                _cases(device, dtype, args.batch, args.heads, args.kv_heads, args.head_dim, ranks, query_len, key_len),
                device,
                warmup=3,
                repeats=15,
            )
            exact = timings.seconds[-1].median
            cells = [f"{t.median:5.2f}x ({t.spread:4.0%})" for t in timings.ratios[:-1]]
            unit = f"{exact * 1e3:7.2f} ms" if exact >= 1e-3 else f"{exact * 1e6:7.0f} us"
            print(f"{name + ' ' + str(key_len):>22} {unit:>10} " + " ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
