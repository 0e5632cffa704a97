"""DRRL-KV-v0: levels, bases across RoPE, the compressed cache's contract, the budget, the environment."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import KV_KWARGS, KV_LEVELS, kv_texts, play_kv
from gymnasium.utils.env_checker import check_env

import drrl_env  # noqa: F401
from agents.kv_baselines import kv_baseline_names, make_kv_baseline
from drrl_env.kv.bases import rotary_angles, rotate, unrotate
from drrl_env.kv.budget import block_bytes, project
from drrl_env.kv.levels import Exact, Quantized, Rank, parse_ladder


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
    short = tuple(text[:1500] for text in kv_texts())  # documents well below max_seq_len: the cap holds them exact
    env = gym.make(
        "DRRL-KV-v0",
        model=tiny_causal_llama,
        max_episode_steps=20,
        **{**KV_KWARGS, "budget": 1.0, "max_seq_len": 512, "corpus": short},
    )
    top = len(env.unwrapped.ladder) - 1
    steps = play_kv(env, lambda obs: np.full(env.action_space.shape, top))
    assert all(not info["projected"] for _, info in steps)
    assert abs(sum(r for r, _ in steps)) < 1e-3 and steps[-1][1]["ppl_ratio"] == pytest.approx(1.0, abs=1e-5)


def test_fused_attention_counts_each_keys_readings_by_the_recorded_queries():
    """The observation divides a block's accumulated mass by these counts, so it is a mean attention per reading
    however many of a forward's queries were recorded (a 3072-token prefill records 32)."""
    from drrl_env.kv.attention import fused_attention
    from drrl_env.kv.cache import RECENT_QUERIES

    b, heads, kv_heads, q, stored, d = 2, 4, 2, RECENT_QUERIES + 8, RECENT_QUERIES + 18, 8
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(b, heads, q, d, generator=generator)
    key, value = (torch.randn(b, kv_heads, stored, d, generator=generator) for _ in range(2))
    _, _, mass, reads = fused_attention(query, key, value, d**-0.5)
    first = stored - RECENT_QUERIES  # the recorded queries sit at positions first..stored-1; p is seen from p on
    expected = b * heads * (stored - torch.arange(stored).clamp_min(first))
    assert torch.equal(reads.long(), expected)
    torch.testing.assert_close(mass.sum(), torch.tensor(float(b * heads * RECENT_QUERIES)))  # each row sums to 1
    assert bool((mass <= reads + 1e-5).all())


def test_a_calibration_corpus_fits_the_bases_while_episodes_play_another_text(kv_env, tiny_causal_llama):
    """``calibration_corpus``: the bases are those of its training documents, the episodes another corpus's."""
    from drrl_env.sources.corpus import load_corpus

    code = tuple(d.text for d in load_corpus("stdlib-source", "validation"))
    env = gym.make(
        "DRRL-KV-v0",
        model=tiny_causal_llama,
        **{**KV_KWARGS, "corpus": code, "calibration_corpus": list(kv_texts()), "cache_dir": None},
    ).unwrapped
    assert torch.equal(env.bases.keys, kv_env.unwrapped.bases.keys)
    assert torch.equal(env.bases.values, kv_env.unwrapped.bases.values)
    assert env.source.token_ids(0)[:50].tolist() != kv_env.unwrapped.source.token_ids(0)[:50].tolist()


def test_the_budget_is_never_exceeded_under_random_actions(kv_env):
    rng = np.random.default_rng(0)
    for document in range(3):
        for reward, info in play_kv(kv_env, lambda obs: rng.integers(0, 6, kv_env.action_space.shape), document):
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
    "spec",
    [
        "exact",
        "streaming",
        "uniform:r8",
        "uniform:int4",
        "recent:int4",
        "salient:int4",
        "h2o:1",
        "pyramid",
        "energy:0.9",
        "greedy",
        "static",
    ],
)
def test_every_baseline_plays_an_episode_within_the_budget(kv_env, spec, tmp_path):
    if spec == "static":
        (tmp_path / "plan.json").write_text(json.dumps(STATIC_PLAN))
        spec = f"static:{tmp_path / 'plan.json'}"
    policy = make_kv_baseline(spec, kv_env)
    steps = play_kv(kv_env, lambda obs: policy.predict(obs)[0])
    assert all(info["budget_used"] <= 1.0 + 1e-12 for _, info in steps) and np.isfinite(steps[-1][1]["ppl_ratio"])
    if spec == "streaming":
        assert all((info["key_levels"] == 0).all() for _, info in steps)
    if spec == "recent:int4":  # evicts the oldest blocks, keeps the newest at int4, and always fits
        stored = [bool((info["key_levels"] == 2).all()) for _, info in steps]
        assert stored == sorted(stored) and stored[-1] and not stored[0]
        assert not any(info["projected"] for _, info in steps)
    if spec == "salient:int4":  # at budget 0.5 it both stores (int4) and evicts, whole blocks, never projected;
        # a replay is the same (its history of shares is reset)
        levels = [(info["key_levels"][0], info["value_levels"][0]) for _, info in steps]
        assert set(levels) == {(0, 0), (2, 2)} and not any(info["projected"] for _, info in steps)
        assert [info["key_levels"].tolist() for _, info in play_kv(kv_env, lambda obs: policy.predict(obs)[0])] == [
            info["key_levels"].tolist() for _, info in steps
        ]
    if spec.startswith("static"):
        assert steps[0][1]["key_levels"].tolist() == [4, 1] and steps[0][1]["value_levels"].tolist() == [3, 5]
    assert len(kv_baseline_names()) == 10 and "uniform:LEVEL" in kv_baseline_names()
    with pytest.raises(ValueError, match=r"baseline='lru' is not allowed; choose one of \['uniform', 'exact'"):
        make_kv_baseline("lru", kv_env)
    with pytest.raises(ValueError, match="needs an argument: energy:TAU"):
        make_kv_baseline("energy", kv_env)
    with pytest.raises(ValueError, match="baseline 'static:nowhere.json'"):
        make_kv_baseline("static:nowhere.json", kv_env)


def test_blocks_to_decide_counts_the_steps_a_maximum_length_episode_has_left(kv_env):
    """recent:LEVEL reserves bytes for exactly these blocks: one too many would leave a block's bytes unused."""
    from agents.kv_baselines import KVShape

    shape, config = KVShape.of(kv_env), kv_env.unwrapped.config
    full = -(-(config.max_seq_len - 1 - config.window - config.block) // config.block)  # ceil: the episode's steps
    evict_all = np.zeros(kv_env.action_space.shape, dtype=np.int64)
    for document in range(len(kv_env.unwrapped.document_names())):
        obs, _ = kv_env.reset(options={"document": document})
        counts, done = [], False
        while not done:
            counts.append(shape.blocks_to_decide(obs))
            obs, _, terminated, truncated, _ = kv_env.step(evict_all)
            done = terminated or truncated
        if len(counts) == full:
            assert counts == list(range(full, 0, -1))
            return
    pytest.fail(f"no document reaches max_seq_len={config.max_seq_len}; lower it in KV_KWARGS")


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
        steps = play_kv(kv_env, lambda obs: policy.predict(obs)[0])
        assert steps[0][1]["key_levels"].tolist() == [4, 4] and steps[0][1]["value_levels"].tolist() == [5, 5]
        with pytest.raises(ValueError, match="level 'int2' is not in the ladder"):
            make_kv_baseline("test_keys_at:int2", kv_env)
    finally:
        KV_POLICIES.unregister("test_keys_at")


def test_lookahead_returns_to_the_snapshot_and_replays_alike(kv_env):
    from drrl_env.play import lookahead

    n = kv_env.unwrapped.n_layers
    low, high = np.full(2 * n, 1), np.full(2 * n, len(KV_LEVELS.split(",")) - 1)
    kv_env.reset(options={"document": 1})
    kv_env.step(low)
    first = lookahead(kv_env, [low, high, low])
    other = lookahead(kv_env, [high, high, high])
    again = lookahead(kv_env, [low, high, low])
    assert [s.reward for s in first] == [s.reward for s in again] and len(first) == 3
    assert [s.info["cache_bytes"] for s in first] == [s.info["cache_bytes"] for s in again]
    assert [s.reward for s in other] != [s.reward for s in first]
    played = [kv_env.step(a)[1] for a in (low, high, low)]  # the episode itself was left where it was
    assert played == [s.reward for s in first]
    with pytest.raises(ValueError, match="not a snapshot of this environment"):
        kv_env.unwrapped.restore({"cache": None})
