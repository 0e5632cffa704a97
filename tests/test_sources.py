"""Attention sources: capture through the transformers registry, synthetic generator, corpus."""

import itertools

import pytest
import torch

from drrl_env.attention.kernels import causal_mask, full_attention
from drrl_env.sources.corpus import MIN_SHARED_PARAGRAPH, load_corpus
from drrl_env.sources.hf import HFAttentionSource
from drrl_env.sources.synthetic import SyntheticSource

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 12,
    "Attention is all you need, they said. " * 14,
    "Low rank approximations save work when the spectrum decays. " * 10,
]


def _source(model, corpus=TEXTS, **kw):
    kw = {
        "tokenizer": None,
        "split": "all",
        "max_seq_len": None,
        "min_doc_tokens": 16,
        "device": torch.device("cpu"),
        **kw,
    }
    return HFAttentionSource(model, corpus=corpus, **kw)


def _attention_input_of_o_proj(model, module_path, token_ids):
    """The real attention output of layer 0 (the input of its output projection), (L, H*d)."""
    seen = {}
    module = model.get_submodule(module_path)
    handle = module.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0][0].detach()))
    with torch.no_grad():
        model(input_ids=token_ids[None], use_cache=False)
    handle.remove()
    return seen["x"]


@pytest.mark.parametrize(
    "fixture,o_proj", [("tiny_llama", "layers.0.self_attn.o_proj"), ("tiny_gpt2", "h.0.attn.c_proj")]
)
def test_captured_qkv_reproduce_the_models_causal_attention(request, fixture, o_proj):
    source = _source(request.getfixturevalue(fixture))
    spec = source.spec
    assert spec.causal and spec.n_layers == 2
    trace = source.trace(0)
    ids = source.token_ids(0)
    real = _attention_input_of_o_proj(source.model, o_proj, ids)  # (L, H*d)
    group = spec.n_heads // spec.n_kv_heads
    keys = trace.keys[0].repeat_interleave(group, 0)  # (H, L, d)
    values = trace.values[0].repeat_interleave(group, 0)
    length = trace.seq_len
    ours = full_attention(trace.queries[0], keys, values, trace.scaling[0], causal_mask(0, length, length))
    assert torch.allclose(ours.transpose(0, 1).reshape(length, -1), real, atol=1e-4)
    bidirectional = full_attention(trace.queries[0], keys, values, trace.scaling[0], None)
    assert not torch.allclose(bidirectional.transpose(0, 1).reshape(length, -1), real, atol=1e-3)


def test_grouped_query_attention_keeps_fewer_kv_heads(tiny_llama):
    source = _source(tiny_llama)
    assert (source.spec.n_heads, source.spec.n_kv_heads) == (4, 2)
    trace = source.trace(1)
    assert trace.queries.shape[1] == 4 and trace.keys.shape[1] == 2 and trace.values.shape[1] == 2


def test_default_model_is_bundled_minilm_and_bidirectional():
    source = _source("all-MiniLM-L6-v2", corpus=TEXTS)
    assert source.spec.n_layers == 6 and source.spec.n_heads == 12 and source.spec.head_dim == 32
    assert source.spec.max_seq_len == 512 and not source.spec.causal
    trace = source.trace(0)
    assert torch.allclose(trace.scaling, torch.full((6,), 32**-0.5))


def test_documents_are_truncated_to_max_seq_len():
    source = _source("all-MiniLM-L6-v2", corpus=["word " * 2000], max_seq_len=100)
    assert source.trace(0).seq_len == 100
    with pytest.raises(ValueError, match="exceeds model"):
        _source("all-MiniLM-L6-v2", max_seq_len=100_000)


def test_synthetic_source_is_seeded_and_its_decay_controls_the_spectrum():
    def make(decay, seed=0):
        return SyntheticSource(
            n_layers=1,
            n_heads=2,
            n_kv_heads=1,
            head_dim=16,
            seq_len=128,
            decay=decay,
            head_variety=0.0,
            causal=True,
            n_documents=5,
            seed=seed,
        )

    a, b = make(1.0).trace(3), make(1.0).trace(3)
    assert torch.equal(a.queries, b.queries) and torch.equal(a.keys, b.keys)
    assert not torch.equal(make(1.0, seed=1).trace(3).queries, a.queries)

    def top4_energy(trace):
        sv = torch.linalg.svdvals(trace.keys[0, 0])
        return float((sv[:4] ** 2).sum() / (sv**2).sum())

    assert top4_energy(make(2.0).trace(0)) > top4_energy(make(0.5).trace(0)) + 0.2
    long = SyntheticSource(
        n_layers=1,
        n_heads=1,
        n_kv_heads=1,
        head_dim=8,
        seq_len=8192,
        decay=1.0,
        head_variety=0.5,
        causal=True,
        n_documents=1,
        seed=0,
    ).trace(0)
    assert long.seq_len == 8192


def _long_paragraphs(documents) -> set[str]:
    """Every normalized paragraph of MIN_SHARED_PARAGRAPH characters or more, written out here (not the
    module's helper)."""
    return {
        " ".join(p.split())
        for d in documents
        for p in d.text.split("\n\n")
        if len(" ".join(p.split())) >= MIN_SHARED_PARAGRAPH
    }


def _assert_leak_free(corpus) -> dict[str, list]:
    splits = {name: load_corpus(corpus, name) for name in ("train", "validation", "test")}
    for a, b in itertools.combinations(splits, 2):
        assert not {d.group for d in splits[a]} & {d.group for d in splits[b]}, (a, b)  # a topic in one split
        assert not _long_paragraphs(splits[a]) & _long_paragraphs(splits[b]), (a, b)  # no shared paragraph
    assert [d.name for d in load_corpus(corpus, "test")] == [d.name for d in splits["test"]]  # fixed
    return splits


@pytest.mark.parametrize("corpus", [None, "stdlib-docs"], ids=["pydoc", "stdlib-docs"])
def test_built_in_corpora_splits_share_no_text(corpus):
    splits = _assert_leak_free(corpus)
    assert len(splits["train"]) > len(splits["test"]) > len(splits["validation"]) > 5
    assert len({d.group for d in splits["test"]}) >= 15


def test_the_stdlib_source_corpus_is_code_split_as_its_modules_documentation():
    splits = _assert_leak_free("stdlib-source")
    docs = {d.name: d.split for d in load_corpus("stdlib-docs")}
    for split, documents in splits.items():
        assert documents and all(docs.get(d.name, split) == split for d in documents), split
        assert sum("\ndef " in d.text or "\n    def " in d.text for d in documents) > 0.8 * len(documents), split
    assert len(splits["validation"]) > 5


def test_default_test_split_is_wide_enough_for_the_headline(default_env):
    """>= 48 test documents of >= 64 MiniLM tokens, from >= 15 topics."""
    import gymnasium as gym

    names = gym.make("DRRL-v0", split="test").unwrapped.document_names()
    assert len(names) >= 48 and len({n.split("#")[0] for n in names}) >= 15


def test_a_users_corpus_is_made_leak_free(tmp_path):
    """A file that repeats another is left out; a paragraph two files share stays in one split."""
    shared = "A paragraph that two of the user's files hold, long enough to count as shared text between them."
    own = "Own text of file {}, long enough to be a paragraph of its own that is worth keeping in this file."
    texts = {f"f{i}.txt": f"{own.format(i)}\n\n{shared}" for i in range(40)}
    texts["copy.txt"] = texts["f0.txt"]
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    splits = _assert_leak_free(str(tmp_path))
    documents = [d for docs in splits.values() for d in docs]
    assert len({d.group for d in documents}) == 40  # the copy is out
    assert sum(shared in d.text for d in documents) == sum(d.split == "train" for d in documents)


def test_corpus_from_folder_and_file(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\n\nsecond paragraph")
    (tmp_path / "b.txt").write_text("another document")
    docs = load_corpus(str(tmp_path), "all")
    assert [d.group for d in docs] == ["a.txt", "b.txt"]
    assert load_corpus(str(tmp_path / "a.txt"), "all")[0].text == "first paragraph\n\nsecond paragraph"


@pytest.mark.parametrize(
    "corpus,message",
    [([], "holds no text"), (["ok", "  "], "non-empty string"), ("/no/such/path", "neither a file nor a folder")],
)
def test_bad_corpora_are_rejected(corpus, message):
    with pytest.raises(ValueError, match=message):
        load_corpus(corpus, "all")


def test_the_stdlib_corpus_is_the_same_text_in_every_process():
    """No memory address or environment variable leaks into a document: its tokens (and every cache key
    built on them) must not change between runs."""
    import os
    import subprocess
    import sys

    code = (
        "import hashlib; from drrl_env.sources.corpus import load_corpus; "
        "print(hashlib.sha256(''.join(d.text for d in load_corpus('stdlib-docs')).encode()).hexdigest())"
    )
    runs = [  # side by side: each renders the whole corpus (12 s)
        subprocess.Popen(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed), "DRRL_TEST_NOISE": "x" * seed},
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    digests = {run.communicate(timeout=300)[0] for run in runs}
    assert all(run.returncode == 0 for run in runs) and len(digests) == 1
