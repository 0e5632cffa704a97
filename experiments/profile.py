"""``drrl profile``: the measured latency table of the env's attention on this device, next to FLOPs,
for each low-rank method and the env's workload (prefill: ``segment_len`` queries over a key
prefix; decode: one token over the cache)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from drrl_env.costs import AttentionShape  # noqa: E402
from drrl_env.costs.counting import feature_flop_ratio, flop_ratios  # noqa: E402
from drrl_env.costs.latency import LatencyProfile, device_key, machine_description  # noqa: E402
from drrl_env.costs.measured import ProfileCostModel  # noqa: E402
from drrl_env.env import RankSelectionEnv  # noqa: E402


def method_shape(env: RankSelectionEnv, method: str, key_len: int | None = None) -> AttentionShape:
    """The shape of the env's attention call over ``key_len`` keys under ``method``: a segment of
    ``segment_len`` queries (prefill) or one token (decode)."""
    cfg = env.config
    queries, _ = env.documents.workload.cost_problem(0, cfg.segment_len, cfg.segment_len)
    return env.documents.cost_shape(queries, key_len or cfg.segment_len, method)


@dataclass(frozen=True)
class MethodTable:
    """One method's profile read at ``lengths``: latency ratios to exact attention, measured and
    FLOP-predicted, (lengths, ranks); the observation's features per decision over the decision's
    exact attention, measured and FLOP-predicted, (lengths,); and the profile read."""

    measured: np.ndarray
    flops: np.ndarray
    features: np.ndarray
    feature_flops: np.ndarray
    profile: LatencyProfile


def profile_table(
    env: RankSelectionEnv, methods: list[str], lengths: list[int], cache_root: Path | None, refresh: bool
) -> dict[str, MethodTable]:
    """Per method, its :class:`MethodTable` (the profile is measured on first use, then cached)."""
    model = ProfileCostModel(env.device, env.config.dtype, cache_root, refresh)
    tables = {}
    for method in methods:
        profile = model.profile(method_shape(env, method))
        decisions = [env.documents.cost_shape(env.config.segment_len, n, method) for n in lengths]
        tables[method] = MethodTable(
            np.stack([profile.ratios(n) for n in lengths]),
            np.stack([flop_ratios(method_shape(env, method, n)) for n in lengths]),
            np.array([profile.feature_ratio(n) for n in lengths]),
            np.array([feature_flop_ratio(shape) for shape in decisions]),
            profile,
        )
    return tables


def format_table(env: RankSelectionEnv, lengths: list[int], tables: dict[str, MethodTable]) -> str:
    spec = env.source.spec
    queries = method_shape(env, env.config.method).query_len
    lines = [
        f"{machine_description(env.device)}, dtype {env.config.dtype}; workload {env.config.workload} "
        f"({queries} queries per call), {spec.n_heads} heads over {spec.n_kv_heads} K/V heads, head_dim "
        f"{spec.head_dim}, causal={spec.causal}",
        "latency ratio to exact attention (SDPA), measured (factor upkeep included) / FLOP-predicted;",
        f"features: the observation's, once per decision of {env.config.segment_len} queries, over the "
        "decision's exact attention (paid at every rank), measured / FLOP-predicted:",
    ]
    for method, table in tables.items():
        options = "".join(f", {k}={v}" for k, v in table.profile.shape.method_key[1])
        lines += [
            f"method {method} (compress_values={table.profile.shape.compress_values}{options})",
            f"{'keys':>6} " + " ".join(f"{'r=' + str(r):>12}" for r in env.ranks) + f" {'features':>13}",
        ]
        for i, n in enumerate(lengths):
            ranks = " ".join(f"{a:5.2f} / {b:4.2f}" for a, b in zip(table.measured[i], table.flops[i]))
            lines.append(f"{n:>6} {ranks} {table.features[i]:6.3g} / {table.feature_flops[i]:5.3g}")
    return "\n".join(lines)


def plot_speedups(env: RankSelectionEnv, lengths: list[int], tables: dict[str, MethodTable], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(tables), figsize=(4.5 * len(tables), 4.2), sharey=True, squeeze=False)
    for ax, (method, table) in zip(axes[0], tables.items()):
        for n, m, f in zip(lengths, table.measured, table.flops):
            (line,) = ax.plot(env.ranks, 1 / m, marker="o", label=f"measured, {n} keys")
            ax.plot(env.ranks, 1 / f, linestyle="--", color=line.get_color(), label=f"FLOPs, {n} keys")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("rank")
        ax.set_yscale("log")
        ax.set_title(method, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("speed-up over exact attention")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(f"{device_key(env.device)['device']}: measured vs FLOP-predicted", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
