"""Stable-Baselines3 agents for DRRL-v0: construction, behaviour cloning, saving with the env config.

``make_agent("ppo", env, policy="transformer")`` builds an SB3 model with this package's default
hyperparameters (``DEFAULT_HYPERPARAMS``, overridable by keyword) and either SB3's
``MultiInputPolicy`` (an MLP over the flattened observation) or the Transformer extractor of
``transformer_policy.py``.  ``maskable_ppo`` samples only safe ranks (``env.action_masks()``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.policy import OraclePolicy
from agents.transformer_policy import KVLayerTransformerExtractor, RankTransformerExtractor
from drrl_env.config import EnvConfig
from drrl_env.play import play

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO,
    "a2c": A2C,
    "dqn": DQN,
    "maskable_ppo": MaskablePPO,
    "recurrent_ppo": RecurrentPPO,
}
POLICIES = ("mlp", "transformer")

# Episodes are 24 steps on the default env; rollouts cover several episodes, discounting is mild
# because a rank choice affects the next segment only through the perturbation term.
DEFAULT_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "ppo": {
        "n_steps": 512,
        "batch_size": 128,
        "n_epochs": 5,
        "learning_rate": 3e-4,
        "gamma": 0.9,
        "gae_lambda": 0.9,
        "ent_coef": 0.01,
    },
    "maskable_ppo": {
        "n_steps": 512,
        "batch_size": 128,
        "n_epochs": 5,
        "learning_rate": 3e-4,
        "gamma": 0.9,
        "gae_lambda": 0.9,
        "ent_coef": 0.01,
    },
    "recurrent_ppo": {
        "n_steps": 256,
        "batch_size": 128,
        "n_epochs": 5,
        "learning_rate": 3e-4,
        "gamma": 0.9,
        "gae_lambda": 0.9,
        "ent_coef": 0.01,
    },
    "a2c": {"n_steps": 24, "learning_rate": 7e-4, "gamma": 0.9, "ent_coef": 0.01},
    "dqn": {
        "learning_rate": 5e-4,
        "buffer_size": 50_000,
        "learning_starts": 500,
        "batch_size": 64,
        "gamma": 0.9,
        "train_freq": 4,
        "target_update_interval": 500,
        "exploration_fraction": 0.3,
    },
}
TRANSFORMER_KWARGS = {"width": 64, "n_layers": 2, "n_heads": 4}
KV_TRANSFORMER_KWARGS = {"width": 32, "n_layers": 2, "n_heads": 4}
# Config fields that do not change the MDP and may differ between training and evaluation.
RUNTIME_FIELDS = frozenset(EnvConfig.runtime_fields())
# Config fields that choose the documents: evaluation on other data is allowed and reported.
DATA_FIELDS = frozenset(EnvConfig.data_fields())
FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EnvConfig)}  # a saved config's missing fields


def make_agent(
    algo: str,
    env: gym.Env | Any,
    policy: str = "mlp",
    seed: int | None = None,
    tensorboard_log: str | None = None,
    verbose: int = 0,
    **overrides: Any,
) -> BaseAlgorithm:
    """An untrained SB3 model of ``algo`` on ``env`` (a gym env or a VecEnv)."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algo {algo!r}; choose one of {sorted(ALGORITHMS)}")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {list(POLICIES)}")
    kwargs = {**DEFAULT_HYPERPARAMS[algo], **overrides}
    policy_kwargs = dict(kwargs.pop("policy_kwargs", {}))
    if policy == "transformer" and "estimate" in env.observation_space.spaces:  # DRRL-KV-v0: a token per layer
        policy_kwargs.setdefault("features_extractor_class", KVLayerTransformerExtractor)
        policy_kwargs.setdefault("features_extractor_kwargs", dict(KV_TRANSFORMER_KWARGS))
        policy_kwargs.setdefault("net_arch", dict(pi=[], vf=[64]))  # each layer's logits read its own token
    elif policy == "transformer":
        policy_kwargs.setdefault("features_extractor_class", RankTransformerExtractor)
        policy_kwargs.setdefault("features_extractor_kwargs", dict(TRANSFORMER_KWARGS))
        policy_kwargs.setdefault("net_arch", [64] if algo == "dqn" else dict(pi=[64], vf=[64]))
    policy_name = "MultiInputLstmPolicy" if algo == "recurrent_ppo" else "MultiInputPolicy"
    model = ALGORITHMS[algo](
        policy_name,
        env,
        seed=seed,
        tensorboard_log=tensorboard_log,
        verbose=verbose,
        policy_kwargs=policy_kwargs,
        device="cpu",
        **kwargs,
    )
    model.drrl_algo = algo
    model.drrl_policy = policy
    model.drrl_env_config = env_config_dict(model.get_env())
    return model


def env_config_dict(env: Any) -> dict[str, Any]:
    """The env's :class:`EnvConfig` as a JSON-able dict (works for gym envs and VecEnvs)."""
    config = env.get_attr("config")[0] if hasattr(env, "get_attr") else env.unwrapped.config
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def save_agent(model: BaseAlgorithm, path: str | Path) -> Path:
    """One zip with the weights, the hyperparameters and the env config (``drrl_env_config``)."""
    model.save(path)
    return Path(path).with_suffix(".zip")


def read_saved_agent(path: str | Path) -> dict[str, Any]:
    """The data of a zip saved by :func:`save_agent` (``drrl_algo``, ``drrl_env_config``, ...), or a
    ValueError that names the file when it is missing, damaged or not drrl's."""
    path = Path(path)
    if not path.is_file() and path.with_suffix(".zip").is_file():
        path = path.with_suffix(".zip")
    if not path.is_file():
        raise ValueError(f"no saved agent at {str(path)!r}")
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, _, _ = load_from_zip_file(path)
    except Exception as err:  # a damaged zip fails inside SB3 with zipfile, pickle or attribute errors
        raise ValueError(f"{str(path)!r} is not a readable saved agent ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict) or data.get("drrl_algo") not in ALGORITHMS:
        raise ValueError(f"{str(path)!r} was not saved by drrl's save_agent (no drrl_algo)")
    return data


def load_agent(path: str | Path, env: gym.Env | None = None) -> BaseAlgorithm:
    """Load a model saved by :func:`save_agent`; with ``env``, refuse an env config that changes the MDP
    (:func:`check_env_config`)."""
    data = read_saved_agent(path)
    if env is not None:
        check_env_config(data.get("drrl_env_config", {}), env_config_dict(env))
    return ALGORITHMS[data["drrl_algo"]].load(path, env=env, device="cpu")


def check_env_config(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Refuses a config that differs from the trained one in a field that shapes the spaces or the MDP;
    returns the data fields (``EnvConfig.data_fields``) that differ, for the caller to report.  A field
    the saved config lacks (added to ``EnvConfig`` after the agent was trained) counts as its default."""
    saved = {**{k: v for k, v in FIELD_DEFAULTS.items() if k in current}, **saved}
    differing = sorted(
        k for k in set(saved) | set(current) if k not in RUNTIME_FIELDS and saved.get(k) != current.get(k)
    )
    meaning = [k for k in differing if k not in DATA_FIELDS]
    if meaning:
        details = ", ".join(f"{k}: trained {saved.get(k)!r}, now {current.get(k)!r}" for k in meaning)
        raise ValueError(f"the agent was trained on another env config ({details})")
    return [f"{k} (trained {saved.get(k)!r}, now {current.get(k)!r})" for k in differing]


def oracle_dataset(env: gym.Env, documents: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Observations and the oracle's actions over full episodes on ``documents``."""
    oracle = OraclePolicy(env)
    steps = [
        step for doc in documents for step in play(env, lambda obs, _: oracle.act(obs), doc, keep_observations=True)
    ]
    observations, actions = [step.observation for step in steps], [step.action for step in steps]
    stacked = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    return stacked, np.asarray(actions)


def behaviour_cloning(
    model: BaseAlgorithm,
    observations: dict[str, np.ndarray],
    actions: np.ndarray,
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Fit the policy to (observation, action) pairs by maximum likelihood; returns the mean loss per epoch.

    Actor-critic policies minimize -log pi(a|s) (``evaluate_actions``); DQN minimizes the cross
    entropy of softmax(Q(s, .)) against a.
    """
    policy = model.policy
    policy.set_training_mode(True)
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    obs_tensor = {k: torch.as_tensor(v) for k, v in observations.items()}
    act_tensor = torch.as_tensor(actions, dtype=torch.long)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(actions))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = torch.as_tensor(order[start : start + batch_size])
            batch = {k: v[idx] for k, v in obs_tensor.items()}
            if isinstance(model, DQN):
                logits = policy.q_net(policy.obs_to_tensor(_numpy(batch))[0])
                loss = torch.nn.functional.cross_entropy(logits, act_tensor[idx])
            else:
                obs_t = policy.obs_to_tensor(_numpy(batch))[0]
                if isinstance(model, RecurrentPPO):
                    raise ValueError(
                        "behaviour cloning of recurrent policies is not supported; use ppo or maskable_ppo"
                    )
                _, log_prob, _ = policy.evaluate_actions(obs_t, act_tensor[idx])
                loss = -log_prob.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(order))
    policy.set_training_mode(False)
    return losses


def _numpy(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items()}
