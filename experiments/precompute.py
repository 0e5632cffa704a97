"""``drrl precompute``: fill the on-disk analysis cache of a split before training or evaluating.

A document's first episode pays for its analysis (the model's forward pass, then exact and
low-rank attention at every rank: about 0.3 s for MiniLM on 2 cores); a run that starts with a
filled cache starts at the disk figure of ``BENCHMARKS.md``.  Entries are keyed by the options that
shape an analysis, so precompute with the same ``--env-kwargs`` as the run that will read them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from drrl_env.env import RankSelectionEnv


def precompute(env: RankSelectionEnv, documents: int | None = None,
               report: Callable[[str], None] | None = None) -> int:
    """Analyses documents 0..documents-1 of ``env``'s split (all when None) into its disk cache;
    returns how many were analysed."""
    if env.documents.disk is None:
        raise ValueError("cache_dir=None: there is no disk cache to fill; pass a folder or 'auto'")
    names = env.document_names()
    count = len(names) if documents is None else min(documents, len(names))
    start = time.perf_counter()
    for index in range(count):
        env.analysis(index)
        if report:
            report(f"{index + 1}/{count} {names[index]} ({time.perf_counter() - start:.1f} s)")
    return count
