"""``RankSelectionEnv``: choose the rank of a transformer's attention, segment by segment.

Over 400 lines because the class docstring is the environment's spec (spaces, rewards, budget, info,
arguments, version history; about 130 lines); the parts live in their own modules (episode,
documents, observation, reward, safety)."""

from __future__ import annotations

import dataclasses
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from drrl_env.analysis import DocumentAnalysis
from drrl_env.attention.methods import method_for
from drrl_env.attention.workload import workload_class
from drrl_env.cache import cache_root
from drrl_env.config import EnvConfig, make_config
from drrl_env.costs import cost_model_class, make_cost_model
from drrl_env.documents import DocumentStore
from drrl_env.episode import ClosedLoop, Episode, OpenLoop
from drrl_env.observation import build_observation, context_vector, observation_space
from drrl_env.play import choose_document
from drrl_env.reward import RewardWeights, fidelity_value, output_error
from drrl_env.safety import adaptive_epsilon, budget_feasible, nearest_safe, safe_mask
from drrl_env.sources import SOURCES, make_source, runtime_device
from drrl_env.sources.base import ModelOutputs


def check_extensions(config: EnvConfig) -> None:
    """Resolves ``config``'s registered names (method with its options, workload, cost model, source with
    what it runs) before anything loads, so that a bad one fails at construction with the registry's list
    of known names; the config itself is plain data and imports no registry."""
    method = method_for(config.method, config)  # checks the method's own options
    for option, needed in method.requires.items():
        if getattr(config, option) != needed:
            raise ValueError(
                f"method={config.method!r} needs {option}={needed} ({method.requires_reason}); "
                f"got {option}={getattr(config, option)!r}"
            )
    workload_class(config.workload)
    cost_model_class(config.cost_model)
    if not SOURCES.get(config.source).runs_model:
        for option, asked in (("closed_loop=True", config.closed_loop), ("end_weight > 0", config.end_term_weight > 0)):
            if asked:
                raise ValueError(
                    f"{option} needs a source that runs a model (source='model'): the next layer's inputs "
                    f"and the end-of-episode term come from its forward; source={config.source!r} runs none"
                )


class RankSelectionEnv(gym.Env[dict[str, np.ndarray], Any]):
    r"""Choose, layer by layer and segment by segment, the rank of a transformer's attention.

    ## Description
    An episode is one document.  The document is cut into segments of ``segment_len`` tokens; each
    step decides the rank at which one segment's attention in one layer is computed, in layer-major
    order ``(0, 0), (0, 1), ..., (1, 0), ...``.  Closed loop (the default for model sources,
    ``episode.py``): the model runs layer by layer with the ranks chosen so far, so layer l's q, k,
    v are those that the ranks of layers 0..l-1 produce, as in a deployed model.  Open loop
    (``closed_loop=False``; the synthetic source): every layer's q, k, v come from the exact model,
    analysed once per document and cached.
    With ``workload="decode"`` (causal models) the first part of the document is an exact prompt
    and the segments are windows of decoded tokens after it, each costed per token over the cache.
    The low-rank attention really is computed from rank-r factors by the configured method
    (``attention/methods/``; ``"svd"``: truncated SVDs of the segment's Q and of K;
    ``"shared_key"``: Q and K projected on K's top-r right singular vectors; ``"calibrated"``: Q, K
    and V projected on fixed per-layer bases fitted on training documents, nothing decomposed per
    segment; ``"loki"``: rank-r scores on the calibrated key basis choose each query's top
    ``loki_keys`` fraction of keys, and exact attention runs over those, a decode method with no
    perturbation bound, so it needs ``compress_values=False, safety=False``), segment by segment
    as the workload presents them (``attention/workload.py``), and compared with exact attention.

    ## Action Space
    ``Discrete(R)``: index into the rank grid ``ranks`` (default ``head_dim/8, ..., head_dim``), one
    rank for all heads of the layer.  With ``per_head=True``: ``MultiDiscrete([R] * H)``, one per
    head.  The last index is full rank (exact attention).

    ## Observation Space
    ``Dict`` (H query heads, d head dim, R ranks, relative bounds given as log1p of the bound).
    Everything in it is deployable: computed from the segment's q, k, v, the method's factors, the
    cost model and earlier decisions, never from the exact attention output or future tokens.
    Bounds are relative to the deployable output scale s = sqrt(T mean_j ||v_j||^2) (the output
    norm of evenly spread attention, ``analysis.RelativeBounds``); ``privileged_observation=True``
    divides by the exact output's norm ||O||_F instead (analysis only).

    | key            | shape     | range           | meaning                                                  |
    |----------------|-----------|-----------------|----------------------------------------------------------|
    | q_spectrum     | (H, d)    | [0, 1]          | singular values of the segment's Q per head / largest     |
    | k_spectrum     | (H, d)    | [0, 1]          | singular values of the visible K per head / largest       |
    | tail_energy    | (H, R, 2) | [0, 1]          | ||X - X_r||_F / ||X||_F for X = Q, K (Eq. 8 tail energy)  |
    | band_energy    | (H, R, 2) | [0, 1]          | ||X_r - X_prev||_F / ||X||_F from the layer's previous rank|
    | output_bound   | (H, R)    | [0, log1p(clip)]| bound on ||O_r - O||_F / s per head (Eq. 9)              |
    | change_bound   | (H, R)    | [0, log1p(clip)]| bound on ||O_r - O_prev||_F / s per head                 |
    | layer_bound    | (R, 2)    | [0, log1p(clip)]| the two bounds above over all heads at one rank           |
    | cost           | (R,)      | [0, 10]         | cost ratio to exact attention (the cost model's), the     |
    |                |           |                 | observation's own features included (``feature_cost``)    |
    | context        | (8,)      | [0, 10]         | layer, segment, seq_len, prev rank (0 = none; / d),       |
    |                |           |                 | log1p(min(epsilon_t, clip)), progress, cost used (fraction |
    |                |           |                 | of the episode's exact cost), budget left (/ budget; 1 = none)|
    | action_mask    | (R,) or (H*R,) | {0, 1}     | 1 = safe rank (bound <= epsilon_t) that keeps the budget  |

    ``band_energy`` and ``change_bound`` are 0 on a layer's first segment (no previous rank).

    ## Rewards
    ``alpha * fidelity - beta * cost - gamma * perturbation`` (``reward.RewardWeights``); the signed terms are
    in ``info["reward_terms"]`` and sum to the reward.  Fidelity is measured against exact attention on
    the same inputs (in closed loop, the inputs the earlier ranks produced).  The last step also earns
    ``end_weight * end_fidelity`` (``end_weight`` defaults to 4 in closed loop, where the episode's own
    forward pass gives it, and 0 in open loop), with the episode's ranks applied in every layer of
    the model: for a causal language model exact perplexity / perplexity (1 = unchanged), for an
    encoder the cosine between its mean-pooled outputs with those ranks and with exact attention.
    With ``latency_budget=b`` the cost term is 0 (the budget replaces it): the objective is fidelity,
    the end term included, within the budget.

    ## Starting State
    A document drawn uniformly from the split with ``self.np_random`` (or
    ``options={"document": i}``); the first step is layer 0, segment 0.

    ## Episode End
    Terminates after the last segment of the last layer (``n_layers * n_segments`` steps; at most
    ``max_steps``).  The registered ``DRRL-v0`` also truncates at ``max_episode_steps``, set for
    the default configuration (24); a configuration with longer episodes fails at ``reset`` with
    the value to pass (``registration.EpisodeLengthCheck``) instead of being cut short.

    ## Safety and budget
    With ``safety=True`` ranks whose (deployable) bound exceeds the adaptive threshold epsilon_t
    (``safety.py``) are masked (``action_masks()``, ``info["action_mask"]``).  With
    ``latency_budget=b`` ranks after which no plan could end the episode within b of exact
    attention's cost are masked too (where no safe rank keeps the budget, the highest rank that
    does is allowed), so ``info["budget_used"]`` never exceeds b.  A document whose cheapest plan
    costs more than b plays under that plan's cost instead (``reset``'s info: ``budget``, the
    episode's, and ``budget_clamped``), so no document fails mid-run.  A masked action is replaced
    by the smallest allowed rank above it (or the largest below, where none is above) and
    ``info["action_replaced"]`` says so.

    ## Info
    ``reset`` gives ``document`` (name), ``n_steps``, ``action_mask``, ``budget`` (the episode's latency
    budget, None without one) and ``budget_clamped``.  ``step`` gives:

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
    | cost_ratio         | the cost model's cost / exact attention's (the reward's cost; features in)|
    | flop_ratio         | FLOPs / exact attention's FLOPs (the observation's features included)     |
    | perturbation_bound | bound on the relative output change from the layer's previous rank        |
    | output_bound       | bound on the relative output change from full rank                        |
    | budget_used        | episode's attention cost so far / exact's (FLOP-weighted); <= the budget  |
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
      gained a validation split; measured costs now include the factors' upkeep.  The deployable MDP:
      closed loop by default for model sources (``closed_loop``), bounds and mask relative to the
      deployable value scale (``privileged_observation`` restores the exact-output scale), default
      thresholds epsilon 125 in [60, 250] (were 300 in [150, 600] on the old scale), the end term on
      by default in closed loop, ``latency_budget``, two more context fields (cost used, budget
      left), and every step charged its observation's features (``feature_cost``; in decode once per
      window, not per token).  The ``loki`` method and its ``loki_keys`` option were added.
      ``closed_loop=False, privileged_observation=True, feature_cost=False, epsilon=300,
      epsilon_min=150, epsilon_max=600`` reproduces the first version's episodes
      (``tests/test_reproduction.py``).)
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode={render_mode!r} is not supported; use None or 'ansi'")
        self.render_mode = render_mode
        self.config = cfg = make_config(**kwargs)
        check_extensions(cfg)
        self.device = runtime_device(cfg)
        self.source = make_source(cfg, self.device)
        spec = self.source.spec
        self.ranks: tuple[int, ...] = cfg.rank_grid(spec.head_dim)
        self.cost_model = make_cost_model(
            cfg.cost_model, self.device, cfg.dtype, cache_root(cfg.cache_dir), cfg.profile_refresh
        )
        longest, limit = cfg.target_seq_len or spec.max_seq_len, self.cost_model.max_key_len
        if limit is not None and longest > limit:
            raise ValueError(
                f"cost_model={cfg.cost_model!r} measures key lengths up to {limit}; this configuration "
                f"needs {longest}; use cost_model='flops' or a shorter target_seq_len"
            )
        n_ranks, n_heads = len(self.ranks), spec.n_heads
        self.action_space = spaces.MultiDiscrete([n_ranks] * n_heads) if cfg.per_head else spaces.Discrete(n_ranks)
        mask_shape = (n_heads * n_ranks,) if cfg.per_head else (n_ranks,)
        self.observation_space = observation_space(n_heads, spec.head_dim, n_ranks, cfg.bound_clip, mask_shape)
        if cfg.workload == "decode" and not spec.causal:
            raise ValueError(
                f"workload='decode' needs a causal model; {cfg.model!r} attends both ways (use workload='prefill')"
            )
        self.documents = DocumentStore(cfg, self.source, self.ranks, self.cost_model)
        self.max_steps = spec.n_layers * len(self.documents.workload.segments(spec.max_seq_len))
        self.weights = RewardWeights(cfg.alpha, 0.0 if cfg.latency_budget is not None else cfg.beta, cfg.gamma)
        self._doc: int | None = None
        self._episode: Episode | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.spec is not None and not self.cost_model.deterministic and not self.spec.nondeterministic:
            self.spec = dataclasses.replace(self.spec, nondeterministic=True)  # measured time in the reward
        self._doc = choose_document(options, len(self.source.document_names), self.np_random)
        if self._episode is not None:
            self._episode.close()
        self._episode = (ClosedLoop if self.config.closed else OpenLoop)(self.documents, self._doc)
        self._data = self._episode.layer(0)  # the current layer's data (Ly = 1)
        spec = self.source.spec
        self._n_segments = self._data.analysis.n_segments
        self._n_steps = spec.n_layers * self._n_segments
        self._t, self._prev, self._spent, self._used = 0, None, 0.0, 0.0
        self._episode_ranks = np.full((spec.n_layers, self._n_segments), float(spec.head_dim))
        self._layer_choices = np.zeros((self._n_segments, spec.n_heads), dtype=np.int64)  # (S, H) rank indices
        budget = self.config.latency_budget
        cheapest = float(self._data.exact_share @ self._data.costs.min(-1))  # every layer alike
        # a document whose cheapest plan costs more than the budget plays at that plan's cost (said in info)
        self._budget = None if budget is None else max(budget, cheapest)
        self._update_step_state()
        return self._observation(), {
            "document": self.source.document_names[self._doc],
            "n_steps": self._n_steps,
            "action_mask": self._mask.copy(),
            "budget": self._budget,
            "budget_clamped": budget is not None and cheapest > budget,
        }

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        if self._doc is None or self._t >= self._n_steps:
            raise RuntimeError(
                "call reset() before step()" if self._doc is None else "the episode has ended; call reset()"
            )
        given = np.asarray(action)
        if given.dtype.kind not in "iu" or not self.action_space.contains(
            given.astype(np.int64) if self.config.per_head else action
        ):
            raise ValueError(f"action {action!r} is not in the action space {self.action_space} (integers only)")
        requested = np.broadcast_to(given.astype(np.int64), (self.source.spec.n_heads,)).copy()  # (H,)
        reward, info, chosen = self._outcome(requested)
        layer, segment, self._spent = info["layer"], info["segment"], self._spent + info["output_bound"]
        self._used += float(self._data.exact_share[segment] * self._data.costs[segment, chosen].mean())
        info["budget_used"] = self._used / self.source.spec.n_layers
        self._episode_ranks[layer, segment] = np.mean(info["rank"])
        self._layer_choices[segment] = chosen
        self._prev = chosen if segment + 1 < self._n_segments else None
        self._t += 1
        terminated = self._t == self._n_steps
        if segment + 1 == self._n_segments:  # the layer is decided: the model runs on (closed loop)
            self._episode.decide(layer, self._layer_choices.copy())
            if not terminated:
                self._data = self._episode.layer(layer + 1)
        if terminated:
            weight = self.config.end_term_weight
            if weight > 0:
                info.update(self._episode.end_info(self._episode_ranks))
                info["reward_terms"]["end_fidelity"] = weight * info["end_fidelity"]
                reward += info["reward_terms"]["end_fidelity"]
            self._episode.close()
        else:
            self._update_step_state()
        info["action_mask"] = self._mask.copy()
        return self._observation(), reward, terminated, False, info

    def _outcome(self, requested: np.ndarray) -> tuple[float, dict[str, Any], np.ndarray]:
        """Reward, step info and the rank indices taken (H,) after safety, for ``requested`` (H,); changes no state."""
        cfg, data = self.config, self._data
        layer, segment = divmod(self._t, self._n_segments)
        constrained = cfg.safety or cfg.latency_budget is not None
        chosen = (
            nearest_safe(requested, self._mask.reshape(len(requested), -1) if cfg.per_head else self._mask)
            if constrained
            else requested
        )
        error = output_error(data.analysis, 0, segment, chosen)
        fidelity, cost = fidelity_value(error, cfg.fidelity_metric), float(data.costs[segment, chosen].mean())
        perturbation = 0.0 if self._prev is None else data.bounds.layer_change(0, segment, self._prev, chosen)
        terms = self.weights.terms(fidelity, cost, perturbation)
        return (
            float(sum(terms.values())),
            {
                "document": self.source.document_names[self._doc],
                "layer": layer,
                "segment": segment,
                "rank": self._ranks_of(chosen),
                "requested_rank": self._ranks_of(requested),
                "action_replaced": bool((chosen != requested).any()),
                "epsilon": self._epsilon,
                "fidelity": error.cosine,
                "relative_error": error.relative_error,
                "reward_fidelity": fidelity,
                "cost_ratio": cost,
                "flop_ratio": float(data.flops[segment, chosen].mean()),
                "perturbation_bound": perturbation,
                "output_bound": data.bounds.layer_change(0, segment, chosen, np.full_like(chosen, len(self.ranks) - 1)),
                "reward_terms": terms,
            },
            chosen,
        )

    def candidate_rewards(self) -> np.ndarray:
        """(R,) each rank's reward (all heads alike) at this step, safety applied: reads the true
        attention, for oracles and analysis, not for deployable agents."""
        if self._doc is None or self._t >= self._n_steps:
            raise RuntimeError("candidate_rewards() needs a running episode; call reset()")
        heads = self.source.spec.n_heads
        return np.array([self._outcome(np.full(heads, i, dtype=np.int64))[0] for i in range(len(self.ranks))])

    def close(self) -> None:
        if self._episode is not None:
            self._episode.close()
            self._episode = None

    @property
    def decision(self) -> tuple[int, int, int]:
        """(document index, layer, segment) of the step about to be taken."""
        if self._doc is None or self._t >= self._n_steps:
            raise RuntimeError("no decision is pending; call reset()")
        return (self._doc, *divmod(self._t, self._n_segments))

    def action_masks(self) -> np.ndarray:
        """Boolean mask of safe actions for the current step (sb3-contrib ``MaskablePPO``)."""
        return self._mask.astype(bool).copy()

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._doc is None:
            return None
        layer, segment = divmod(min(self._t, self._n_steps - 1), self._n_segments)
        safe = [r for r, ok in zip(self.ranks, self._mask[-len(self.ranks) :]) if ok]
        return (
            f"{self.source.document_names[self._doc]} step {self._t}/{self._n_steps} "
            f"layer {layer} segment {segment} epsilon {self._epsilon:.3g} safe ranks {safe}"
        )

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
        """Threshold and mask for the step about to be taken: safe ranks (bound <= epsilon_t), and
        under a latency budget the ranks that keep it; where none is both, the highest rank that
        keeps the budget."""
        cfg, data = self.config, self._data
        layer, segment = divmod(self._t, self._n_segments)
        self._epsilon = adaptive_epsilon(
            cfg.epsilon, cfg.epsilon_min, cfg.epsilon_max, self._n_steps, self._t, self._spent
        )
        threshold = self._epsilon if cfg.safety else np.inf
        bounds = data.bounds
        pairs = bounds.head_pairs[0, segment, ..., -1] if cfg.per_head else bounds.layer_pairs[0, segment, :, -1]
        mask = safe_mask(pairs, threshold)
        if self._budget is not None:
            n_layers, cheapest = self.source.spec.n_layers, data.exact_share * data.costs.min(-1)  # (S,)
            future = cheapest[segment + 1 :].sum() + (n_layers - layer - 1) * cheapest.sum()
            feasible = budget_feasible(
                self._used / n_layers,
                data.exact_share[segment] * data.costs[segment] / n_layers,
                future / n_layers,
                self._budget,
            )
            mask = mask & feasible
            if not mask.any():
                mask[np.flatnonzero(feasible)[-1]] = True
        self._mask = mask.reshape(-1)

    def _observation(self) -> dict[str, np.ndarray]:
        spec, data, budget = self.source.spec, self._data, self._budget
        layer, segment = divmod(min(self._t, self._n_steps - 1), self._n_segments)
        prev_rank = 0.0 if self._prev is None else float(np.mean([self.ranks[i] for i in self._prev])) / spec.head_dim
        used = self._used / spec.n_layers
        context = context_vector(
            layer,
            spec.n_layers,
            segment,
            self._n_segments,
            data.analysis.seq_len,
            spec.max_seq_len,
            prev_rank,
            self._epsilon,
            self.config.bound_clip,
            self._t / self._n_steps,
            used,
            1.0 if budget is None else max(budget - used, 0.0) / budget,
        )
        return build_observation(
            data.analysis.q_spectrum[0, segment],
            data.analysis.k_spectrum[0, segment],
            data.bounds,
            segment,
            self._prev,
            data.costs[segment],
            context,
            self._mask,
        )
