"""``KVCacheEnv`` (DRRL-KV-v0): choose, block by block, the level at which a language model's KV cache
stores what leaves the recent window.

Over 400 lines because the class docstring is the environment's spec (spaces, order of events,
reward, budget, info; about 75 lines); the mechanics live in ``drrl_env/kv/``."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from drrl_env.cache import cache_root, cached_arrays
from drrl_env.kv.bases import fit_kv_bases, rotary_angles
from drrl_env.kv.budget import ByteBudget
from drrl_env.kv.cache import CompressedKVCache
from drrl_env.kv.config import make_kv_config, steps_for
from drrl_env.kv.controller import CONTEXT, BlockController
from drrl_env.kv.episode import KVEpisode
from drrl_env.kv.fast import FastDocument
from drrl_env.kv.levels import Evict, parse_ladder
from drrl_env.kv.observation import OBSERVATION_VERSION, block_features
from drrl_env.kv.output_errors import output_errors
from drrl_env.play import choose_document
from drrl_env.sources import runtime_device
from drrl_env.sources.hf import HFAttentionSource


class KVCacheEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    r"""Store a causal language model's KV cache block by block, at a level per layer, within a byte budget.

    ## Description
    An episode is one document, decoded teacher-forced in blocks of ``block`` tokens over a
    ``CompressedKVCache`` (``kv/cache.py``): the first ``sinks`` tokens and the last ``window`` stay
    exact; every older block is stored once, in every layer, at a level of the ladder for its keys
    and one for its values (evict, rank r in a calibrated basis, int4/int8, exact), and never raised.
    The model really runs on what is stored, so an error in layer 3 changes what every later layer
    and every later block sees.

    Order of events (``kv/episode.py``): ``reset`` prefills the prompt, positions [0, window + block),
    exactly and unscored; block 0 has then left the window.  Each ``step``: (1) the action stores the
    block that left the window (after the budget's projection); (2) the next ``block`` input tokens
    run through all layers; (3) the reward scores the tokens they predict.  Prompt blocks are decided
    like any other (block 0 is the first decision).

    ## Action Space
    ``MultiDiscrete([R] * 2 Ly)``: ladder indices, keys of layers 0..Ly-1 then values of layers 0..Ly-1
    (R = len(levels); index 0 is ``evict``, which drops the layer's block, keys and values).

    ## Observation Space
    ``Dict`` (Ly layers, R levels); deployable only: the block's own keys and values, the model's
    recent queries with the normalizers and outputs it computed for them, and byte counts; never a
    future token or an exact-cache output (``kv/observation.py``).

    | key          | shape       | range        | meaning                                                    |
    |--------------|-------------|--------------|------------------------------------------------------------|
    | energy       | (Ly, 2, R)  | [0, 1]       | energy of the block's keys / values each level keeps          |
    | estimate     | (Ly, 2, R)  | [0, log1p(c)]| estimated change of the recent queries' output per level      |
    | mass         | (Ly, 2)     | [0, 1]       | attention on the block: recent queries, accumulated (H2O)     |
    | layer_bytes  | (Ly,)       | [0, 1]       | each layer's stored bytes / its exact cache at max_seq_len    |
    | context      | (5,)        | [0, 10]      | ``kv.controller.CONTEXT``                                     |
    | action_mask  | (2 Ly * R,) | {0, 1}       | levels each dimension may take on its own within the budget   |

    ## Rewards
    ``-(sum of NLL over the step's predicted tokens, stored - exact) - beta * bytes fraction``: the
    exact NLL comes from the same loop with every block stored exact (computed once per document,
    cached on disk), so an all-exact episode earns exactly 0; the bytes fraction is the block's stored
    bytes over its exact bytes.  Summed over an episode: minus the document's excess log-perplexity
    times its predicted tokens, minus the cost.  Deterministic on a given machine (no timer inside).

    ## Budget
    ``budget`` caps the cache at that fraction of the exact fp16 cache at ``max_seq_len`` tokens; the
    sinks, window, decoding block and bases are reserved first (a config where they do not fit is
    refused at construction).  A requested action that does not fit is projected
    (``kv/budget.py``): the largest stored (layer, kind) goes down one rung until it fits.  The
    executed action is in ``info``; the cap is never exceeded.

    ## Starting State and Episode End
    A document drawn with ``self.np_random`` from the split (or ``options={"document": i}``);
    ``options={"budget": b}`` sets this episode's budget (evaluation at other budgets).  Ends
    (terminated) when the document's last token is predicted: documents are 1024 to 4096 tokens by
    default, so episodes have 6 to 30 steps, and the observation holds no document length.
    ``snapshot()`` copies the episode's state (cache, position, budget, running sums) and ``restore``
    puts it back, so a lookahead reference can try actions and return (``drrl_env.play.lookahead``).

    ## Info
    | key              | meaning                                                             |
    |------------------|---------------------------------------------------------------------|
    | document, block  | the episode's document name, the stored block's index                |
    | key_levels, value_levels | executed ladder indices (Ly,)                                |
    | requested_key_levels, requested_value_levels, projected | the request; whether it was lowered |
    | tokens           | predicted tokens of the step                                          |
    | nll, exact_nll   | their summed NLL with the stored cache and with the exact one (nats) |
    | ppl_ratio        | running perplexity ratio stored / exact over the episode's scored tokens |
    | cache_bytes      | bytes the cache stores now (exact tokens, blocks, bases)             |
    | cache_fraction   | cache_bytes / the exact cache of the tokens seen                      |
    | budget_used      | (reserved + stored block bytes) / cap: never above 1                 |
    | reward_terms     | {"excess_nll", "bytes"}, signed, summing to the reward               |

    ## Arguments
    Every field of :class:`drrl_env.kv.config.KVConfig`.

    ## Version History
    * v0: initial release.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}
    EPISODE_STATE = (  # what snapshot() copies
        "_doc",  # the document
        "_exact",  # its exact NLL per step
        "cache",
        "_episode",  # the decoder's position
        "_t",
        "_nll",
        "_exact_sum",
        "_tokens",
        "_controller",  # the budget's bookkeeping
        "_obs",
    )

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode={render_mode!r} is not supported; use None or 'ansi'")
        self.render_mode = render_mode
        self.config = cfg = make_kv_config(**kwargs)
        self.device = runtime_device(cfg)
        self.source = HFAttentionSource.from_config(cfg, self.device)
        spec = self.source.spec
        if not self.source.causal_lm:
            raise ValueError(f"DRRL-KV-v0 needs a causal language model; {cfg.model!r} is not one")
        self.model = self.source.model
        self.ladder = parse_ladder(cfg.levels, spec.head_dim, cfg.block)
        self.evict = next(i for i, level in enumerate(self.ladder) if isinstance(level, Evict))
        root = cache_root(cfg.cache_dir)
        training = (
            self.source
            if cfg.split == "train" and cfg.calibration_corpus is None
            else HFAttentionSource.from_config(
                dataclasses.replace(cfg, corpus=cfg.bases_corpus, split="train"), self.device
            )
        )
        self.bases = fit_kv_bases(training, cfg.calibration_documents, cfg.key_space, root)
        self.n_layers, n_levels = spec.n_layers, len(self.ladder)
        probe = self.new_cache()
        self.exact_token_bytes = probe.token_bytes()  # one sequence's
        self._bases_bytes = probe.bases.nbytes(probe.max_rank)
        self.budget = self.budget_for(cfg.max_seq_len)
        self.max_steps = steps_for(cfg.max_seq_len, cfg.window, cfg.block)
        self._root = root
        self.action_space = spaces.MultiDiscrete([n_levels] * (2 * self.n_layers))
        high = float(np.log1p(cfg.estimate_clip))
        self.observation_space = spaces.Dict(
            {
                "energy": spaces.Box(0.0, 1.0, (self.n_layers, 2, n_levels), np.float32),
                "estimate": spaces.Box(0.0, high, (self.n_layers, 2, n_levels), np.float32),
                "mass": spaces.Box(0.0, 1.0, (self.n_layers, 2), np.float32),
                "layer_bytes": spaces.Box(0.0, 1.0, (self.n_layers,), np.float32),
                "context": spaces.Box(0.0, 10.0, (len(CONTEXT),), np.float32),
                "action_mask": spaces.Box(0, 1, (2 * self.n_layers * n_levels,), np.int8),
            }
        )
        self._episode: KVEpisode | None = None

    def new_cache(self, policy=None, path: str = "memory") -> CompressedKVCache:
        """An empty cache of this configuration (``policy`` decides due blocks itself: generation) on attention
        ``path`` (``kv/cache.py``: the environment's is "memory")."""
        cfg = self.config
        return CompressedKVCache(
            self.source.spec.n_layers,
            ladder=self.ladder,
            bases=self.bases,
            block=cfg.block,
            window=cfg.window,
            sinks=cfg.sinks,
            policy=policy,
            angles=self._angles(),
            path=path,
        )

    def _angles(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
        """positions (n,) -> the model's rotary (cos, sin) (n, d), for pre-RoPE bases; None for post-RoPE ones."""
        if self.config.key_space != "pre_rope":
            return None
        head_dim = self.source.spec.head_dim
        return lambda positions: rotary_angles(self.model, positions, head_dim)

    def budget_for(self, max_len: int, budget: float | None = None, batch: int = 1) -> ByteBudget:
        """The byte budget of ``batch`` sequences of at most ``max_len`` tokens each: ``budget`` (default: the
        config's) of their exact cache; reserved: their sinks, window and decoding block, and the bases."""
        cfg = self.config
        fraction = cfg.budget if budget is None else budget
        sequence = batch * self.exact_token_bytes  # bytes of one exact position across the batch
        return ByteBudget(
            int(fraction * max_len * sequence), (cfg.sinks + cfg.window + cfg.block) * sequence + self._bases_bytes
        )

    def controller(self, max_len: int | None = None, budget: float | None = None, batch: int = 1) -> BlockController:
        """A fresh budget controller (one per episode, or per generation of ``batch`` sequences of at most
        ``max_len`` tokens, which share one decision per block)."""
        max_len = max_len or self.config.max_seq_len
        return BlockController(
            self.budget_for(max_len, budget, batch),
            self.n_layers,
            self.evict,
            max_len,
            self.config.estimate_clip,
            batch * self.exact_token_bytes,
        )

    def serving_cache(
        self,
        act: Callable[[dict[str, np.ndarray]], np.ndarray],
        max_len: int,
        batch: int = 1,
        path: str = "memory",
        budget: float | None = None,
    ) -> tuple[CompressedKVCache, BlockController]:
        """A cache for generation of ``batch`` sequences of at most ``max_len`` tokens whose due blocks ``act``
        decides from the same observation as the environment's, stored through the same controller (budget,
        projection); the budget is ``budget`` (default: the config's) of the whole batch's exact cache.
        ``path``: "memory", "speed" or "speed-bf16" (``kv/cache.py``)."""
        controller = self.controller(max_len, budget, batch)

        def decide(cache: CompressedKVCache, index: int) -> None:
            controller.store(cache, index, act(controller.observe(cache, index)))

        return self.new_cache(decide, path), controller

    def exact_nll(self, index: int) -> np.ndarray:
        """(steps,) summed NLL of each step's predicted tokens with every block stored exact: the reward's
        reference, from the same loop (``exact_run``)."""
        return self.exact_run(index)["nll"]

    def exact_features(self, index: int) -> dict[str, np.ndarray]:
        """The block part of the observation (``energy``, ``estimate``, ``mass``; a leading steps axis) of each
        step of the all-exact episode (``exact_run``): what the fast mode shows an agent."""
        return {name: values for name, values in self.exact_run(index).items() if name != "nll"}

    def exact_run(self, index: int) -> dict[str, np.ndarray]:
        """Document ``index`` decoded with every block stored exact: each step's summed NLL (``nll``) and the
        block features the observation showed (``kv/observation.py``); cached on disk by the document's
        tokens and the cache's shape."""
        cfg = self.config
        key = {
            "kind": "kv-exact-run",
            "observation": OBSERVATION_VERSION,  # the block features it keeps
            "document": self.source.document_key(index),
            "block": cfg.block,
            "window": cfg.window,
            "sinks": cfg.sinks,
            "levels": cfg.levels,
            "key_space": cfg.key_space,
            "estimate_clip": cfg.estimate_clip,
            "calibration": [cfg.calibration_documents, str(cfg.bases_corpus), cfg.max_seq_len, cfg.min_doc_tokens],
        }

        def compute() -> dict[str, np.ndarray]:
            cache = self.new_cache()
            exact = np.full(self.n_layers, len(self.ladder) - 1)
            episode = KVEpisode(self.model, self.source.token_ids(index), cache)
            episode.prefill()
            sums, features = [], []
            while not episode.done:
                features.append(block_features(cache, cache.due_block(), cfg.estimate_clip))
                cache.store(cache.due_block(), exact, exact)
                sums.append(float(episode.decode().double().sum()))
            return {"nll": np.array(sums), **{name: np.stack([f[name] for f in features]) for name in features[0]}}

        return cached_arrays(self._root, key, compute)

    def output_errors(self, index: int) -> np.ndarray:
        """``D`` (steps, Ly, 2, R, steps) of document ``index`` (``kv/output_errors.py``): the fast mode's features,
        from the exact run (cached on disk like ``exact_nll``)."""
        cfg = self.config
        key = {
            "kind": "kv-output-errors",
            "document": self.source.document_key(index),
            "block": cfg.block,
            "window": cfg.window,
            "sinks": cfg.sinks,
            "levels": cfg.levels,
            "key_space": cfg.key_space,
            "calibration": [cfg.calibration_documents, str(cfg.bases_corpus), cfg.max_seq_len, cfg.min_doc_tokens],
        }

        def compute() -> dict[str, np.ndarray]:
            trace = self.source.trace(index)
            angles = self._angles()
            positions = torch.arange(trace.seq_len, device=self.device)
            errors = output_errors(
                trace,
                self.bases,
                self.ladder,
                cfg.block,
                cfg.window,
                cfg.sinks,
                None if angles is None else angles(positions),
            )
            return {"errors": errors}

        return cached_arrays(self._root, key, compute)["errors"]

    def fast_document(self, index: int, sensitivity: np.ndarray, budget: float | None = None) -> FastDocument:
        """Document ``index`` in the fast mode (``kv/fast.py``) with fitted ``sensitivity`` (Ly, 3), under
        ``budget`` (default: the config's)."""
        errors = self.output_errors(index)
        probe = self.new_cache()
        sizes = np.stack([probe.level_bytes(s) for s in range(errors.shape[0])])  # (steps, 2, R)
        cap = self.budget_for(self.config.max_seq_len, budget)
        return FastDocument.of(errors, sensitivity, sizes, cap.cap - cap.reserved, self.evict)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._doc = choose_document(options, len(self.source.document_names), self.np_random)
        self._exact = self.exact_nll(self._doc)
        self.cache = self.new_cache()
        self._episode = KVEpisode(self.model, self.source.token_ids(self._doc), self.cache)
        self._episode.prefill()
        budget = (options or {}).get("budget", self.config.budget)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
            raise ValueError(f"options['budget']={budget!r} must be a fraction of the exact cache in (0, 1]")
        self._t, self._nll, self._exact_sum, self._tokens = 0, 0.0, 0.0, 0
        self._controller = self.controller(budget=budget)
        self._obs = self._controller.observe(self.cache, self.cache.due_block())
        return self._obs, {
            "document": self.source.document_names[self._doc],
            "action_mask": self._obs["action_mask"].copy(),
        }

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        if self._episode is None or self._episode.done:
            raise RuntimeError(
                "call reset() before step()" if self._episode is None else "the episode has ended; call reset()"
            )
        given = np.asarray(action)
        if (
            given.shape != (2 * self.n_layers,)
            or given.dtype.kind not in "iu"
            or not self.action_space.contains(given.astype(np.int64))
        ):
            raise ValueError(
                f"action must be {2 * self.n_layers} integers in 0..{len(self.ladder) - 1} (keys of "
                f"layers 0..{self.n_layers - 1}, then values); got {action!r}"
            )
        index = self.cache.due_block()
        decision = self._controller.store(self.cache, index, given.astype(np.int64))
        nll = self._episode.decode().double()
        step_nll, exact_nll = float(nll.sum()), float(self._exact[self._t])
        self._nll, self._exact_sum = self._nll + step_nll, self._exact_sum + exact_nll
        self._tokens += len(nll)
        terms = {"excess_nll": -(step_nll - exact_nll), "bytes": -self.config.beta * decision.byte_fraction}
        self._t += 1
        terminated = self._episode.done
        cache_bytes = self.cache.nbytes()
        info = {
            "document": self.source.document_names[self._doc],
            "block": index,
            "key_levels": decision.key_levels,
            "value_levels": decision.value_levels,
            "requested_key_levels": decision.requested[0],
            "requested_value_levels": decision.requested[1],
            "projected": decision.projected,
            "tokens": len(nll),
            "nll": step_nll,
            "exact_nll": exact_nll,
            "ppl_ratio": float(np.exp((self._nll - self._exact_sum) / self._tokens)),
            "cache_bytes": cache_bytes,
            "cache_fraction": cache_bytes / (self.cache.seen * self.exact_token_bytes),
            "budget_used": self._controller.budget_used,
            "reward_terms": terms,
        }
        if not terminated:
            self._obs = self._controller.observe(self.cache, self.cache.due_block())
        info["action_mask"] = self._obs["action_mask"].copy()
        return self._obs, float(sum(terms.values())), terminated, False, info

    def snapshot(self) -> dict[str, Any]:
        """A copy of the episode's state (``EPISODE_STATE``): the cache's tensors, the decoding position, the
        budget's bookkeeping, the running sums and the observation.  The model, the bases and the
        environment itself are shared, not copied.  About the cache's size in memory."""
        if self._episode is None:
            raise RuntimeError("call reset() before snapshot(): there is no episode to copy")
        return copy.deepcopy({name: getattr(self, name) for name in self.EPISODE_STATE}, memo=self._shared())

    def restore(self, state: dict[str, Any]) -> None:
        """Puts back a :meth:`snapshot` (itself copied again, so one snapshot can be restored many times)."""
        if set(state) != set(self.EPISODE_STATE):
            raise ValueError(f"not a snapshot of this environment: keys {sorted(state)}, expected {self.EPISODE_STATE}")
        for name, value in copy.deepcopy(state, memo=self._shared()).items():
            setattr(self, name, value)

    def _shared(self) -> dict[int, Any]:
        """What a snapshot shares instead of copying (a ``deepcopy`` memo): the env, the model, the bases."""
        return {id(self): self, id(self.model): self.model, id(self.bases): self.bases}

    def action_masks(self) -> np.ndarray:
        """(2 Ly * R,) levels each dimension may take on its own (sb3-contrib ``MaskablePPO``)."""
        return self._obs["action_mask"].astype(bool).copy()

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._episode is None:
            return None
        return (
            f"{self.source.document_names[self._doc]} step {self._t} tokens {self.cache.seen} "
            f"cache {self.cache.nbytes() / 1e6:.2f} MB ({self.cache.nbytes() / self.budget.cap:.0%} of the cap)"
        )

    def document_names(self) -> list[str]:
        return self.source.document_names

    def close(self) -> None:
        self._episode = None
