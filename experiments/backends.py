"""Where the runs of a grid execute: a small interface, :class:`Backend`, and its registry.

- ``local``: this process, or a pool of ``jobs`` spawned processes (one torch thread each).
- ``ray``: one Ray task per item with declared CPUs and GPUs (Ray sets each task's thread count
  to its CPUs); Ray is started on this machine, or the tasks go to the cluster at ``address``.
  The package must be importable on the cluster's nodes (installed there, as any Ray app).

A run under a measured cost model asks for ``Resources(exclusive=True)``: on Ray it takes every
CPU of a node, so its timings are not disturbed by other runs; the local pool refuses it (its
processes would share the cores).

Adding a backend: subclass :class:`Backend` in this file or another, and register it with
:func:`register_backend`.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from drrl_env.registry import Registry

T = TypeVar("T")
R = TypeVar("R")
PARALLEL_ENV = "DRRL_PARALLEL"  # set in pool workers: train with one torch thread


@dataclass(frozen=True)
class Resources:
    """What one item (a training run, a chunk of documents) needs: CPUs, GPUs (fractions allowed on
    Ray), and whether it needs its node to itself (measured latency)."""

    cpus: float = 1.0
    gpus: float = 0.0
    exclusive: bool = False

    def __post_init__(self) -> None:
        if not self.cpus > 0 or self.gpus < 0:
            raise ValueError(f"need cpus > 0 and gpus >= 0 per run, got cpus={self.cpus}, gpus={self.gpus}")


class Backend(ABC):
    """Runs ``fn`` over items, in order of results; a context manager that frees what it started."""

    name: ClassVar[str]

    @abstractmethod
    def map(self, fn: Callable[[T], R], items: Sequence[T], resources: Resources) -> list[R]:
        """``[fn(item) for item in items]``, each call given ``resources``; ``fn`` must be a module-level function."""

    def check(self, resources: Resources) -> None:
        """Raises ValueError, before anything is written, when this backend cannot give ``resources``."""

    @abstractmethod
    def workers(self) -> int:
        """How many one-CPU items run at once: the number of chunks worth splitting work into."""

    def close(self) -> None:
        """Frees what the backend started (processes, a local Ray instance)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_BACKENDS: Registry[type[Backend]] = Registry(
    Backend, "backend", "or register one with experiments.backends.register_backend"
)
register_backend = _BACKENDS.register
backend_names = _BACKENDS.names


def make_backend(name: str, jobs: int = 1, address: str | None = None) -> Backend:
    """The backend ``name``: ``local`` runs ``jobs`` processes; ``ray`` connects to ``address`` (None =
    start Ray here)."""
    if name != "ray" and address is not None:
        raise ValueError(f"--address {address!r} is for --backend ray; backend {name!r} runs on this machine")
    return _BACKENDS.get(name)(jobs=jobs, address=address)


@register_backend
class LocalBackend(Backend):
    name = "local"

    def __init__(self, jobs: int = 1, address: str | None = None) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
        self.jobs = jobs

    def check(self, resources: Resources) -> None:
        if resources.exclusive and self.jobs > 1:
            raise ValueError(
                "these runs measure latency on this machine: parallel local jobs would measure under "
                "each other's load; use --jobs 1, or --backend ray, which gives each run a node to itself"
            )

    def workers(self) -> int:
        return self.jobs

    def map(self, fn: Callable[[T], R], items: Sequence[T], resources: Resources) -> list[R]:
        self.check(resources)
        if self.jobs == 1:
            return [fn(item) for item in items]
        os.environ[PARALLEL_ENV] = "1"
        try:
            with ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                return list(pool.map(fn, items))
        finally:
            os.environ.pop(PARALLEL_ENV, None)


@register_backend
class RayBackend(Backend):
    """Ray, started here (all cores, no dashboard, no auth token, temporary files in a folder of its
    own that is removed on close) or reached at ``address``."""

    name = "ray"

    def __init__(self, jobs: int = 1, address: str | None = None) -> None:
        ray = import_ray()
        self._temp_dir = None
        if ray.is_initialized():
            return  # a caller (a test, a notebook) started Ray already: use it as it is
        if address is None:
            self._temp_dir = tempfile.mkdtemp(prefix="drrl-ray-")  # short: Ray's socket paths must fit 107 bytes
            ray.init(
                num_cpus=os.cpu_count(),
                include_dashboard=False,
                _temp_dir=self._temp_dir,
                log_to_driver=True,
                configure_logging=False,
            )
        else:
            ray.init(address=address, log_to_driver=True, configure_logging=False)

    def node_cpus(self) -> float:
        """CPUs of the largest live node: what an exclusive item asks for."""
        import ray

        return max(node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"])

    def workers(self) -> int:
        import ray

        return int(ray.cluster_resources().get("CPU", 1))

    def map(self, fn: Callable[[T], R], items: Sequence[T], resources: Resources) -> list[R]:
        import ray

        cpus = self.node_cpus() if resources.exclusive else resources.cpus
        task = ray.remote(fn).options(num_cpus=cpus, num_gpus=resources.gpus)
        return ray.get([task.remote(item) for item in items])

    def close(self) -> None:
        if self._temp_dir is None:
            return
        import ray

        ray.shutdown()
        shutil.rmtree(self._temp_dir, ignore_errors=True)
        self._temp_dir = None


def import_ray() -> Any:
    """The ``ray`` module, configured to stay offline and out of the home folder (no usage reports,
    no auth token under ``~/.ray``); a ValueError with the install command when it is missing."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as err:
        raise ValueError("the ray backend needs Ray: pip install -e '.[ray]'") from err
    return ray
