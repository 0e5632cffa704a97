"""``drrl inspect``: spectra of one document and the smallest rank that keeps a given energy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from drrl_env.env import RankSelectionEnv  # noqa: E402


def minimal_ranks(spectrum: np.ndarray, energy: float) -> np.ndarray:
    """Smallest r with sum_{i<=r} sigma_i^2 >= energy * sum sigma_i^2.  spectrum (..., d) -> (...)."""
    power = spectrum.astype(np.float64) ** 2
    total = power.sum(-1, keepdims=True)
    kept = np.cumsum(power, -1) / np.where(total > 0, total, 1.0)
    return np.where(total[..., 0] > 0, (kept < energy - 1e-12).sum(-1) + 1, 0)


def inspect(env: RankSelectionEnv, document: int, energy: float, out: Path) -> list[Path]:
    """Writes ``spectra.png`` (mean normalized singular values of Q and K per layer) and
    ``minimal_ranks.png`` (smallest rank keeping ``energy`` of K's energy, per layer, head and segment)."""
    out.mkdir(parents=True, exist_ok=True)
    analysis = env.analysis(document)
    name = env.document_names()[document]
    n_layers, n_segments, n_heads, d = analysis.k_spectrum.shape
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, spectrum, label in ((axes[0], analysis.q_spectrum, "Q"), (axes[1], analysis.k_spectrum, "K")):
        for layer in range(n_layers):
            ax.semilogy(np.arange(1, d + 1), spectrum[layer].mean((0, 1)) + 1e-8, label=f"layer {layer}")
        ax.set_xlabel("singular value index")
        ax.set_title(f"{label}: sigma_i / sigma_1, mean over heads and segments")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(name)
    fig.tight_layout()
    spectra = out / "spectra.png"
    fig.savefig(spectra, dpi=110)
    plt.close(fig)

    ranks = minimal_ranks(analysis.k_spectrum, energy)  # (Ly, S, H)
    grid = ranks.transpose(0, 2, 1).reshape(n_layers * n_heads, n_segments)  # rows: layer-major, then head
    fig, ax = plt.subplots(figsize=(2 + 0.9 * n_segments, 1 + 0.13 * n_layers * n_heads))
    image = ax.imshow(grid, aspect="auto", cmap="magma", vmin=1, vmax=d)
    ax.set_yticks([layer * n_heads for layer in range(n_layers)], [f"layer {layer}" for layer in range(n_layers)])
    ax.set_xlabel("segment")
    ax.set_title(f"{name}: smallest rank keeping {energy:g} of K's energy (rows: heads)", fontsize=9)
    fig.colorbar(image, ax=ax, label="rank")
    fig.tight_layout()
    minimal = out / "minimal_ranks.png"
    fig.savefig(minimal, dpi=110)
    plt.close(fig)
    return [spectra, minimal]
