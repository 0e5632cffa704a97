"""Statistics, tables and plots for comparing agents and baselines on the same test documents."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from experiments.rollout import EpisodeSummary  # noqa: E402

TABLE_COLUMNS = ("reward", "fidelity", "cost_ratio", "flop_ratio", "mean_rank", "end_fidelity", "end_ppl_ratio",
                 "retrieval_same", "attention_latency_ratio")


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (0 for fewer than two values)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Mean of a - b over paired items and the two-sided bootstrap p-value of "mean difference = 0"."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(len(diff), size=(resamples, len(diff)))].mean(1)
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return float(diff.mean()), float(min(1.0, p))


def method_table(rows: list[EpisodeSummary], method_of: dict[str, str]) -> tuple[str, dict[str, dict[str, float]]]:
    """Markdown table, one line per method: mean +- 95% CI over seeds of the per-seed means over documents.

    ``method_of`` maps each row's ``policy`` (e.g. ``ppo-mlp/seed1``) to its method (``ppo-mlp``);
    baselines have one "seed".  Returns the table and the means per method.
    """
    columns = [c for c in TABLE_COLUMNS if any(getattr(r, c) is not None for r in rows)]
    lines = ["| method | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    means: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(method_of.values()):
        runs = [p for p, m in method_of.items() if m == method]
        cells = []
        means[method] = {}
        for column in columns:
            per_run = [np.mean([getattr(r, column) for r in rows if r.policy == run]) for run in runs]
            mean, half = mean_ci(np.array(per_run))
            means[method][column] = mean
            cells.append(f"{mean:.3f} ± {half:.3f}" if len(runs) > 1 else f"{mean:.3f}")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), means


def per_document(rows: list[EpisodeSummary], policies: list[str], column: str = "reward") -> np.ndarray:
    """Mean over ``policies`` (e.g. the seeds of one method) of ``column``, per document, in document order."""
    documents = sorted({r.document_index for r in rows})
    return np.array([np.mean([getattr(r, column) for r in rows if r.policy in policies and r.document_index == d])
                     for d in documents])


def pareto_plot(means: dict[str, dict[str, float]], path: Path) -> Path:
    """Cost ratio (x) vs fidelity (y), one point per method."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, m in means.items():
        ax.scatter(m["cost_ratio"], m["fidelity"], s=30)
        ax.annotate(method, (m["cost_ratio"], m["fidelity"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("cost ratio to exact attention (cost model)")
    ax.set_ylabel("attention fidelity (cosine)")
    ax.set_title("DRRL-v0 test documents: cost vs fidelity")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rank_heatmap(rows: list[EpisodeSummary], policy_runs: list[str], title: str, path: Path) -> Path:
    """Mean rank per (layer, segment) over the runs' episodes (segments beyond a document's end skipped)."""
    grids = [np.asarray(r.ranks, dtype=float) for r in rows if r.policy in policy_runs]
    layers = max(g.shape[0] for g in grids)
    segments = max(g.shape[1] for g in grids)
    total, count = np.zeros((layers, segments)), np.zeros((layers, segments))
    for g in grids:
        total[: g.shape[0], : g.shape[1]] += g
        count[: g.shape[0], : g.shape[1]] += 1
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * segments, 0.8 + 0.5 * layers))
    image = ax.imshow(mean, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(mean):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xlabel("segment")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="mean rank")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
