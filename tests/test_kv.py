"""DRRL-KV-v0: levels, bases across RoPE, the compressed cache's contract, the budget, the environment."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import drrl_env  # noqa: F401
from agents.kv_baselines import kv_baseline_names, make_kv_baseline
from drrl_env.kv.bases import rotary_angles, rotate, unrotate
from drrl_env.kv.budget import block_bytes, project
from drrl_env.kv.levels import Exact, Quantized, Rank, parse_ladder

LEVELS = "evict,r4,int4,r8,int8,exact"  # head_dim 16: int4 (320 bytes a 32-token key block) sits below r8 (512)


def _texts():
    from pydoc_data.topics import topics

    return tuple(text for _, text in sorted(topics.items()) if len(text) > 4000)[:8]


KV_KWARGS = {
    "corpus": _texts(),
    "split": "all",
    "max_seq_len": 384,
    "min_doc_tokens": 200,
    "block": 32,
    "window": 64,
    "levels": LEVELS,
    "calibration_documents": 2,
    "budget": 0.5,
}


@pytest.fixture(scope="module")
def kv_env(tiny_causal_llama):
    return gym.make("DRRL-KV-v0", model=tiny_causal_llama, max_episode_steps=20, **KV_KWARGS)


def _play(env, act, document=0):
    obs, _ = env.reset(options={"document": document})
    infos, done = [], False
    while not done:
        obs, reward, terminated, truncated, info = env.step(act(obs))
        infos.append((reward, info))
        done = terminated or truncated
    return infos


def test_levels_count_bytes_and_rebuild_what_they_keep():
    x = torch.randn(2, 32, 16)
    identity = torch.eye(16).expand(2, 16, 16)
    assert torch.equal(Rank(4).reconstruct(x, identity, "key")[..., 4:], torch.zeros(2, 32, 12))
    assert Rank(4).block_bytes(32, 16, "key") == 2 * 32 * 4 and Exact().block_bytes(32, 16, "value") == 2 * 32 * 16
    assert Quantized(4).block_bytes(32, 16, "key") == 32 * 16 // 2 + 4 * 16  # per-channel scales for keys
    assert Quantized(4).block_bytes(32, 16, "value") == 32 * 16 // 2 + 4 * 32  # per-token scales for values
    error8 = (Quantized(8).reconstruct(x, identity, "key") - x).norm() / x.norm()
    error4 = (Quantized(4).reconstruct(x, identity, "value") - x).norm() / x.norm()
    assert error8 < 0.01 < error4 < 0.2
    with pytest.raises(ValueError, match="ascending bytes.*use evict,r4,int4,r8"):
        parse_ladder("evict,r4,r8,int4,exact", 16, 32)
    with pytest.raises(ValueError, match="'r<rank>'"):
        parse_ladder("evict,r4,fp8", 16, 32)


def test_pre_rope_keys_round_trip_through_the_models_rotary_embedding(kv_env):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = kv_env.unwrapped.model
    positions = torch.arange(40, 72)
    cos, sin = rotary_angles(model, positions, 16)
    pre = torch.randn(1, 2, 32, 16)
    _, post = apply_rotary_pos_emb(pre, pre, cos[None], sin[None])
    assert torch.allclose(rotate(pre, cos, sin), post, atol=1e-6)
    assert torch.allclose(unrotate(post, cos, sin), pre, atol=1e-5)


def test_the_cache_at_exact_levels_reproduces_the_models_own_forward(kv_env):
    env = kv_env.unwrapped
    ids = env.source.token_ids(0)[None, :200]
    model = env.model
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        reference = model(input_ids=ids).logits[0]
    model.set_attn_implementation("drrl")
    cache, outs = env.new_cache(), []
    with torch.no_grad():
        for start in range(0, 200, 32):
            if cache.due_block() is not None:
                full = np.full(env.n_layers, len(env.ladder) - 1)
                cache.store(cache.due_block(), full, full)
            outs.append(model(input_ids=ids[:, start : start + 32], cache=cache).logits[0])
    assert torch.allclose(torch.cat(outs), reference, atol=1e-4, rtol=1e-4)


def test_evicted_tokens_leave_the_store_but_count_as_seen(kv_env):
    env = kv_env.unwrapped
    env.reset(options={"document": 0})
    cache = env.cache
    env.step(np.zeros(env.action_space.shape, dtype=np.int64))  # evict block 0 (its sinks stay)
    layer = cache.layers[0]
    assert cache.get_seq_length() == layer.seen == 64 + 32 + 32
    assert layer.stored == cache.sinks + 64 + 32 and layer.positions[: cache.sinks].tolist() == list(range(cache.sinks))
    assert cache.get_mask_sizes(1, 0) == (layer.stored + 1, layer.seen - layer.stored)
    with pytest.raises(NotImplementedError, match="beam search"):
        cache.reorder_cache(torch.tensor([0]))
    with pytest.raises(RuntimeError, match="not due"):
        cache.store(0, np.zeros(env.n_layers, dtype=int), np.zeros(env.n_layers, dtype=int))


def test_checkers_pass_and_the_spec_matches(kv_env):
    check_env(kv_env.unwrapped)
    spec = gym.spec("DRRL-KV-v0")
    assert spec.max_episode_steps == 30 and spec.kwargs == {}
    assert kv_env.action_space.shape == (2 * 2,) and kv_env.observation_space["energy"].shape == (2, 2, 6)


def test_all_exact_levels_earn_zero_and_keep_the_exact_perplexity(tiny_causal_llama):
    short = tuple(text[:1500] for text in _texts())  # documents well below max_seq_len: the cap holds them exact
    env = gym.make(
        "DRRL-KV-v0",
        model=tiny_causal_llama,
        max_episode_steps=20,
        **{**KV_KWARGS, "budget": 1.0, "max_seq_len": 512, "corpus": short},
    )
    top = len(env.unwrapped.ladder) - 1
    steps = _play(env, lambda obs: np.full(env.action_space.shape, top))
    assert all(not info["projected"] for _, info in steps)
    assert abs(sum(r for r, _ in steps)) < 1e-3 and steps[-1][1]["ppl_ratio"] == pytest.approx(1.0, abs=1e-5)


def test_the_budget_is_never_exceeded_under_random_actions(kv_env):
    rng = np.random.default_rng(0)
    for document in range(3):
        for reward, info in _play(kv_env, lambda obs: rng.integers(0, 6, kv_env.action_space.shape), document):
            assert info["budget_used"] <= 1.0 + 1e-12 and np.isfinite(reward)
            assert info["cache_bytes"] <= kv_env.unwrapped.budget.cap
            assert set(info["reward_terms"]) == {"excess_nll", "bytes"}
            assert sum(info["reward_terms"].values()) == pytest.approx(reward)


@pytest.mark.parametrize(
    "action, message",
    [
        (np.full(4, 6), "integers in 0..5"),
        (np.zeros(3, dtype=int), "4 integers"),
        (np.full(4, 0.5), "integers"),
    ],
)
def test_bad_actions_get_one_line_errors(kv_env, action, message):
    kv_env.reset(options={"document": 0})
    with pytest.raises(ValueError, match=message):
        kv_env.step(action)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": 48}, "multiple of block"),
        ({"budget": 0}, r"in \(0, 1\]"),
        ({"levels": "r4,exact"}, "start with 'evict'"),
        ({"levels": "evict,r4"}, "end with 'exact'"),
        ({"key_space": "rope"}, "key_space"),
        ({"sinks": 40}, "at most block"),
        ({"colour": 1}, "unknown DRRL-KV-v0"),
        ({"budget": 0.05}, "cannot hold the sinks"),
    ],
)
def test_bad_configurations_fail_at_construction(tiny_causal_llama, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        gym.make("DRRL-KV-v0", model=tiny_causal_llama, **{**KV_KWARGS, **kwargs})


def test_projection_lowers_the_largest_first_and_evicts_keys_and_values_together():
    sizes = np.array([[0, 10, 20, 40], [0, 12, 24, 48]])  # (2, R) bytes per layer
    keys, values = project(np.array([3, 3]), np.array([3, 3]), sizes, 10_000, 0)
    assert keys.tolist() == [3, 3] and values.tolist() == [3, 3]
    keys, values = project(np.array([3, 3]), np.array([3, 3]), sizes, 130, 0)
    assert block_bytes(keys, values, sizes, 0) == 128 and values.tolist() == [2, 2] and keys.tolist() == [3, 3]
    keys, values = project(np.array([0, 3]), np.array([3, 3]), sizes, 10_000, 0)
    assert keys.tolist() == [0, 3] and values.tolist() == [0, 3]
    assert project(np.array([3]), np.array([3]), sizes, 0, 0) == (np.array([0]), np.array([0]))


def test_the_observation_reads_no_future_token(kv_env):
    env = kv_env.unwrapped
    first, _ = env.reset(options={"document": 0})
    second_step, *_ = env.step(np.full(4, 3))
    ids = env.source._token_ids[0]
    saved = ids.clone()
    try:
        ids[64 + 32 + 32 :] = (ids[64 + 32 + 32 :] + 7) % 1000  # every token the first two observations do not see
        again, _ = env.reset(options={"document": 0})
        again_step, *_ = env.step(np.full(4, 3))
    finally:
        ids.copy_(saved)
    for key in first:
        assert np.array_equal(first[key], again[key]) and np.array_equal(second_step[key], again_step[key]), key


STATIC_PLAN = {"keys": ["int8", "r4"], "values": ["r8", "exact"]}


@pytest.mark.parametrize(
    "spec", ["exact", "streaming", "uniform:r8", "uniform:int4", "h2o:1", "pyramid", "energy:0.9", "greedy", "static"]
)
def test_every_baseline_plays_an_episode_within_the_budget(kv_env, spec, tmp_path):
    if spec == "static":
        (tmp_path / "plan.json").write_text(json.dumps(STATIC_PLAN))
        spec = f"static:{tmp_path / 'plan.json'}"
    policy = make_kv_baseline(spec, kv_env)
    steps = _play(kv_env, lambda obs: policy.predict(obs)[0])
    assert all(info["budget_used"] <= 1.0 + 1e-12 for _, info in steps) and np.isfinite(steps[-1][1]["ppl_ratio"])
    if spec == "streaming":
        assert all((info["key_levels"] == 0).all() for _, info in steps)
    if spec.startswith("static"):
        assert steps[0][1]["key_levels"].tolist() == [4, 1] and steps[0][1]["value_levels"].tolist() == [3, 5]
    assert len(kv_baseline_names()) == 8 and "uniform:LEVEL" in kv_baseline_names()
    with pytest.raises(ValueError, match=r"baseline='lru' is not allowed; choose one of \['uniform', 'exact'"):
        make_kv_baseline("lru", kv_env)
    with pytest.raises(ValueError, match="needs an argument: energy:TAU"):
        make_kv_baseline("energy", kv_env)
    with pytest.raises(ValueError, match="baseline 'static:nowhere.json'"):
        make_kv_baseline("static:nowhere.json", kv_env)


def test_a_registered_kv_baseline_is_made_from_its_spec_and_plays(kv_env):
    """The README's recipe: one KVPolicy subclass and one ``@KV_POLICIES.register`` line."""
    from agents.kv_baselines import KV_POLICIES, KVPolicy

    @KV_POLICIES.register
    class KeysAtOneLevel(KVPolicy):
        """Toy baseline: keys at the ladder level LEVEL, values exact."""

        name, argument = "test_keys_at", "LEVEL"

        def __init__(self, shape, arg):
            super().__init__(shape, arg)
            self.level = shape.index(arg)

        def act(self, obs):
            n = self.shape.n_layers
            return np.concatenate([np.full(n, self.level), np.full(n, len(self.shape.ladder) - 1)])

    try:
        assert "test_keys_at:LEVEL" in kv_baseline_names()
        policy = make_kv_baseline("test_keys_at:int8", kv_env)
        steps = _play(kv_env, lambda obs: policy.predict(obs)[0])
        assert steps[0][1]["key_levels"].tolist() == [4, 4] and steps[0][1]["value_levels"].tolist() == [5, 5]
        with pytest.raises(ValueError, match="level 'int2' is not in the ladder"):
            make_kv_baseline("test_keys_at:int2", kv_env)
    finally:
        KV_POLICIES.unregister("test_keys_at")


def test_serving_cache_scores_a_document_as_the_environment_does(kv_env):
    from experiments.generate import run_policy

    env = kv_env.unwrapped
    steps = _play(kv_env, lambda obs: np.full(4, 2))  # uniform:int4, a fixed plan
    ids = env.source.token_ids(0)
    run = run_policy(kv_env, "uniform:int4", ids, 0, ids, progress=False)
    nll = sum(info["nll"] for _, info in steps) / sum(info["tokens"] for _, info in steps)
    assert run.perplexity == pytest.approx(float(np.exp(nll)), rel=1e-4)
    assert run.levels.startswith("int4")


@pytest.mark.parametrize("key_space", ["post_rope", "pre_rope"])
def test_the_speed_path_reads_rank_levels_as_coefficients_with_the_memory_paths_output(tiny_causal_llama, key_space):
    from drrl_env.kv.attention import kv_attention

    env = gym.make("DRRL-KV-v0", model=tiny_causal_llama, **{**KV_KWARGS, "key_space": key_space}).unwrapped
    caches = [env.new_cache(path=path) for path in ("memory", "speed")]
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
        torch.randn(1, heads, 2, d, generator=generator),
        torch.randn(2, 1, kv_heads, 2, d, generator=generator),
    )
    outputs = []
    for cache in caches:
        keys, values = cache.update(new[0], new[1], 0)
        outputs.append(kv_attention(cache.layers[0], query, keys, values, d**-0.5))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(speed.layers[0].recent.lse, memory.layers[0].recent.lse, rtol=1e-5, atol=1e-5)
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


def test_drrl_generate_compares_policies_and_refuses_bad_input(tiny_causal_llama, tmp_path):
    from conftest import drrl, drrl_here

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(_texts()):
        (corpus / f"t{i}.txt").write_text(text)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(_texts()[0][:1200])
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
        f"levels={LEVELS}",
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

    assert f"{{{','.join(sorted(PATHS, reverse=True))}}}" in drrl_here("generate", "--help", cwd=tmp_path).stdout
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
