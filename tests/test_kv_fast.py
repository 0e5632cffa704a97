"""DRRL-KV-v0's fast mode: the output errors it is built on, its fit, its execution of requests, and the
searches that use it (``kv/output_errors.py``, ``kv/fast.py``, ``agents/kv_search.py``)."""

import numpy as np
import pytest
import torch
from conftest import KV_KWARGS


@pytest.fixture(scope="module")
def kv_env(tiny_causal_llama):
    import gymnasium as gym

    import drrl_env  # noqa: F401

    return gym.make("DRRL-KV-v0", model=tiny_causal_llama, **KV_KWARGS).unwrapped


def test_output_errors_match_the_attention_recomputed_with_one_block_changed(kv_env):
    errors = kv_env.output_errors(0)  # (steps, Ly, 2, R, steps)
    steps = errors.shape[0]
    assert errors.shape == (steps, kv_env.n_layers, 2, len(kv_env.ladder), steps)
    assert not errors[..., -1, :].any() and (errors >= 0).all()
    trace = kv_env.source.trace(0)
    cfg, layer, s = kv_env.config, 1, 2
    start, stop = s * cfg.block, (s + 1) * cfg.block
    first = cfg.window + cfg.block * (s + 1)
    query, keys, values = trace.queries[layer, :, :-1], trace.keys[layer, :, :-1], trace.values[layer, :, :-1]
    group = query.shape[0] // keys.shape[0]

    def outputs(k, v, hide=None):
        visible = torch.ones(len(k[0]), len(k[0]), dtype=torch.bool).tril()
        if hide is not None:
            visible[:, hide] = False
        return torch.nn.functional.scaled_dot_product_attention(
            query, k, v, attn_mask=visible, scale=float(trace.scaling[layer]), enable_gqa=group > 1
        )[:, first:]

    def per_step(change):
        energy = change.square().sum((0, 2))  # (queries,)
        owner = (torch.arange(first, len(keys[0])) - cfg.window - cfg.block) // cfg.block
        return torch.zeros(steps, dtype=torch.float64).index_add_(0, owner, energy.double()).numpy()

    exact = outputs(keys, values)
    r4 = [level.name for level in kv_env.ladder].index("r4")
    angles = kv_env._angles()(torch.arange(start, stop))
    rebuilt = keys.clone()
    rebuilt[:, start:stop] = kv_env.bases.rebuild_keys(layer, keys[:, start:stop], kv_env.ladder[r4], angles)
    np.testing.assert_allclose(
        errors[s, layer, 0, r4], per_step(outputs(rebuilt, values) - exact), rtol=1e-3, atol=1e-9
    )
    rebuilt = values.clone()
    rebuilt[:, start:stop] = kv_env.bases.rebuild_values(layer, values[:, start:stop], kv_env.ladder[r4])
    np.testing.assert_allclose(errors[s, layer, 1, r4], per_step(outputs(keys, rebuilt) - exact), rtol=1e-3, atol=1e-9)
    gone = per_step(outputs(keys, values, hide=slice(start, stop)) - exact)
    np.testing.assert_allclose(errors[s, layer, :, kv_env.evict], np.stack([gone, gone]), rtol=1e-3, atol=1e-9)


def test_the_fit_recovers_a_sensitivity_that_generated_the_excess():
    from drrl_env.kv.fast import fit_sensitivity, step_features

    rng = np.random.default_rng(0)
    errors = rng.uniform(0, 1, size=(5, 3, 2, 4, 5))
    errors[..., -1, :] = 0
    truth = rng.uniform(0.5, 2.0, size=(3, 3))
    features = [step_features(errors, rng.integers(0, 4, size=(5, 2, 3)), 0) for _ in range(12)]
    excess = [np.einsum("ulc,lc->u", f, truth) for f in features]
    np.testing.assert_allclose(fit_sensitivity(features, excess), truth, rtol=1e-6)


def test_the_fast_document_of_the_environment_prices_exact_at_zero_and_keeps_the_budget(kv_env):
    fast = kv_env.fast_document(0, np.ones((kv_env.n_layers, 3)), budget=0.5)
    top = len(kv_env.ladder) - 1
    assert fast.excess(np.full((fast.steps, 2, kv_env.n_layers), top)) == 0.0
    executed = fast.execute(np.full((2, kv_env.n_layers), top))
    assert fast.bytes_of(executed) <= fast.free and (executed < top).any()
    assert fast.predict(np.full((2, kv_env.n_layers), kv_env.evict)) > 0


def _synthetic_document(rng, steps=6, n_layers=3, levels=4, free=3000):
    from drrl_env.kv.fast import FastDocument

    effects = np.sort(rng.uniform(0, 1, size=(steps, n_layers, 2, levels)), axis=-1)[
        ..., ::-1
    ].copy()  # dearer is better
    effects[..., -1] = 0.0  # the anchor: everything exact
    sizes = np.tile(np.array([0, 40, 90, 160]), (steps, 2, 1))
    return FastDocument(effects, sizes, free, evict=0)


def test_the_fast_mode_executes_requests_as_the_environment_projects_them():
    from drrl_env.kv.budget import project

    doc = _synthetic_document(np.random.default_rng(1))
    request = np.full((2, 3), 3)
    executed = doc.execute(request)
    spent = 0
    for s in range(doc.steps):
        expected = project(request[0], request[1], doc.level_bytes[s], doc.free - spent, 0)
        np.testing.assert_array_equal(executed[s], np.stack(expected))
        spent += doc.bytes_of(executed[s : s + 1], first=s)
    assert doc.bytes_of(executed) <= doc.free and executed[0].min() == 3 and executed[-1].max() == 0
    assert doc.excess(np.full((doc.steps, 2, 3), 3)) == 0.0
    by_hand = sum(
        doc.effects[s, layer, 0, 0] if 0 in (k, v) else doc.effects[s, layer, 0, k] + doc.effects[s, layer, 1, v]
        for s in range(doc.steps)
        for layer, (k, v) in enumerate(executed[s].T)
    )
    assert doc.predict(request) == pytest.approx(by_hand) and by_hand > 0


def test_the_hindsight_plan_fits_the_budget_and_beats_every_static_request():
    from agents.kv_search import best_dynamic, best_static

    doc = _synthetic_document(np.random.default_rng(2))
    dynamic = best_dynamic(doc)
    assert dynamic.shape == (doc.steps, 2, doc.n_layers) and doc.bytes_of(dynamic) <= doc.free
    np.testing.assert_array_equal(doc.execute(dynamic), dynamic)  # it fits: the projection leaves it alone
    static = best_static([doc])
    assert doc.excess(dynamic) <= doc.predict(static) + 1e-9
    for level in range(4):
        assert doc.predict(static) <= doc.predict(np.full((2, doc.n_layers), level)) + 1e-9


@pytest.fixture(scope="module")
def fast_env(tiny_causal_llama, tmp_path_factory):
    import gymnasium as gym

    path = tmp_path_factory.mktemp("fast") / "sensitivity.npz"
    np.savez(path, sensitivity=np.full((2, 3), 0.5))
    return gym.make(
        "DRRL-KV-fast-v0", model=tiny_causal_llama, sensitivity=str(path), max_episode_steps=20, **KV_KWARGS
    )


def test_the_fast_environment_passes_the_checkers_and_sums_to_the_fast_prediction(fast_env, kv_env):
    from gymnasium.utils.env_checker import check_env

    check_env(fast_env.unwrapped)
    assert fast_env.observation_space == kv_env.observation_space and fast_env.action_space == kv_env.action_space
    obs, _ = fast_env.reset(options={"document": 1, "budget": 0.5})
    exact = kv_env.exact_features(1)
    np.testing.assert_array_equal(obs["energy"], exact["energy"][0])
    request = np.concatenate([np.full(2, 4), np.full(2, 3)])  # keys int8, values r8 in both layers
    total, done, executed = 0.0, False, []
    while not done:
        obs, reward, done, truncated, info = fast_env.step(request)
        total += reward
        executed.append(np.stack([info["key_levels"], info["value_levels"]]))
    fast = kv_env.fast_document(1, np.full((2, 3), 0.5), budget=0.5)
    assert total == pytest.approx(-fast.predict(request.reshape(2, 2)))
    np.testing.assert_array_equal(np.stack(executed), fast.execute(request.reshape(2, 2)))
    with pytest.raises(ValueError, match="sensitivity=None must name"):
        type(fast_env.unwrapped)(model="unused")


def test_drrl_train_kv_trains_saves_and_logs_an_agent(tiny_causal_llama, tmp_path):
    from conftest import drrl, kv_texts
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(kv_texts()):
        (corpus / f"doc{i}.txt").write_text(text)
    np.savez(tmp_path / "sensitivity.npz", sensitivity=np.full((2, 3), 0.5))
    kwargs = {key: value for key, value in KV_KWARGS.items() if key not in ("corpus", "split")}
    result = drrl(
        "train-kv",
        "--sensitivity",
        tmp_path / "sensitivity.npz",
        "--timesteps",
        64,
        "--n-steps",
        32,
        "--eval-freq",
        32,
        "--pretrain-bc",
        2,
        "--split",
        "all",
        "--train-documents",
        "0-2",
        "--eval-split",
        "all",
        "--eval-documents",
        2,
        "--env-kwargs",
        f"model={tiny_causal_llama}",
        f"corpus={corpus}",
        *(f"{key}={value}" for key, value in kwargs.items()),
        cwd=tmp_path,
    )
    assert "behaviour cloning of reference (c): negative log-likelihood" in result.stdout
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("DRRL-KV-fast-v0__ppo-mlp-bc__0__") and (run / "model.kv.json").is_file()
    assert (run / "best_model.zip").is_file() and (run / "best_model.kv.json").is_file()
    events = EventAccumulator(str(run)).Reload()
    assert "eval/predicted_excess_nll" in events.Tags()["scalars"]


def test_a_deployable_teacher_is_recorded_as_it_requests(fast_env):
    """BC from a baseline (``--bc-teacher uniform:int4``): every step's action is its request, flattened as
    the action space holds it, and the observations are the ones it acted on."""
    from experiments.train_kv import teacher_dataset

    observations, actions = teacher_dataset(fast_env, "uniform:int4")
    int4 = [level.name for level in fast_env.unwrapped.closed.ladder].index("int4")
    assert actions.shape == (len(observations["energy"]), fast_env.action_space.shape[0])
    assert (actions == int4).all()


def test_the_layer_transformer_policy_reads_each_layers_token_and_trains(fast_env):
    import torch
    from stable_baselines3.common.utils import obs_as_tensor

    from agents.sb3_agents import make_agent
    from agents.transformer_policy import KVLayerTransformerExtractor

    space = fast_env.observation_space
    extractor = KVLayerTransformerExtractor(space, width=8, n_heads=2)
    obs, _ = fast_env.reset(options={"document": 0})
    batch = {key: value[None] for key, value in obs_as_tensor(obs, torch.device("cpu")).items()}
    n_layers = space["energy"].shape[0]
    assert extractor(batch).shape == (1, (n_layers + 1) * 8)
    tokens = extractor.tokens(batch)
    changed = {key: value.clone() for key, value in batch.items()}
    changed["mass"][0, 1] += 0.5  # layer 1's token only
    moved = (extractor.tokens(changed) - tokens).abs().sum(-1)[0]  # (Ly + 1,)
    assert moved[1] > 0 and moved[0] == 0 and moved[-1] == 0
    model = make_agent("ppo", fast_env, "transformer", seed=0, n_steps=16, batch_size=16)
    assert isinstance(model.policy.features_extractor, KVLayerTransformerExtractor)
    model.learn(16)
    action, _ = model.predict(obs, deterministic=True)
    assert fast_env.action_space.contains(action)


def test_an_unchanged_validation_score_is_converged():
    """The convergence check: a score that did not move over the last quarter is converged (the gain, 0, is
    within its standard error, also 0); one that fell by more than its standard error is still improving."""
    from experiments.train_kv import FastEvalCallback

    check = FastEvalCallback(None, range(3), 1, save=lambda name: None)
    check.history = [(100, np.array([5.0, 6.0, 7.0])), (400, np.array([5.0, 6.0, 7.0]))]
    assert check.converged().startswith("converged")
    check.history.append((500, np.array([1.0, 2.5, 3.0])))
    assert check.converged().startswith("still improving")
