"""Plans for DRRL-KV-v0 searched in the fast mode (``drrl_env/kv/fast.py``): the hindsight references
of the headroom measurement and the static plans.  Callers verify what they find in the closed loop.

- :func:`best_dynamic`: reference (c), levels per block and layer chosen in hindsight for one
  document (privileged: it uses the document's future), the knapsack

      min sum_{s, l} c[s, l, k, v]   subject to   sum_{s, l} bytes[s, k, v] <= free

  solved by Lagrangian relaxation (bisection on the price of a byte, each (s, l) then picks its
  cheapest option on its own) and a greedy fill of the bytes the price left unused.
- :func:`best_static`: one request (2, Ly) for every block, executed through the budget's projection
  as the environment executes it; coordinate descent over (kind, layer) from several starts.  Over
  several documents it is reference (a) (deployable when the documents are training ones); over one,
  reference (b).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from drrl_env.kv.fast import FastDocument


def _options(doc: FastDocument) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (keys, values) option of every (block, layer): costs (steps, Ly, O), bytes (steps, O) and the
    options' levels (O, 2); option 0 is evict."""
    levels = len(doc.level_bytes[0, 0])
    stored = [r for r in range(levels) if r != doc.evict]
    pairs = np.array([(doc.evict, doc.evict)] + [(k, v) for k in stored for v in stored])  # (O, 2)
    cost = doc.effects[:, :, 0, pairs[:, 0]] + doc.effects[:, :, 1, pairs[:, 1]]  # (steps, Ly, O)
    cost[:, :, 0] = doc.effects[:, :, 0, doc.evict]
    size = doc.level_bytes[:, 0, pairs[:, 0]] + doc.level_bytes[:, 1, pairs[:, 1]]  # (steps, O)
    size[:, 0] = 0
    return cost, size, pairs


def best_dynamic(doc: FastDocument, iterations: int = 60) -> np.ndarray:
    """Reference (c) for ``doc``: executed levels (steps, 2, Ly) within its budget (module docstring)."""
    cost, size, pairs = _options(doc)
    sizes = np.broadcast_to(size[:, None, :], cost.shape)

    def choose(price: float) -> np.ndarray:
        return np.argmin(cost + price * sizes, axis=-1)  # (steps, Ly)

    def spent(choice: np.ndarray) -> int:
        return int(np.take_along_axis(sizes, choice[..., None], -1).sum())

    low, high = 0.0, 1.0
    while spent(choose(high)) > doc.free:
        high *= 4
    if spent(choose(low)) > doc.free:
        for _ in range(iterations):
            middle = (low + high) / 2
            low, high = (middle, high) if spent(choose(middle)) > doc.free else (low, middle)
        choice = choose(high)
    else:
        choice = choose(low)
    choice = _fill(choice, cost, sizes, doc.free - spent(choice))
    return np.transpose(pairs[choice], (0, 2, 1))  # (steps, Ly, 2) -> (steps, 2, Ly)


def _fill(choice: np.ndarray, cost: np.ndarray, sizes: np.ndarray, left: int) -> np.ndarray:
    """Greedy moves to options that cost less for the bytes added, best saving per byte first, while they fit."""
    choice = choice.copy()
    while True:
        here_cost = np.take_along_axis(cost, choice[..., None], -1)
        here_size = np.take_along_axis(sizes, choice[..., None], -1)
        added, saved = sizes - here_size, here_cost - cost  # (steps, Ly, O)
        ok = (added > 0) & (added <= left) & (saved > 0)
        if not ok.any():
            return choice
        rate = np.where(ok, saved / np.maximum(added, 1), -np.inf)
        s, layer, option = np.unravel_index(int(np.argmax(rate)), rate.shape)
        left -= int(added[s, layer, option])
        choice[s, layer] = option


def best_static(docs: Sequence[FastDocument], sweeps: int = 4, starts: Sequence[np.ndarray] = ()) -> np.ndarray:
    """The request (2, Ly) whose summed predicted excess over ``docs`` is least (module docstring); ``starts``
    adds starting requests to the uniform ones."""
    n_layers, levels = docs[0].n_layers, docs[0].effects.shape[-1]

    def score(request: np.ndarray) -> float:
        return sum(doc.predict(request) for doc in docs)

    candidates = [np.full((2, n_layers), r, dtype=np.int64) for r in range(levels)] + [np.asarray(s) for s in starts]
    best, best_score = None, np.inf
    for start in candidates:
        request, current = start.copy(), score(start)
        for _ in range(sweeps):
            improved = False
            for kind in (0, 1):
                for layer in range(n_layers):
                    for r in range(levels):
                        if r == request[kind, layer]:
                            continue
                        trial = request.copy()
                        trial[kind, layer] = r
                        value = score(trial)
                        if value < current - 1e-9:
                            request, current, improved = trial, value, True
            if not improved:
                break
        if current < best_score:
            best, best_score = request, current
    return best


def random_plan(rng: np.random.Generator, steps: int, n_layers: int, n_levels: int, evict: int) -> np.ndarray:
    """Executed levels (steps, 2, Ly) drawn for fitting and checking the fast mode: each layer is left exact
    with probability 1/2 (so that layers' effects can be told apart), else gets its own level distribution
    (Dirichlet(0.5) over the ladder) from which each block and kind draws; a layer whose keys or values are
    evicted is evicted whole, as the projection would."""
    probabilities = rng.dirichlet(np.full(n_levels, 0.5), size=n_layers)  # (Ly, R)
    exact = rng.random(n_layers) < 0.5
    probabilities[exact] = np.eye(n_levels)[-1]
    cumulative = probabilities.cumsum(-1)
    draws = rng.random((steps, 2, n_layers, 1))
    levels = (draws > cumulative[None, None]).sum(-1).clip(max=n_levels - 1)  # (steps, 2, Ly)
    return np.where((levels == evict).any(1, keepdims=True), evict, levels)


def plan_player(plan: np.ndarray):
    """An ``Act`` (``drrl_env.play``) that requests ``plan`` (steps, 2, Ly), one block per step."""
    steps = iter(plan)
    return lambda obs, env: next(steps).reshape(-1)
