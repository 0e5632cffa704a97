"""Statistics, tables and plots for comparing agents and baselines on the same test documents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from experiments.rollout import EpisodeSummary  # noqa: E402

TABLE_COLUMNS = (
    "reward",
    "fidelity",
    "cost_ratio",
    "flop_ratio",
    "mean_rank",
    "end_fidelity",
    "end_ppl_ratio",
    "retrieval_same",
    "attention_latency_ratio",
)


class Transcript:
    """A benchmark's report: each line printed as it comes (``say(text)``) and kept for ``write``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def write(self, path: str | Path) -> None:
        """The kept lines to ``path``, one per line."""
        Path(path).write_text("\n".join(self.lines) + "\n")


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (0 for fewer than two values)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


@dataclass(frozen=True)
class PairedComparison:
    """``a`` - ``b`` per test document (reward), with its direction and size.

    mean, median, wins (documents where a is ahead), losses, n (documents), clusters (topics);
    ci: 95% percentile interval of the mean difference from a cluster bootstrap over topics
    (``scipy.stats.bootstrap``, topics resampled with their documents); p_value: two-sided
    sign-flip permutation test of "mean difference = 0" with the topics' summed differences as the
    exchangeable units (``scipy.stats.permutation_test``; exact when 2^clusters is small);
    p_holm: the Holm-adjusted p among the secondary comparisons (None for the primary one).
    """

    a: str
    b: str
    mean: float
    median: float
    wins: int
    losses: int
    n: int
    clusters: int
    ci: tuple[float, float]
    p_value: float
    p_holm: float | None = None

    @property
    def direction(self) -> str:
        return "ahead of" if self.mean > 0 else "behind" if self.mean < 0 else "level with"

    def sentence(self) -> str:
        p = f"p = {self.p_value:.4f}" + ("" if self.p_holm is None else f", Holm-adjusted p = {self.p_holm:.4f}")
        return (
            f"{self.a} is {self.direction} {self.b} by {self.mean:+.3f} reward per document (median "
            f"{self.median:+.3f}; 95% CI {self.ci[0]:+.3f} to {self.ci[1]:+.3f}, cluster bootstrap over "
            f"{self.clusters} topics); ahead on {self.wins} of {self.n} documents, behind on {self.losses}; "
            f"sign-flip permutation test over topics, {p}"
        )


def paired_comparison(
    a_name: str, b_name: str, a: np.ndarray, b: np.ndarray, clusters: list[str], seed: int = 0
) -> PairedComparison:
    """:class:`PairedComparison` of per-document values ``a`` and ``b`` whose documents belong to ``clusters``."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    groups = sorted(set(clusters))
    sums = np.array([diff[[c == g for c in clusters]].sum() for g in groups])  # (topics,)
    counts = np.array([clusters.count(g) for g in groups], dtype=float)
    if len(groups) > 1 and np.ptp(sums / counts) > 0:
        ci = stats.bootstrap(
            (sums, counts),
            lambda s, c, axis: s.sum(axis) / c.sum(axis),
            paired=True,
            vectorized=True,
            method="percentile",
            n_resamples=9999,
            random_state=seed,
        ).confidence_interval
        p = stats.permutation_test(
            (sums,), lambda s, axis: s.sum(axis), permutation_type="samples", n_resamples=9999, random_state=seed
        ).pvalue
        interval = (float(ci.low), float(ci.high))
    else:  # one topic, or no variation: nothing to resample
        interval, p = (float(diff.mean()), float(diff.mean())), 1.0
    return PairedComparison(
        a_name,
        b_name,
        float(diff.mean()),
        float(np.median(diff)),
        int((diff > 0).sum()),
        int((diff < 0).sum()),
        len(diff),
        len(groups),
        interval,
        float(p),
    )


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error): the k-th smallest of m p-values becomes
    max over j <= k of min(1, (m - j + 1) p_(j)), returned in the input order."""
    order = np.argsort(p_values)
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def topic_of(document: str) -> str:
    """The topic (or module, or file) a document name belongs to: ``attribute-access#3`` -> ``attribute-access``."""
    return document.partition("#")[0]


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
    return np.array(
        [
            np.mean([getattr(r, column) for r in rows if r.policy in policies and r.document_index == d])
            for d in documents
        ]
    )


def fixed_plans(rows: list[EpisodeSummary], method_of: dict[str, str]) -> dict[str, tuple[float, ...]]:
    """Methods that took, in each layer, one rank at every segment of every document (a policy collapsed onto
    one fixed plan: it learned nothing per segment or document), with that rank per layer (layers,)."""
    fixed = {}
    for method in dict.fromkeys(method_of.values()):
        own = [r.ranks for r in rows if method_of.get(r.policy) == method]  # each (layers, segments)
        if not own:
            continue
        per_layer = [{rank for ranks in own for rank in ranks[layer]} for layer in range(len(own[0]))]
        if all(len(taken) == 1 for taken in per_layer):
            fixed[method] = tuple(taken.pop() for taken in per_layer)
    return fixed


def fixed_plan_sentences(fixed: dict[str, tuple[float, ...]]) -> list[str]:
    """One sentence per distinct fixed plan, naming every method that played it (so that two agents with
    identical rows read as one collapsed plan, not as a bug)."""
    players: dict[tuple[float, ...], list[str]] = {}
    for method, plan in fixed.items():
        players.setdefault(plan, []).append(method)
    sentences = []
    for plan, methods in players.items():
        who = methods[0] if len(methods) == 1 else " and ".join([", ".join(methods[:-1]), methods[-1]])
        ranks = (
            f"rank {plan[0]:g} in every layer"
            if len(set(plan)) == 1
            else ("ranks " + ", ".join(f"{r:g}" for r in plan) + f" by layer (mean {np.mean(plan):.3f})")
        )
        verb = "played" if len(methods) == 1 else "all played"
        sentences.append(f"{who} {verb} one fixed plan, {ranks}, at every segment of every document")
    return sentences


def pareto_plot(means: dict[str, dict[str, float]], path: Path) -> Path:
    """Cost ratio (x) vs fidelity (y), one point per method; methods on the same point share one label."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    points: dict[tuple[float, float], list[str]] = {}
    for method, m in means.items():
        points.setdefault((round(m["cost_ratio"], 4), round(m["fidelity"], 4)), []).append(method)
    for (cost, fidelity), methods in points.items():
        ax.scatter(cost, fidelity, s=30)
        ax.annotate(" = ".join(methods), (cost, fidelity), fontsize=7, xytext=(3, 3), textcoords="offset points")
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
