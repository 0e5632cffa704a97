"""Writing a file so that readers never see half of it: the one helper behind every on-disk cache."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[Any]], None], binary: bool = True) -> None:
    """Creates ``path``'s folder, calls ``write`` on a temporary file beside ``path``, then renames it
    over ``path`` (atomic on POSIX), so a crash or a concurrent writer leaves one whole file.  The
    temporary file never outlives the call; an ``OSError`` is the caller's to report."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(handle, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp is not None and Path(tmp).exists():
            Path(tmp).unlink(missing_ok=True)
