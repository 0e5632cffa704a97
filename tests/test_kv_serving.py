"""DRRL-KV-v0's cache serving real generation: the serving cache's scores, the speed path, transformers'
``generate``, batches, ``drrl generate`` and saved agents."""

import json
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import KV_KWARGS, KV_LEVELS, kv_texts, play_kv

import drrl_env  # noqa: F401
from agents.kv_baselines import make_kv_baseline


def test_serving_cache_scores_a_document_as_the_environment_does(kv_env):
    from experiments.generate import run_policy

    env = kv_env.unwrapped
    steps = play_kv(kv_env, lambda obs: np.full(4, 2))  # uniform:int4, a fixed plan
    ids = env.source.token_ids(0)
    run = run_policy(kv_env, "uniform:int4", ids, 0, ids, progress=False)
    nll = sum(info["nll"] for _, info in steps) / sum(info["tokens"] for _, info in steps)
    assert run.perplexity == pytest.approx(float(np.exp(nll)), rel=1e-4)
    assert run.levels.startswith("int4")


@pytest.mark.parametrize("key_space", ["post_rope", "pre_rope"])
@pytest.mark.parametrize("new_tokens", [2, 40])  # decoding: scored as coefficients; a prompt's block: SDPA, rebuilt
@pytest.mark.parametrize("path, tolerance", [("speed", 1e-4), ("speed-bf16", 2e-2)])  # bf16 rounds to ~0.4%
def test_the_speed_path_reads_rank_levels_as_coefficients_with_the_memory_paths_output(
    tiny_causal_llama, key_space, new_tokens, path, tolerance
):
    from drrl_env.kv.attention import kv_attention

    env = gym.make("DRRL-KV-v0", model=tiny_causal_llama, **{**KV_KWARGS, "key_space": key_space}).unwrapped
    caches = [env.new_cache(path=name) for name in ("memory", path)]
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, d = env.source.spec.n_heads, env.source.spec.n_kv_heads, env.source.spec.head_dim
    tokens = [torch.randn(2, 1, kv_heads, 96, d, generator=generator) for _ in range(2)]  # (K/V, b, H_kv, n, d)
    for cache in caches:
        for layer_idx in range(2):
            cache.update(tokens[layer_idx][0], tokens[layer_idx][1], layer_idx)
        cache.store(0, np.array([3, 2]), np.array([1, 3]))  # keys r8, int4; values r4, r8 (layers 0, 1)
    memory, speed = caches
    rope_keys = 8 if key_space == "post_rope" else 0  # pre-RoPE keys stay dense: their rotation is per position
    assert list(speed.layers[0].groups) == [(rope_keys, 4)] and list(speed.layers[1].groups) == [(0, 8)]
    group = speed.layers[0].groups[(rope_keys, 4)]
    assert group.values.shape == (1, kv_heads, 28, 4) and group.keys.shape == (1, kv_heads, 28, rope_keys or d)
    assert speed.layers[0].stored == memory.layers[0].stored - 28 and speed.nbytes() == memory.nbytes()
    query, new = (
        torch.randn(1, heads, new_tokens, d, generator=generator),
        torch.randn(2, 1, kv_heads, new_tokens, d, generator=generator),
    )
    outputs = []
    for cache in caches:
        keys, values = cache.update(new[0], new[1], 0)
        outputs.append(kv_attention(cache.layers[0], query, keys, values, d**-0.5))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=tolerance, atol=tolerance / 10)
    torch.testing.assert_close(speed.layers[0].recent.lse, memory.layers[0].recent.lse, rtol=tolerance / 10, atol=1e-5)
    assert group.keys.dtype == (torch.bfloat16 if path == "speed-bf16" else torch.float32)
    with pytest.raises(ValueError, match="path='fast' is not allowed"):
        env.new_cache(path="fast")


def test_the_speed_path_scores_a_document_as_the_memory_path_in_less_memory(tiny_causal_llama, tmp_path):
    from experiments.generate import run_policy

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"keys": ["r8", "int4"], "values": ["r4", "r8"]}))
    env = gym.make("DRRL-KV-v0", model=tiny_causal_llama, **{**KV_KWARGS, "budget": 1.0, "key_space": "post_rope"})
    ids = env.unwrapped.source.token_ids(0)
    memory, speed = (run_policy(env, f"static:{plan}", ids, 0, ids, False, path) for path in ("memory", "speed"))
    assert speed.perplexity == pytest.approx(memory.perplexity, rel=1e-5)
    assert speed.cache_bytes == memory.cache_bytes and speed.resident_bytes < 0.8 * memory.resident_bytes


def test_transformers_generate_runs_on_the_serving_cache(kv_env):
    env = kv_env.unwrapped
    policy = make_kv_baseline("pyramid", kv_env)
    cache, controller = env.serving_cache(lambda obs: policy.predict(obs)[0], 320)
    ids = env.source.token_ids(0)[None, :100]
    out = env.model.generate(ids, cache=cache, max_new_tokens=200, do_sample=False)
    assert out.shape == (1, 300) and cache.get_seq_length() == 299
    assert len(cache.blocks) == (299 - 64) // 32 and controller.budget_used <= 1.0
    assert cache.nbytes() <= controller.budget.cap < 299 * env.exact_token_bytes


def test_a_batch_shares_decisions_within_the_whole_batchs_budget(kv_env):
    from experiments.generate import run_policy

    env = kv_env.unwrapped
    prompt = env.source.token_ids(0)[:200]
    one = run_policy(kv_env, "uniform:int4", prompt, 60, None, progress=False)
    three = run_policy(kv_env, "uniform:int4", prompt.repeat(3, 1), 60, None, progress=False)  # (3, L) equal prompts
    assert three.new_tokens == 3 * one.new_tokens and three.exact_bytes == 3 * one.exact_bytes
    # the budget is the fraction of the whole batch's exact cache: it holds, and since the bases are stored
    # once for the batch, each sequence keeps at least what it keeps alone
    assert three.cache_bytes <= env.budget_for(260, batch=3).cap
    bases = env._bases_bytes
    assert (three.cache_bytes - bases) / 3 >= one.cache_bytes - bases


def test_a_serving_baseline_takes_the_budget_length_and_batch_of_its_generation(kv_env):
    from agents.kv_baselines import KVShape

    env = kv_env.unwrapped
    _, controller = env.serving_cache(lambda obs: None, 300, batch=2, budget=0.6)
    shape, own = KVShape.of(kv_env, controller), KVShape.of(kv_env)
    assert shape.free_bytes == controller.budget.cap - controller.budget.reserved != own.free_bytes
    assert shape.max_seq_len == 300 != own.max_seq_len
    assert (shape.level_bytes == 2 * own.level_bytes).all()  # two sequences share each decision


def test_constrained_decoding_picks_only_allowed_tokens_and_refuses_an_empty_set(kv_env):
    from experiments.generate import run_policy

    env = kv_env.unwrapped
    prompt = env.source.token_ids(0)[:200]
    free = run_policy(kv_env, "uniform:int4", prompt, 60, None, progress=False)
    first = free.tokens[0]
    allowed = torch.tensor([t for t in range(3, 9) if t != first])  # the unconstrained first choice excluded
    run = run_policy(kv_env, "uniform:int4", prompt, 60, None, progress=False, allowed=allowed)
    assert len(run.tokens) == 60 and set(run.tokens) <= set(allowed.tolist())
    with pytest.raises(ValueError, match="non-empty 1-D"):
        run_policy(kv_env, "uniform:int4", prompt, 6, None, progress=False, allowed=torch.tensor([], dtype=torch.long))


def test_drrl_generate_compares_policies_and_refuses_bad_input(tiny_causal_llama, tmp_path):
    from conftest import drrl, drrl_here

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(kv_texts()):
        (corpus / f"t{i}.txt").write_text(text)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(kv_texts()[0][:1200])
    common = [
        "--model",
        tiny_causal_llama,
        "--budget",
        "0.5",
        "--env-kwargs",
        f"corpus={corpus}",
        "split=all",
        "max_seq_len=384",
        "min_doc_tokens=200",
        "block=32",
        "window=64",
        f"levels={KV_LEVELS}",
        "calibration_documents=2",
    ]
    out = drrl(
        "generate",
        "--prompt-file",
        prompt,
        "--max-new-tokens",
        "40",
        "--compare",
        "dynamic,preallocated,uniform:r4,h2o:1",
        *common,
        cwd=tmp_path,
    ).stdout
    table = out[out.index("policy ") :].splitlines()
    assert [row.split()[0] for row in table[1:]] == ["dynamic", "preallocated", "uniform:r4", "h2o:1"]
    texts = out.split("--- ")[1:]  # greedy: the two exact caches write the same text
    assert texts[0].split("\n", 1)[1] == texts[1].split("\n", 1)[1]
    assert "r4 " in table[3] and "int8" not in table[3]  # the plan, lowered to evict where the budget ends
    from drrl_env.kv.cache import PATHS

    usage = drrl_here("generate", "--help", cwd=tmp_path).stdout
    assert sorted(re.search(r"--path \{([^}]*)\}", usage).group(1).split(",")) == sorted(PATHS)  # the CLI's own copy
    for extra, message in [
        (["--budget", "0"], "--budget must be"),
        (["--max-new-tokens", "400"], "beyond the 384"),
        (["--policy", "lru", "--max-new-tokens", "40"], "baseline='lru' is not allowed"),
    ]:
        result = drrl_here("generate", "--prompt-file", prompt, *common, *extra, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    result = drrl_here("generate", "--prompt-file", empty, *common, cwd=tmp_path)
    assert result.returncode == 2 and "prompt is empty" in result.stderr


def test_a_saved_agent_for_another_ladder_is_refused_in_one_line(kv_env, tmp_path):
    import json

    from experiments.generate import load_policy, policy_metadata

    agent = tmp_path / "model.zip"
    agent.write_bytes(b"not loaded: the sidecar is checked first")
    meta = {**policy_metadata(kv_env), "levels": ["evict", "r16", "exact"]}
    (tmp_path / "model.kv.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"trained with levels=\['evict', 'r16', 'exact'\]; this cache has levels="):
        load_policy(str(agent), kv_env)
    (tmp_path / "model.kv.json").unlink()
    with pytest.raises(FileNotFoundError, match="sidecar model.kv.json"):
        load_policy(str(agent), kv_env)
