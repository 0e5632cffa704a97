"""The comparison's statistics: direction, effect size, cluster-level tests and Holm's correction."""

import itertools

import numpy as np
import pytest

from experiments.report import fixed_plan_sentences, fixed_plans, holm, paired_comparison, topic_of
from experiments.rollout import EpisodeSummary


def test_holm_matches_the_step_down_rule():
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5]) == [0.5] and holm([0.3, 0.4]) == pytest.approx([0.6, 0.6])


def test_the_sign_flip_test_is_exact_over_topics():
    """Few topics: the p-value is the exact share of the 2^k sign patterns at least as extreme."""
    rng = np.random.default_rng(1)
    diff = rng.normal(0.3, 1.0, 6)
    result = paired_comparison("a", "b", diff, np.zeros(6), [f"t{i}" for i in range(6)])
    flips = np.array(
        [
            np.abs((np.array(signs) * diff).sum()) >= np.abs(diff.sum()) - 1e-12
            for signs in itertools.product((1, -1), repeat=6)
        ]
    )
    assert result.p_value == pytest.approx(flips.mean())


def test_direction_and_size_are_reported_and_clusters_are_the_units():
    """A mean lifted by one topic's documents: ahead on average, behind on most documents, and a
    test over topics does not count that topic's documents as independent evidence."""
    behind = np.full(40, -0.1)
    behind[:8] = 3.0  # eight documents of one topic far ahead
    clusters = ["big"] * 8 + [f"t{i // 2}" for i in range(32)]
    result = paired_comparison("agent", "baseline", behind, np.zeros(40), clusters)
    assert result.mean > 0 and result.median < 0 and (result.wins, result.losses) == (8, 32)
    assert result.clusters == 17 and result.p_value > 0.05
    assert "agent is ahead of baseline" in result.sentence() and "behind on 32" in result.sentence()


def test_a_clear_shift_is_significant_with_an_interval_above_zero():
    rng = np.random.default_rng(0)
    result = paired_comparison("a", "b", rng.normal(1.0, 0.5, 48), np.zeros(48), [f"t{i % 16}" for i in range(48)])
    assert result.p_value < 0.001 and 0 < result.ci[0] < result.mean < result.ci[1]


def test_topic_of_reads_the_document_name():
    assert topic_of("attribute-access#3") == "attribute-access" and topic_of("argparse") == "argparse"


def _row(policy: str, index: int, ranks: list[list[float]]) -> EpisodeSummary:
    zero = dict.fromkeys(
        ["reward", "fidelity_term", "cost_term", "perturbation_term", "fidelity", "relative_error", "cost_ratio"]
        + ["flop_ratio", "mean_rank", "replaced_fraction"],
        0.0,
    )
    return EpisodeSummary(policy, f"doc{index}", index, len(ranks[0]), ranks=ranks, **zero)


def test_agents_collapsed_onto_one_varying_plan_are_named_together():
    """Two agents playing the same per-layer plan at every segment of every document are one collapsed plan
    (the quick start's identical ppo rows), though no single rank is taken everywhere; a policy whose ranks
    change across segments or documents is not flagged."""
    plan = [[4.0, 4.0], [8.0, 8.0]]  # (layers, segments)
    rows = [_row(p, d, plan) for p in ("mlp_s0", "tr_s0") for d in (0, 1)]
    rows += [_row("varying_s0", 0, plan), _row("varying_s0", 1, [[4.0, 8.0], [8.0, 8.0]])]
    method_of = {"mlp_s0": "ppo-mlp", "tr_s0": "ppo-transformer", "varying_s0": "varying"}
    fixed = fixed_plans(rows, method_of)
    assert fixed == {"ppo-mlp": (4.0, 8.0), "ppo-transformer": (4.0, 8.0)}
    (sentence,) = fixed_plan_sentences(fixed)
    assert sentence.startswith("ppo-mlp and ppo-transformer all played one fixed plan, ranks 4, 8 by layer")
    assert fixed_plan_sentences({"fixed:8": (8.0, 8.0)}) == [
        "fixed:8 played one fixed plan, rank 8 in every layer, at every segment of every document"
    ]
