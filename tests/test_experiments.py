"""The drrl command line end to end, as subprocesses: files written, TensorBoard tags, reports, errors."""

import json
from pathlib import Path

import pytest
from conftest import SYNTHETIC, drrl, drrl_here
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

SYNTHETIC_ARGS = [f"{k}={v!r}" for k, v in SYNTHETIC.items()]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny Transformer-PPO run with behaviour cloning on the synthetic env."""
    root = tmp_path_factory.mktemp("train")
    out = drrl(
        "train",
        "--algo",
        "ppo",
        "--policy",
        "transformer",
        "--timesteps",
        256,
        "--seed",
        3,
        "--eval-freq",
        128,
        "--pretrain-bc",
        2,
        "--logdir",
        root / "runs",
        "--env-kwargs",
        *SYNTHETIC_ARGS,
        cwd=Path(__file__).parents[1],
    )
    return Path(out.stdout.strip().splitlines()[-1])


def test_train_writes_model_config_and_tensorboard_events(trained_run):
    assert trained_run.name.startswith("DRRL-v0__ppo-transformer__3__")
    assert (trained_run / "model.zip").stat().st_size > 0
    assert "algo: ppo" in (trained_run / "config.yaml").read_text()
    events = EventAccumulator(str(trained_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "drrl/fidelity",
        "drrl/cost_ratio",
        "drrl/flop_ratio",
        "drrl/mean_rank",
        "drrl/rank_layer_0",
        "drrl/masked_fraction",
        "drrl/perturbation",
        "drrl/reward_terms/fidelity",
        "eval/reward",
        "bc/loss",
        "rollout/ep_rew_mean",
    ):
        assert tag in tags, sorted(tags)
    bc = [e.value for e in events.Scalars("bc/loss")]
    assert len(bc) == 20 and bc[-1] < bc[0]
    plugins = {
        value.metadata.plugin_data.plugin_name
        for file in trained_run.glob("events.out.tfevents.*")
        for event in EventFileLoader(str(file)).Load()
        if event.HasField("summary")
        for value in event.summary.value
    }
    assert "hparams" in plugins  # the HParams tab


def test_resume_continues_from_the_checkpoint(trained_run):
    out = drrl("train", "--resume", trained_run, "--timesteps", 512, cwd=Path(__file__).parents[1])
    assert Path(out.stdout.strip().splitlines()[-1]) == trained_run
    assert "timesteps: 512" in (trained_run / "config.yaml").read_text()


def test_evaluate_a_run_and_a_baseline(trained_run, tmp_path):
    drrl("evaluate", "--model", trained_run, "--episodes", 2, "--out", tmp_path / "agent", cwd=tmp_path)
    rows = json.loads((tmp_path / "agent" / "episodes.json").read_text())
    assert len(rows) == 2 and all(r["steps"] > 0 for r in rows)
    assert "reward" in (tmp_path / "agent" / "episodes.csv").read_text().splitlines()[0]
    out = drrl(
        "evaluate",
        "--baseline",
        "fixed:32",
        "--episodes",
        2,
        "--env-kwargs",
        *SYNTHETIC_ARGS,
        "synthetic_head_dim=64",
        cwd=tmp_path,
    )
    assert "| fixed:32 | 2 |" in out.stdout


def test_evaluate_on_the_default_env_reports_model_level_metrics(tmp_path):
    drrl("evaluate", "--baseline", "fixed:16", "--episodes", 3, "--out", tmp_path, cwd=tmp_path)
    rows = json.loads((tmp_path / "episodes.json").read_text())
    for row in rows:
        assert 0 < row["end_fidelity"] < 1 and row["retrieval_same"] in (0.0, 1.0)
        assert row["attention_latency_ratio"] > 0 and row["ranks"] and row["ranks"][0][0] == 16


def test_compare_writes_a_filled_report_and_plots(tmp_path):
    out = tmp_path / "cmp"
    drrl(
        "compare",
        "--algos",
        "ppo,dqn",
        "--policies",
        "mlp,transformer",
        "--seeds",
        2,
        "--timesteps",
        128,
        "--episodes",
        2,
        "--tune-documents",
        2,
        "--out",
        out,
        "--env-kwargs",
        *SYNTHETIC_ARGS,
        cwd=tmp_path,
    )
    report = (out / "report.md").read_text()
    for method in ("ppo-mlp", "ppo-transformer", "dqn-mlp", "dqn-transformer", "oracle", "full"):
        assert f"| {method} |" in report
    assert "**Primary comparison**" in report and "sign-flip permutation test over topics, p =" in report
    assert "Holm-adjusted p =" in report and "Selection, before the test run, on the first" in report
    assert "Non-myopic reference: `planner`" in report
    for png in ("pareto.png", "ranks.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and (out / png).stat().st_size > 5000
    assert len(list((out / "runs").iterdir())) == 8
    (out / "report.md").unlink()
    rebuilt = drrl("report", out, cwd=tmp_path).stdout
    assert rebuilt.strip() == (out / "report.md").read_text().strip() and report.split("![")[0] in rebuilt


def test_compare_on_the_default_env(tmp_path):
    out = tmp_path / "cmp"
    drrl(
        "compare",
        "--algos",
        "a2c",  # 24-step rollouts: PPO would collect 512 steps whatever --timesteps says
        "--policies",
        "mlp",
        "--seeds",
        1,
        "--timesteps",
        64,
        "--episodes",
        2,
        "--tune-documents",
        1,
        "--latency-rounds",  # measured once, below, by the report's re-measurement
        0,
        "--no-planner",  # it replays each test document 1 + layers x ranks times: the synthetic compare runs it
        "--out",
        out,
        cwd=tmp_path,
    )
    report = (out / "report.md").read_text()
    assert "| a2c-mlp | 1 |" in report and "end_fidelity" in report and "Non-myopic reference" not in report
    rows = json.loads((out / "rows.json").read_text())
    assert all(r["attention_latency_ratio"] is None for r in rows)
    drrl("report", out, "--model-metrics", cwd=tmp_path)
    remeasured = json.loads((out / "rows.json").read_text())
    assert all(r["attention_latency_ratio"] > 0 for r in remeasured)
    assert [r["end_fidelity"] for r in remeasured] == pytest.approx([r["end_fidelity"] for r in rows], abs=1e-5)


def test_inspect_writes_plots(tmp_path):
    drrl("inspect", "--document", 1, "--energy", 0.8, "--out", tmp_path, cwd=tmp_path)
    assert (tmp_path / "spectra.png").stat().st_size > 5000 and (tmp_path / "minimal_ranks.png").stat().st_size > 5000


def test_profile_prints_measured_and_flop_ratios_and_plots(tmp_path):
    out = drrl(
        "profile", "--lengths", "64,128", "--out", tmp_path, "--env-kwargs", *SYNTHETIC_ARGS, cwd=tmp_path
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0] in ("64", "128")]
    assert len(rows) == 8 and all(row[-6:-3] == ["1.00", "/", "1.00"] for row in rows)  # 4 methods; full rank 1 / 1
    assert all(float(row[-3]) > 0 and float(row[-1]) > 0 for row in rows)  # the features, measured / FLOPs
    for method in ("svd", "shared_key", "calibrated", "loki"):
        assert f"method {method}" in out and f"profile of {method}: " in out
    assert (tmp_path / "speedup.png").stat().st_size > 5000


def test_tradeoff_reports_each_beta(tmp_path):
    out = drrl("tradeoff", "--betas", "0,100", "--documents", 2, "--env-kwargs", *SYNTHETIC_ARGS, cwd=tmp_path).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("ranks [2, 4, 6, 8, 10, 12, 14, 16]")
    assert lines[-2].startswith("beta 0: best fixed rank 16") and lines[-2].endswith("no trade-off")
    assert lines[-1].startswith("beta 100: best fixed rank 2") and lines[-1].endswith("no trade-off")


@pytest.mark.parametrize(
    "args,message",
    [
        (["tradeoff", "--documents", "0"], "--documents must be >= 1, got 0"),
        (["compare", "--jobs", "2", "--env-kwargs", "cost_model='profile'"], "use --jobs 1"),
        (["train", "--algo", "sac"], "unknown algo 'sac'"),
        (["train", "--policy", "cnn"], "unknown policy 'cnn'"),
        (["train", "--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["evaluate", "--baseline", "greedy"], "unknown baseline 'greedy'"),
        (["evaluate", "--model", "no-such-run"], "no saved agent at"),
        (["compare", "--algos", "sac"], "unknown algo 'sac'"),
        (["rollout", "--env-kwargs", "colour=1"], "unknown DRRL-v0 option"),
        (["train", "--resume", "no-such-run"], "is not a run folder"),
    ],
)
def test_bad_cli_input_exits_nonzero_with_one_line(tmp_path, args, message):
    result = drrl_here(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_evaluating_a_model_on_another_env_config_fails_cleanly(trained_run, tmp_path):
    result = drrl("evaluate", "--model", trained_run, "--env-kwargs", "beta=0.9", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "drrl evaluate: error: the agent was trained on another env config (beta: trained 0.55, now 0.9)"
    )
