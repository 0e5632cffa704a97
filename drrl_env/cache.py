"""On-disk cache of document analyses, shared by all processes of a user.

An analysis depends on the source (model weights and tokenizer, or the synthetic generator's
parameters), the document's tokens and the options that shape the analysis (segment length,
rank grid, method, value compression).  All of these, with the package's cache format version,
go into a SHA-256 key; the entry is an ``.npz`` file written atomically (temporary file, then
rename), so a crash leaves no half-written entry.  Location: ``cache_dir`` option, or
``$DRRL_CACHE_DIR``, or ``$XDG_CACHE_HOME/drrl``, or ``~/.cache/drrl``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from drrl_env.analysis import DocumentAnalysis

FORMAT_VERSION = 2  # 2: attention outputs from the fused kernel (attention.kernels.attend)


def cache_root(option: str | None) -> Path | None:
    """The folder of the ``cache_dir`` option: None (no disk cache), ``"auto"`` or a path."""
    if option is None:
        return None
    return default_cache_root() if option == "auto" else Path(option)


def default_cache_root() -> Path:
    if os.environ.get("DRRL_CACHE_DIR"):
        return Path(os.environ["DRRL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "drrl"


class AnalysisCache:
    """``get(document_key)`` / ``put(document_key, analysis)`` under one set of options."""

    def __init__(self, root: Path, options: dict[str, Any]) -> None:
        self.folder = Path(root) / "analysis"
        self.options = json.dumps({"format": FORMAT_VERSION, **options}, sort_keys=True, default=str)

    def path(self, document_key: str) -> Path:
        digest = hashlib.sha256(f"{self.options}\n{document_key}".encode()).hexdigest()
        return self.folder / f"{digest}.npz"

    def get(self, document_key: str) -> DocumentAnalysis | None:
        path = self.path(document_key)
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                fields = {f.name: data[f.name] for f in dataclasses.fields(DocumentAnalysis)}
        except (OSError, KeyError, ValueError):
            return None  # unreadable or from another layout: recompute and overwrite
        fields["segments"] = [tuple(int(x) for x in pair) for pair in fields["segments"]]
        return DocumentAnalysis(**fields)

    def put(self, document_key: str, analysis: DocumentAnalysis) -> None:
        path = self.path(document_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: np.asarray(getattr(analysis, f.name)) for f in dataclasses.fields(DocumentAnalysis)}
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
