"""Scale-out: the Ray backend of ``drrl compare`` and ``drrl precompute``, ``drrl tune`` (Optuna, and
Tune on Ray), and vectorized environments.  Ray starts locally here (no cluster, no network)."""

import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from conftest import SYNTHETIC, drrl

from drrl_env.cache import AnalysisCache
from experiments.backends import import_ray

SYNTHETIC_ARGS = [f"{k}={v}" for k, v in SYNTHETIC.items()]
TINY_GRID = [
    "--algos",
    "a2c",
    "--policies",
    "mlp",
    "--seeds",
    2,
    "--timesteps",
    48,
    "--episodes",
    2,
    "--tune-documents",
    1,
    "--env-kwargs",
    *SYNTHETIC_ARGS,
    "cache_dir=none",
]


def _rows(folder: Path) -> dict:
    return {(r["policy"], r["document"]): r for r in json.loads((folder / "rows.json").read_text())}


def test_ray_compare_gives_the_local_rows_and_layout(tmp_path):
    drrl("compare", *TINY_GRID, "--out", tmp_path / "local", cwd=tmp_path)
    drrl("compare", *TINY_GRID, "--backend", "ray", "--out", tmp_path / "ray", cwd=tmp_path)
    local, ray = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert local.keys() == ray.keys() and len(local) == 20  # 8 baselines + 2 agent seeds, 2 documents
    for key, row in local.items():
        for field, value in row.items():
            assert ray[key][field] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), field
    for name in ("report.md", "compare.json", "pareto.png", "ranks.png"):
        assert (tmp_path / "ray" / name).is_file()
    assert len(list((tmp_path / "ray" / "runs").iterdir())) == 2
    assert not list(tmp_path.glob("**/ray_results"))  # nothing of Ray's is left in the output


def test_a_measured_cost_gets_a_whole_node_on_ray_and_is_refused_by_parallel_local_jobs():
    from experiments.backends import LocalBackend, Resources

    with pytest.raises(ValueError, match="--backend ray"):
        LocalBackend(jobs=2).check(Resources(exclusive=True))
    LocalBackend(jobs=1).check(Resources(exclusive=True))


ASYNC_ONE_LINER = f"""
import gymnasium as gym, numpy as np, drrl_env
envs = gym.make_vec("DRRL-v0", num_envs=2, vectorization_mode="async", **{SYNTHETIC!r}, cache_dir=None)
envs.reset(seed=0)
print(envs.step(np.zeros(2, dtype=np.int64))[1].shape)
envs.close()
"""


def test_async_vector_env_in_a_fresh_process(tmp_path):
    """The README's one-liner, default context (fork on Linux), as a user's script runs it."""
    result = subprocess.run(
        [sys.executable, "-c", ASYNC_ONE_LINER], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0 and result.stdout.strip() == "(2,)", result.stderr[-2000:]


def test_async_vector_env_steps_every_copy():
    """In a process that has run torch work already, workers must not be forked (OpenMP's thread pool
    does not survive a fork): spawn them."""
    envs = gym.make_vec(
        "DRRL-v0",
        num_envs=2,
        vectorization_mode="async",
        vector_kwargs={"context": "spawn"},
        **SYNTHETIC,
        cache_dir=None,
    )
    try:
        observations, _ = envs.reset(seed=0)
        assert observations["action_mask"].shape[0] == 2
        for _ in range(5):
            observations, rewards, _, _, _ = envs.step(np.zeros(2, dtype=np.int64))
            assert rewards.shape == (2,) and np.isfinite(rewards).all()
    finally:
        envs.close()


def test_train_with_subprocess_envs(tmp_path):
    drrl(
        "train",
        "--algo",
        "ppo",
        "--timesteps",
        64,
        "--n-envs",
        2,
        "--vec-env",
        "subproc",
        "--eval-freq",
        64,
        "--logdir",
        tmp_path,
        "--env-kwargs",
        *SYNTHETIC_ARGS,
        "cache_dir=none",
        cwd=tmp_path,
    )
    assert list(tmp_path.glob("DRRL-v0__ppo-mlp__0__*/model.zip"))


@pytest.fixture(scope="module")
def ray_here():
    """One local Ray for the tests below (the backends reuse a running Ray)."""
    ray = import_ray()
    temp = tempfile.mkdtemp(prefix="drrl-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, configure_logging=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def test_exclusive_runs_ask_for_every_cpu_of_a_node(ray_here):
    from experiments.backends import RayBackend

    assert RayBackend().node_cpus() == 2 and RayBackend().workers() == 2


def test_precompute_on_ray_fills_the_cache(ray_here, tmp_path, monkeypatch):
    from experiments.precompute import precompute

    kwargs = {**SYNTHETIC, "split": "validation", "cache_dir": str(tmp_path)}
    assert precompute("DRRL-v0", kwargs, backend="ray") == 2
    assert len(list((tmp_path / "analysis").glob("*.npz"))) == 2
    monkeypatch.setattr("drrl_env.documents.analyse", lambda *a, **k: pytest.fail("the cache was not filled"))
    env = gym.make("DRRL-v0", **kwargs).unwrapped
    for document in range(2):
        env.analysis(document)


def _write_entry(args):
    folder, key, seed = args
    from drrl_env.env import RankSelectionEnv

    analysis = RankSelectionEnv(**SYNTHETIC, cache_dir=None, synthetic_seed=seed).analysis(0)
    cache = AnalysisCache(Path(folder), {"test": 1})
    for _ in range(20):
        cache.put(key, analysis)
        cache.get(key)  # a reader between writes sees a whole entry, never a torn one


def test_concurrent_writers_of_one_entry_leave_a_whole_one(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_write_entry, [(str(tmp_path), "same-document", seed) for seed in (0, 1)])
    entry = AnalysisCache(tmp_path, {"test": 1}).get("same-document")
    assert entry is not None and not list((tmp_path / "analysis").glob("*.tmp"))


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_tune_writes_an_rl_zoo_file_that_train_accepts(backend, ray_here, tmp_path):
    from experiments.train import TrainConfig
    from experiments.tune import tune

    base = TrainConfig(algo="ppo", policy="mlp", timesteps=128, env_kwargs={**SYNTHETIC, "cache_dir": None})
    zoo = tune(base, 2, tmp_path / "tune", backend=backend, eval_episodes=1)
    assert zoo.name == "ppo.yml"
    entry = yaml.safe_load(zoo.read_text())["DRRL-v0"]
    assert entry["n_timesteps"] == 128 and entry["policy"] == "MultiInputPolicy" and "learning_rate" in entry
    study = json.loads((tmp_path / "tune" / "study.json").read_text())
    assert len(study["trials"]) == 2 and study["best"]["params"]["learning_rate"] == entry["learning_rate"]
    config = TrainConfig.from_file(zoo)
    assert (config.algo, config.policy, config.timesteps) == ("ppo", "mlp", 128)
    assert config.hyperparams["n_steps"] == entry["n_steps"] and config.env_kwargs["source"] == "synthetic"
    if backend == "local":  # the file drives a real training run from the command line
        drrl("train", "--config", zoo, "--timesteps", 64, "--logdir", tmp_path / "runs", cwd=tmp_path)
        assert list((tmp_path / "runs").glob("DRRL-v0__ppo-mlp__0__*/model.zip"))


def test_a_transformer_rl_zoo_file_round_trips(tmp_path):
    from experiments.train import TrainConfig, to_zoo

    config = TrainConfig(algo="a2c", policy="transformer", timesteps=96, hyperparams={"n_steps": 8})
    (tmp_path / "a2c.yml").write_text(yaml.safe_dump(to_zoo(config)))
    assert TrainConfig.from_file(tmp_path / "a2c.yml") == config
    (tmp_path / "best.yml").write_text(yaml.safe_dump(to_zoo(config)))
    with pytest.raises(ValueError, match="name it <algo>.yml"):
        TrainConfig.from_file(tmp_path / "best.yml")
