"""The SB3 callbacks of a training run: ``drrl/`` rollout metrics, held-out evaluation and checkpoints at
rollout ends (``EveryRollout``), and the HParams tab (``experiments/train.py`` wires them)."""

from __future__ import annotations

from abc import abstractmethod
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam

from agents.sb3_agents import save_agent
from experiments.rollout import evaluate


class DrrlMetricsCallback(BaseCallback):
    """Logs ``drrl/`` means of the step infos of each rollout (SB3 ``logger.record``)."""

    def __init__(self) -> None:
        super().__init__()
        self._values: dict[str, list[float]] = defaultdict(list)

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "fidelity" not in info:
                continue
            v = self._values
            v["fidelity"].append(info["fidelity"])
            v["relative_error"].append(info["relative_error"])
            v["cost_ratio"].append(info["cost_ratio"])
            v["flop_ratio"].append(info["flop_ratio"])
            v["mean_rank"].append(float(np.mean(info["rank"])))
            v[f"rank_layer_{info['layer']}"].append(float(np.mean(info["rank"])))
            v["replaced_fraction"].append(float(info["action_replaced"]))
            v["masked_fraction"].append(1.0 - float(np.mean(info["action_mask"])))
            v["perturbation"].append(info["perturbation_bound"])
            for term, value in info["reward_terms"].items():
                v[f"reward_terms/{term}"].append(value)
        return True

    def _on_rollout_end(self) -> None:
        for key, values in self._values.items():
            self.logger.record(f"drrl/{key}", float(np.mean(values)))
        self._values.clear()


EvalListener = Callable[[int, dict[str, float]], None]  # (timesteps, eval means); may raise to stop training


class EveryRollout(BaseCallback):
    """Calls :meth:`fire` at the end of the first rollout at or after every ``freq`` steps.

    The policy changes only between rollouts, so firing inside one repeats the same result: a 64-step
    ``drrl compare`` (eval every 16 steps, one 512-step PPO rollout) ran 33 identical evaluations."""

    def __init__(self, freq: int) -> None:
        super().__init__()
        if freq < 1:
            raise ValueError(f"the callback's frequency {freq} must be at least 1 step")
        self.freq, self._next = freq, freq

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.freq + 1) * self.freq
            self.fire()

    @abstractmethod
    def fire(self) -> None:
        """What is done every ``freq`` steps."""


class HeldOutEvalCallback(EveryRollout):
    """Every ``eval_freq`` steps (at a rollout's end): deterministic episodes on the first validation
    documents, logged as ``eval/`` and passed to ``listener`` (a tuner's pruning hook)."""

    def __init__(self, eval_env: gym.Env, eval_freq: int, episodes: int, listener: EvalListener | None = None) -> None:
        super().__init__(eval_freq)
        self.eval_env, self.episodes, self.listener = eval_env, episodes, listener

    def fire(self) -> None:
        self.evaluate()

    def evaluate(self) -> dict[str, float]:
        documents = range(min(self.episodes, len(self.eval_env.unwrapped.document_names())))
        rows = evaluate(self.eval_env, {"agent": self.model}, documents)
        summary = {
            key: float(np.mean([getattr(r, key) for r in rows]))
            for key in ("reward", "fidelity", "cost_ratio", "flop_ratio", "mean_rank")
        }
        for key, value in summary.items():
            self.logger.record(f"eval/{key}", value)
        self.logger.dump(self.num_timesteps)
        if self.listener is not None:
            self.listener(self.num_timesteps, summary)
        return summary


class CheckpointCallback(EveryRollout):
    """Saves ``checkpoint.zip`` in the run folder every ``freq`` steps, at a rollout's end (``--resume``
    continues from it)."""

    def __init__(self, run_dir: Path, freq: int) -> None:
        super().__init__(freq)
        self.run_dir = run_dir

    def fire(self) -> None:
        save_agent(self.model, self.run_dir / "checkpoint")


class HParamsCallback(BaseCallback):
    """Writes the hyperparameters to TensorBoard's HParams tab once, at the start of training."""

    def __init__(self, config: Any) -> None:  # a TrainConfig
        super().__init__()
        self.config = config

    def _on_training_start(self) -> None:
        hparams = {
            "algo": self.config.algo,
            "policy": self.config.policy,
            "seed": self.config.seed,
            "n_envs": self.config.n_envs,
            "pretrain_bc": self.config.pretrain_bc,
        }
        hparams.update({k: v for k, v in self.model.drrl_env_config.items() if isinstance(v, (int, float, str, bool))})
        metrics = {"eval/reward": 0.0, "eval/fidelity": 0.0, "eval/cost_ratio": 0.0}
        self.logger.record("hparams", HParam(hparams, metrics), exclude=("stdout", "log", "json", "csv"))

    def _on_step(self) -> bool:
        return True
