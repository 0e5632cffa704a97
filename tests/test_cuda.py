"""The CUDA path: skipped without a GPU; ``scripts/gpu_check.sh`` runs them on a lent one."""

import numpy as np
import pytest
import torch
from conftest import SYNTHETIC

from drrl_env.env import RankSelectionEnv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_profile_and_env(dtype, tmp_path):
    env = RankSelectionEnv(
        **SYNTHETIC, device="cuda", cost_model="profile", dtype=dtype, cache_dir=str(tmp_path), feature_cost=False
    )  # full rank then costs exactly exact attention
    obs, _ = env.reset(seed=0)
    assert np.isfinite(obs["cost"]).all() and obs["cost"][-1] == 1.0
    _, reward, _, _, _ = env.step(0)
    assert np.isfinite(reward)


def test_cuda_analysis_matches_cpu():
    """The same episode on both devices: observations and rewards agree to float32 round-off."""
    cpu = RankSelectionEnv(**SYNTHETIC, cache_dir=None)
    gpu = RankSelectionEnv(**SYNTHETIC, device="cuda", cache_dir=None)
    obs_cpu, _ = cpu.reset(seed=0, options={"document": 1})
    obs_gpu, _ = gpu.reset(seed=0, options={"document": 1})
    for key in ("q_spectrum", "k_spectrum", "tail_energy", "cost"):
        np.testing.assert_allclose(obs_gpu[key], obs_cpu[key], atol=1e-4)
    for action in (0, 2, len(cpu.ranks) - 1):
        reward_cpu = cpu.step(action)[1]
        reward_gpu = gpu.step(action)[1]
        assert reward_gpu == pytest.approx(reward_cpu, abs=1e-3)


def test_cuda_low_rank_forward(tiny_llama):
    """Full rank through the segment-wise forward reproduces the exact model on CUDA; a low-rank plan
    changes the output, and the attention time is measured on the device."""
    env = RankSelectionEnv(
        model=tiny_llama,
        corpus=["Low rank attention on a GPU. " * 20],
        split="all",
        segment_len=32,
        min_doc_tokens=16,
        device="cuda",
        cache_dir=None,
    )
    outputs = env.model_outputs(0)
    exact, seconds = outputs.pooled, outputs.attention_seconds
    ids = env.source.token_ids(0)[None].cuda()
    with torch.no_grad():
        reference = env.source.model(input_ids=ids, use_cache=False).last_hidden_state[0].mean(0)
    assert exact.is_cuda and seconds > 0
    torch.testing.assert_close(exact, reference, atol=1e-4, rtol=1e-4)
    ranks = np.full((env.source.spec.n_layers, env.analysis(0).n_segments), env.ranks[0])
    outputs = env.model_outputs(0, ranks)
    low, low_seconds = outputs.pooled, outputs.attention_seconds
    assert low_seconds > 0 and not torch.allclose(low, exact, atol=1e-4)


@pytest.mark.parametrize("method", ["calibrated", "loki"])
@pytest.mark.parametrize("queries", [1, 32])
def test_cuda_fixed_basis_methods_match_cpu(method, queries):
    """A decode step (one query) and a block of queries give the CPU's outputs on CUDA."""
    from drrl_env.attention.linalg import StreamingFactors
    from drrl_env.attention.methods import get_method

    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(6, queries, 16, generator=gen),
        torch.randn(2, 64, 16, generator=gen),
        torch.randn(2, 64, 16, generator=gen),
    )
    bases = get_method(method).timing_instance(2, 16, torch.device("cpu"), torch.float32).bases
    outputs = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        low_rank = get_method(method).set_bases(bases["keys"].to(device), bases["values"].to(device))
        keys, values = StreamingFactors(), StreamingFactors()
        keys.update(k.to(device))
        values.update(v.to(device))
        compress = low_rank.requires.get("compress_values", True)
        outputs.append(
            low_rank.attention(
                q.to(device),
                low_rank.factorize(keys, "keys", 0),
                v.to(device),
                0.25,
                None,
                4,
                v_factors=low_rank.factorize(values, "values", 0) if compress else None,
            )
        )
    torch.testing.assert_close(outputs[1].cpu(), outputs[0], atol=1e-4, rtol=1e-4)
