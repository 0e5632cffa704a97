"""``drrl tune``: hyperparameter search with Optuna's TPE sampler and pruning, scored on the validation split.

Each trial trains one agent (:func:`experiments.train.train`) on the training split with sampled
hyperparameters (:func:`sample_hyperparams`, RL-Zoo-style ranges), evaluates it on the first
``eval_episodes`` validation documents ``EVALUATIONS`` times during training, and is scored by the
mean episode reward of the last evaluation.  A trial whose intermediate score falls below the median
of earlier trials at the same step is stopped early: Optuna's ``MedianPruner`` locally, Ray Tune's
``MedianStoppingRule`` on Ray, where Tune's ``OptunaSearch`` samples with the same TPE and ranges.
The test split is never read.

Written to ``out``: ``{algo}.yml``, the best trial as an RL-Zoo hyperparameter file that
``drrl train --config`` and ``rl_zoo3 train -c`` read; ``study.md`` and ``study.json`` (every trial's
parameters, score and state, the best trial, and parameter importances locally); ``trials/<n>/`` the
run folders (TensorBoard events); ``study.db`` (the Optuna study, so a rerun adds trials) or
``ray_results/`` (Tune's own records, kept inside ``out``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml

from experiments.backends import import_ray
from experiments.train import TrainConfig, to_zoo, train

EVALUATIONS = 4  # validation evaluations per trial: the pruner's checkpoints
ON_POLICY = ("ppo", "maskable_ppo", "recurrent_ppo")
GAMMAS = (0.5, 0.9, 0.99)  # episodes are a few dozen steps: short horizons are in range


def sample_hyperparams(trial: Any, algo: str) -> dict[str, Any]:
    """Hyperparameters of ``algo`` drawn through an Optuna ``trial`` (``suggest_*``)."""
    params: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "gamma": trial.suggest_categorical("gamma", GAMMAS),
    }
    if algo in ON_POLICY:
        params.update(
            n_steps=trial.suggest_categorical("n_steps", (64, 128, 256, 512)),
            batch_size=trial.suggest_categorical("batch_size", (32, 64)),
            n_epochs=trial.suggest_categorical("n_epochs", (3, 5, 10)),
            clip_range=trial.suggest_categorical("clip_range", (0.1, 0.2, 0.3)),
        )
    elif algo == "a2c":
        params["n_steps"] = trial.suggest_categorical("n_steps", (8, 16, 24, 48))
    if algo == "dqn":
        params.update(
            batch_size=trial.suggest_categorical("batch_size", (32, 64, 128)),
            learning_starts=trial.suggest_categorical("learning_starts", (0, 100, 500)),
            train_freq=trial.suggest_categorical("train_freq", (1, 4, 8)),
            target_update_interval=trial.suggest_categorical("target_update_interval", (100, 500, 1000)),
            exploration_fraction=trial.suggest_float("exploration_fraction", 0.1, 0.5),
        )
    else:
        params.update(
            gae_lambda=trial.suggest_categorical("gae_lambda", (0.8, 0.9, 0.95, 1.0)),
            ent_coef=trial.suggest_float("ent_coef", 1e-6, 0.1, log=True),
        )
    return params


def tune(
    base: TrainConfig,
    trials: int,
    out: Path,
    backend: str = "local",
    address: str | None = None,
    eval_episodes: int = 4,
) -> Path:
    """Search ``trials`` hyperparameter sets for ``base`` (algo, policy, timesteps, env); returns the
    written ``{algo}.yml``."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"--trials must be an integer >= 1, got {trials!r}")
    if backend not in ("local", "ray"):
        raise ValueError(f"backend={backend!r} is not allowed; choose 'local' or 'ray'")
    base = TrainConfig.from_dict(
        {**base.__dict__, "eval_freq": max(base.timesteps // EVALUATIONS, 1), "eval_episodes": eval_episodes}
    )
    out.mkdir(parents=True, exist_ok=True)
    records = _tune_ray(base, trials, out, address) if backend == "ray" else _tune_optuna(base, trials, out)
    finished = [r for r in records if r["state"] == "complete"]
    if not finished:
        raise ValueError(f"no trial finished ({len(records)} pruned or failed); raise --timesteps or --trials")
    best = max(finished, key=lambda r: r["score"])
    best_config = TrainConfig.from_dict({**base.__dict__, "hyperparams": best["params"]})
    zoo = out / f"{base.algo}.yml"
    zoo.write_text(
        f"# drrl tune: best of {len(records)} trials (trial {best['trial']}, mean validation reward "
        f"{best['score']:.4f})\n" + yaml.safe_dump(to_zoo(best_config), sort_keys=False)
    )
    _write_summary(out, base, records, best)
    return zoo


class _Scorer:
    """The train listener of one trial: keeps the last validation score and hands each one to ``report``."""

    def __init__(self, report: Any) -> None:
        self.report, self.score = report, None

    def __call__(self, timesteps: int, means: dict[str, float]) -> None:
        self.score = means["reward"]
        self.report(timesteps, self.score)


def _tune_optuna(base: TrainConfig, trials: int, out: Path) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="drrl-tune",
        storage=f"sqlite:///{out.resolve() / 'study.db'}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
    )

    def objective(trial: optuna.Trial) -> float:
        config = TrainConfig.from_dict({**base.__dict__, "hyperparams": sample_hyperparams(trial, base.algo)})

        def report(timesteps: int, score: float) -> None:
            if timesteps < base.timesteps:  # the last evaluation is the score, not a checkpoint
                trial.report(score, timesteps)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        scorer = _Scorer(report)
        train(config, out / "trials" / str(trial.number), on_eval=scorer)
        print(f"trial {trial.number}: validation reward {scorer.score:.4f}", flush=True)
        return scorer.score

    study.optimize(objective, n_trials=trials)
    try:
        importance = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # fewer than two finished trials, or nothing varied
        importance = {}
    states = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned"}
    records = [
        {"trial": t.number, "state": states.get(t.state, "failed"), "score": t.value, "params": t.params}
        for t in study.trials
    ]
    (out / "importance.json").write_text(json.dumps(importance, indent=1))
    return records


def _ray_trial(params: dict[str, Any], base: dict[str, Any], out: str) -> None:
    """One Tune trial (a function trainable): trains with ``params`` and reports every validation score."""
    from ray import tune as ray_tune

    config = TrainConfig.from_dict({**base, "hyperparams": dict(params)})
    scorer = _Scorer(lambda timesteps, score: ray_tune.report({"reward": score, "timesteps": timesteps}))
    train(config, Path(out) / "trials" / ray_tune.get_context().get_trial_id(), on_eval=scorer)


def _define_by_run(trial: Any, algo: str) -> None:
    sample_hyperparams(trial, algo)  # OptunaSearch reads the suggestions off the trial


def _tune_ray(base: TrainConfig, trials: int, out: Path, address: str | None) -> list[dict[str, Any]]:
    import_ray()
    from optuna.samplers import TPESampler
    from ray import tune as ray_tune
    from ray.tune.schedulers import MedianStoppingRule
    from ray.tune.search.optuna import OptunaSearch

    from experiments.backends import RayBackend

    with RayBackend(address=address):
        search = OptunaSearch(
            space=functools.partial(_define_by_run, algo=base.algo),
            metric="reward",
            mode="max",
            sampler=TPESampler(seed=base.seed),
        )
        scheduler = MedianStoppingRule(time_attr="timesteps", metric="reward", mode="max", min_samples_required=2)
        trainable = ray_tune.with_parameters(_ray_trial, base=base.__dict__, out=str(out.resolve()))
        tuner = ray_tune.Tuner(
            ray_tune.with_resources(trainable, {"cpu": 1}),
            tune_config=ray_tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=trials),
            run_config=ray_tune.RunConfig(
                storage_path=str((out / "ray_results").resolve()), name="drrl-tune", verbose=0
            ),
        )
        results = tuner.fit()
        records = []
        for number, result in enumerate(results):
            reached = (result.metrics or {}).get("timesteps", 0)
            state = "failed" if result.error else "complete" if reached >= base.timesteps else "pruned"
            records.append(
                {
                    "trial": number,
                    "state": state,
                    "score": (result.metrics or {}).get("reward"),
                    "params": result.config,
                }
            )
    return records


def _write_summary(out: Path, base: TrainConfig, records: list[dict[str, Any]], best: dict[str, Any]) -> None:
    importance_file = out / "importance.json"
    importance = json.loads(importance_file.read_text()) if importance_file.exists() else {}
    summary = {
        "algo": base.algo,
        "policy": base.policy,
        "env_id": base.env_id,
        "env_kwargs": base.env_kwargs,
        "timesteps": base.timesteps,
        "eval_episodes": base.eval_episodes,
        "best": best,
        "trials": records,
        "importance": importance,
    }
    (out / "study.json").write_text(json.dumps(summary, indent=1, default=str))
    counts = {s: sum(r["state"] == s for r in records) for s in ("complete", "pruned", "failed")}
    lines = [
        f"# drrl tune: {base.algo}-{base.policy} on {base.env_id}",
        "",
        f"{len(records)} trials ({counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} "
        f"failed), {base.timesteps} steps each, scored by the mean reward on {base.eval_episodes} validation "
        f"documents.",
        "",
        f"Best: trial {best['trial']}, validation reward {best['score']:.4f}: `{best['params']}`",
        "",
        "| trial | state | validation reward | parameters |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['trial']} | {r['state']} | {_score_text(r['score'])} | `{r['params']}` |" for r in records]
    if importance:
        lines += [
            "",
            "Parameter importance (Optuna's fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in importance.items()),
        ]
    (out / "study.md").write_text("\n".join(lines) + "\n")


def _score_text(score: float | None) -> str:
    return "" if score is None else f"{score:.4f}"
