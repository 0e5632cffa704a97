"""``drrl compare``: train a grid of agents, evaluate them and the baselines on the same test documents,
and write a Markdown report with the paper-style table, a paired test, a Pareto plot and a rank heatmap."""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import drrl_env  # noqa: F401
from agents.baselines import make_baseline, role_of
from agents.policy import RANK_BASELINES
from agents.sb3_agents import env_config_dict, load_agent
from drrl_env.config import make_config
from drrl_env.costs import cost_model_class
from drrl_env.costs.latency import LatencyProfile, machine_description
from experiments.backends import PARALLEL_ENV, Resources, make_backend
from experiments.report import (
    fixed_plan_sentences,
    fixed_plans,
    holm,
    mean_ci,
    method_table,
    paired_comparison,
    pareto_plot,
    per_document,
    rank_heatmap,
    topic_of,
)
from experiments.rollout import EpisodeSummary, add_model_metrics, evaluate
from experiments.train import TrainConfig, read_yaml_mapping, resolved_settings, train


def _train_one(args: tuple[TrainConfig, str]) -> str:
    """Trains one run of the grid, or picks up its earlier attempt in ``logdir``: a finished run is
    reused, an interrupted one resumed from its checkpoint, one without a checkpoint removed and redone."""
    config, logdir = args
    if os.environ.get(PARALLEL_ENV):
        torch.set_num_threads(1)  # parallel training processes share the cores
    earlier = _earlier_runs(config, Path(logdir))
    finished = [run for run in earlier if (run / "model.zip").exists()]
    if finished:
        print(f"  reused {finished[-1]} (finished earlier)", flush=True)
        return str(finished[-1])
    resumable = [run for run in earlier if (run / "checkpoint.zip").exists()]
    for run in earlier:
        if run not in resumable[-1:]:
            shutil.rmtree(run)  # a run killed before its first checkpoint: nothing to keep
    run_dir = str(train(config, logdir, resume=resumable[-1] if resumable else None))
    print(f"  {'resumed' if resumable else 'trained'} {run_dir}", flush=True)
    return run_dir


def _earlier_runs(config: TrainConfig, logdir: Path) -> list[Path]:
    """Run folders in ``logdir`` made for the same train settings, oldest first."""
    prefix = config.run_name().rsplit("__", 1)[0] + "__"
    wanted = resolved_settings(config)
    runs = []
    for run in sorted(logdir.glob(f"{glob.escape(prefix)}*")):
        if not (run / "config.yaml").exists():
            runs.append(run)  # killed before it wrote its config: same name prefix, so the same run
            continue
        try:
            saved = read_yaml_mapping(run / "config.yaml", "run config")
        except ValueError:
            continue  # a damaged config may belong to other settings: leave that folder alone
        saved.pop("env_config", None)
        if not saved or saved == wanted:
            runs.append(run)
    return runs


def tune_baselines(env_id: str, env_kwargs: dict[str, Any], documents: int) -> list[str]:
    """The best of each tunable baseline family by mean reward on the first ``documents`` training
    documents, each over the grid it declares (``RankPolicy.tuning_grid``: fixed rank, energy threshold,
    cost-aware energy threshold and, with a latency budget, the greedy allocator's pacing); then the
    per-layer static ranks by one pass of coordinate ascent from the best fixed rank (each layer in
    turn takes the rank that maximizes the mean reward with the other layers held)."""
    env = gym.make(env_id, **{**env_kwargs, "split": "train"})
    docs = range(min(documents, len(env.unwrapped.document_names())))
    ranks, n_layers = env.unwrapped.ranks, env.unwrapped.source.spec.n_layers
    score: dict[str, float] = {}

    def scored(candidates: list[str]) -> None:
        new = [c for c in candidates if c not in score]
        rows = evaluate(env, {c: make_baseline(c, env) for c in new}, docs)
        score.update({c: float(np.mean([r.reward for r in rows if r.policy == c])) for c in new})

    grids = {name: RANK_BASELINES.get(name).tuning_grid(env) for name in RANK_BASELINES.names()}
    families = [name for name, grid in grids.items() if grid]
    assert "fixed" in families, "the per-layer search starts from the best fixed rank: keep fixed:R tunable"
    scored([spec for family in families for spec in grids[family]])
    best = {family: max((c for c in score if c.split(":")[0] == family), key=score.get) for family in families}
    per_layer = [int(best["fixed"].split(":")[1])] * n_layers
    for layer in range(n_layers):
        options = {r: "static:" + "/".join(map(str, per_layer[:layer] + [r] + per_layer[layer + 1 :])) for r in ranks}
        scored(list(options.values()))
        per_layer[layer] = max(options, key=lambda r: score[options[r]])
    best["static"] = "static:" + "/".join(map(str, per_layer))
    return [best[family] for family in [*families, "static"]]


def compare(
    algos: list[str],
    policies: list[str],
    seeds: int,
    timesteps: int,
    env_kwargs: dict[str, Any],
    out: Path,
    episodes: int,
    jobs: int = 1,
    pretrain_bc: int = 0,
    tune_documents: int = 16,
    hyperparams: dict[str, Any] | None = None,
    env_id: str = "DRRL-v0",
    backend: str = "local",
    address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    planner: bool = True,
    latency_rounds: int = 3,
) -> Path:
    """Train ``algos x policies x seeds`` runs under ``out/runs`` and write ``out/report.md``; returns its path.

    The runs go to ``backend`` (``experiments/backends.py``): ``local`` with ``jobs`` processes, or
    ``ray`` (at ``address``, or started here), each run a task with ``cpus_per_run`` CPUs and
    ``gpus_per_run`` GPUs, or a node to itself under a measured cost model.  Evaluation and the
    report happen here, so the output folder is the same whatever the backend.

    Rerunning the same command after an interruption resumes the grid: finished runs are reused,
    interrupted ones continue from their checkpoints (``_train_one``).  ``planner`` adds the
    non-myopic reference (``agents/planner.py``; 1 + layers x ranks episodes per document);
    ``latency_rounds`` = 0 leaves out the measured attention latency of every row (2 s per row on
    the default env)."""
    config = make_config(**env_kwargs)
    resources = Resources(
        cpus=cpus_per_run, gpus=gpus_per_run, exclusive=cost_model_class(config.cost_model).measures_device
    )
    configs = [
        TrainConfig(
            env_id=env_id,
            algo=a,
            policy=p,
            timesteps=timesteps,
            seed=s,
            env_kwargs=env_kwargs,
            pretrain_bc=pretrain_bc,
            eval_freq=max(timesteps // 4, 1),
            hyperparams=hyperparams or {},
        )
        for a in algos
        for p in policies
        for s in range(seeds)
    ]
    if not configs:
        raise ValueError("nothing to train: give at least one algo, one policy and --seeds >= 1")
    with make_backend(backend, jobs=jobs, address=address) as runner:
        runner.check(resources)
        out.mkdir(parents=True, exist_ok=True)
        print(
            f"training {len(configs)} runs ({', '.join(sorted({f'{c.algo}-{c.policy}' for c in configs}))}; "
            f"{seeds} seeds, {timesteps} steps each) in {out / 'runs'} on the {backend} backend",
            flush=True,
        )
        run_dirs = runner.map(_train_one, [(c, str((out / "runs").resolve())) for c in configs], resources)

    env = gym.make(env_id, **{**env_kwargs, "split": "test"})
    documents = range(min(episodes, len(env.unwrapped.document_names())))
    print(f"tuning the fixed-rank, energy and per-layer baselines on {tune_documents} training documents", flush=True)
    baselines = ["full", *tune_baselines(env_id, env_kwargs, tune_documents), "random", "oracle"]
    baselines += ["planner"] if planner else []
    policies_by_name: dict[str, Any] = {b: make_baseline(b, env, seed=0) for b in baselines}
    method_of = {b: b for b in baselines}
    for config, run_dir in zip(configs, run_dirs):
        name = f"{config.algo}-{config.policy}{'-bc' if pretrain_bc else ''}/seed{config.seed}"
        policies_by_name[name] = load_agent(Path(run_dir) / "model.zip", env)
        method_of[name] = name.split("/")[0]
    selection = select_on_validation(env_id, env_kwargs, policies_by_name, method_of, baselines, episodes)
    print(
        f"selected on validation: agent {selection['agent']}, baseline {selection['baseline']}; evaluating "
        f"{len(policies_by_name)} policies on {len(documents)} test documents",
        flush=True,
    )
    rows = evaluate(env, policies_by_name, documents)
    if env.unwrapped.source.runs_model and not env.unwrapped.config.per_head:
        rows = add_model_metrics(env, rows, latency_rounds)
    meta = {
        "command": " ".join(["drrl", *(shlex.quote(a) for a in sys.argv[1:])]),  # relative: no install path
        "machine": f"{machine_description(env.unwrapped.device)}, device {env.unwrapped.config.device}",
        "env_id": env_id,
        "env_config": env_config_dict(env),
        "method_of": method_of,
        "baselines": baselines,
        "n_documents": len(documents),
        "selection": selection,
    }
    return write_report(rows, meta, out)


def select_on_validation(
    env_id: str,
    env_kwargs: dict[str, Any],
    policies: dict[str, Any],
    method_of: dict[str, str],
    baselines: list[str],
    episodes: int,
) -> dict[str, Any]:
    """The best agent method and the best deployable baseline by mean reward on the validation split
    (its first ``episodes`` documents), chosen before any test document is played: they make the
    primary comparison.  Returns their names, the validation means and the number of documents."""
    env = gym.make(env_id, **{**env_kwargs, "split": "validation"})
    documents = range(min(episodes, len(env.unwrapped.document_names())))
    deployable = [b for b in baselines if role_of(b) == "deployable"]
    chosen = {p: policy for p, policy in policies.items() if method_of[p] not in baselines or p in deployable}
    rows = evaluate(env, chosen, documents)
    means = {
        m: float(np.mean([r.reward for r in rows if method_of[r.policy] == m]))
        for m in dict.fromkeys(method_of[p] for p in chosen)
    }
    agents = [m for m in means if m not in baselines]
    return {
        "agent": max(agents, key=means.get),
        "baseline": max(deployable, key=means.get),
        "validation_means": means,
        "n_validation_documents": len(documents),
    }


def write_report(rows: list[EpisodeSummary], meta: dict[str, Any], out: Path) -> Path:
    """``out/report.md`` (and plots) from evaluation rows and ``meta`` (command, machine, env config,
    method of each policy, baselines); also saves both as ``rows.json`` and ``compare.json`` so that
    ``drrl report`` can rebuild the report without re-running anything."""
    method_of, baselines, config = meta["method_of"], meta["baselines"], meta["env_config"]
    selection = meta.get("selection")
    if selection is None:
        raise ValueError(
            "this comparison predates selection on the validation split (compare.json has no "
            "'selection'); run drrl compare again"
        )
    table, means = method_table(rows, method_of)
    constant = fixed_plan_sentences({m: p for m, p in fixed_plans(rows, method_of).items() if m not in baselines})
    agents = [m for m in dict.fromkeys(method_of.values()) if m not in baselines]
    deployable = [b for b in baselines if role_of(b) == "deployable"]
    best_agent, best_base = selection["agent"], selection["baseline"]
    best_static = next(
        (b for b in deployable if b.startswith("static:")),
        max((b for b in deployable if b.startswith("fixed") or b == "full"), key=lambda m: means[m]["reward"]),
    )
    agent_runs = [p for p, m in method_of.items() if m == best_agent]
    documents = sorted({(r.document_index, r.document) for r in rows})
    clusters = [topic_of(name) for _, name in documents]

    def docs_of(method: str) -> np.ndarray:  # (documents,) the method's reward per document, seeds averaged
        return per_document(rows, [p for p, m in method_of.items() if m == method])

    primary = paired_comparison(best_agent, best_base, docs_of(best_agent), docs_of(best_base), clusters)
    secondary = [
        paired_comparison(m, best_base, docs_of(m), docs_of(best_base), clusters) for m in agents if m != best_agent
    ]
    secondary += [
        paired_comparison(best_agent, ref, docs_of(best_agent), docs_of(ref), clusters)
        for ref in baselines
        if role_of(ref) == "reference"
    ]
    secondary = [replace(c, p_holm=p) for c, p in zip(secondary, holm([c.p_value for c in secondary]))]
    oracle = means["oracle"]["reward"]
    gap = oracle - means[best_base]["reward"]
    closed = (means[best_agent]["reward"] - means[best_base]["reward"]) / gap if gap > 0 else float("nan")
    pareto = pareto_plot(means, out / "pareto.png")
    heatmap = rank_heatmap(rows, agent_runs, f"{best_agent}: mean rank per layer and segment", out / "ranks.png")
    lines = [
        f"# {meta.get('env_id', 'DRRL-v0')} comparison",
        "",
        f"Command: `{meta['command']}`  ",
        *(
            [
                f"Model-level columns (end_fidelity, end_ppl_ratio, retrieval_same, attention_latency_ratio) "
                f"re-measured by "
                f"`{meta['remeasured']}`  "
            ]
            if meta.get("remeasured")
            else []
        ),
        f"Machine: {meta['machine']}  ",
        f"Environment: source {config['source']!r}, method {config['method']!r}, cost model "
        f"{config['cost_model']!r}, reward = {config['alpha']} fidelity - {config['beta']} cost - "
        f"{config['gamma']} perturbation; {meta['n_documents']} test documents, each method on the same ones.",
        "",
        "Per method: mean ± 95% Student-t interval over seeds of the per-seed mean over documents "
        "(baselines are deterministic: one run). `oracle` (one-step) and `planner` (non-myopic rollout over "
        "layers, `agents/planner.py`) read the true attention: upper references, not deployable. Fixed rank, "
        f"energy threshold, cost-aware energy threshold and per-layer static ranks were tuned on training "
        f"documents: {', '.join(deployable[1:])}.",
        "",
        table,
        "",
        *(
            [
                "**Fixed plans:** " + "; ".join(constant) + " (no choice per segment or document was learned).",
                "",
            ]
            if constant
            else []
        ),
        f"Selection, before the test run, on the first {selection['n_validation_documents']} validation "
        f"documents (mean reward): best agent **{best_agent}** "
        f"({selection['validation_means'][best_agent]:.3f}), strongest deployable baseline **{best_base}** "
        f"({selection['validation_means'][best_base]:.3f}).  ",
        f"**Primary comparison** (fixed by that selection; agent seeds averaged per document): {primary.sentence()}.",
        "",
        "Secondary comparisons (Holm-corrected over these):",
        "",
        *[f"- {c.sentence()}." for c in secondary],
        "",
        f"On test: oracle {oracle:.3f}; fraction of the baseline-to-oracle gap closed by the best agent: {closed:.2f}.",
        "",
        *(_planner_lines(means, best_agent, best_base, best_static) if "planner" in means else []),
        f"![Pareto plot]({pareto.name})",
        "",
        f"![Rank heatmap]({heatmap.name})",
        "",
    ]
    noisy = [r for r in rows if (r.attention_latency_spread or 0.0) > LatencyProfile.MAX_SPREAD]
    if noisy:
        lines += [
            f"**Unreliable latency:** {len(noisy)} of {len(rows)} rows have attention-latency ratios that "
            f"spread more than {LatencyProfile.MAX_SPREAD:.0%} (IQR / median) over their rounds: the machine "
            "was busy; re-measure them with `drrl report DIR --model-metrics` on an idle machine.",
            "",
        ]
    seeds = {
        m: mean_ci([np.mean([r.reward for r in rows if r.policy == p]) for p, mm in method_of.items() if mm == m])
        for m in agents
    }
    lines += ["Per-seed spread of the agents' mean episode reward (mean ± 95% CI):", ""]
    lines += [f"- {m}: {v[0]:.3f} ± {v[1]:.3f}" for m, v in seeds.items()]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "rows.json").write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    (out / "compare.json").write_text(json.dumps(meta, indent=1))
    return report


def _planner_lines(means: dict[str, dict[str, float]], best_agent: str, best_base: str, best_static: str) -> list[str]:
    """The non-myopic reference's headroom over the one-step oracle and the best static and deployable
    policies, and where the best agent stands between the best deployable policy and it."""
    planner = means["planner"]["reward"]

    def over(name: str) -> str:
        gain = planner - means[name]["reward"]
        return f"{gain:+.3f} ({gain / abs(means[name]['reward']):+.1%}) over {name}"

    span = planner - means[best_base]["reward"]
    where = (means[best_agent]["reward"] - means[best_base]["reward"]) / span if span > 0 else float("nan")
    return [
        f"Non-myopic reference: `planner` mean reward {planner:.3f}, {over('oracle')} (the one-step oracle), "
        f"{over(best_static)} (best static rank), {over(best_base)} (best deployable policy).  The best agent "
        f"stands at {where:.2f} of the way from {best_base} (0) to the planner (1).",
        "",
    ]


def rebuild_report(out: Path, model_metrics: bool = False) -> Path:
    """Rewrite ``out/report.md`` from the ``rows.json`` and ``compare.json`` a comparison saved; with
    ``model_metrics``, first re-measure the model-level columns from the ranks each episode took."""
    for name in ("rows.json", "compare.json"):
        if not (out / name).exists():
            raise ValueError(f"{str(out)!r} holds no {name}; run drrl compare --out {out} first")
    rows = [EpisodeSummary(**r) for r in json.loads((out / "rows.json").read_text())]
    meta = json.loads((out / "compare.json").read_text())
    if model_metrics:
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["env_config"].items()}
        rows = add_model_metrics(gym.make(meta.get("env_id", "DRRL-v0"), **config), rows)
        meta["remeasured"] = f"drrl report {out} --model-metrics"
    return write_report(rows, meta, out)
