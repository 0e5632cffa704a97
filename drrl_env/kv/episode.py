"""One document decoded block by block over a ``CompressedKVCache``: the environment's loop, and its
exact reference's.

Order of events (B = block, W = window, positions 0-based):

1. ``prefill``: the prompt, positions [0, W + B), runs exactly, unscored.  Block 0 has left the window.
2. Each step: the due block (the oldest undecided, now older than the last W tokens) is stored at the
   chosen levels (``CompressedKVCache.store``), then ``decode`` feeds the next (up to) B input tokens
   teacher-forced; they attend to the sinks, the stored blocks at their levels, the window and
   themselves, through every layer.  The step's loss is the next-token NLL of the tokens those inputs
   predict, positions [P + 1, P + n + 1): all of them depend on the decision just taken.
3. The document ends when its last token has been predicted; the last block may be short.

Inputs are positions 0..L-2 and targets 1..L-1, so a document of L tokens has
ceil((L - 1 - W - B) / B) steps.
"""

from __future__ import annotations

import torch

from drrl_env.kv.cache import CompressedKVCache


class KVEpisode:
    """Decodes ``token_ids`` (L,) with ``model`` over ``cache``; see the module docstring."""

    def __init__(self, model: torch.nn.Module, token_ids: torch.Tensor, cache: CompressedKVCache) -> None:
        self.model, self.cache = model, cache
        self.ids = token_ids.to(next(model.parameters()).device)[None]  # (1, L)
        self.prompt = cache.window + cache.block
        if self.ids.shape[1] < self.prompt + 2:
            raise ValueError(
                f"a document of {self.ids.shape[1]} tokens is shorter than the prompt (window + block = "
                f"{self.prompt}) plus 2; raise min_doc_tokens or shorten window and block"
            )
        self.position = 0

    @property
    def done(self) -> bool:
        return self.position >= self.ids.shape[1] - 1

    @torch.no_grad()
    def _forward(self, stop: int) -> torch.Tensor:
        """Runs inputs [position, stop) and returns their next-token NLL (stop - position,)."""
        inputs = self.ids[:, self.position : stop]
        logits = self.model(input_ids=inputs, cache=self.cache, use_cache=True, logits_to_keep=0).logits[
            0
        ]  # (n, vocab)
        nll = torch.nn.functional.cross_entropy(
            logits.float(), self.ids[0, self.position + 1 : stop + 1], reduction="none"
        )
        self.position = stop
        return nll

    def prefill(self) -> None:
        self._forward(self.prompt)

    def decode(self) -> torch.Tensor:
        """The next block's NLL per predicted token (n,); a block must have been stored first."""
        if self.done:
            raise RuntimeError("the document is fully decoded")
        if self.cache.due_block() is not None:
            raise RuntimeError(f"block {self.cache.due_block()} has left the window undecided; store it first")
        return self._forward(min(self.position + self.cache.block, self.ids.shape[1] - 1))
