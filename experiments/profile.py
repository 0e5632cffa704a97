"""``drrl profile``: the measured latency table of the env's attention on this device, next to FLOPs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from drrl_env.costs import AttentionShape  # noqa: E402
from drrl_env.costs.flops import flop_ratios  # noqa: E402
from drrl_env.costs.latency import LatencyProfile, device_key, machine_description  # noqa: E402
from drrl_env.costs.measured import ProfileCostModel  # noqa: E402
from drrl_env.env import RankSelectionEnv  # noqa: E402


def env_profile(env: RankSelectionEnv, cache_root: Path | None, refresh: bool) -> tuple[LatencyProfile, AttentionShape]:
    """The latency profile of ``env``'s attention shape (loaded from the cache unless ``refresh``)."""
    cfg = env.config
    shape = env.documents.cost_shape(cfg.segment_len, cfg.segment_len)
    return ProfileCostModel(env.device, cfg.dtype, cache_root, refresh).profile(shape), shape


def profile_table(env: RankSelectionEnv, lengths: list[int], cache_root: Path | None,
                  refresh: bool) -> tuple[np.ndarray, np.ndarray, LatencyProfile]:
    """Measured latency ratios and FLOP ratios to exact attention, each (lengths, ranks)."""
    profile, shape = env_profile(env, cache_root, refresh)
    measured = np.stack([profile.ratios(n) for n in lengths])
    flops = np.stack([flop_ratios(env.documents.cost_shape(shape.query_len, n)) for n in lengths])
    return measured, flops, profile


def format_table(env: RankSelectionEnv, lengths: list[int], measured: np.ndarray, flops: np.ndarray) -> str:
    lines = [f"{machine_description(env.device)}, dtype {env.config.dtype}; "
             f"method {env.config.method}, compress_values={env.config.compress_values}, "
             f"{env.source.spec.n_heads} heads, head_dim {env.source.spec.head_dim}, segment {env.config.segment_len}",
             "latency ratio to exact attention (SDPA), measured / FLOP-predicted:",
             f"{'keys':>6} " + " ".join(f"{'r=' + str(r):>12}" for r in env.ranks)]
    for n, m, f in zip(lengths, measured, flops):
        lines.append(f"{n:>6} " + " ".join(f"{a:5.2f} / {b:4.2f}" for a, b in zip(m, f)))
    return "\n".join(lines)


def plot_speedups(env: RankSelectionEnv, lengths: list[int], measured: np.ndarray, flops: np.ndarray,
                  path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for n, m, f in zip(lengths, measured, flops):
        line, = ax.plot(env.ranks, 1 / m, marker="o", label=f"measured, {n} keys")
        ax.plot(env.ranks, 1 / f, linestyle="--", color=line.get_color(), label=f"FLOPs, {n} keys")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("rank")
    ax.set_ylabel("speed-up over exact attention")
    ax.set_yscale("log")
    ax.set_title(f"{device_key(env.device)['device']}: measured vs FLOP-predicted", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
