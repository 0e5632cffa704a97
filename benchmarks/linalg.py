"""Linear-algebra speed: streaming factor updates, power iteration, low-rank kernels vs exact attention.

    python benchmarks/linalg.py [--device cpu|cuda] [--heads 8] [--head-dim 64]

Prints median times (warm-up 3, repeats 7, ``drrl_env.costs.latency.time_call``) and their ratios,
measured side by side in one run.  Not a test.
"""

from __future__ import annotations

import argparse

import torch

from drrl_env.attention import linalg
from drrl_env.attention.kernels import causal_mask, full_attention
from drrl_env.attention.methods import get_method
from drrl_env.costs.latency import machine_description, time_call

SEGMENT = 128


def median_seconds(fn, device: torch.device) -> float:
    return time_call(fn, device, warmup=3, repeats=7).median


def streaming_vs_full(device: torch.device, heads: int, d: int) -> None:
    print(f"\nkey factorization per {SEGMENT}-token segment, {heads} heads, d={d}: ms (speed-up of the update)")
    print(f"{'L':>6} {'LAPACK svd':>11} {'Gram from scratch':>18} {'stream update':>14} {'+ project keys':>15}")
    for length in (512, 2048, 4096, 8192):
        x = torch.randn(heads, length, d, device=device)
        stream = linalg.StreamingFactors()
        stream.update(x[:, :-SEGMENT])
        block = x[:, -SEGMENT:]

        def update_only() -> None:
            gram = stream.gram + block.double().transpose(-1, -2) @ block.double()
            torch.linalg.eigh(gram)

        def update_and_project() -> None:
            gram = stream.gram + block.double().transpose(-1, -2) @ block.double()
            linalg.Factors.from_gram(x, gram)

        svd = median_seconds(lambda: torch.linalg.svd(x, full_matrices=False), device)
        gram = median_seconds(lambda: linalg.Factors.of(x), device)
        upd = median_seconds(update_only, device)
        proj = median_seconds(update_and_project, device)
        print(
            f"{length:>6} {svd * 1e3:>11.2f} {gram * 1e3:>18.2f} {upd * 1e3:>8.2f} ({svd / upd:4.0f}x)"
            f" {proj * 1e3:>8.2f} ({svd / proj:4.1f}x)"
        )


def power_vs_exact(device: torch.device, heads: int, d: int) -> None:
    x = torch.randn(heads, 4096, d, device=device)
    exact = median_seconds(lambda: torch.linalg.matrix_norm(x, ord=2), device)
    print(f"\nspectral norm of ({heads}, 4096, {d}): matrix_norm(ord=2) {exact * 1e3:.2f} ms")
    truth = torch.linalg.matrix_norm(x.double(), ord=2)
    for iters in (5, 10, 30):
        seconds = median_seconds(lambda: linalg.power_iteration(x, iters), device)
        err = ((truth - linalg.power_iteration(x, iters)[0].double()) / truth).max().item()
        print(
            f"  power iteration, {iters:2d} rounds: {seconds * 1e3:6.2f} ms ({exact / seconds:4.1f}x), "
            f"max relative error {err:.1e}"
        )


def kernels_vs_full(device: torch.device, heads: int, d: int) -> None:
    print(
        f"\nlast {SEGMENT}-token segment of a causal sequence, {heads} heads, d={d}: time ratio low-rank / exact "
        "(factors of K and V given; query factorization included)"
    )
    ranks = [d * i // 8 for i in range(1, 9)]
    for method in ("svd", "shared_key"):
        for compress in (False, True):
            print(f"  {method}, compress_values={compress}")
            print(f"  {'L':>6} {'exact ms':>9} " + " ".join(f"r={r:<5d}" for r in ranks))
            for length in (512, 2048, 4096, 8192):
                q = torch.randn(heads, SEGMENT, d, device=device)
                k, v = torch.randn(2, heads, length, d, device=device)
                kf, vf = linalg.Factors.of(k), linalg.Factors.of(v)
                mask = causal_mask(length - SEGMENT, length, length, device)
                exact = median_seconds(lambda: full_attention(q, k, v, d**-0.5, mask), device)
                cells = []
                for r in ranks:
                    if r == d:
                        cells.append(f"{1.0:<7.2f}")
                        continue
                    seconds = median_seconds(
                        lambda: get_method(method).attention(
                            q, kf, v, d**-0.5, mask, r, v_factors=vf if compress else None
                        ),
                        device,
                    )
                    cells.append(f"{seconds / exact:<7.2f}")
                print(f"  {length:>6} {exact * 1e3:>9.2f} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device: {machine_description(device)}")
    torch.manual_seed(0)
    streaming_vs_full(device, args.heads, args.head_dim)
    power_vs_exact(device, args.heads, args.head_dim)
    kernels_vs_full(device, args.heads, args.head_dim)


if __name__ == "__main__":
    main()
