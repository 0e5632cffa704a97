"""Training runs: one folder per (algo, policy, seed) with the model, the resolved config and TensorBoard events.

Run folders are named ``{env_id}__{algo}-{policy}__{seed}__{unix time}`` under a shared log root,
so ``tensorboard --logdir runs/`` overlays algorithms.  Tags: SB3's own (``rollout/``,
``train/``, ``time/``), ``drrl/`` per rollout (fidelity, cost and FLOP ratios, mean rank, rank
per layer, replaced-action and masked-rank fractions, perturbation, reward terms), ``eval/`` on
the validation documents (never the test split: that one is for the final comparison),
``bc/loss`` for behaviour cloning, and the HParams tab.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import drrl_env  # noqa: F401  (registers DRRL-v0 and DRRL-LM-v0)
from agents.sb3_agents import (
    ALGORITHMS,
    DEFAULT_HYPERPARAMS,
    POLICIES,
    TRANSFORMER_KWARGS,
    behaviour_cloning,
    load_agent,
    make_agent,
    oracle_dataset,
    save_agent,
)
from drrl_env.registration import RANK_ENV_IDS
from experiments.callbacks import (
    CheckpointCallback,
    DrrlMetricsCallback,
    EvalListener,
    HeldOutEvalCallback,
    HParamsCallback,
)

VEC_ENVS = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}  # --vec-env: SB3's vectorized env classes


@dataclasses.dataclass
class TrainConfig:
    """What ``drrl train`` runs; also what a ``--config`` YAML file may set."""

    env_id: str = "DRRL-v0"
    algo: str = "ppo"
    policy: str = "mlp"
    timesteps: int = 20_000
    seed: int = 0
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    hyperparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    n_envs: int = 1
    vec_env: str = "dummy"  # how the n_envs step: "dummy" (in this process) or "subproc" (one process each)
    pretrain_bc: int = 0  # training documents labelled by the oracle for behaviour cloning (0 = none)
    bc_epochs: int = 20
    eval_freq: int = 5_000
    eval_episodes: int = 8
    checkpoint_freq: int = 10_000

    def __post_init__(self) -> None:
        if self.env_id not in RANK_ENV_IDS:
            raise ValueError(f"unknown env_id {self.env_id!r}; choose one of {list(RANK_ENV_IDS)}")
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algo {self.algo!r}; choose one of {sorted(ALGORITHMS)}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {list(POLICIES)}")
        for name, low in (
            ("timesteps", 1),
            ("n_envs", 1),
            ("eval_episodes", 1),
            ("eval_freq", 1),
            ("checkpoint_freq", 1),
            ("bc_epochs", 1),
            ("seed", 0),
            ("pretrain_bc", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.vec_env not in VEC_ENVS:
            raise ValueError(f"unknown vec_env {self.vec_env!r}; choose one of {list(VEC_ENVS)}")
        if not isinstance(self.env_kwargs, dict) or not isinstance(self.hyperparams, dict):
            raise ValueError("env_kwargs and hyperparams must be mappings (key: value)")

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """A YAML file's settings, then ``overrides`` (those not None) on top; unknown keys are errors.

        The file holds :class:`TrainConfig`'s fields, or is an RL-Zoo hyperparameter file
        (``{env_id: {n_timesteps, policy, ...}}``, :func:`from_zoo`)."""
        data = read_yaml_mapping(path, "config file")
        if len(data) == 1 and next(iter(data)) in RANK_ENV_IDS:
            data = from_zoo(data, algo=overrides.get("algo") or Path(path).stem, path=path)
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown train config key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**data)

    def run_name(self) -> str:
        return f"{self.env_id}__{self.algo}-{self.policy}__{self.seed}__{int(time.time())}"


ZOO_KEYS = {
    "n_timesteps": "timesteps",
    "n_envs": "n_envs",
    "env_kwargs": "env_kwargs",
}  # RL Zoo key -> TrainConfig field
TRANSFORMER_ZOO_KWARGS = (  # RL Zoo evaluates policy_kwargs strings; this one imports the extractor itself
    "dict(features_extractor_class=__import__('agents.transformer_policy', fromlist=['_']).RankTransformerExtractor, "
    f"features_extractor_kwargs={TRANSFORMER_KWARGS!r})"
)


def to_zoo(config: TrainConfig) -> dict[str, Any]:
    """``config`` as an RL-Zoo hyperparameter file's mapping ``{env_id: {...}}`` (the file is named
    ``{algo}.yml``): ``n_timesteps``, ``policy``, ``n_envs``, the algorithm's hyperparameters, the
    Transformer extractor as a ``policy_kwargs`` string, and ``env_kwargs`` when there are any."""
    entry: dict[str, Any] = {
        "n_timesteps": config.timesteps,
        "n_envs": config.n_envs,
        "policy": "MultiInputLstmPolicy" if config.algo == "recurrent_ppo" else "MultiInputPolicy",
        **config.hyperparams,
    }
    if config.policy == "transformer":
        entry["policy_kwargs"] = TRANSFORMER_ZOO_KWARGS
    if config.env_kwargs:
        entry["env_kwargs"] = dict(config.env_kwargs)
    return {config.env_id: entry}


def from_zoo(data: dict[str, Any], algo: str, path: str | Path) -> dict[str, Any]:
    """TrainConfig fields from an RL-Zoo mapping (:func:`to_zoo`); ``algo`` comes from ``--algo`` or the file name."""
    env_id, entry = next(iter(data.items()))
    if not isinstance(entry, dict) or "n_timesteps" not in entry:
        raise ValueError(f"RL-Zoo file {str(path)!r}: {env_id} must map to hyperparameters with n_timesteps")
    if algo not in ALGORITHMS:
        raise ValueError(
            f"RL-Zoo file {str(path)!r} does not say its algorithm: name it <algo>.yml "
            f"({', '.join(sorted(ALGORITHMS))}) or pass --algo"
        )
    entry = dict(entry)
    policy_kwargs = entry.pop("policy_kwargs", None)
    if policy_kwargs not in (None, TRANSFORMER_ZOO_KWARGS):
        raise ValueError(
            f"RL-Zoo file {str(path)!r}: policy_kwargs {policy_kwargs!r} is not one drrl builds; "
            "leave it out (mlp policy) or use the Transformer's as drrl tune writes it"
        )
    entry.pop("policy", None)
    fields = {field: entry.pop(key) for key, field in ZOO_KEYS.items() if key in entry}
    if isinstance(fields["timesteps"], float) and fields["timesteps"].is_integer():
        fields["timesteps"] = int(fields["timesteps"])  # the zoo writes 1e5 as !!float
    return {
        "env_id": env_id,
        "algo": algo,
        "policy": "mlp" if policy_kwargs is None else "transformer",
        **fields,
        "hyperparams": entry,
    }


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (empty file: {}), or a ValueError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{what} {str(path)!r} is not a file" if path.exists() else f"{what} {str(path)!r} does not exist"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {str(path)!r} is not valid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r} must hold a mapping of settings, got a {type(data).__name__}")
    return data


class TrainingInterrupted(Exception):
    """Ctrl-C during :func:`train`: ``run_dir`` holds the checkpoint to resume from, or is None when
    the interrupt came before anything was saved."""

    def __init__(self, run_dir: Path | None) -> None:
        super().__init__(f"interrupted; checkpoint in {run_dir}" if run_dir else "interrupted before training began")
        self.run_dir = run_dir


def resolved_settings(config: TrainConfig) -> dict[str, Any]:
    """The train settings a run folder's ``config.yaml`` records (hyperparameters resolved), as YAML reads them back."""
    settings = {**dataclasses.asdict(config), "hyperparams": {**DEFAULT_HYPERPARAMS[config.algo], **config.hyperparams}}
    return yaml.safe_load(yaml.safe_dump(settings))


def train(
    config: TrainConfig,
    logdir: str | Path = "runs",
    resume: str | Path | None = None,
    progress_bar: bool = False,
    on_eval: EvalListener | None = None,
) -> Path:
    """Train one agent; returns its run folder (holding ``model.zip``, ``config.yaml``, events).

    ``resume``: a run folder to continue from its checkpoint; its ``progress.csv`` keeps the rows
    written before.  Ctrl-C saves a checkpoint and raises :class:`TrainingInterrupted`.
    ``on_eval(timesteps, means)`` is called after every evaluation on the validation documents,
    the last one after training; an exception it raises ends training (the run folder stays).
    """
    run_dir, model, logger = None, None, None
    try:
        env_kwargs = {**config.env_kwargs, "split": "train", "render_mode": None}  # SB3 would ask for rgb_array
        vec_env = make_vec_env(
            config.env_id,
            n_envs=config.n_envs,
            seed=config.seed,
            env_kwargs=env_kwargs,
            vec_env_cls=VEC_ENVS[config.vec_env],
        )
        eval_env = gym.make(config.env_id, **{**config.env_kwargs, "split": "validation"})
        if resume is not None:
            checkpoint = next(
                (p for p in (Path(resume) / "checkpoint.zip", Path(resume) / "model.zip") if p.exists()), None
            )
            if checkpoint is None:
                raise ValueError(f"run folder {str(resume)!r} has no checkpoint.zip or model.zip to resume from")
            model, run_dir = load_agent(checkpoint, vec_env), Path(resume)
            _set_progress_aside(run_dir)
        else:
            model = make_agent(config.algo, vec_env, config.policy, seed=config.seed, **config.hyperparams)
            run_dir = Path(logdir) / config.run_name()
            run_dir.mkdir(parents=True, exist_ok=False)
        logger = configure(str(run_dir), ["tensorboard", "csv"])
        model.set_logger(logger)
        resolved = {**resolved_settings(config), "env_config": model.drrl_env_config}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        if config.pretrain_bc and resume is None:
            _pretrain(model, config)
        evaluator = HeldOutEvalCallback(eval_env, config.eval_freq, config.eval_episodes, on_eval)
        callbacks = CallbackList(
            [
                DrrlMetricsCallback(),
                evaluator,
                CheckpointCallback(run_dir, config.checkpoint_freq),
                HParamsCallback(config),
            ]
        )
        remaining = max(config.timesteps - model.num_timesteps, 0)
        model.learn(remaining, callback=callbacks, reset_num_timesteps=resume is None, progress_bar=progress_bar)
        evaluator.evaluate()
        save_agent(model, run_dir / "model")
    except KeyboardInterrupt:
        if model is None or run_dir is None or not run_dir.exists():
            raise TrainingInterrupted(None) from None
        save_agent(model, run_dir / "checkpoint")
        raise TrainingInterrupted(run_dir) from None
    finally:
        if logger is not None:
            logger.close()
        if model is not None:
            model.get_env().close()  # subprocess envs end with their training
        if run_dir is not None and run_dir.exists():
            _merge_progress(run_dir)
    return run_dir


PROGRESS, EARLIER_PROGRESS = "progress.csv", "progress.before-resume.csv"


def _set_progress_aside(run_dir: Path) -> None:
    """Before resuming: SB3's CSV logger truncates progress.csv, so its rows move aside (merged back later)."""
    _merge_progress(run_dir)  # a resume that died before merging left rows aside already
    if (run_dir / PROGRESS).exists():
        (run_dir / PROGRESS).replace(run_dir / EARLIER_PROGRESS)


def _merge_progress(run_dir: Path) -> None:
    """progress.csv = the rows set aside before a resume, then the new ones (columns united)."""
    earlier = run_dir / EARLIER_PROGRESS
    if not earlier.exists():
        return
    rows: list[dict[str, str]] = []
    columns: dict[str, None] = {}
    for path in (earlier, run_dir / PROGRESS):
        if path.exists():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                columns.update(dict.fromkeys(reader.fieldnames or []))
                rows.extend(reader)
    tmp = run_dir / (PROGRESS + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(run_dir / PROGRESS)
    earlier.unlink()


def _pretrain(model: BaseAlgorithm, config: TrainConfig) -> None:
    """Behaviour cloning of the oracle on ``config.pretrain_bc`` training documents, logged as ``bc/loss``."""
    env = gym.make(config.env_id, **{**config.env_kwargs, "split": "train"})
    documents = list(range(min(config.pretrain_bc, len(env.unwrapped.document_names()))))
    observations, actions = oracle_dataset(env, documents)
    for epoch, loss in enumerate(
        behaviour_cloning(model, observations, actions, epochs=config.bc_epochs, seed=config.seed)
    ):
        model.logger.record("bc/loss", loss)
        model.logger.dump(epoch)
