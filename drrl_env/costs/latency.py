"""Measured attention latency: one measurer, a cached per-device profile, and the timing helpers.

What is timed is exactly what the environment computes for one segment: ``SegmentView.attention``
of the prefill workload (``attention/workload.py``, the same code as the reward and the model
forward), on random data of the segment's shape, in the configured dtype, on the configured
device.  Full rank is exact attention, PyTorch's fused ``scaled_dot_product_attention``, which low
rank also calls on its width-r factors.  The upkeep of the key and value factors is timed too
(``Prefill.timed_segment``: the stream update and the method's factorization, or its projection of
the segment's new rows on calibrated bases) and added to every low rank's time, in full when
causal, at the segment's share T/N when bidirectional.  The ranks of one key length are measured in
interleaved rounds (each round runs every rank and the upkeep once) after ``warmup`` runs each:
the latency ratio of a rank to full rank is taken within a round, so that a drift of the machine's
speed between rounds cancels, and its median over ``repeats`` rounds is reported; so is each
rank's median time.  The observation's features are timed in the same rounds, through the same
function the analysis computes them with (``attention/features.py``), for one decision's
queries (a prefill segment, or a decode window of ``decision_len`` tokens), and reported as their
time over the decision's exact attention (in decode, ``decision_len`` one-token calls): a step's
cost is the chosen rank's ratio plus that share, whatever the rank.  CUDA is timed
with events after synchronizing, CPU with ``time.perf_counter_ns``.

Profile table: for one attention shape (method, value compression, causal, heads, K/V heads,
head dim, query length = ``segment_len``, ranks) and dtype, the median latency ratio and time of
each rank at key lengths ``segment_len * 2^k``; a key length in between is interpolated linearly,
and query lengths other than ``segment_len`` (a document's last segment) use the same ratios.
Tables are stored as JSON under ``<cache>/latency/`` keyed by device name, torch version and thread
count, reused by every process, and re-measured on request (``refresh``) or when the file is
damaged (one warning naming it).  Each grid point keeps its ratios' spread (IQR / median) and the
number of rounds; a point that spreads more than ``MAX_SPREAD`` is re-measured, up to
``ATTEMPTS`` times, and flagged ``unreliable`` if it never settles (a busy machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drrl_env.attention.features import observation_features
from drrl_env.attention.workload import Prefill, TimedSegment
from drrl_env.costs.base import AttentionShape
from drrl_env.files import write_atomic

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAX_PROFILE_LEN = 65_536


@dataclass(frozen=True)
class Timing:
    """Median seconds of repeated runs and their spread (interquartile range / median)."""

    median: float
    spread: float
    repeats: int


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Median and spread of ``fn()``'s wall time over ``repeats`` runs after ``warmup`` runs
    (``repeats=0`` only warms up and returns zeros)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(stop) / 1e3)
        else:
            begin = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - begin) / 1e9)
    return summarize(samples) if samples else Timing(0.0, 0.0, 0)


class LatencyMeasurer:
    """Times one segment's attention at a rank and key length (module docstring)."""

    def __init__(self, device: torch.device, warmup: int = 5, repeats: int = 31) -> None:
        self.device, self.warmup, self.repeats = device, warmup, repeats

    @torch.no_grad()
    def time_ranks(self, shape: AttentionShape, dtype: str) -> RankTimings:
        """Timings of every rank of ``shape`` (``query_len`` queries, the last of ``key_len`` keys),
        and of the observation's features for one decision, measured in interleaved rounds
        (:func:`time_interleaved`)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(DTYPES)}")
        gen = torch.Generator(device=self.device).manual_seed(0)
        h, t, n, d = shape.n_heads, shape.query_len, shape.key_len, shape.head_dim
        w = min(shape.decision_queries, n)  # the queries one decision's features cover
        q = torch.randn(h, max(t, w), d, generator=gen, device=self.device).to(DTYPES[dtype])  # (H, T, d)
        k, v = torch.randn(2, shape.n_kv_heads, n, d, generator=gen, device=self.device).to(
            DTYPES[dtype]
        )  # (H_kv, N, d) each
        method = shape.method.timing_instance(shape.n_kv_heads, d, self.device, DTYPES[dtype])

        def timed(queries: int) -> TimedSegment:
            return Prefill(queries).timed_segment(
                q[:, -queries:], k, v, shape.causal, method, shape.compress_values, shape.ranks
            )

        segment = timed(t)  # the call whose cost a step reports ...
        decision = segment if w == t else timed(w)  # ... and the decision's segment (prefill: the same one)
        low, ranks = len(shape.ranks) - 1, len(shape.ranks)  # the ranks below full each also pay their upkeep
        calls = [partial(segment.view.attention, rank, d**-0.5, shape.compress_values) for rank in shape.ranks]
        upkeeps = [partial(segment.upkeep, rank) for rank in shape.ranks[:low]]
        features = _feature_calls(decision, torch.tensor(shape.ranks), d**-0.5, shape.compress_values)
        rounds = time_interleaved(
            [*calls, *upkeeps, *features], self.device, self.warmup, self.repeats
        ).rounds  # (repeats, 2R - 1 + 3) seconds
        rounds[:, :low] += segment.upkeep_share * rounds[:, ranks : ranks + low]
        fresh, upkeep, warm = rounds[:, -3:].T  # features after an upkeep, the upkeep alone, features again
        per_decision = warm + decision.upkeep_share * (fresh - upkeep - warm)  # the K/V side's part: its share
        exact_per_decision = rounds[:, ranks - 1] * w / t  # decode: w one-token calls
        return RankTimings.of(rounds[:, :ranks], per_decision.clip(min=0) / exact_per_decision)


def _feature_calls(
    decision: TimedSegment, ranks: torch.Tensor, scaling: float, compress_values: bool
) -> list[Callable[[], object]]:
    """Three calls whose times give the features' cost (``attention/features.py``) for one
    decision: the features on a fresh K/V side right after its upkeep (at the lowest rank), that
    upkeep alone, and the features again on a side whose K/V-side features are cached.  The first
    minus the second is all of it (causal: each segment has a new K/V side); the third is the
    query side's part alone (bidirectional: the K/V side's part is computed once for all segments)."""
    warm_view = decision.view
    observation_features(warm_view, ranks, scaling, compress_values)  # caches the K/V side's part
    rank = int(ranks[0])

    def fresh() -> None:
        observation_features(replace(decision.view, side=decision.upkeep(rank)), ranks, scaling, compress_values)

    return [
        fresh,
        partial(decision.upkeep, rank),
        partial(observation_features, warm_view, ranks, scaling, compress_values),
    ]


@dataclass(frozen=True)
class RankTimings:
    """Per call (rank): ``seconds`` and ``ratios`` (time / the last call's time in the same round),
    from ``rounds`` (repeats, calls) seconds."""

    seconds: list[Timing]
    ratios: list[Timing]
    rounds: np.ndarray | None = None
    features: Timing | None = None  # the observation's features per decision / exact attention per decision

    @classmethod
    def of(cls, rounds: np.ndarray, features: np.ndarray | None = None) -> RankTimings:
        return cls(
            [summarize(list(column)) for column in rounds.T],
            [summarize(list(column)) for column in (rounds / rounds[:, -1:]).T],
            rounds,
            None if features is None else summarize(list(features)),
        )


def time_interleaved(calls: list[Callable[[], object]], device: torch.device, warmup: int, repeats: int) -> RankTimings:
    """Times ``calls`` in ``repeats`` interleaved rounds (each round runs every call once) after
    ``warmup`` runs of each; the ratio of each call to the last one is taken within each round, so
    that a drift of the machine's speed between rounds cancels."""
    for call in calls:
        time_call(call, device, warmup, 0)
    return RankTimings.of(
        np.array([[time_call(call, device, 0, 1).median for call in calls] for _ in range(repeats)])
    )  # (repeats, calls) seconds


def summarize(samples: list[float]) -> Timing:
    """Median, spread (IQR / median) and count of ``samples``."""
    median = statistics.median(samples)
    q1, _, q3 = statistics.quantiles(samples, n=4) if len(samples) >= 2 else (median, median, median)
    return Timing(median, (q3 - q1) / median if median > 0 else 0.0, len(samples))


def device_key(device: torch.device) -> dict[str, str | int]:
    """What a profile depends on besides the shape: device name, torch version, CPU threads."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (_cpu_name() or "cpu")
    return {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads()}


def machine_description(device: torch.device | None = None) -> str:
    """One line naming the hardware a figure was measured on, for benchmark and report headers."""
    key = device_key(device or torch.device("cpu"))
    return f"{key['device']}, {os.cpu_count()} CPU cores, torch {key['torch']} ({key['threads']} threads)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


class LatencyProfile:
    """Cached latency table of one kind of segment (an :class:`AttentionShape` whose queries are
    ``segment_len`` long) in one dtype on one device (module docstring)."""

    # the stored fields and key's version, part of the cache key so that older files are re-measured, not misread:
    # 5: factor upkeep timed; 6: features timed; 7: moments folded once per decision
    FORMAT = 7
    MAX_SPREAD = 0.25  # a grid point whose ratios spread more (IQR / median) is re-measured ...
    ATTEMPTS = 3  # ... up to this many times in all; the least spread one is kept, flagged if still above

    def __init__(
        self,
        shape: AttentionShape,
        dtype: str,
        measurer: LatencyMeasurer,
        cache_root: Path | None,
        refresh: bool = False,
    ) -> None:
        self.shape, self.dtype, self.measurer = shape, dtype, measurer
        name, options = shape.method_key
        kind = {  # the shape's fields but its key length, as plain values (keys written by earlier versions)
            **{f.name: getattr(shape, f.name) for f in fields(shape) if f.name not in ("key_len", "segment_len")},
            "method": name,
            "method_options": options,
        }
        del kind["method_key"]
        self.key = {
            **device_key(measurer.device),
            **kind,
            "ranks": list(shape.ranks),
            "dtype": dtype,
            "warmup": measurer.warmup,
            "repeats": measurer.repeats,
            "format": self.FORMAT,
        }
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:24]
        self.path = None if cache_root is None else Path(cache_root) / "latency" / f"{digest}.json"
        # key length -> {"seconds": median seconds per rank, "ratios": median within-round ratio to full rank,
        #                "ratio_spreads": their IQR / median, "rounds": rounds measured, "unreliable": bool}
        self.table: dict[int, dict[str, Any]] = {}
        self.measured = 0  # grid points measured by this object (not loaded)
        if self.path is not None and not refresh:
            self.table = self._load()

    def _load(self) -> dict[int, dict[str, Any]]:
        """The stored table, or {} (re-measured) when the file is missing or damaged (one warning naming it)."""
        try:
            if not self.path.is_file():
                return {}
            stored = json.loads(self.path.read_text())
            table = {int(n): entry for n, entry in stored["table"].items()}
            for entry in table.values():
                fields = ("seconds", "ratios", "ratio_spreads")
                if not all(len(entry[field]) == len(self.shape.ranks) for field in fields):
                    raise ValueError("a row does not match the rank grid")
                float(entry["feature_ratio"])
            return table
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            warnings.warn(
                f"drrl: damaged latency profile {self.path} ({type(err).__name__}: {err}); re-measuring it",
                RuntimeWarning,
                stacklevel=3,
            )
            return {}

    def grid(self, key_len: int) -> list[int]:
        """The profiled key lengths around ``key_len``: query_len * 2^k bracketing it."""
        if not 1 <= key_len <= MAX_PROFILE_LEN:
            raise ValueError(f"key length {key_len} is outside the profile's range 1..{MAX_PROFILE_LEN}")
        low = self.shape.query_len
        while low * 2 <= key_len:
            low *= 2
        return [low] if low >= key_len else [low, low * 2]

    def seconds(self, key_len: int) -> np.ndarray:
        """(R,) median seconds per rank at ``key_len`` keys, interpolated linearly in key length."""
        return self._interpolated("seconds", key_len)

    def ratios(self, key_len: int) -> np.ndarray:
        """(R,) latency / full-rank latency at ``key_len`` keys (1.0 at full rank), interpolated."""
        return self._interpolated("ratios", key_len)

    def feature_ratio(self, key_len: int) -> float:
        """The observation's features per decision / exact attention per decision at ``key_len`` keys, interpolated."""
        return float(self._interpolated("feature_ratio", key_len))

    def _interpolated(self, field: str, key_len: int) -> np.ndarray:
        points = self.grid(key_len)
        for n in points:
            if n not in self.table:
                self.table[n] = self._measure(n)
                self.measured += 1
                self._save()
        if len(points) == 1:
            return np.asarray(self.table[points[0]][field])
        (a, b), weight = points, (key_len - points[0]) / (points[1] - points[0])
        return (1 - weight) * np.asarray(self.table[a][field]) + weight * np.asarray(self.table[b][field])

    def _measure(self, key_len: int) -> dict[str, Any]:
        """One grid point, re-measured while its ratios spread more than ``MAX_SPREAD`` (module docstring)."""
        best = None
        for _ in range(self.ATTEMPTS):
            timings = self.measurer.time_ranks(replace(self.shape, key_len=key_len), self.dtype)
            spread = max(t.spread for t in timings.ratios)
            if best is None or spread < best[0]:
                best = (spread, timings)
            if spread <= self.MAX_SPREAD:
                break
        spread, timings = best
        if spread > self.MAX_SPREAD:
            warnings.warn(
                f"drrl: latency ratios at {key_len} keys spread {spread:.0%} (IQR / median) after "
                f"{self.ATTEMPTS} attempts; the machine is busy, and the profile marks them unreliable",
                RuntimeWarning,
                stacklevel=4,
            )
        return {
            "seconds": [float(t.median) for t in timings.seconds],
            "ratios": [float(t.median) for t in timings.ratios],
            "ratio_spreads": [float(t.spread) for t in timings.ratios],
            "rounds": int(timings.ratios[0].repeats),
            "feature_ratio": float(timings.features.median),
            "unreliable": bool(spread > self.MAX_SPREAD),
        }

    @property
    def unreliable(self) -> list[int]:
        """Key lengths whose ratios stayed noisier than ``MAX_SPREAD``."""
        return sorted(n for n, entry in self.table.items() if entry.get("unreliable"))

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            write_atomic(
                self.path, lambda f: json.dump({"key": self.key, "table": self.table}, f, indent=1), binary=False
            )
        except OSError as err:
            self.path = None  # keep measuring in memory
            warnings.warn(
                f"drrl: cannot write the latency profile ({type(err).__name__}: {err}); continuing without saving it",
                RuntimeWarning,
                stacklevel=4,
            )
