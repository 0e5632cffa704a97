"""Where an episode's layers get their inputs: open loop or closed loop.

Open loop (``closed_loop=False``): every layer's q, k, v come from the exact model; a document is
analysed once (all layers, every rank) and cached, so an episode only indexes tables.

Closed loop (the default for model sources): the model runs once per episode, layer by layer, and
each layer's attention output is the one the agent's ranks produce, so layer l + 1's q, k, v are
those a deployed model with those ranks would see.  The forward pass runs in a worker thread
(:class:`PausedForward`) that stops at each attention call: the episode analyses that layer's live
inputs (exact and low-rank attention of every segment at every rank, ``analysis.analyse``), the
agent decides the layer's segments one step at a time, and the layer's output at the chosen ranks
(from the same analysis) goes back to the model, which runs on to the next layer.  The last layer's
decision finishes the forward pass, whose outputs give the end-of-episode model-level fidelity with
no extra pass.  Layer 0's inputs do not depend on any decision: its analysis is kept per document.
The two threads never run at once (each waits for the other), so results are deterministic.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from drrl_env.documents import DocumentData, DocumentStore, model_level
from drrl_env.sources.base import LayerInputs, ModelOutputs


class Episode(ABC):
    """One document's layers, in order, as the environment plays them."""

    def __init__(self, store: DocumentStore, document: int) -> None:
        self.store, self.document = store, document

    @abstractmethod
    def layer(self, index: int) -> DocumentData:
        """Layer ``index``'s data (Ly = 1), layers asked in order 0, 1, ..."""

    def decide(self, index: int, rank_index: np.ndarray) -> None:
        """The ranks taken in layer ``index``: rank indices (S, H)."""

    @abstractmethod
    def end_info(self, ranks: np.ndarray) -> dict[str, float]:
        """The model-level info of the episode's ranks (Ly, S) (``documents.model_level``), after the last decision."""

    def close(self) -> None:
        """Releases what the episode holds (an unfinished closed-loop forward pass)."""


class OpenLoop(Episode):
    """Every layer's inputs from the exact model: slices of the document's cached analysis."""

    def __init__(self, store: DocumentStore, document: int) -> None:
        super().__init__(store, document)
        self.data = store.get(document)

    def layer(self, index: int) -> DocumentData:
        return self.data.layer(index)

    def end_info(self, ranks: np.ndarray) -> dict[str, float]:
        return self.store.end_info(self.document, ranks)  # one forward pass with the ranks


class ClosedLoop(Episode):
    """Each layer's inputs from the model run at the ranks chosen so far (module docstring)."""

    def __init__(self, store: DocumentStore, document: int) -> None:
        super().__init__(store, document)
        self.segments = store.segments(document)
        scored_from = store.workload.scored_from(self.segments)
        self._forward = PausedForward(lambda layer: store.source.steered_outputs(document, layer, scored_from))
        self._inputs: LayerInputs | None = None
        self._outputs: list[torch.Tensor] | None = None

    def layer(self, index: int) -> DocumentData:
        self._inputs = self._forward.next_layer()
        if index == 0:  # no decision before it: analysed once per document
            self._outputs = None
            return self.store.first_layer(self.document, self._inputs)
        self._outputs = []
        return self.store.layer(self._inputs, index, self._outputs)

    def decide(self, index: int, rank_index: np.ndarray) -> None:
        assert self._inputs is not None, "decide() follows layer() for the same index"
        output = self.store.layer_output(self._inputs, index, self.segments, rank_index, self._outputs)
        self._inputs, self._outputs = None, None
        self._forward.reply(output)

    def end_info(self, ranks: np.ndarray) -> dict[str, float]:
        return model_level(self.store.exact_outputs(self.document), self._forward.result())

    def close(self) -> None:
        self._forward.close()


class _Stop(Exception):
    """Raised inside the worker's attention call to abandon a forward pass."""


_STOP = object()


class PausedForward:
    """A forward pass run in a worker thread that hands each attention call's inputs to the caller
    and waits for the output: ``next_layer()`` -> :class:`LayerInputs`, ``reply(output)``, ...,
    ``result()`` -> :class:`ModelOutputs`.  ``close()`` abandons an unfinished pass.

    ``run(layer)`` runs the model with ``layer`` as its attention (``HFAttentionSource.steered_outputs``).
    """

    def __init__(self, run: Callable[[Callable[[LayerInputs], torch.Tensor]], ModelOutputs]) -> None:
        self._to_caller: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        self._to_model: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._main, args=(run,), daemon=True, name="drrl-closed-loop")
        self._thread.start()

    def _main(self, run: Callable[[Callable[[LayerInputs], torch.Tensor]], ModelOutputs]) -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                outputs = run(self._attention)
        except _Stop:
            return
        except BaseException as error:  # noqa: BLE001  (handed to the caller, raised there)
            self._to_caller.put(("error", error))
            return
        self._to_caller.put(("done", outputs))

    def _attention(self, inputs: LayerInputs) -> torch.Tensor:
        self._to_caller.put(("layer", inputs))
        output = self._to_model.get()
        if output is _STOP:
            raise _Stop
        return output

    def _receive(self, expected: str) -> Any:
        kind, value = self._to_caller.get()
        if kind == "error":
            raise RuntimeError("the closed-loop forward pass failed") from value
        if kind != expected:
            raise RuntimeError(
                f"the closed-loop forward pass gave {kind!r} where {expected!r} was expected: the "
                "model made a different number of attention calls than it has layers"
            )
        return value

    def next_layer(self) -> LayerInputs:
        return self._receive("layer")

    def reply(self, output: torch.Tensor) -> None:
        self._to_model.put(output)

    def result(self) -> ModelOutputs:
        outputs = self._receive("done")
        self._thread.join()
        return outputs

    def close(self) -> None:
        while self._thread.is_alive():  # waiting for an output, handing over inputs, or finishing
            try:
                self._to_model.put_nowait(_STOP)
            except queue.Full:
                pass
            try:
                self._to_caller.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.01)
