"""On-disk cache of document analyses, shared by all processes of a user.

An analysis depends on the source (model weights and tokenizer, or the synthetic generator's
parameters), the document's tokens, the options that shape the analysis (``EnvConfig``'s
``ANALYSIS`` fields), the code that computes it and the torch and transformers versions.  All of these, with the
cache format, go into a SHA-256 key.  An entry is an ``.npz`` file with a SHA-256 checksum of its
arrays, written atomically (temporary file, then rename), so a crash leaves no half-written entry
and concurrent writers of one entry leave one whole file.

Self-healing: an entry that cannot be read or fails its checksum (truncated, emptied, bit flips)
is reported in one warning naming the file and recomputed, and the new entry replaces it.  A cache
folder that cannot be written (permissions, deleted mid-run) is reported once, and the run goes on
without the disk cache.  Location: ``cache_dir`` option, or ``$DRRL_CACHE_DIR``, or
``$XDG_CACHE_HOME/drrl``, or ``~/.cache/drrl``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drrl_env.analysis import DocumentAnalysis
from drrl_env.files import write_atomic

FORMAT_VERSION = 3  # 3: checksummed entries, key covers the code and torch
CHECKSUM = "_checksum"
PACKAGE = Path(__file__).parent
CODE = ("analysis.py", "attention")  # what computes an entry (files, or folders of *.py)


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


def code_version(code: tuple[str, ...] = CODE) -> str:
    """SHA-256 of the source files (paths relative to the package) that compute an entry: an analysis by
    default (a code change re-keys the cache)."""
    digest = hashlib.sha256()
    for name in code:
        path = PACKAGE / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(PACKAGE).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode() + array.tobytes())
    return digest.hexdigest()


class AnalysisCache:
    """``get(document_key)`` / ``put(document_key, analysis)`` under one set of options (module docstring)."""

    def __init__(self, root: Path, options: dict[str, Any]) -> None:
        self.folder = Path(root) / "analysis"
        self.options = json.dumps(
            {
                "format": FORMAT_VERSION,
                "code": code_version(),
                "torch": torch.__version__,
                "transformers": _version("transformers"),
                **options,
            },
            sort_keys=True,
            default=str,
        )
        self.writable = True

    def path(self, document_key: str) -> Path:
        digest = hashlib.sha256(f"{self.options}\n{document_key}".encode()).hexdigest()
        return self.folder / f"{digest}.npz"

    def get(self, document_key: str) -> DocumentAnalysis | None:
        """The cached analysis, or None when there is none or it is damaged (then warned about)."""
        path = self.path(document_key)
        try:
            if not path.is_file():
                return None
        except OSError:  # an unreadable folder is a miss; put() reports a folder it cannot write
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {f.name: data[f.name] for f in dataclasses.fields(DocumentAnalysis)}
                stored = str(data[CHECKSUM])
            if stored != checksum(arrays):
                raise ValueError("checksum mismatch")
            arrays["segments"] = [tuple(int(x) for x in pair) for pair in arrays["segments"]]
            return DocumentAnalysis(**arrays)
        except Exception as err:  # zipfile, zlib, EOF, key and value errors alike: any damage means recompute
            warnings.warn(
                f"drrl: damaged analysis cache entry {path} ({type(err).__name__}: {err}); "
                "recomputing and replacing it",
                RuntimeWarning,
                stacklevel=2,
            )
            return None

    def put(self, document_key: str, analysis: DocumentAnalysis) -> None:
        """Writes the entry atomically; a folder that cannot be written turns the disk cache off (one warning)."""
        if not self.writable:
            return
        path = self.path(document_key)
        arrays = {f.name: np.asarray(getattr(analysis, f.name)) for f in dataclasses.fields(DocumentAnalysis)}
        try:
            write_atomic(path, lambda f: np.savez(f, **arrays, **{CHECKSUM: np.array(checksum(arrays))}))
        except OSError as err:
            self.writable = False
            warnings.warn(
                f"drrl: cannot write the analysis cache in {self.folder} ({type(err).__name__}: {err}); "
                "continuing without the disk cache",
                RuntimeWarning,
                stacklevel=2,
            )


def cached_arrays(
    root: Path | None,
    key: dict[str, Any],
    compute: Callable[[], dict[str, np.ndarray]],
    code: tuple[str, ...] = ("kv",),
) -> dict[str, np.ndarray]:
    """A per-document artefact (named arrays) under ``root/artefacts``, content-hashed by ``key``, the
    ``code`` that computes it and the torch and transformers versions; ``compute()`` on a miss or a
    damaged entry (one warning), written atomically.  ``root`` None: no disk cache."""
    if root is None:
        return compute()
    text = json.dumps(
        {"key": key, "code": code_version(code), "torch": torch.__version__, "transformers": _version("transformers")},
        sort_keys=True,
        default=str,
    )
    path = Path(root) / "artefacts" / f"{hashlib.sha256(text.encode()).hexdigest()}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files if name != CHECKSUM}
                if str(data[CHECKSUM]) == checksum(arrays):
                    return arrays
            raise ValueError("checksum mismatch")
        except Exception as err:  # any damage means recompute
            warnings.warn(
                f"drrl: damaged artefact {path} ({type(err).__name__}: {err}); recomputing it",
                RuntimeWarning,
                stacklevel=2,
            )
    arrays = compute()
    try:
        write_atomic(path, lambda f: np.savez(f, **arrays, **{CHECKSUM: np.array(checksum(arrays))}))
    except OSError as err:
        warnings.warn(
            f"drrl: cannot write the artefact cache in {path.parent} ({err}); continuing without it",
            RuntimeWarning,
            stacklevel=2,
        )
    return arrays
