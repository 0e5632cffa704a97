"""``drrl train-kv``: an SB3 agent trained on DRRL-KV-fast-v0, DRRL-KV-v0's fast mode.

    drrl train-kv --sensitivity experiments/results/kv/fast_mode.npz [--algo ppo] [--policy mlp]
        [--timesteps 200000] [--seed 0] [--train-documents 4-11] [--eval-documents 6] [--eval-freq 20000]
        [--n-steps 1024] [--n-envs 8] [--ent-coef 0] [--learning-rate 3e-4] [--pretrain-bc 0]
        [--bc-teacher reference] [--logdir runs] [--env-kwargs k=v ...]

Top to bottom:

1. build the training environment on documents ``--train-documents`` of ``--split`` (their fast-mode
   artefacts are computed once and cached; ``--n-envs`` copies of it step together), and an
   evaluation one on the first ``--eval-documents`` documents of ``--eval-split`` (validation);
2. make ``--algo`` (ppo, maskable_ppo or recurrent_ppo) with ``--policy`` (``mlp``: SB3's
   MultiInputPolicy; ``transformer``: one token per model layer,
   ``agents.transformer_policy.KVLayerTransformerExtractor``), rewards scaled by the running spread of
   the return (SB3 ``VecNormalize``, reward only) and no entropy bonus by default (``--ent-coef``);
3. behaviour-clone it for ``--pretrain-bc`` epochs on ``--bc-teacher`` over each training document:
   ``reference``, the hindsight reference (c) (``agents.kv_search.best_dynamic``: privileged, a teacher
   only), or a deployable baseline such as ``static:FILE``, so that PPO starts from the strongest
   heuristic;
4. train for ``--timesteps`` steps, scoring the deterministic policy on the evaluation documents every
   ``--eval-freq`` steps (TensorBoard ``eval/predicted_excess_nll``, the fast mode's, per document);
5. save ``model.zip`` (the last policy) and ``best_model.zip`` (the best evaluation: selection on
   validation), each with the sidecar ``.kv.json`` that ``drrl generate`` checks.

The run folder is ``LOGDIR/DRRL-KV-fast-v0__ALGO-POLICY[-bc[-TEACHER]]__SEED__TIME``.  These are
fast-mode scores: figures come from the closed loop (``benchmarks/kv_headroom.py --agents
RUN/best_model.zip``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.kv_search import best_dynamic, plan_player
from agents.sb3_agents import POLICIES, behaviour_cloning, make_agent, save_agent
from drrl_env.play import play, predicting
from experiments.callbacks import EveryRollout
from experiments.generate import load_policy, policy_metadata
from experiments.options import parse_kv_kwargs

ENV_ID = "DRRL-KV-fast-v0"
KV_ALGORITHMS = ("ppo", "maskable_ppo", "recurrent_ppo")


def parse_documents(text: str) -> tuple[int, ...]:
    """``"4-11"`` or ``"4,5,9"`` -> document indices."""
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-"))
            return tuple(range(first, last + 1))
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--train-documents {text!r} must be a range like 4-11 or a list like 4,5,9") from None


def fast_scores(env: gym.Env, policy: Any, documents: range) -> np.ndarray:
    """Predicted excess NLL (nats) of ``policy`` played deterministically in the fast mode, per document."""
    return np.array([play(env, predicting(policy), d)[-1].info["predicted_excess_nll"] for d in documents])


class FastEvalCallback(EveryRollout):
    """Every ``freq`` steps (at a rollout's end): the fast-mode score on the evaluation documents, logged as
    ``eval/`` and kept (``history``: (timesteps, per-document scores)) for the convergence check; the
    best-scoring policy so far is saved by ``save(name)`` as ``best_model`` (selection on validation)."""

    def __init__(self, env: gym.Env, documents: range, freq: int, save: Callable[[str], None]) -> None:
        super().__init__(freq)
        self.env, self.documents, self.save = env, documents, save
        self.history: list[tuple[int, np.ndarray]] = []

    def fire(self) -> None:
        self.evaluate()

    def evaluate(self) -> float:
        scores = fast_scores(self.env, self.model, self.documents)
        if not self.history or scores.mean() < min(past.mean() for _, past in self.history):
            self.save("best_model")
        self.history.append((self.num_timesteps, scores))
        self.logger.record("eval/predicted_excess_nll", float(scores.mean()))
        self.logger.dump(self.num_timesteps)
        return float(scores.mean())

    def best(self) -> tuple[int, float]:
        """(timesteps, mean score) of the best evaluation."""
        step, scores = min(self.history, key=lambda entry: entry[1].mean())
        return step, float(scores.mean())

    def converged(self) -> str:
        """Whether the score improved by less than one standard error (over documents) in the last 25% of
        the steps: the first evaluation at or after 75% of them against the last."""
        last_step, last = self.history[-1]
        _, then = next((step, scores) for step, scores in self.history if step >= 0.75 * last_step)
        gain = then - last  # positive: the excess fell
        error = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else float("inf")
        verdict = "converged" if gain.mean() <= error else "still improving"  # <=: no change at all is converged
        return f"{verdict}: the last 25% of steps lowered it by {gain.mean():.1f} +- {error:.1f} nats/document"


def teacher_dataset(env: gym.Env, teacher: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Observations and ``teacher``'s actions over one episode of each of ``env``'s training documents.

    ``teacher`` is ``reference`` (reference (c), ``best_dynamic``: privileged, its executed levels fit the
    budget) or a deployable baseline spec of ``agents.kv_baselines`` (e.g. ``static:FILE``, ``uniform:int4``),
    whose requests are recorded as it plays."""
    fast = env.unwrapped
    baseline = None if teacher == "reference" else load_policy(teacher, fast.closed)
    steps = []
    for document in fast.documents:
        if baseline is None:
            act = plan_player(best_dynamic(fast.closed.fast_document(document, fast.sensitivity)))  # (steps, 2, Ly)
        else:
            act = predicting(baseline)
        steps += play(env, act, document, keep_observations=True)
    observations = {key: np.stack([step.observation[key] for step in steps]) for key in steps[0].observation}
    return observations, np.stack([np.asarray(step.action).reshape(-1) for step in steps])


def train_kv(args: argparse.Namespace) -> Path:
    """Trains one agent (module docstring); returns its run folder."""
    if args.algo not in KV_ALGORITHMS:
        raise ValueError(f"--algo {args.algo!r} is not supported on {ENV_ID}; choose one of {list(KV_ALGORITHMS)}")
    shared = {"sensitivity": args.sensitivity, **parse_kv_kwargs(args.env_kwargs)}
    env = gym.make(ENV_ID, **{**shared, "split": args.split, "documents": parse_documents(args.train_documents)})
    eval_env = gym.make(ENV_ID, **{**shared, "split": args.eval_split})
    evaluation = range(min(args.eval_documents, len(eval_env.unwrapped.document_names())))
    torch.distributions.Distribution.set_default_validate_args(False)  # 60 categoricals a step: checks dominate
    torch.set_num_threads(1)  # the networks are tiny: a second thread only adds synchronization
    vec_env = DummyVecEnv([lambda each=each: Monitor(each) for each in env.unwrapped.copies(args.n_envs)])
    # Rewards are nats, tens per step: unscaled, the critic explained none of the return (explained
    # variance ~1e-6 after 200k steps) and PPO learnt from noise.  Only the reward is scaled (by a running
    # estimate of the return's spread); observations stay raw, so the saved policy needs no statistics.
    vec_env = VecNormalize(vec_env, norm_obs=False, norm_reward=True, gamma=0.99)
    model = make_agent(
        args.algo,
        vec_env,
        args.policy,
        seed=args.seed,
        n_steps=max(1, args.n_steps // args.n_envs),
        batch_size=min(256, args.n_steps),
        gamma=0.99,
        ent_coef=args.ent_coef,
        learning_rate=args.learning_rate,
    )
    teacher = "" if args.bc_teacher == "reference" else "-" + args.bc_teacher.split(":")[0]
    method = f"{args.algo}-{args.policy}" + (f"-bc{teacher}" if args.pretrain_bc else "")
    run_dir = Path(args.logdir) / f"{ENV_ID}__{method}__{args.seed}__{int(time.time())}"
    run_dir.mkdir(parents=True, exist_ok=False)
    model.set_logger(configure(str(run_dir), ["tensorboard", "csv"]))
    if args.pretrain_bc:
        dataset = teacher_dataset(env, args.bc_teacher)
        losses = behaviour_cloning(model, *dataset, epochs=args.pretrain_bc, seed=args.seed)
        name = "reference (c)" if args.bc_teacher == "reference" else args.bc_teacher
        print(f"behaviour cloning of {name}: negative log-likelihood {losses[0]:.2f} -> {losses[-1]:.2f}")

    def save(name: str) -> None:  # the agent with the sidecar that drrl generate and load_policy check
        path = save_agent(model, run_dir / name)
        path.with_suffix(".kv.json").write_text(json.dumps(policy_metadata(env), indent=1))

    callback = FastEvalCallback(eval_env, evaluation, args.eval_freq, save)
    model.learn(args.timesteps, callback=callback)
    final = callback.evaluate()
    save("model")
    best_step, best_score = callback.best()
    print(
        f"{run_dir}: fast-mode excess NLL on {len(evaluation)} evaluation documents {final:.1f} nats/document; "
        + callback.converged()
        + f"; best_model.zip: {best_score:.1f} at step {best_step}"
    )
    return run_dir


def add_parser(sub: Any) -> None:
    """Registers ``drrl train-kv`` on the CLI's subparsers."""
    p = sub.add_parser("train-kv", help=f"train an SB3 agent on {ENV_ID} (DRRL-KV-v0's fast mode)")
    p.add_argument("--sensitivity", required=True, help="the .npz of benchmarks/kv_fast_mode.py")
    p.add_argument("--algo", default="ppo", help=f"one of {', '.join(KV_ALGORITHMS)}")
    p.add_argument("--policy", default="mlp", choices=POLICIES, help="mlp, or transformer (a token per layer)")
    p.add_argument("--timesteps", type=int, default=200_000, help="environment steps to train for")
    p.add_argument("--seed", type=int, default=0, help="seed of the agent and of the environment's draws")
    p.add_argument("--split", default="train", help="the training documents' split")
    p.add_argument(
        "--train-documents", default="4-11", help="training documents (the bases use 0-3 of the train split)"
    )
    p.add_argument("--eval-split", default="validation", help="the split the checkpoints are scored on")
    p.add_argument("--eval-documents", type=int, default=6, help="the first N documents of --eval-split")
    p.add_argument("--eval-freq", type=int, default=20_000, help="steps between fast-mode evaluations (eval/ tags)")
    p.add_argument("--n-steps", type=int, default=1024, help="environment steps per PPO update (all envs together)")
    p.add_argument("--n-envs", type=int, default=8, help="fast-mode environments stepped together")
    p.add_argument(
        "--ent-coef",
        type=float,
        default=0.0,
        help="entropy bonus; the action's entropy sums 2 x layers heads (60 on SmolLM2), so DRRL-v0's 0.01 "
        "outweighed the scaled reward and flattened the policy",
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=3e-4,
        help="Adam's step size; after --pretrain-bc, a smaller one keeps PPO near the clone it starts from",
    )
    p.add_argument(
        "--pretrain-bc", type=int, default=0, help="epochs of behaviour cloning of --bc-teacher first (0: none)"
    )
    p.add_argument(
        "--bc-teacher",
        default="reference",
        help="reference (hindsight reference (c), privileged) or a baseline spec such as static:FILE or uniform:int4",
    )
    p.add_argument("--logdir", default="runs", help="folder that receives the run folder")
    p.add_argument("--env-kwargs", nargs="*", default=[], help="DRRL-KV-v0 options as key=value")
    p.set_defaults(func=lambda args: print(train_kv(args)) or 0)
