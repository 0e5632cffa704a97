"""SB3 agents, the Transformer extractor, behaviour cloning and saving."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SYNTHETIC

from agents.sb3_agents import ALGORITHMS, behaviour_cloning, load_agent, make_agent, oracle_dataset, save_agent
from agents.transformer_policy import RankTransformerExtractor
from drrl_env.env import RankSelectionEnv

SMALL = {
    "ppo": {"n_steps": 64, "batch_size": 32},
    "maskable_ppo": {"n_steps": 64, "batch_size": 32},
    "recurrent_ppo": {"n_steps": 64, "batch_size": 32},
    "a2c": {},
    "dqn": {"learning_starts": 50},
}


@pytest.fixture(scope="module")
def env():
    return RankSelectionEnv(**SYNTHETIC)


@pytest.mark.parametrize("source,steps", [("synthetic", 200), ("default", 100)])
@pytest.mark.parametrize("policy", ["mlp", "transformer"])
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_and_policy_learns(request, env, algo, policy, source, steps):
    target = env if source == "synthetic" else request.getfixturevalue("default_env")
    model = make_agent(algo, target, policy, seed=0, **SMALL[algo])
    model.learn(steps)
    assert model.num_timesteps >= steps


@pytest.mark.parametrize(
    "kwargs", [{}, {"per_head": True}, {"ranks": (4, 16)}, {"synthetic_heads": 2, "synthetic_kv_heads": 1}]
)
def test_transformer_extractor_fits_any_env_config(kwargs):
    space = RankSelectionEnv(**{**SYNTHETIC, **kwargs}).observation_space
    extractor = RankTransformerExtractor(space, width=32, n_layers=2, n_heads=4)
    obs = {k: torch.as_tensor(np.stack([space[k].sample() for _ in range(3)])).float() for k in space.spaces}
    features = extractor(obs)
    n_ranks = space["cost"].shape[0]
    n_heads = space["q_spectrum"].shape[0]
    assert features.shape == (3, (n_ranks + 1) * 32) == (3, extractor.features_dim)
    tokens = n_heads + n_ranks + 1
    assert [w.shape for w in extractor.last_attention] == [(3, 4, tokens, tokens)] * 2


def test_maskable_ppo_never_takes_a_masked_action():
    env = RankSelectionEnv(**SYNTHETIC, epsilon=0.5, epsilon_min=0.5, epsilon_max=0.5)
    model = make_agent("maskable_ppo", env, "mlp", seed=0, **SMALL["maskable_ppo"])
    model.learn(128)
    obs, _ = env.reset(seed=0)
    masked_somewhere = False
    for _ in range(1000):
        mask = env.action_masks()
        masked_somewhere |= not mask.all()
        action, _ = model.predict(obs, action_masks=mask, deterministic=False)
        assert mask[int(action)]
        obs, _, terminated, truncated, info = env.step(action)
        assert not info["action_replaced"]
        if terminated or truncated:
            obs, _ = env.reset()
    assert masked_somewhere


def test_behaviour_cloning_reduces_the_loss_on_oracle_labels(env):
    """On a cost weight where the oracle's labels vary (the small synthetic heads make low ranks
    nearly as dear as exact attention, so at the default beta it keeps full rank throughout)."""
    varied = RankSelectionEnv(**SYNTHETIC, beta=1.5)
    observations, actions = oracle_dataset(varied, [0, 1, 2, 3])
    assert len(actions) == 4 * 6 and len(set(actions.tolist())) > 1
    for algo in ("ppo", "dqn"):
        model = make_agent(algo, env, "transformer", seed=0)
        losses = behaviour_cloning(model, observations, actions, epochs=15)
        assert losses[-1] < 0.7 * losses[0], losses


def test_save_load_predict_gives_the_same_actions(env, tmp_path):
    model = make_agent("ppo", env, "transformer", seed=0, **SMALL["ppo"])
    model.learn(64)
    path = save_agent(model, tmp_path / "agent")
    loaded = load_agent(path, env)
    obs, _ = env.reset(seed=2)
    for _ in range(6):
        a, _ = model.predict(obs, deterministic=True)
        b, _ = loaded.predict(obs, deterministic=True)
        assert a == b
        obs, *_ = env.step(a)
    with pytest.raises(ValueError, match="trained on another env config \\(beta: trained 0.55, now 0.9\\)"):
        load_agent(path, RankSelectionEnv(**SYNTHETIC, beta=0.9))
    with pytest.raises(ValueError, match="no saved agent"):
        load_agent(tmp_path / "missing.zip", env)


def test_unknown_algorithm_or_policy(env):
    with pytest.raises(ValueError, match="unknown algo 'sac'"):
        make_agent("sac", env)
    with pytest.raises(ValueError, match="unknown policy 'cnn'"):
        make_agent("ppo", env, "cnn")
    assert isinstance(gym.make("DRRL-v0", source="synthetic").unwrapped, RankSelectionEnv)
