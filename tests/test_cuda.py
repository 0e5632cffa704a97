"""The CUDA path: skipped without a GPU; ``scripts/gpu_check.sh`` runs them on a lent one."""

import numpy as np
import pytest
import torch

from drrl_env.env import RankSelectionEnv

from conftest import SYNTHETIC

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_profile_and_env(dtype, tmp_path):
    env = RankSelectionEnv(**SYNTHETIC, device="cuda", cost_model="profile", dtype=dtype, cache_dir=str(tmp_path))
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
    env = RankSelectionEnv(model=tiny_llama, corpus=["Low rank attention on a GPU. " * 20], split="all",
                           segment_len=32, min_doc_tokens=16, device="cuda", cache_dir=None)
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
