"""The ``charlm`` model: corpus, quality vs count baselines, batching invariance, cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_gen_support import charlm
from wsserve import modelstore
from wsserve.models import charlm as charlm_mod
from wsserve.models.charlm import (
    VOCAB,
    CharLM,
    CharLMConfig,
    load_corpus,
    normalize_text,
    train_charlm,
)

SMALL = CharLMConfig(steps=40, max_corpus_chars=60_000)  # fast, for cache mechanics only


def test_public_api() -> None:
    assert set(charlm_mod.__all__) == {
        "CharLM", "CharLMConfig", "Corpus", "VOCAB", "charlm_config", "load_corpus",
        "normalize_text", "train_charlm",
    }


def test_corpus_is_deterministic_capped_and_in_vocabulary() -> None:
    a, b = load_corpus(), load_corpus()
    assert a == b and a.chars > 100_000
    assert set("".join(a.documents)) <= set(VOCAB)
    small = load_corpus(5_000)
    assert small.chars == 5_000 and small.sha256 != a.sha256


def test_corpus_falls_back_to_builtin_docstrings(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)  # the import now fails
    corpus = load_corpus()
    assert corpus.source == "builtins-docstrings" and corpus.chars > 50_000
    assert set("".join(corpus.documents)) <= set(VOCAB)
    model = train_charlm(use_cache=False, config=CharLMConfig(steps=150))
    assert model.info.metrics["corpus"] == "builtins-docstrings"
    assert model.info.metrics["heldout_bpc"] < model.info.metrics["bigram_bpc"]


def test_info_reports_bpc_and_beats_the_bigram_baseline() -> None:
    m = charlm().info.metrics
    assert m["heldout_chars"] > 10_000 and m["train_chars"] > 10 * m["heldout_chars"] / 2
    # The count baselines are computed on the same split; the network must beat both.
    assert m["unigram_bpc"] > m["bigram_bpc"] > m["heldout_bpc"]
    assert m["bigram_bpc"] - m["heldout_bpc"] > 0.5, m
    info = charlm().info
    assert (info.name, info.version, info.task) == ("charlm", "1", "generation")
    assert info.output_shape == (len(VOCAB),) and info.parameters > 10_000
    assert info.to_json()["context_len"] == charlm().context_len


def test_heldout_bpc_matches_an_independent_float_computation() -> None:
    """The reported bpc is that of the quantised model, which must be ~ the float network."""
    model = charlm()
    arrays, _ = model.to_arrays()
    rng = np.random.default_rng(3)
    ctx = rng.integers(0, model.pad_id + 1, (500, model.context_len))
    emb, w1, b1, w2, b2 = (arrays[n].astype(np.float64) for n in ("embed", "w1", "b1", "w2", "b2"))
    hidden = np.maximum(emb[ctx].reshape(len(ctx), -1) @ w1 + b1, 0)
    ref = hidden @ w2 + b2
    assert np.abs(model.logits(ctx) - ref).max() < 1e-3


@pytest.mark.parametrize("sizes", [(1, 2, 3, 17, 64), (5, 31, 100, 256)])
def test_logits_rows_are_bitwise_identical_whatever_the_batch(sizes: tuple[int, ...]) -> None:
    model = charlm()
    rng = np.random.default_rng(sum(sizes))
    ctx = rng.integers(0, model.pad_id + 1, (max(sizes) + 7, model.context_len))
    full = model.logits(ctx)
    for b in sizes:
        for start in (0, 7):
            part = model.logits(ctx[start:start + b])
            assert part.shape == (b, model.vocab_size)
            assert np.array_equal(part, full[start:start + b]), (b, start)
    assert np.array_equal(model.logits(ctx[::-1])[::-1], full)  # order within the batch


def test_encode_decode_and_context() -> None:
    model = charlm()
    ids = model.encode("Hi\tthere\r\n")
    assert model.decode(ids) == "Hi there\n"
    k = model.context_len
    ctx = model.initial_context("ab")
    assert ctx.shape == (k,) and list(ctx[:-2]) == [model.pad_id] * (k - 2)
    assert model.decode(ctx[-2:]) == "ab"
    long = "x" * 1000 + "The end"
    assert model.decode(model.initial_context(long)) == long[-k:]
    assert list(model.initial_context("")) == [model.pad_id] * k


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("café", "cafe"),
        ("\u201cquoted\u201d \u2014 it\u2019s", '"quoted" - it\'s'),
        ("e\u0301", "e"),  # decomposed accent: the lone combining mark is dropped
        ("日本 ok", "   ok"),  # no ASCII form: a space each
        ("a\rb\r\nc", "a\nb\nc"),
        ("plain ascii", "plain ascii"),
    ],
)
def test_out_of_vocabulary_characters_are_normalised_not_rejected(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected
    assert set(normalize_text(raw)) <= set(VOCAB)


def test_cache_round_trip_loads_identical_weights(tmp_path: Path) -> None:
    first = train_charlm(seed=1, cache_dir=tmp_path, config=SMALL)
    assert first.info.metrics["loaded_from_cache"] is False
    assert len(list(tmp_path.glob("charlm-*.npz"))) == 1
    t0 = time.perf_counter()
    second = train_charlm(seed=1, cache_dir=tmp_path, config=SMALL)
    assert second.info.metrics["loaded_from_cache"] is True
    ctx = np.random.default_rng(0).integers(0, first.pad_id + 1, (50, first.context_len))
    assert np.array_equal(first.logits(ctx), second.logits(ctx))
    assert second.info.metrics["heldout_bpc"] == first.info.metrics["heldout_bpc"]
    assert time.perf_counter() - t0 < 5  # sanity only; speed is measured in benchmarks/
    other_seed = train_charlm(seed=2, cache_dir=tmp_path, config=SMALL)
    assert other_seed.info.metrics["loaded_from_cache"] is False
    assert len(list(tmp_path.glob("charlm-*.npz"))) == 2


def test_corrupt_cache_file_is_retrained_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train_charlm(seed=1, cache_dir=tmp_path, config=SMALL)
    (path,) = tmp_path.glob("charlm-*.npz")
    path.write_bytes(path.read_bytes()[:200])
    again = train_charlm(seed=1, cache_dir=tmp_path, config=SMALL)
    assert again.info.metrics["loaded_from_cache"] is False
    assert "retraining charlm" in caplog.text
    assert modelstore.load(tmp_path, "charlm", charlm_mod.charlm_config(1, load_corpus(SMALL.max_corpus_chars), SMALL))


def test_use_cache_false_neither_reads_nor_writes(tmp_path: Path) -> None:
    m = train_charlm(seed=1, cache_dir=tmp_path, use_cache=False, config=SMALL)
    assert m.info.metrics["loaded_from_cache"] is False
    assert not list(tmp_path.iterdir())


def test_training_is_deterministic_for_a_seed() -> None:
    a = train_charlm(seed=5, use_cache=False, config=SMALL)
    b = train_charlm(seed=5, use_cache=False, config=SMALL)
    c = train_charlm(seed=6, use_cache=False, config=SMALL)
    arr_a, arr_b, arr_c = a.to_arrays()[0], b.to_arrays()[0], c.to_arrays()[0]
    assert all(np.array_equal(arr_a[n], arr_b[n]) for n in arr_a)
    assert not np.array_equal(arr_a["w1"], arr_c["w1"])


def test_from_arrays_rejects_bad_shapes_and_non_finite_values() -> None:
    arrays, meta = charlm().to_arrays()
    CharLM.from_arrays(arrays, meta)  # the real thing loads
    bad = dict(arrays, w2=arrays["w2"][:, :-1])
    with pytest.raises(ValueError, match="shapes"):
        CharLM.from_arrays(bad, meta)
    nan = dict(arrays, b2=np.full_like(arrays["b2"], np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        CharLM.from_arrays(nan, meta)
    with pytest.raises(KeyError):
        CharLM.from_arrays({k: v for k, v in arrays.items() if k != "embed"}, meta)
