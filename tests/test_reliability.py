"""Reliability: each numbered finding of the fault-injection audit, as a regression test."""

import json
import shutil
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SYNTHETIC, drrl_here

import drrl_env  # noqa: F401
from agents.sb3_agents import check_env_config
from drrl_env.attention.methods import get_method
from drrl_env.config import coerce_option
from drrl_env.costs import AttentionShape
from drrl_env.costs.latency import LatencyMeasurer, LatencyProfile, RankTimings, Timing
from drrl_env.env import RankSelectionEnv

SYNTHETIC_ARGS = [f"{k}={v}" for k, v in SYNTHETIC.items()]


def _episodes(env, n=2):
    for document in range(n):
        env.reset(options={"document": document})
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(0)
            done = terminated or truncated


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "analysis").glob("*.npz"))


# 1. A damaged analysis-cache entry is recomputed and replaced, with one warning naming the file.
@pytest.mark.parametrize("damage", ["truncate", "empty", "flip"])
def test_damaged_cache_entries_are_recomputed_and_replaced(tmp_path, damage):
    _episodes(RankSelectionEnv(**SYNTHETIC, cache_dir=str(tmp_path)))
    entry = _entries(tmp_path)[0]
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        entry.write_bytes(b"")
    else:
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
        entry.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=f"damaged analysis cache entry {entry}"):
        _episodes(RankSelectionEnv(**SYNTHETIC, cache_dir=str(tmp_path)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the entry was replaced by a good one
        _episodes(RankSelectionEnv(**SYNTHETIC, cache_dir=str(tmp_path)))


# 2. A cache folder that cannot be written degrades to no caching, with one warning; so does one deleted mid-run.
def test_unwritable_or_deleted_cache_folder_degrades_to_no_caching(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="continuing without the disk cache") as caught:
        _episodes(RankSelectionEnv(**SYNTHETIC, cache_dir=str(blocker)), n=3)
    assert len([w for w in caught if "disk cache" in str(w.message)]) == 1
    env = RankSelectionEnv(**SYNTHETIC, cache_dir=str(tmp_path / "cache"))
    _episodes(env, n=1)
    shutil.rmtree(tmp_path / "cache")
    _episodes(env, n=3)  # documents 1 and 2 are analysed and written again
    assert len(_entries(tmp_path / "cache")) == 2


# 3. A truncated latency-profile JSON is reported by name and re-measured; the profile keeps the spread.
SHAPE = AttentionShape(
    get_method("shared_key"),
    (4, 16),
    query_len=32,
    key_len=32,
    head_dim=16,
    n_heads=2,
    n_kv_heads=2,
    causal=True,
    compress_values=True,
    segment_len=32,
)


def test_truncated_latency_profile_is_named_and_re_measured(tmp_path):
    measurer = LatencyMeasurer(torch.device("cpu"), warmup=1, repeats=5)
    profile = LatencyProfile(SHAPE, "float32", measurer, tmp_path)
    profile.ratios(64)
    stored = json.loads(profile.path.read_text())["table"]["64"]
    assert stored["rounds"] == 5 and len(stored["ratio_spreads"]) == 2 and "unreliable" in stored
    profile.path.write_text(profile.path.read_text()[:40])
    with pytest.warns(RuntimeWarning, match=f"damaged latency profile {profile.path}"):
        again = LatencyProfile(SHAPE, "float32", measurer, tmp_path)
    again.ratios(64)
    assert again.measured == 1 and json.loads(again.path.read_text())["table"]["64"]["rounds"] == 5


# 4. Measurement: noisy points are re-measured and flagged; the same plan measured twice agrees within 10%.
def test_noisy_profile_points_are_re_measured_then_flagged(tmp_path, monkeypatch):
    calls = []

    def noisy(shape, dtype):
        calls.append(1)
        timing = Timing(1.0, 0.9, 5)
        return RankTimings([timing, timing], [timing, Timing(1.0, 0.0, 5)], features=Timing(0.1, 0.0, 5))

    measurer = LatencyMeasurer(torch.device("cpu"))
    monkeypatch.setattr(measurer, "time_ranks", noisy)
    profile = LatencyProfile(SHAPE, "float32", measurer, tmp_path)
    with pytest.warns(RuntimeWarning, match="marks them unreliable"):
        profile.ratios(32)
    assert len(calls) == LatencyProfile.ATTEMPTS and profile.unreliable == [32]


def test_a_plan_is_measured_again_in_more_rounds_while_noisy(tiny_llama):
    """Behaviour only: how alike two measurements come out depends on the machine's load, which a test
    cannot control (benchmarks/latency.py reports the agreement)."""
    env = RankSelectionEnv(
        model=tiny_llama,
        corpus=["Measured twice, cut once. " * 40],
        split="all",
        segment_len=32,
        min_doc_tokens=16,
        cache_dir=None,
    )
    ranks = np.full((env.source.spec.n_layers, env.analysis(0).n_segments), env.ranks[1])
    first = env.documents.attention_latency(0, ranks, rounds=7)
    second = env.documents.attention_latency(0, ranks, rounds=7)
    assert first.repeats in (7, 14, 21) and second.repeats in (7, 14, 21)  # more rounds while noisy
    assert all(0 < t.median < 100 and t.spread >= 0 for t in (first, second))


# 5. Evaluation on other data: data fields may differ from training (reported), the MDP's may not.
def test_data_fields_may_differ_from_training_but_the_mdp_may_not():
    trained = {"corpus": None, "max_seq_len": None, "beta": 0.55, "split": "train"}
    assert check_env_config(trained, {**trained, "corpus": "my_texts/", "split": "test"}) == [
        "corpus (trained None, now 'my_texts/')"
    ]
    with pytest.raises(ValueError, match="beta: trained 0.55, now 0.9"):
        check_env_config(trained, {**trained, "corpus": "my_texts/", "beta": 0.9})
    # a field added after the agent was trained counts as its default
    assert check_env_config(trained, {**trained, "loki_keys": 0.25}) == []
    with pytest.raises(ValueError, match="loki_keys: trained 0.25, now 0.5"):
        check_env_config(trained, {**trained, "loki_keys": 0.5})


# 6. Interrupts and resumes.
def test_interrupt_before_training_says_nothing_was_saved(tmp_path, monkeypatch, capsys):
    from experiments import cli, train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "make_vec_env", interrupted)
    code = cli.main(
        ["train", "--algo", "ppo", "--timesteps", "64", "--logdir", str(tmp_path), "--env-kwargs", *SYNTHETIC_ARGS]
    )
    assert code == 130 and "nothing was saved" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_interrupt_during_training_names_the_run_folder(tmp_path, monkeypatch, capsys):
    from experiments import cli, train

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.DrrlMetricsCallback, "_on_step", interrupted)
    code = cli.main(
        ["train", "--algo", "ppo", "--timesteps", "64", "--logdir", str(tmp_path), "--env-kwargs", *SYNTHETIC_ARGS]
    )
    run = next(tmp_path.iterdir())
    assert code == 130 and f"--resume {run}" in capsys.readouterr().err
    assert (run / "checkpoint.zip").exists()


def test_resume_keeps_the_progress_rows_written_before(tmp_path):
    from experiments.train import TrainConfig, train

    config = TrainConfig(
        algo="a2c", timesteps=96, eval_freq=1000, env_kwargs=dict(SYNTHETIC), hyperparams={"n_steps": 16}
    )
    run = train(config, tmp_path)
    before = (run / "progress.csv").read_text().splitlines()
    train(TrainConfig(**{**config.__dict__, "timesteps": 192}), resume=run)
    after = (run / "progress.csv").read_text().splitlines()
    assert len(after) > len(before) > 1 and after[1 : len(before)] == before[1:]
    assert not (run / "progress.before-resume.csv").exists()


def test_compare_rerun_reuses_finished_runs_and_redoes_killed_ones(tmp_path):
    from experiments.compare import compare

    def run_grid():
        compare(
            ["a2c"],
            ["mlp"],
            2,
            48,
            dict(SYNTHETIC),
            tmp_path,
            episodes=1,
            tune_documents=1,
            hyperparams={"n_steps": 16},
        )
        return sorted((tmp_path / "runs").iterdir())

    first, killed = run_grid()
    finished_at = (first / "model.zip").stat().st_mtime_ns
    for name in ("model.zip", "checkpoint.zip"):
        (killed / name).unlink(missing_ok=True)  # SIGKILLed before its first checkpoint
    orphan = tmp_path / "runs" / (killed.name.rsplit("__", 1)[0] + "__1")  # killed before writing its config
    orphan.mkdir()
    runs = run_grid()
    assert len(runs) == 2 and first in runs and orphan not in runs
    assert (first / "model.zip").stat().st_mtime_ns == finished_at  # not retrained
    assert all((run / "model.zip").exists() for run in runs)


# 7. Bad files and values are one-line errors, never tracebacks.
def _tiny_run(tmp_path) -> Path:
    from experiments.train import TrainConfig, train

    return train(
        TrainConfig(algo="a2c", timesteps=32, eval_freq=1000, env_kwargs=dict(SYNTHETIC), hyperparams={"n_steps": 16}),
        tmp_path / "runs",
    )


def test_bad_files_are_one_line_errors(tmp_path, tiny_llama):
    (tmp_path / "bad.yaml").write_text("algo: [ppo\n")
    run = _tiny_run(tmp_path)
    empty_run = tmp_path / "empty-run"
    empty_run.mkdir()
    (empty_run / "config.yaml").write_text("")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes((run / "model.zip").read_bytes()[:500])
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cases = [
        (["train", "--config", "bad.yaml"], "config file 'bad.yaml' is not valid YAML"),
        (["train", "--config", "."], "config file '.' is not a file"),
        (["train", "--resume", empty_run], "is empty; the run cannot be resumed"),
        (["evaluate", "--model", truncated], "is not a readable saved agent"),
        (["train", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["rollout", "--env-kwargs", "device=1"], "device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got '1'"),
        (["rollout", "--env-kwargs", f"model={model}"], "cannot load model"),
        (["evaluate", "--baseline", "full", "--episodes", "0", "--out", "ev"], "--episodes must be >= 1, got 0"),
    ]
    for args, message in cases:
        result = drrl_here(*args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr[-2000:])
        assert message in lines[-1] and len([ln for ln in lines if "error" in ln]) == 1, (args, lines)
    assert not (tmp_path / "ev").exists()


# 8. Wrong values are converted or refused, never silently accepted.
def test_option_values_are_typed_or_refused():
    env = gym.make("DRRL-v0", **SYNTHETIC, safety="false", per_head="false")
    assert env.unwrapped.config.safety is False and isinstance(env.action_space, gym.spaces.Discrete)
    assert coerce_option("ranks", "4,8,16") == (4, 8, 16)
    for name, value, message in [
        ("ranks", (8.7, 16), "ranks must be a list of integers"),
        ("bound_clip", 0, "bound_clip must be > 0"),
        ("device", 1, "device must be a string"),
    ]:
        with pytest.raises(ValueError, match=message):
            gym.make("DRRL-v0", **SYNTHETIC, **{name: value})


def test_actions_and_options_are_strict():
    env = RankSelectionEnv(**SYNTHETIC, per_head=True)
    env.reset(seed=0)
    for bad in ([-0.5, 0, 0, 0], [1.9, 0, 0, 0], ["1"] * 4):
        with pytest.raises(ValueError, match="integers only"):
            env.step(bad)
    env.step([1, 0, 0, 0])
    with pytest.raises(ValueError, match="options\\['document'\\]=True"):
        env.reset(options={"document": True})


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--eval-freq", "0"], "--eval-freq must be >= 1, got 0"),
        (["rollout", "--episodes", "-3"], "--episodes must be >= 1, got -3"),
        (["compare", "--seeds", "0", "--out", "cmp"], "--seeds must be >= 1, got 0"),
    ],
)
def test_counts_are_checked_before_any_work(tmp_path, args, message):
    result = drrl_here(*args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "cmp").exists()


def test_a_non_utf8_corpus_file_is_named(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Café au lait. ".encode("latin-1") * 30)
    with pytest.raises(ValueError, match="latin1.txt' is not UTF-8 text"):
        RankSelectionEnv(corpus=str(tmp_path), split="all", cache_dir=None)


# 9. Cold starts: the cache can be filled ahead of a run, and the thread count chosen.
def test_precompute_fills_the_cache_that_a_later_env_reads(tmp_path, monkeypatch):
    from experiments.precompute import precompute

    kwargs = {**SYNTHETIC, "split": "train", "cache_dir": str(tmp_path)}
    assert precompute("DRRL-v0", kwargs, jobs=2) == 5  # draws 5-9: two chunks, two processes
    calls = []
    monkeypatch.setattr("drrl_env.documents.analyse", lambda *args, **kwargs: calls.append(1))
    _episodes(RankSelectionEnv(**kwargs), n=5)
    assert calls == []


def test_threads_option_sets_torch_threads_and_zero_leaves_busy_cores_alone(monkeypatch):
    before = torch.get_num_threads()
    try:
        RankSelectionEnv(**SYNTHETIC, threads=1, cache_dir=None)
        assert torch.get_num_threads() == 1
        monkeypatch.setattr("os.cpu_count", lambda: 4)
        monkeypatch.setattr("os.getloadavg", lambda: (2.9, 0.0, 0.0))  # three cores busy elsewhere
        RankSelectionEnv(**SYNTHETIC, threads=0, cache_dir=None)
        assert torch.get_num_threads() == 1
        monkeypatch.setattr("os.getloadavg", lambda: (0.2, 0.0, 0.0))
        RankSelectionEnv(**SYNTHETIC, threads=0, cache_dir=None)
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_evaluations_fire_once_per_rollout_not_inside_one(tmp_path):
    """The policy changes only between rollouts: with eval_freq far below n_steps, one evaluation per
    rollout (and the final one), where firing inside a rollout gave n_steps / eval_freq identical ones."""
    from experiments.train import TrainConfig, train

    seen = []
    config = TrainConfig(
        algo="a2c", timesteps=48, eval_freq=4, eval_episodes=1, env_kwargs=dict(SYNTHETIC), hyperparams={"n_steps": 16}
    )
    train(config, tmp_path, on_eval=lambda steps, means: seen.append(steps))
    assert seen == [16, 32, 48, 48]  # three rollouts, then the evaluation after training
