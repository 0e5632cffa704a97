"""Non-learned KV-cache policies for DRRL-KV-v0, with SB3's ``predict`` interface.

Each reads only the observation (deployable) and a ``KVShape`` fixed by the configuration, and
returns an action of ``2 Ly`` ladder indices (keys of layers 0..Ly-1, then values); the budget's
projection (``drrl_env/kv/budget.py``) applies to every one of them alike.

| name              | what it does                                                                       |
|-------------------|------------------------------------------------------------------------------------|
| ``exact``         | every block exact (the projection evicts once the budget is spent)                  |
| ``uniform:LEVEL`` | every block at one level, keys and values (``uniform:r16``, ``uniform:int4``);      |
|                   | ``uniform:KEYS/VALUES`` gives each its own (``uniform:r8/exact``: keys only)        |
| ``streaming``     | StreamingLLM: sinks and window only, every block evicted                            |
| ``h2o:TAU``       | H2O-like: a block stays exact where the attention its tokens accumulated since they |
|                   | entered is at least TAU times an even share (1 / tokens seen), else it is evicted   |
| ``pyramid``       | PyramidKV-like: per-layer byte shares decreasing linearly with depth, summing to the |
|                   | budget's pace (bytes left / blocks the maximum length may still bring); per layer   |
|                   | the highest level within its share                                                   |
| ``energy:TAU``    | per layer and kind, the cheapest stored level keeping energy >= TAU                 |
| ``greedy``        | budget-greedy on the estimate per byte: from evict, upgrade the (layer, kind) with  |
|                   | the largest drop in output-change estimate per added byte, within the pace          |
| ``recent:LEVEL``  | StreamingLLM with a compressed tail: a block is stored at LEVEL when the bytes left |
|                   | hold it and every later block the maximum length brings at LEVEL, else evicted, so  |
|                   | the newest blocks that fit are kept (``recent:int4``; ``recent:exact`` is           |
|                   | StreamingLLM at the budget)                                                          |
| ``salient:LEVEL`` | as ``recent``, but while the bytes left cannot hold every later block, a block is    |
|                   | stored at LEVEL when its accumulated attention share (as ``h2o``) is in the top     |
|                   | (blocks that fit / blocks left) of the shares seen so far in the episode            |
| ``static:FILE``   | one request per (layer, kind) for every block, read from a JSON file                |
|                   | ``{"keys": [level per layer], "values": [...]}``: e.g. the plan searched on training |
|                   | documents by ``benchmarks/kv_headroom.py`` (``experiments/results/kv/static_train.json``) |
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drrl_env.kv.levels import Level
from drrl_env.registry import Registry

if TYPE_CHECKING:
    from drrl_env.kv.controller import BlockController


@dataclass(frozen=True)
class KVShape:
    """What a policy may know of the configuration: the ladder, layers, the bytes one layer stores for a
    full block at each level (2, R), bytes free for blocks, the maximum length, the block size and the
    window (tokens)."""

    ladder: tuple[Level, ...]
    n_layers: int
    level_bytes: np.ndarray
    free_bytes: int
    max_seq_len: int
    block: int
    window: int

    @classmethod
    def of(cls, env: Any, controller: BlockController | None = None) -> KVShape:
        """The shape of ``env``'s episodes, or of the generation ``controller`` serves (its budget, maximum
        length and batch: a serving cache's length and budget need not be the environment's)."""
        env = env.unwrapped
        cache = env.new_cache()
        batch = 1 if controller is None else controller.token_bytes // env.exact_token_bytes
        sizes = np.array(
            [
                [
                    level.block_bytes(env.config.block, cache.head_dim, kind) * cache.n_kv_heads * batch
                    for level in env.ladder
                ]
                for kind in ("key", "value")
            ]
        )
        budget = env.budget if controller is None else controller.budget
        return cls(
            env.ladder,
            env.n_layers,
            sizes,
            budget.cap - budget.reserved,
            env.config.max_seq_len if controller is None else controller.max_seq_len,
            env.config.block,
            env.config.window,
        )

    def index(self, name: str) -> int:
        names = [level.name for level in self.ladder]
        if name not in names:
            raise ValueError(f"level {name!r} is not in the ladder {names}")
        return names.index(name)

    def pace(self, obs: dict[str, np.ndarray]) -> float:
        """Bytes per block that spread what is left evenly over the blocks the maximum length may still bring."""
        left = float(obs["context"][3]) * self.free_bytes
        remaining = max(1.0, (1.0 - float(obs["context"][1])) * self.max_seq_len / self.block + 1)
        return left / remaining

    def attention_share(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(Ly,) the due block's attention accumulated since insertion against an even share: mass[l, 1]
        (mean attention per reading) x tokens seen, so 1 is the share of 1 / tokens seen."""
        return obs["mass"][:, 1] * float(obs["context"][1]) * self.max_seq_len

    def blocks_to_decide(self, obs: dict[str, np.ndarray]) -> int:
        """Blocks from the due one on that leave the window by the maximum length: block k is due once
        (k + 1) B + W tokens are seen, and at most max - 1 are (the last token is only predicted), so
        they are k..floor((max - 1 - W) / B) - 1."""
        start = round(float(obs["context"][0]) * self.max_seq_len)
        return max(1, (self.max_seq_len - 1 - self.window) // self.block - start // self.block)


class KVPolicy:
    """Base class of the baselines: a family ``name`` (the text before the colon of a spec), the ``argument``
    it takes after the colon (``"LEVEL"``, ``"TAU"``, ``"FILE"``; None: none), and :meth:`act` -> (2 Ly,)
    ladder indices.  A new baseline is one subclass with ``@KV_POLICIES.register``."""

    name = "kv-policy"
    argument: str | None = None

    def __init__(self, shape: KVShape, arg: str | None = None) -> None:
        self.shape = shape
        self.label = self.name if arg is None else f"{self.name}:{arg}"

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def predict(
        self, obs: dict[str, np.ndarray], state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, None]:
        return np.asarray(self.act(obs), dtype=np.int64), None


KV_POLICIES: Registry[type[KVPolicy]] = Registry(
    KVPolicy, "baseline", "add a KVPolicy subclass to agents/kv_baselines.py with @KV_POLICIES.register"
)


@KV_POLICIES.register
class UniformPolicy(KVPolicy):
    name, argument = "uniform", "LEVEL"

    def __init__(self, shape: KVShape, arg: str) -> None:
        super().__init__(shape, arg)
        keys, _, values = arg.partition("/")
        self.levels = (shape.index(keys), shape.index(values or keys))

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.repeat(np.array(self.levels, dtype=np.int64), self.shape.n_layers)


@KV_POLICIES.register
class ExactPolicy(UniformPolicy):
    name, argument = "exact", None

    def __init__(self, shape: KVShape, arg: None = None) -> None:
        super().__init__(shape, "exact")
        self.label = self.name


@KV_POLICIES.register
class StreamingPolicy(UniformPolicy):
    name, argument = "streaming", None

    def __init__(self, shape: KVShape, arg: None = None) -> None:
        super().__init__(shape, "evict")
        self.label = self.name


@KV_POLICIES.register
class RecentPolicy(UniformPolicy):
    """Keeps the newest blocks at one level: stores the due block at LEVEL (keys and values, every layer) when
    the bytes left hold it and all later blocks at LEVEL, else evicts it.  Decisions are final, so the
    blocks it keeps are the last ones the maximum length brings; a document that ends earlier leaves part
    of the budget unused."""

    name, argument = "recent", "LEVEL"

    def __init__(self, shape: KVShape, arg: str) -> None:
        super().__init__(shape, arg)
        keys, values = self.levels
        self.evicted = np.full(2 * shape.n_layers, shape.index("evict"), dtype=np.int64)
        self.block_bytes = shape.n_layers * (shape.level_bytes[0, keys] + shape.level_bytes[1, values])

    def blocks_that_fit(self, obs: dict[str, np.ndarray]) -> int:
        """Full blocks at LEVEL, every layer, that the bytes left still hold."""
        return int(float(obs["context"][3]) * self.shape.free_bytes // self.block_bytes)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.blocks_that_fit(obs) < self.shape.blocks_to_decide(obs):
            return self.evicted.copy()
        return super().act(obs)


@KV_POLICIES.register
class SalientPolicy(RecentPolicy):
    """Spends the bytes on the blocks the window's queries attended to most.  The due block's share s is its
    attention accumulated since insertion against an even one, averaged over layers (``KVShape.attention_share``,
    as ``h2o``).  With f blocks that still fit at LEVEL out of n left to decide, it is stored at LEVEL when
    f >= n (as ``recent``), or when f > 0 and s is at least the (1 - f / n) quantile of the
    shares of the blocks decided before it in this episode (the first is stored); else evicted.  An online
    knapsack with a quantile threshold: the bytes go to the blocks read most so far, not to the oldest
    (``uniform``) or the newest (``recent``).  A new episode is told by a block start that does not grow."""

    name, argument = "salient", "LEVEL"

    def __init__(self, shape: KVShape, arg: str) -> None:
        super().__init__(shape, arg)
        self.shares: list[float] = []  # this episode's decided blocks, in order
        self.last_start = np.inf

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        start = float(obs["context"][0])
        if start <= self.last_start:
            self.shares = []
        self.last_start = start
        share = float(self.shape.attention_share(obs).mean())
        fit, left = self.blocks_that_fit(obs), self.shape.blocks_to_decide(obs)
        earlier, self.shares = self.shares, [*self.shares, share]
        if fit >= left or (fit > 0 and (not earlier or share >= np.quantile(earlier, 1.0 - fit / left))):
            return UniformPolicy.act(self, obs)
        return self.evicted.copy()


@KV_POLICIES.register
class StaticPolicy(KVPolicy):
    """The same request (2, Ly) for every block, named by level in a JSON file (module docstring)."""

    name, argument = "static", "FILE"

    def __init__(self, shape: KVShape, arg: str) -> None:
        super().__init__(shape, arg)
        plan = json.loads(Path(arg).read_text())
        if sorted(plan) != ["keys", "values"] or any(len(plan[k]) != shape.n_layers for k in plan):
            raise ValueError(f"{arg} must hold {{'keys': [...], 'values': [...]}}, {shape.n_layers} levels each")
        self.request = np.array([[shape.index(name) for name in plan[kind]] for kind in ("keys", "values")])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.request.reshape(-1)


@KV_POLICIES.register
class H2OPolicy(KVPolicy):
    name, argument = "h2o", "TAU"

    def __init__(self, shape: KVShape, arg: str) -> None:
        super().__init__(shape, arg)
        self.tau = float(arg)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        keep = self.shape.attention_share(obs) >= self.tau  # (Ly,)
        levels = np.where(keep, len(self.shape.ladder) - 1, 0)
        return np.concatenate([levels, levels])


@KV_POLICIES.register
class PyramidPolicy(KVPolicy):
    name = "pyramid"

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        n = self.shape.n_layers
        weights = np.arange(n, 0, -1, dtype=float)  # linear, deepest layer least
        shares = self.shape.pace(obs) * weights / weights.sum()  # (Ly,) bytes per layer
        both = self.shape.level_bytes.sum(0)  # (R,) a layer's keys and values at one level
        levels = np.array([int(np.flatnonzero(both <= share).max(initial=0)) for share in shares])
        return np.concatenate([levels, levels])


@KV_POLICIES.register
class EnergyPolicy(KVPolicy):
    name, argument = "energy", "TAU"

    def __init__(self, shape: KVShape, arg: str) -> None:
        super().__init__(shape, arg)
        self.tau = float(arg)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        energy = obs["energy"]  # (Ly, 2, R)
        ok = energy >= self.tau
        ok[..., 0] = False  # evict keeps nothing
        ok[..., -1] = True
        first = ok.argmax(-1)  # (Ly, 2) the cheapest level keeping tau
        return np.concatenate([first[:, 0], first[:, 1]])


@KV_POLICIES.register
class GreedyPolicy(KVPolicy):
    name = "greedy"

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        n, sizes = self.shape.n_layers, self.shape.level_bytes
        estimate = obs["estimate"]  # (Ly, 2, R)
        levels = np.zeros((2, n), dtype=np.int64)
        # a layer stores only when both kinds are above evict: start both at the cheapest stored level
        spent, pace = 0.0, self.shape.pace(obs)
        cheapest = 1 if len(self.shape.ladder) > 1 else 0
        order = np.argsort(estimate[:, :, 0].sum(-1) - estimate[:, :, cheapest].sum(-1))[::-1]  # most harmed by evict
        for layer in order:
            cost = sizes[0, cheapest] + sizes[1, cheapest]
            if spent + cost <= pace:
                levels[:, layer], spent = cheapest, spent + cost
        while True:
            best, gain = None, 0.0
            for kind in (0, 1):
                for layer in np.flatnonzero(levels[kind] > 0):
                    here = levels[kind, layer]
                    if here + 1 >= len(self.shape.ladder):
                        continue
                    added = sizes[kind, here + 1] - sizes[kind, here]
                    drop = (estimate[layer, kind, here] - estimate[layer, kind, here + 1]) / max(added, 1)
                    if spent + added <= pace and drop > gain:
                        best, gain = (kind, layer, added), drop
            if best is None:
                break
            kind, layer, added = best
            levels[kind, layer] += 1
            spent += added
        return levels.reshape(-1)


def kv_baseline_names() -> list[str]:
    """Every registered baseline as a spec pattern (``uniform:LEVEL``, ``greedy``, ...)."""
    return [
        name if (cls := KV_POLICIES.get(name)).argument is None else f"{name}:{cls.argument}"
        for name in KV_POLICIES.names()
    ]


def make_kv_baseline(spec: str, env: Any, controller: BlockController | None = None) -> KVPolicy:
    """A DRRL-KV-v0 baseline from its spec ``NAME`` or ``NAME:ARGUMENT`` (module docstring), for ``env``'s
    episodes or for the generation ``controller`` serves (``KVShape.of``)."""
    name, colon, arg = spec.partition(":")
    cls = KV_POLICIES.get(name)
    if (cls.argument is None) == bool(colon):
        needs = "takes no argument" if cls.argument is None else f"needs an argument: {name}:{cls.argument}"
        raise ValueError(f"baseline {spec!r} {needs}")
    try:
        return cls(KVShape.of(env, controller), arg or None)
    except (ValueError, OSError) as err:
        raise ValueError(f"baseline {spec!r}: {err}") from err
