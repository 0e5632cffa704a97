"""Run policies on DRRL-v0 episodes and summarise what they did, one row per (policy, document)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

import gymnasium as gym
import numpy as np
import torch

from drrl_env.costs.latency import Timing
from drrl_env.documents import model_level
from drrl_env.play import play, predicting
from drrl_env.sources.base import ModelOutputs

SUMMARY_COLUMNS = (
    "reward",
    "fidelity",
    "relative_error",
    "cost_ratio",
    "flop_ratio",
    "mean_rank",
    "replaced_fraction",
    "end_fidelity",
    "end_ppl_ratio",
    "retrieval_same",
    "attention_latency_ratio",
    "attention_latency_spread",
)


@dataclass(frozen=True)
class EpisodeSummary:
    """One episode: sums of the reward and its terms, means of the per-step figures, the ranks taken
    (layer x segment) and, for model sources after :func:`add_model_metrics`, model-level figures."""

    policy: str
    document: str
    document_index: int
    steps: int
    reward: float
    fidelity_term: float
    cost_term: float
    perturbation_term: float
    fidelity: float
    relative_error: float
    cost_ratio: float
    flop_ratio: float
    mean_rank: float
    replaced_fraction: float
    ranks: list[list[float]] = field(repr=False)
    end_fidelity: float | None = None
    end_ppl_ratio: float | None = None
    retrieval_same: float | None = None
    attention_latency_ratio: float | None = None
    attention_latency_spread: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def run_episode(env: gym.Env, policy, name: str, document: int) -> EpisodeSummary:
    """One deterministic episode on document ``document`` with ``policy.predict`` (SB3 interface;
    recurrent state is carried, masks are passed to maskable agents)."""
    steps = play(env, predicting(policy), document)
    infos, rewards = [step.info for step in steps], [step.reward for step in steps]

    def mean(key: str) -> float:
        return float(np.mean([np.mean(i[key]) for i in infos]))

    def total(term: str) -> float:
        return float(sum(i["reward_terms"][term] for i in infos))

    n_layers = 1 + max(i["layer"] for i in infos)
    ranks = np.zeros((n_layers, 1 + max(i["segment"] for i in infos)))
    for i in infos:
        ranks[i["layer"], i["segment"]] = np.mean(i["rank"])
    return EpisodeSummary(
        policy=name,
        document=infos[0]["document"],
        document_index=document,
        steps=len(infos),
        reward=float(sum(rewards)),
        fidelity_term=total("fidelity"),
        cost_term=total("cost"),
        perturbation_term=total("perturbation"),
        fidelity=mean("fidelity"),
        relative_error=mean("relative_error"),
        cost_ratio=mean("cost_ratio"),
        flop_ratio=mean("flop_ratio"),
        mean_rank=mean("rank"),
        replaced_fraction=mean("action_replaced"),
        ranks=ranks.tolist(),
    )


def evaluate(env: gym.Env, policies: dict[str, object], documents: Iterable[int]) -> list[EpisodeSummary]:
    """Every policy on every document (the same documents for all)."""
    documents = list(documents)
    return [run_episode(env, policy, name, doc) for name, policy in policies.items() for doc in documents]


def add_model_metrics(env: gym.Env, rows: list[EpisodeSummary], latency_rounds: int = 3) -> list[EpisodeSummary]:
    """Model-level figures for a model source (rows of layer-level policies):

    end_fidelity              the env's end-of-episode fidelity (``documents.model_level``): exact /
                              low-rank perplexity for a causal LM, else the cosine of the mean-pooled
                              model output (MiniLM: the sentence embedding) with the episode's ranks
                              vs exact attention;
    end_ppl_ratio             causal language models: perplexity with the episode's ranks / exact
                              perplexity (1 = unchanged, higher = worse);
    retrieval_same            1 if the document's nearest neighbour among the evaluated documents
                              (cosine of pooled outputs, against exact outputs of the others) is the
                              same as with exact attention, else 0;
    attention_latency_ratio   wall time of all attention calls with the ranks / with exact attention,
                              both through the same segment-wise code (``attention/workload.py``):
                              the median over ``latency_rounds`` interleaved rounds (more while noisy)
                              (``DocumentStore.attention_latency``), measured once per (document, plan)
                              so that identical plans report the same figure;
    attention_latency_spread  its interquartile range / median over the rounds (large = a busy machine).

    ``latency_rounds=0`` leaves the two latency columns out (None).
    """
    base = env.unwrapped
    documents = sorted({r.document_index for r in rows})
    exact = {doc: base.documents.exact_outputs(doc) for doc in documents}
    exact_matrix = torch.nn.functional.normalize(torch.stack([exact[d].pooled for d in documents]), dim=-1)
    measured: dict[tuple[int, bytes], tuple[ModelOutputs, Timing | None]] = {}  # (document, plan) -> its figures
    out = []
    for row in rows:
        ranks = np.asarray(row.ranks, dtype=np.int64)
        plan = (row.document_index, ranks.tobytes())
        if plan not in measured:
            measured[plan] = (
                base.model_outputs(row.document_index, ranks),
                base.documents.attention_latency(row.document_index, ranks, latency_rounds) if latency_rounds else None,
            )
        outputs, latency = measured[plan]
        end = model_level(exact[row.document_index], outputs)
        i = documents.index(row.document_index)
        similarities = exact_matrix @ torch.nn.functional.normalize(outputs.pooled, dim=0)  # (docs,)
        exact_similarities = exact_matrix @ exact_matrix[i]
        similarities[i] = exact_similarities[i] = -2.0  # the document itself is not a neighbour
        same = float(similarities.argmax() == exact_similarities.argmax()) if len(documents) > 1 else 1.0
        out.append(
            replace(
                row,
                end_fidelity=end["end_fidelity"],
                end_ppl_ratio=end["end_perplexity"] / end["exact_perplexity"] if "end_perplexity" in end else None,
                retrieval_same=same,
                attention_latency_ratio=latency and latency.median,
                attention_latency_spread=latency and latency.spread,
            )
        )
    return out


def summary_table(rows: list[EpisodeSummary]) -> str:
    """Mean per policy of the per-episode figures, as a Markdown table (model-level columns when present)."""
    columns = [c for c in SUMMARY_COLUMNS if any(getattr(r, c) is not None for r in rows)]
    lines = ["| policy | episodes | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name in dict.fromkeys(r.policy for r in rows):
        mine = [r for r in rows if r.policy == name]
        values = [np.mean([getattr(r, c) for r in mine]) for c in columns]
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)
