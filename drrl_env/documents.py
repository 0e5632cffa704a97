"""What the MDP needs of one document: its analysis (cached in memory and on disk), its bounds,
and the cost and FLOP ratio of every rank at every segment."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from drrl_env.analysis import DocumentAnalysis, RelativeBounds, analyse
from drrl_env.attention.methods import method_for
from drrl_env.attention.workload import make_workload
from drrl_env.cache import AnalysisCache, cache_root
from drrl_env.calibration import calibrate
from drrl_env.config import EnvConfig
from drrl_env.costs import AttentionShape, CostModel
from drrl_env.costs.counting import attention_flops, feature_flop_ratio, flop_ratios
from drrl_env.costs.latency import LatencyProfile, Timing, summarize
from drrl_env.sources import make_source
from drrl_env.sources.base import AttentionSource, AttentionTrace, LayerInputs, LowRankPlan, ModelOutputs


@dataclass(frozen=True)
class DocumentData:
    """A document's analysis with what the env derives from it: bounds, costs and FLOP ratios (S, R)
    to exact attention (with ``feature_cost``, each rank's includes the observation's features,
    so full rank costs 1 + their share), and each segment's share of one layer's exact attention
    FLOPs, ``exact_share`` (S,), summing to 1 (a latency budget weighs the segments' costs by it)."""

    analysis: DocumentAnalysis
    bounds: RelativeBounds
    costs: np.ndarray
    flops: np.ndarray
    exact_share: np.ndarray

    def layer(self, index: int) -> DocumentData:
        """Layer ``index`` alone (Ly = 1)."""
        return dataclasses.replace(self, analysis=self.analysis.layer(index), bounds=self.bounds.layer(index))


class DocumentStore:
    """Analyses the documents of ``source`` under ``config`` on first use and keeps them."""

    def __init__(
        self, config: EnvConfig, source: AttentionSource, ranks: tuple[int, ...], cost_model: CostModel
    ) -> None:
        self.config, self.source, self.ranks, self.cost_model = config, source, ranks, cost_model
        self.workload = make_workload(config.workload, config.segment_len, config.decode_prompt)
        self.method = method_for(config.method, config)
        root = cache_root(config.cache_dir)
        if self.method.needs_calibration:
            training = source if config.split == "train" else make_source(config.replace(split="train"), source.device)
            calibrate(self.method, training, config.calibration_documents, root, source.device)
        options = {name: getattr(config, name) for name in EnvConfig.analysis_fields()}
        if self.method.options():
            options["method_options"] = self.method.options()
        if self.method.state_key():
            options["method_state"] = self.method.state_key()
        self.disk = None if root is None else AnalysisCache(root, {**options, "ranks": ranks})
        self._memory: dict[int, DocumentData] = {}
        self._first_layers: dict[int, DocumentData] = {}  # closed loop: layer 0 of each document
        self._exact_outputs: dict[int, ModelOutputs] = {}

    def get(self, index: int) -> DocumentData:
        if index in self._memory:
            return self._memory[index]
        cfg = self.config
        key = self.source.document_key(index)
        analysis = self.disk.get(key) if self.disk else None
        if analysis is None:
            analysis = analyse(self.source.trace(index), self.workload, self.ranks, self.method, cfg.compress_values)
            if self.disk:
                self.disk.put(key, analysis)
        entry = self._derived(analysis)
        if cfg.cache_documents:
            self._memory[index] = entry
        return entry

    def segments(self, index: int) -> list[tuple[int, int]]:
        """The decisions' segments of document ``index`` (those of its analysis), from its length alone."""
        return self.workload.segments(self.source.seq_len(index))

    def first_layer(self, index: int, inputs: LayerInputs) -> DocumentData:
        """Layer 0's data of document ``index`` from its inputs, which no decision changes: analysed
        once per document and kept (with ``cache_documents``), so a closed-loop episode never
        analyses a layer it does not play."""
        if index in self._first_layers:
            return self._first_layers[index]
        data = self.layer(inputs, 0)
        if self.config.cache_documents:
            self._first_layers[index] = data
        return data

    def layer(self, inputs: LayerInputs, layer: int, outputs: list[torch.Tensor] | None = None) -> DocumentData:
        """One layer's data from its live inputs (a closed-loop episode: the q, k, v that the ranks
        chosen for the layers before it produced; Ly = 1).  ``outputs`` receives the low-rank outputs
        of every segment at every rank (``analysis.analyse``)."""
        trace = AttentionTrace(
            queries=inputs.query[None].float(),
            keys=inputs.key[None].float(),
            values=inputs.value[None].float(),
            scaling=torch.tensor([inputs.scaling]),
            causal=inputs.causal,
        )  # (1, H, L, d), (1, H_kv, L, d)
        analysis = analyse(
            trace, self.workload, self.ranks, self.method, self.config.compress_values, layer=layer, outputs=outputs
        )
        return self._derived(analysis)

    def layer_output(
        self,
        inputs: LayerInputs,
        layer: int,
        segments: list[tuple[int, int]],
        rank_index: np.ndarray,
        outputs: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The layer's attention output (H, L, d) with head h of decided segment s at rank index
        ``rank_index[s, h]`` (S, H), the rest of the sequence (a decode prompt) exact: taken from
        ``outputs`` (:meth:`layer`'s) where given, else computed through the same segment views."""
        d = inputs.query.shape[-1]
        ranks = np.asarray(self.ranks)[rank_index]  # (S, H)
        plan_segments, _ = self.workload.forward_plan(segments, np.zeros((1, len(segments)), dtype=np.int64), d)
        out = torch.empty_like(inputs.query)
        heads = torch.arange(out.shape[0])
        views = self.workload.views(
            inputs.query, inputs.key, inputs.value, inputs.causal, self.method, layer=layer, segments=plan_segments
        )
        for view in views:
            decided = segments.index((view.start, view.stop)) if (view.start, view.stop) in segments else None
            if decided is None:
                out[:, view.start : view.stop] = view.attention(d, inputs.scaling, self.config.compress_values)
            elif outputs is not None:
                index = torch.as_tensor(rank_index[decided])
                out[:, view.start : view.stop] = outputs[decided][index, 0, heads]  # (R, 1, H, T, d) -> (H, T, d)
            else:
                for rank in np.unique(ranks[decided]):
                    chosen = torch.as_tensor(ranks[decided] == rank)
                    out[chosen, view.start : view.stop] = view.attention(
                        int(rank), inputs.scaling, self.config.compress_values
                    )[chosen]
        return out

    def _derived(self, analysis: DocumentAnalysis) -> DocumentData:
        """The bounds, costs, FLOP ratios and exact-cost shares of ``analysis``'s segments."""
        cfg, spec = self.config, self.source.spec
        problems = [self.workload.cost_problem(a, b, int(n)) for (a, b), n in zip(analysis.segments, analysis.key_lens)]
        shapes = [self.cost_shape(t, self._cost_key_len(n, analysis.seq_len)) for t, n in problems]
        exact = np.array(
            [
                attention_flops(
                    self.method,
                    spec.head_dim,
                    query_len=s.query_len,
                    key_len=s.key_len,
                    head_dim=spec.head_dim,
                    n_heads=spec.n_heads,
                    n_kv_heads=spec.n_kv_heads,
                    compress_values=cfg.compress_values,
                    causal=spec.causal,
                )
                for s in shapes
            ],
            dtype=np.float64,
        )
        # the features are computed once per decision, over the segment's T queries and N keys: their share of
        # the segment's exact attention (in decode, of the T tokens' attention, so a per-token cost carries 1/T)
        decided = [
            self.cost_shape(b - a, self._cost_key_len(int(n), analysis.seq_len))
            for (a, b), n in zip(analysis.segments, analysis.key_lens)
        ]
        features = np.array(
            [[self.cost_model.feature_ratio(s), feature_flop_ratio(s)] if cfg.feature_cost else [0, 0] for s in decided]
        )  # (S, 2): cost and FLOP share of the observation's features
        return DocumentData(
            analysis,
            RelativeBounds.of(analysis, cfg.bound_clip, cfg.privileged_observation),
            costs=np.stack([self.cost_model.cost_ratios(s) for s in shapes]) + features[:, :1],
            flops=np.stack([flop_ratios(s) for s in shapes]) + features[:, 1:],
            exact_share=exact / exact.sum(),
        )

    def cost_shape(self, query_len: int, key_len: int, method: str | None = None) -> AttentionShape:
        """The attention problem whose cost a segment of ``query_len`` queries and ``key_len`` keys
        reports; its kind of call (``AttentionShape.segment_len``) has the workload's queries per call
        (``segment_len`` in prefill, 1 in decode), which keys the latency profile.  ``method``: another
        registered method than the env's (``drrl profile``), with its options read from the config and
        value compression as it requires."""
        cfg, spec = self.config, self.source.spec
        low_rank = self.method if method is None else method_for(method, cfg)
        call, _ = self.workload.cost_problem(0, cfg.segment_len, cfg.segment_len)
        compress = low_rank.requires.get("compress_values", cfg.compress_values)
        return AttentionShape(
            low_rank,
            self.ranks,
            query_len,
            key_len,
            spec.head_dim,
            spec.n_heads,
            spec.n_kv_heads,
            spec.causal,
            compress,
            call,
            cfg.segment_len,
        )

    def _cost_key_len(self, key_len: int, seq_len: int) -> int:
        """Keys a segment sees at the length whose cost is reported (``target_seq_len``, if set)."""
        target = self.config.target_seq_len
        if target is None:
            return key_len
        return target if not self.source.spec.causal else max(1, round(key_len * target / seq_len))

    def model_outputs(self, index: int, ranks: np.ndarray | None = None) -> ModelOutputs:
        """The model's outputs on document ``index`` with ``ranks`` (n_layers, n_segments) applied in
        every attention call (None = exact attention, through the same segment-wise code)."""
        decided, spec = self.segments(index), self.source.spec
        if ranks is None:
            ranks = np.full((spec.n_layers, len(decided)), spec.head_dim)
        segments, ranks = self.workload.forward_plan(decided, np.asarray(ranks), spec.head_dim)
        plan = LowRankPlan(
            ranks,
            segments,
            self.workload,
            self.method,
            self.config.compress_values,
            scored_from=self.workload.scored_from(decided),
        )
        return self.source.model_outputs(index, plan)

    def exact_outputs(self, index: int) -> ModelOutputs:
        """:meth:`model_outputs` with exact attention, computed once per document."""
        if index not in self._exact_outputs:
            self._exact_outputs[index] = self.model_outputs(index)
        return self._exact_outputs[index]

    def end_info(self, index: int, ranks: np.ndarray) -> dict[str, float]:
        """The last step's model-level info for ``ranks`` on document ``index`` (:func:`model_level`)."""
        return model_level(self.exact_outputs(index), self.model_outputs(index, ranks))

    def attention_latency(self, index: int, ranks: np.ndarray, rounds: int = 5, attempts: int = 3) -> Timing:
        """Attention time of the model forward with ``ranks`` / with exact attention, on document ``index``:
        one warm-up of each, then ``rounds`` rounds that run both, the ratio taken within each round;
        while the ratios spread more than ``LatencyProfile.MAX_SPREAD``, ``rounds`` more (``attempts``
        batches at most).  The median ratio with its spread (IQR / median) and the number of rounds."""
        self.model_outputs(index), self.model_outputs(index, ranks)  # warm-up
        ratios: list[float] = []
        for _ in range(attempts):
            ratios += [
                self.model_outputs(index, ranks).attention_seconds / self.model_outputs(index).attention_seconds
                for _ in range(rounds)
            ]
            timing = summarize(ratios)
            if timing.spread <= LatencyProfile.MAX_SPREAD:
                break
        return timing


def model_level(exact: ModelOutputs, low: ModelOutputs) -> dict[str, float]:
    """How close the low-rank model's outputs are to the exact model's: ``end_fidelity`` = exact /
    low-rank perplexity for a causal language model (1 = unchanged; lower = worse), with
    ``end_perplexity`` and ``exact_perplexity``; else the cosine of the mean-pooled outputs (the
    sentence embedding for MiniLM)."""
    if low.perplexity is not None:
        return {
            "end_fidelity": exact.perplexity / low.perplexity,
            "end_perplexity": low.perplexity,
            "exact_perplexity": exact.perplexity,
        }
    return {"end_fidelity": float(torch.nn.functional.cosine_similarity(low.pooled, exact.pooled, dim=0))}
