"""``drrl precompute``: fill the on-disk analysis cache of a split before training or evaluating.

A document's first episode pays for its analysis (the model's forward pass, then exact and
low-rank attention at every rank: about 0.3 s for MiniLM, about a minute for SmolLM2 at 4096
tokens, on 2 cores); a run that starts with a filled cache starts at the disk figure of
``BENCHMARKS.md``.  Entries are keyed by the options that shape an analysis, so precompute with the
same ``--env-id`` and ``--env-kwargs`` as the run that will read them.

The documents are dealt round-robin into chunks, one per worker of the backend
(``experiments/backends.py``): local processes, or Ray tasks on many machines sharing the cache
folder (``cache_dir`` must then name a folder every node sees).  Concurrent writers are safe: an
entry is written to a temporary file and renamed, and a reader checks its checksum (``cache.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym

import drrl_env  # noqa: F401  (registers the env ids in worker processes)
from experiments.backends import Resources, make_backend


def analyse_documents(job: tuple[str, dict[str, Any], list[int]]) -> list[str]:
    """Analyses documents ``indices`` of env ``env_id`` (kwargs) into its disk cache; returns their names."""
    env_id, kwargs, indices = job
    env = gym.make(env_id, **kwargs).unwrapped
    for index in indices:
        env.analysis(index)
    return [env.document_names()[i] for i in indices]


def precompute(
    env_id: str,
    env_kwargs: dict[str, Any],
    documents: int | None = None,
    backend: str = "local",
    jobs: int = 1,
    address: str | None = None,
    report: Callable[[str], None] | None = None,
) -> int:
    """Analyses documents 0..documents-1 of the configured split (all when None) into the disk cache;
    returns how many were analysed."""
    kwargs = {**env_kwargs, "cache_documents": False}
    env = gym.make(env_id, **kwargs).unwrapped
    if env.documents.disk is None:
        raise ValueError("cache_dir=None: there is no disk cache to fill; pass a folder or 'auto'")
    names = env.document_names()
    count = len(names) if documents is None else min(documents, len(names))
    start = time.perf_counter()
    with make_backend(backend, jobs=jobs, address=address) as runner:
        workers = max(1, min(count, runner.workers()))
        chunks = [list(range(count))[w::workers] for w in range(workers)]
        if report:
            report(f"{count} documents in {workers} chunk(s) on the {backend} backend")
        done = runner.map(analyse_documents, [(env_id, kwargs, chunk) for chunk in chunks], Resources())
    if report:
        report(f"analysed {sum(map(len, done))} documents in {time.perf_counter() - start:.1f} s")
    return count
