"""``KVFastEnv`` (DRRL-KV-fast-v0): DRRL-KV-v0's fast mode as an environment, for pretraining agents in
thousands of steps per second.  Not for figures: agents are evaluated in the closed loop."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from drrl_env.kv.fast import FastDocument
from drrl_env.kv_env import KVCacheEnv
from drrl_env.play import choose_document


class KVFastEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    r"""DRRL-KV-v0 with the model replaced by its fast-mode surrogate (``kv/fast.py``), stated as such.

    ## What is the same as DRRL-KV-v0
    Documents, splits, the ladder, the action space (``MultiDiscrete([R] * 2 Ly)``), the observation
    space, the byte budget and its projection (the same ``BlockController``), the order of events
    (one step per block leaving the window) and the ``info`` keys about levels and bytes.

    ## What differs
    - The block part of the observation (``energy``, ``estimate``, ``mass``) is the one the all-exact
      episode of the document saw at that block (``KVCacheEnv.exact_features``), not that of the cache
      this episode built; the byte part (``layer_bytes``, ``context``, ``action_mask``) is this episode's.
    - The reward of storing block s at the executed levels is minus the surrogate's excess NLL of that
      decision over every later step it reaches (``FastDocument``, a fitted ``sensitivity``), minus
      ``beta`` times the bytes fraction.  Summed over an episode: minus the surrogate's prediction of the
      plan's excess NLL.  Deterministic; no model runs once a document's artefacts are on disk.

    ## Arguments
    ``sensitivity``: the ``.npz`` written by ``benchmarks/kv_fast_mode.py`` (required); ``documents``:
    the split's documents that ``reset`` draws from (default all; their artefacts are computed when
    the environment is built, so training runs at full speed); every other keyword is a DRRL-KV-v0 option.

    ## Version History
    * v0: initial release.
    """

    metadata = {"render_modes": []}

    def __init__(self, sensitivity: str | None = None, documents: tuple[int, ...] | None = None, **kwargs: Any) -> None:
        if sensitivity is None or not Path(sensitivity).is_file():
            raise ValueError(
                f"sensitivity={sensitivity!r} must name the .npz of a fitted fast mode; "
                "run python benchmarks/kv_fast_mode.py (it writes experiments/results/kv/fast_mode.npz)"
            )
        self.closed = KVCacheEnv(**kwargs)
        self.sensitivity = np.load(sensitivity)["sensitivity"]
        if self.sensitivity.shape != (self.closed.n_layers, 3):
            raise ValueError(
                f"the sensitivity in {sensitivity} has shape {self.sensitivity.shape}; this model needs "
                f"({self.closed.n_layers}, 3): fit it on the same model"
            )
        self.config, self.n_layers, self.ladder = self.closed.config, self.closed.n_layers, self.closed.ladder
        self.action_space, self.observation_space = self.closed.action_space, self.closed.observation_space
        self.max_steps = self.closed.max_steps
        count = len(self.closed.document_names())
        self.documents = tuple(range(count)) if documents is None else tuple(int(d) for d in documents)
        if not self.documents or not all(0 <= d < count for d in self.documents):
            raise ValueError(
                f"documents={documents!r} must be indices in 0..{count - 1} of the {self.config.split} split"
            )
        if documents is not None:
            for document in self.documents:  # artefacts on disk before training starts
                self.closed.output_errors(document), self.closed.exact_run(document)
        self._fast = None
        self._loaded: dict[tuple[int, float], tuple[FastDocument, dict[str, np.ndarray]]] = {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "document" in options:
            self._doc = choose_document(options, len(self.closed.document_names()), self.np_random)
        else:
            self._doc = self.documents[int(self.np_random.integers(len(self.documents)))]
        budget = (options or {}).get("budget", self.config.budget)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
            raise ValueError(f"options['budget']={budget!r} must be a fraction of the exact cache in (0, 1]")
        if (self._doc, budget) not in self._loaded:  # read from disk once per document and budget
            self._loaded[self._doc, budget] = (
                self.closed.fast_document(self._doc, self.sensitivity, budget),
                self.closed.exact_features(self._doc),
            )
        self._fast, self._features = self._loaded[self._doc, budget]
        self._controller = self.closed.controller(budget=budget)
        self._s, self._excess = 0, 0.0
        self._obs = self._observe()
        return self._obs, {"document": self.closed.document_names()[self._doc]}

    def _observe(self) -> dict[str, np.ndarray]:
        cfg, s = self.config, self._s
        start, seen = max(s * cfg.block, cfg.sinks), cfg.window + cfg.block * (s + 1)
        block = {name: values[s].copy() for name, values in self._features.items()}  # never a view of the cache
        return {**block, **self._controller.budget_view(self._fast.level_bytes[s], start, seen)}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        if self._fast is None or self._s >= self._fast.steps:
            raise RuntimeError("call reset() before step()" if self._fast is None else "the episode has ended")
        given = np.asarray(action)
        if given.shape != (2 * self.n_layers,) or not self.action_space.contains(given.astype(np.int64)):
            raise ValueError(
                f"action must be {2 * self.n_layers} integers in 0..{len(self.ladder) - 1} (keys of "
                f"layers 0..{self.n_layers - 1}, then values); got {action!r}"
            )
        decision = self._controller.decide(self._fast.level_bytes[self._s], given.astype(np.int64))
        plan = np.full((self._fast.steps, 2, self.n_layers), len(self.ladder) - 1)  # exact elsewhere: effect 0
        plan[self._s] = decision.key_levels, decision.value_levels
        excess = self._fast.excess(plan)
        self._excess += excess
        terms = {"excess_nll": -excess, "bytes": -self.config.beta * decision.byte_fraction}
        info = {
            "document": self.closed.document_names()[self._doc],
            "block": self._s,
            "key_levels": decision.key_levels,
            "value_levels": decision.value_levels,
            "projected": decision.projected,
            "predicted_excess_nll": self._excess,
            "budget_used": self._controller.budget_used,
            "reward_terms": terms,
        }
        self._s += 1
        terminated = self._s >= self._fast.steps
        if not terminated:
            self._obs = self._observe()
        info["action_mask"] = self._obs["action_mask"].copy()
        return self._obs, float(sum(terms.values())), terminated, False, info

    def copies(self, count: int) -> list[KVFastEnv]:
        """``count`` environments that share this one's model, artefacts and loaded documents (each with its
        own episode state and random generator once reset with its own seed): a vectorized trainer's."""
        return [copy.copy(self) for _ in range(count)]

    def action_masks(self) -> np.ndarray:
        return self._obs["action_mask"].astype(bool).copy()

    def document_names(self) -> list[str]:
        return self.closed.document_names()
