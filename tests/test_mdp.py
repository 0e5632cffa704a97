"""The deployable, sequential MDP: observations without the exact output, closed-loop layers,
latency budgets and the non-myopic reference."""

import dataclasses
import threading

import numpy as np
import pytest

import drrl_env.documents
from agents.baselines import make_baseline
from drrl_env.env import RankSelectionEnv
from experiments.rollout import run_episode
from tests.conftest import SYNTHETIC

TEXTS = [
    "Attention decides what each token reads from the others. " * 12,
    "Low-rank factors trade a little fidelity for a lot of speed when heads are wide. " * 10,
]
PRIVILEGED = ("out_sq", "dot", "low_sq", "err_sq")  # the analysis' fields that need exact attention
STEP_FEATURES = ("q_spectrum", "k_spectrum", "tail_energy", "output_bound", "layer_bound")


def _garbled_analyse(*args, **kwargs):
    """``analyse`` whose privileged fields (exact output norms, fidelity statistics) are garbage."""
    analysis = _REAL_ANALYSE(*args, **kwargs)
    rng = np.random.default_rng(7)
    return dataclasses.replace(
        analysis, **{name: rng.uniform(0.1, 1e4, getattr(analysis, name).shape) for name in PRIVILEGED}
    )


_REAL_ANALYSE = drrl_env.documents.analyse


def _observations(env: RankSelectionEnv, actions) -> list[dict[str, np.ndarray]]:
    obs, _ = env.reset(options={"document": 0})
    seen, done, t = [obs], False, 0
    while not done:
        obs, _, done, _, _ = env.step(actions(t))
        seen.append(obs)
        t += 1
    return seen


@pytest.mark.parametrize("privileged", [False, True])
def test_observation_and_mask_do_not_read_the_exact_output(monkeypatch, privileged):
    """(a) Deployable by default: garbage in place of everything derived from the exact attention
    output leaves every observation and mask of a closed-loop episode unchanged; with
    ``privileged_observation=True`` it does not (so the test can fail)."""
    kwargs = {
        "corpus": TEXTS,
        "split": "all",
        "min_doc_tokens": 16,
        "segment_len": 32,
        "cache_dir": None,
        "max_seq_len": 96,
        "privileged_observation": privileged,
    }
    actions = [0, 3, 7, 1, 5, 2, 6, 4]

    def play():
        return _observations(RankSelectionEnv(**kwargs), lambda t: actions[t % len(actions)])

    honest = play()
    monkeypatch.setattr(drrl_env.documents, "analyse", _garbled_analyse)
    garbled = play()
    same = all(np.array_equal(a[key], b[key]) for a, b in zip(honest, garbled) for key in a)
    assert same != privileged


def test_closed_loop_layer_inputs_follow_the_ranks_chosen_before():
    """(b) In the default env, layer 0 at the lowest rank instead of full rank changes the first
    observation of layer 1; in open loop it does not."""
    for closed, differs in ((True, True), (False, False)):
        env = RankSelectionEnv(split="test", safety=False, closed_loop=closed)
        assert env.config.closed == closed
        _, info = env.reset(options={"document": 0})
        segments = info["n_steps"] // env.source.spec.n_layers
        first_of_layer_1 = {}
        for layer_0_action in (0, len(env.ranks) - 1):
            first_of_layer_1[layer_0_action] = _observations(env, lambda t, action=layer_0_action: action)[segments]
        low, full = first_of_layer_1.values()
        assert any(not np.array_equal(low[k], full[k]) for k in STEP_FEATURES) == differs


def test_closed_loop_at_full_rank_is_the_open_loop_episode():
    """With exact attention everywhere, every layer's live inputs are the captured ones: the same
    observations and rewards as open loop, and the end term is the exact model's (fidelity 1)."""
    kwargs = {
        "corpus": TEXTS,
        "split": "all",
        "min_doc_tokens": 16,
        "segment_len": 32,
        "cache_dir": None,
        "max_seq_len": 96,
        "end_weight": 1.0,
    }
    full = len(RankSelectionEnv(**kwargs, closed_loop=False).ranks) - 1
    rows = {
        closed: run_episode(
            RankSelectionEnv(**kwargs, closed_loop=closed), make_baseline("full", RankSelectionEnv(**kwargs)), "full", 0
        )
        for closed in (False, True)
    }
    assert rows[True].reward == pytest.approx(rows[False].reward, abs=1e-6)
    opened, closed = (_observations(RankSelectionEnv(**kwargs, closed_loop=c), lambda t: full) for c in (False, True))
    for a, b in zip(opened, closed):
        for key in STEP_FEATURES:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5)


def test_an_abandoned_closed_loop_episode_leaves_no_thread():
    env = RankSelectionEnv(corpus=TEXTS, split="all", min_doc_tokens=16, segment_len=32, cache_dir=None, max_seq_len=96)
    before = threading.active_count()
    for _ in range(3):
        env.reset(options={"document": 1})
        env.step(0)  # mid-episode: the forward pass waits in its worker thread
    env.close()
    assert threading.active_count() == before


@pytest.mark.parametrize("kwargs,budget", [({}, 0.5), (SYNTHETIC, 0.7)], ids=["default", "synthetic"])
def test_random_masked_play_keeps_the_latency_budget(kwargs, budget):
    """(c) With latency_budget=0.5 on the default env, random play within the mask never ends over
    budget; the budget left is observed and the cost term leaves the reward."""
    env = RankSelectionEnv(**kwargs, latency_budget=budget, split="test" if not kwargs else "train")
    rng = np.random.default_rng(0)
    n_docs, played = len(env.document_names()), 0
    for episode in range(60):
        obs, start = env.reset(options={"document": episode % n_docs})
        if start["budget_clamped"]:  # a short document whose cheapest plan costs more: it plays at that cost
            assert start["budget"] > budget
            continue
        played += 1
        if played > (4 if not kwargs else 30):
            break
        done = False
        while not done:
            assert obs["context"][-1] >= 0
            obs, _, done, _, info = env.step(int(rng.choice(np.flatnonzero(obs["action_mask"]))))
            assert info["budget_used"] <= budget + 1e-9 and info["reward_terms"]["cost"] == 0.0
        assert info["budget_used"] <= budget + 1e-9
    assert played > 4


def test_an_impossible_budget_plays_at_the_cheapest_plan_and_says_so():
    """Issue 27 (10): a budget below a document's cheapest plan no longer kills a run at that document."""
    env = RankSelectionEnv(**SYNTHETIC, latency_budget=0.01)
    obs, info = env.reset(options={"document": 0})
    assert info["budget_clamped"] and info["budget"] > 0.01
    done = False
    while not done:
        obs, _, done, _, step = env.step(int(np.flatnonzero(obs["action_mask"])[0]))
        assert step["budget_used"] <= info["budget"] + 1e-9


def test_planner_is_never_behind_the_one_step_oracle():
    """The rollout planner's episode starts from the one-step oracle's and keeps the best one seen."""
    env = RankSelectionEnv(
        corpus=TEXTS, split="all", min_doc_tokens=16, segment_len=32, max_seq_len=96, cache_dir=None, ranks=(4, 16, 32)
    )
    planner, oracle = make_baseline("planner", env), make_baseline("oracle", env)
    for doc in range(2):
        planned, greedy = run_episode(env, planner, "planner", doc), run_episode(env, oracle, "oracle", doc)
        assert planned.reward >= greedy.reward - 1e-9
    assert planner.episodes_played == 2 * (1 + env.source.spec.n_layers * len(env.ranks))


def test_every_step_pays_for_its_observation():
    """With feature_cost (the default) each rank's cost is the attention's plus the FLOP share of the
    observation's features, the same for every rank; full rank then costs more than exact attention."""
    from drrl_env.costs.counting import feature_flop_ratio

    paid, free = (RankSelectionEnv(**SYNTHETIC, feature_cost=charged) for charged in (True, False))
    obs_paid, _ = paid.reset(options={"document": 0})
    obs_free, _ = free.reset(options={"document": 0})
    share = feature_flop_ratio(paid.documents.cost_shape(64, 64))  # the first segment: 64 queries over 64 keys
    np.testing.assert_allclose(obs_paid["cost"] - obs_free["cost"], share, rtol=1e-5)
    assert 0 < share < 1 and obs_paid["cost"][-1] > 1


def test_the_greedy_allocator_fills_the_budget_without_breaking_it():
    """budget-greedy spends most of the budget, never more, and earns more than the cheapest plan."""
    env = RankSelectionEnv(**SYNTHETIC, latency_budget=0.8)
    for doc in range(3):
        earned = {}
        for name in ("budget-greedy:1", "fixed:2"):
            policy, (obs, _), done, earned[name] = (
                make_baseline(name, env),
                env.reset(options={"document": doc}),
                False,
                0.0,
            )
            while not done:
                obs, reward, done, _, info = env.step(policy.predict(obs)[0])
                earned[name] += reward
            if name.startswith("budget"):
                assert 0.7 < info["budget_used"] <= 0.8 + 1e-9
        assert earned["budget-greedy:1"] > earned["fixed:2"]
    with pytest.raises(ValueError, match="latency_budget=B"):
        make_baseline("budget-greedy:1", RankSelectionEnv(**SYNTHETIC))


def test_a_closed_loop_decode_episode_at_full_rank_keeps_the_exact_perplexity(tiny_causal_llama):
    """Decode: the prompt runs exactly through the same views; at full rank the episode's own forward
    pass gives the exact model's perplexity (end fidelity 1)."""
    env = RankSelectionEnv(
        model=tiny_causal_llama,
        corpus=TEXTS,
        split="all",
        min_doc_tokens=16,
        segment_len=16,
        max_seq_len=96,
        cache_dir=None,
        workload="decode",
        end_weight=1.0,
    )
    assert env.config.closed
    obs, _ = env.reset(options={"document": 0})
    done = False
    while not done:
        obs, _, done, _, info = env.step(len(env.ranks) - 1)
    assert info["end_fidelity"] == pytest.approx(1.0, rel=1e-5)
    assert info["end_perplexity"] == pytest.approx(info["exact_perplexity"], rel=1e-5)
