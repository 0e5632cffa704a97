"""``RankSelectionEnv``: choose the rank of a transformer's attention, segment by segment."""

from __future__ import annotations

import dataclasses
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from drrl_env.analysis import DocumentAnalysis
from drrl_env.cache import cache_root
from drrl_env.config import make_config
from drrl_env.costs import make_cost_model
from drrl_env.documents import DocumentStore
from drrl_env.observation import build_observation, context_vector, observation_space
from drrl_env.reward import RewardWeights, fidelity_value, output_error
from drrl_env.safety import adaptive_epsilon, nearest_safe, safe_mask
from drrl_env.sources import make_source, runtime_device
from drrl_env.sources.base import ModelOutputs


class RankSelectionEnv(gym.Env[dict[str, np.ndarray], Any]):
    r"""Choose, layer by layer and segment by segment, the rank of a transformer's attention.

    ## Description
    An episode is one document.  The document is run through the model once (or drawn from the
    synthetic source) and its per-head q, k, v are captured for every layer.  The document is cut
    into segments of ``segment_len`` tokens; each step decides the rank at which one segment's
    attention in one layer is computed, in layer-major order ``(0, 0), (0, 1), ..., (1, 0), ...``.
    With ``workload="decode"`` (causal models) the first part of the document is an exact prompt
    and the segments are windows of decoded tokens after it, each costed per token over the cache.
    The low-rank attention really is computed from rank-r factors by the configured method
    (``attention/methods/``; ``"svd"``: truncated SVDs of the segment's Q and of K;
    ``"shared_key"``: Q and K projected on K's top-r right singular vectors; ``"calibrated"``: Q, K
    and V projected on fixed per-layer bases fitted on training documents, nothing decomposed per
    segment), segment by segment as the workload presents them (``attention/workload.py``), and
    compared with exact attention.

    ## Action Space
    ``Discrete(R)``: index into the rank grid ``ranks`` (default ``head_dim/8, ..., head_dim``), one
    rank for all heads of the layer.  With ``per_head=True``: ``MultiDiscrete([R] * H)``, one per
    head.  The last index is full rank (exact attention).

    ## Observation Space
    ``Dict`` (H query heads, d head dim, R ranks, relative bounds given as log1p of the bound):

    | key            | shape     | range           | meaning                                                  |
    |----------------|-----------|-----------------|----------------------------------------------------------|
    | q_spectrum     | (H, d)    | [0, 1]          | singular values of the segment's Q per head / largest     |
    | k_spectrum     | (H, d)    | [0, 1]          | singular values of the visible K per head / largest       |
    | tail_energy    | (H, R, 2) | [0, 1]          | ||X - X_r||_F / ||X||_F for X = Q, K (Eq. 8 tail energy)  |
    | band_energy    | (H, R, 2) | [0, 1]          | ||X_r - X_prev||_F / ||X||_F from the layer's previous rank|
    | output_bound   | (H, R)    | [0, log1p(clip)]| bound on ||O_r - O||_F / ||O||_F per head (Eq. 9)        |
    | change_bound   | (H, R)    | [0, log1p(clip)]| bound on ||O_r - O_prev||_F / ||O||_F per head            |
    | layer_bound    | (R, 2)    | [0, log1p(clip)]| the two bounds above over all heads at one rank           |
    | cost           | (R,)      | [0, 10]         | cost ratio to exact attention (the cost model's), clipped |
    | context        | (6,)      | [0, ...]        | layer, segment, seq_len, prev rank (0 = none; / d),       |
    |                |           |                 | log1p(min(epsilon_t, clip)), progress; all but epsilon in [0,1]|
    | action_mask    | (R,) or (H*R,) | {0, 1}     | 1 = safe rank (bound <= epsilon_t); full rank always 1    |

    ``band_energy`` and ``change_bound`` are 0 on a layer's first segment (no previous rank).

    ## Rewards
    ``alpha * fidelity - beta * cost - gamma * perturbation`` (``reward.RewardWeights``); the signed terms are
    in ``info["reward_terms"]`` and sum to the reward.  With ``end_weight > 0`` the last step also
    earns ``end_weight * end_fidelity``, with the episode's ranks applied in every layer of the model:
    for a causal language model exact perplexity / perplexity (1 = unchanged), for an encoder the
    cosine between its mean-pooled outputs with those ranks and with exact attention.

    ## Starting State
    A document drawn uniformly from the split with ``self.np_random`` (or
    ``options={"document": i}``); the first step is layer 0, segment 0.

    ## Episode End
    Terminates after the last segment of the last layer (``n_layers * n_segments`` steps; at most
    ``max_steps``).  The registered ``DRRL-v0`` also truncates at ``max_episode_steps``, set for
    the default configuration (24); a configuration with longer episodes fails at ``reset`` with
    the value to pass (``registration.EpisodeLengthCheck``) instead of being cut short.

    ## Safety
    With ``safety=True`` ranks whose bound exceeds the adaptive threshold epsilon_t (``safety.py``)
    are masked (``action_masks()``, ``info["action_mask"]``); an unsafe action is replaced by the
    smallest safe rank above it and ``info["action_replaced"]`` says so.

    ## Info
    ``reset`` gives ``document`` (name), ``n_steps`` and ``action_mask``.  ``step`` gives:

    | key                | meaning (units)                                                          |
    |--------------------|--------------------------------------------------------------------------|
    | document           | the episode's document name                                              |
    | layer, segment     | the step's (layer, segment), 0-based                                      |
    | rank               | rank taken after safety (an int; a list of H with ``per_head``)           |
    | requested_rank     | rank the action asked for (same form)                                    |
    | action_replaced    | True when safety replaced an unsafe action                                |
    | epsilon            | the safety threshold of this step (relative output norm)                  |
    | fidelity           | cosine of low-rank vs exact attention output, all heads (in [-1, 1])      |
    | relative_error     | ||O_r - O||_F / ||O||_F                                                   |
    | reward_fidelity    | the fidelity the reward uses (``fidelity_metric``)                        |
    | cost_ratio         | the cost model's cost / exact attention's (the reward's cost)             |
    | flop_ratio         | FLOPs / exact attention's FLOPs                                          |
    | perturbation_bound | bound on the relative output change from the layer's previous rank        |
    | output_bound       | bound on the relative output change from full rank                        |
    | reward_terms       | ``{"fidelity", "cost", "perturbation"[, "end_fidelity"]}``, signed, sum = reward |
    | action_mask        | the next step's mask                                                      |
    | end_fidelity       | last step with ``end_weight > 0``: the model-level fidelity (above)       |
    | end_perplexity     | with it, for a causal LM: perplexity with the episode's ranks             |
    | exact_perplexity   | with it, for a causal LM: perplexity with exact attention                 |

    ## Arguments
    Every field of :class:`drrl_env.config.EnvConfig` is a keyword argument, e.g.
    ``gym.make("DRRL-v0", source="synthetic", segment_len=64, beta=0.5)``.

    ## Version History
    * v0: initial release.  (Unreleased package: the id stays v0 while behaviour is pinned by
      ``tests/test_reproduction.py``; ``info["reward_fidelity"]`` was added; the ``calibrated``
      method and the ``calibration_documents`` option were added; the ``workload="decode"`` option
      (exact prompt, teacher-forced windows, per-token cost; ``decode_prompt``) was added; corpora
      gained a validation split; measured costs now include the factors' upkeep.)
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode={render_mode!r} is not supported; use None or 'ansi'")
        self.render_mode = render_mode
        self.config = cfg = make_config(**kwargs)
        self.device = runtime_device(cfg)
        self.source = make_source(cfg, self.device)
        spec = self.source.spec
        self.ranks: tuple[int, ...] = cfg.rank_grid(spec.head_dim)
        self.cost_model = make_cost_model(cfg.cost_model, self.device, cfg.dtype, cache_root(cfg.cache_dir),
                                          cfg.profile_refresh)
        longest, limit = cfg.target_seq_len or spec.max_seq_len, self.cost_model.max_key_len
        if limit is not None and longest > limit:
            raise ValueError(f"cost_model={cfg.cost_model!r} measures key lengths up to {limit}; this configuration "
                             f"needs {longest}; use cost_model='flops' or a shorter target_seq_len")
        n_ranks, n_heads = len(self.ranks), spec.n_heads
        self.action_space = spaces.MultiDiscrete([n_ranks] * n_heads) if cfg.per_head else spaces.Discrete(n_ranks)
        mask_shape = (n_heads * n_ranks,) if cfg.per_head else (n_ranks,)
        self.observation_space = observation_space(n_heads, spec.head_dim, n_ranks, cfg.bound_clip, mask_shape)
        if cfg.workload == "decode" and not spec.causal:
            raise ValueError(f"workload='decode' needs a causal model; {cfg.model!r} attends both ways "
                             "(use workload='prefill')")
        self.documents = DocumentStore(cfg, self.source, self.ranks, self.cost_model)
        self.max_steps = spec.n_layers * len(self.documents.workload.segments(spec.max_seq_len))
        self.weights = RewardWeights(cfg.alpha, cfg.beta, cfg.gamma)
        self._doc: int | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.spec is not None and not self.cost_model.deterministic and not self.spec.nondeterministic:
            self.spec = dataclasses.replace(self.spec, nondeterministic=True)  # measured time in the reward
        n_docs = len(self.source.document_names)
        index = (options or {}).get("document")
        if index is None:
            index = int(self.np_random.integers(n_docs))
        elif isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n_docs:
            raise ValueError(f"options['document']={index!r} must be an integer in 0..{n_docs - 1}")
        self._doc = int(index)
        self._data = self.documents.get(self._doc)
        self._n_segments = self._data.analysis.n_segments
        self._n_steps = self.source.spec.n_layers * self._n_segments
        self._t, self._prev, self._spent = 0, None, 0.0
        self._episode_ranks = np.full((self.source.spec.n_layers, self._n_segments), float(self.source.spec.head_dim))
        self._update_step_state()
        return self._observation(), {"document": self.source.document_names[self._doc],
                                     "n_steps": self._n_steps, "action_mask": self._mask.copy()}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        if self._doc is None or self._t >= self._n_steps:
            raise RuntimeError("call reset() before step()" if self._doc is None else
                               "the episode has ended; call reset()")
        given = np.asarray(action)
        if given.dtype.kind not in "iu" or not self.action_space.contains(given.astype(np.int64) if self.config.per_head
                                                                          else action):
            raise ValueError(f"action {action!r} is not in the action space {self.action_space} (integers only)")
        requested = np.broadcast_to(given.astype(np.int64), (self.source.spec.n_heads,)).copy()  # (H,)
        reward, info, chosen = self._outcome(requested)
        segment, self._spent = info["segment"], self._spent + info["output_bound"]
        self._episode_ranks[info["layer"], segment] = np.mean(info["rank"])
        self._prev = chosen if segment + 1 < self._n_segments else None
        self._t += 1
        terminated = self._t == self._n_steps
        if terminated and self.config.end_weight > 0:
            info.update(self.documents.end_info(self._doc, self._episode_ranks))
            info["reward_terms"]["end_fidelity"] = self.config.end_weight * info["end_fidelity"]
            reward += info["reward_terms"]["end_fidelity"]
        if not terminated:
            self._update_step_state()
        info["action_mask"] = self._mask.copy()
        return self._observation(), reward, terminated, False, info

    def _outcome(self, requested: np.ndarray) -> tuple[float, dict[str, Any], np.ndarray]:
        """Reward, step info and the rank indices taken (H,) after safety, for ``requested`` (H,); changes no state."""
        cfg, data = self.config, self._data
        layer, segment = divmod(self._t, self._n_segments)
        chosen = nearest_safe(requested, self._mask.reshape(len(requested), -1) if cfg.per_head else self._mask) \
            if cfg.safety else requested
        error = output_error(data.analysis, layer, segment, chosen)
        fidelity, cost = fidelity_value(error, cfg.fidelity_metric), float(data.costs[segment, chosen].mean())
        perturbation = 0.0 if self._prev is None else data.bounds.layer_change(layer, segment, self._prev, chosen)
        terms = self.weights.terms(fidelity, cost, perturbation)
        return float(sum(terms.values())), {
            "document": self.source.document_names[self._doc], "layer": layer, "segment": segment,
            "rank": self._ranks_of(chosen), "requested_rank": self._ranks_of(requested),
            "action_replaced": bool((chosen != requested).any()), "epsilon": self._epsilon,
            "fidelity": error.cosine, "relative_error": error.relative_error, "reward_fidelity": fidelity,
            "cost_ratio": cost, "flop_ratio": float(data.flops[segment, chosen].mean()),
            "perturbation_bound": perturbation,
            "output_bound": data.bounds.layer_change(layer, segment, chosen, np.full_like(chosen, len(self.ranks) - 1)),
            "reward_terms": terms,
        }, chosen

    def candidate_rewards(self) -> np.ndarray:
        """(R,) each rank's reward (all heads alike) at this step, safety applied: reads the true
        attention, for oracles and analysis, not for deployable agents."""
        if self._doc is None or self._t >= self._n_steps:
            raise RuntimeError("candidate_rewards() needs a running episode; call reset()")
        heads = self.source.spec.n_heads
        return np.array([self._outcome(np.full(heads, i, dtype=np.int64))[0] for i in range(len(self.ranks))])

    def action_masks(self) -> np.ndarray:
        """Boolean mask of safe actions for the current step (sb3-contrib ``MaskablePPO``)."""
        return self._mask.astype(bool).copy()

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._doc is None:
            return None
        layer, segment = divmod(min(self._t, self._n_steps - 1), self._n_segments)
        safe = [r for r, ok in zip(self.ranks, self._mask[-len(self.ranks):]) if ok]
        return (f"{self.source.document_names[self._doc]} step {self._t}/{self._n_steps} "
                f"layer {layer} segment {segment} epsilon {self._epsilon:.3g} safe ranks {safe}")

    def document_names(self) -> list[str]:
        return self.source.document_names

    def analysis(self, index: int) -> DocumentAnalysis:
        """The cached analysis of document ``index`` (computed on first use)."""
        return self.documents.get(index).analysis

    def model_outputs(self, index: int, ranks: np.ndarray | None = None) -> ModelOutputs:
        """See :meth:`DocumentStore.model_outputs` (``source="model"`` only)."""
        return self.documents.model_outputs(index, ranks)

    def _ranks_of(self, index: np.ndarray) -> int | list[int]:
        ranks = [self.ranks[i] for i in index]
        return ranks if self.config.per_head else ranks[0]

    def _update_step_state(self) -> None:
        """Threshold and mask for the step about to be taken."""
        cfg, bounds = self.config, self._data.bounds
        layer, segment = divmod(self._t, self._n_segments)
        self._epsilon = adaptive_epsilon(cfg.epsilon, cfg.epsilon_min, cfg.epsilon_max, self._n_steps,
                                         self._t, self._spent)
        threshold = self._epsilon if cfg.safety else np.inf
        pairs = bounds.head_pairs[layer, segment, ..., -1] if cfg.per_head else bounds.layer_pairs[layer, segment, :, -1]
        self._mask = safe_mask(pairs, threshold).reshape(-1)

    def _observation(self) -> dict[str, np.ndarray]:
        spec, analysis = self.source.spec, self._data.analysis
        layer, segment = divmod(min(self._t, self._n_steps - 1), self._n_segments)
        prev_rank = 0.0 if self._prev is None else float(np.mean([self.ranks[i] for i in self._prev])) / spec.head_dim
        context = context_vector(layer, spec.n_layers, segment, self._n_segments, analysis.seq_len, spec.max_seq_len,
                                 prev_rank, self._epsilon, self.config.bound_clip, self._t / self._n_steps)
        return build_observation(analysis, self._data.bounds, layer, segment, self._prev, self._data.costs[segment],
                                 context, self._mask)
