"""Fitting a calibrated method's bases on training documents, once per model and corpus, cached on disk.

The bases are the eigenvectors of the uncentered second moments of the keys and of the values,
per layer and K/V head, summed over the first ``calibration_documents`` documents of the training
split (never validation or test), by descending eigenvalue (``methods/calibrated.py``):

    B = eigvecs(sum_docs K^T K),  C = eigvecs(sum_docs V^T V)        (Ly, H_kv, d, d) each

Cached as ``<cache>/calibration/<sha256>.pt``, keyed by the kind of bases (``bases_name``: loki
reads calibrated's key bases and shares their fit), the code and the calibration
documents' keys (which hold the model's fingerprint and the documents' tokens); written atomically;
a damaged file is refitted with one warning.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from drrl_env.attention.methods.calibrated import CalibratedMethod
from drrl_env.cache import code_version
from drrl_env.files import write_atomic
from drrl_env.sources.base import AttentionSource, AttentionTrace


def fit_bases(traces: Iterable[AttentionTrace]) -> tuple[torch.Tensor, torch.Tensor]:
    """(key basis, value basis), each (Ly, H_kv, d, d) float32, columns by descending energy."""
    grams: list[torch.Tensor] | None = None
    for trace in traces:
        moments = [x.double().transpose(-1, -2) @ x.double() for x in (trace.keys, trace.values)]  # (Ly, H_kv, d, d)
        grams = moments if grams is None else [g + m for g, m in zip(grams, moments)]
    if grams is None:
        raise ValueError("no calibration documents: the training split is empty")
    keys, values = (torch.linalg.eigh(g)[1].flip(-1).float() for g in grams)
    return keys, values


def calibrate(
    method: CalibratedMethod, source: AttentionSource, documents: int, cache_folder: Path | None, device: torch.device
) -> None:
    """Fits ``method``'s bases on documents 0..documents-1 of ``source`` (a training-split source),
    or loads them from ``cache_folder`` (None: no disk cache); they are put on ``device``."""
    count = min(documents, len(source.document_names))
    keys = [source.document_key(i) for i in range(count)]
    digest = hashlib.sha256(
        json.dumps({"method": method.bases_name, "code": code_version(), "documents": keys}).encode()
    )
    path = None if cache_folder is None else Path(cache_folder) / "calibration" / f"{digest.hexdigest()}.pt"
    bases = load_or_fit(path, lambda: fit_bases(source.trace(i) for i in range(count)))
    method.set_bases(*(basis.to(device) for basis in bases))


def load_or_fit(
    path: Path | None, fit: Callable[[], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(key basis, value basis) read from ``path``, or ``fit()`` and written there atomically (None: no disk
    cache); a damaged file is refitted with one warning."""
    bases = _load(path) if path is not None else None
    if bases is None:
        bases = fit()
        if path is not None:
            _save(path, bases)
    return bases


def _load(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True)
        return data["keys"], data["values"]
    except Exception as err:  # truncated, emptied or foreign: refit
        warnings.warn(
            f"drrl: damaged calibration file {path} ({type(err).__name__}: {err}); refitting",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _save(path: Path, bases: tuple[torch.Tensor, torch.Tensor]) -> None:
    try:
        write_atomic(path, lambda f: torch.save({"keys": bases[0].cpu(), "values": bases[1].cpu()}, f))
    except OSError as err:
        warnings.warn(
            f"drrl: cannot write the calibration cache {path} ({err}); continuing without it",
            RuntimeWarning,
            stacklevel=3,
        )
