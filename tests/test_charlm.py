"""The ``charlm`` model: corpus, gradients, quality vs count baselines, batching invariance, cache."""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from tests.test_gen_support import charlm
from wsserve import modelstore
from wsserve.models import charlm as charlm_mod
from wsserve.models.charlm import (
    VOCAB,
    CharLM,
    CharLMConfig,
    CharLMParams,
    charlm_config,
    forward,
    init_params,
    load_corpus,
    loss_and_grads,
    normalize_text,
    train_charlm,
)
from wsserve.trainer import TRAINERS, CachedTrainer, train_default_models

SMALL = CharLMConfig(steps=40, max_corpus_chars=60_000)  # fast, for cache mechanics only


def test_public_api() -> None:
    assert set(charlm_mod.__all__) == {
        "CharLM", "CharLMConfig", "CharLMParams", "Corpus", "VOCAB", "charlm_config", "forward",
        "init_params", "load_corpus", "loss_and_grads", "normalize_text", "train_charlm",
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
    model = train_charlm(config=CharLMConfig(steps=150))
    assert model.info.metrics["corpus"] == "builtins-docstrings"
    assert model.info.metrics["heldout_bpc"] < model.info.metrics["bigram_bpc"]


# -- the training numerics ------------------------------------------------------

def _log_softmax_loss(params: CharLMParams, contexts: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy written independently of loss_and_grads."""
    logits = forward(params, contexts)[0]
    m = logits.max(axis=1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(targets)), targets]))


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(0)
    cfg = CharLMConfig(context_len=3, embed_dim=4, hidden=5)
    targets = rng.integers(0, len(VOCAB), 11)
    params = init_params(rng, cfg, targets, dtype=np.float64)
    params = params._replace(b1=rng.standard_normal(5) * 0.3)  # every term exercised
    # ids incl. PAD (= V) and a repeated id, so embedding rows accumulate
    contexts = rng.integers(len(VOCAB) - 6, len(VOCAB) + 1, (11, 3))
    contexts[0] = [len(VOCAB)] * 3
    loss, grads = loss_and_grads(params, contexts, targets)
    assert loss == pytest.approx(_log_softmax_loss(params, contexts, targets), rel=1e-12)
    h = 1e-6
    for name, arr, grad in zip(CharLMParams._fields, params, grads):
        assert grad.shape == arr.shape and grad.dtype == np.float64, name
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            if name == "embed" and idx[0] not in contexts:
                continue  # rows no context uses: the gradient must be exactly 0 (checked below)
            old = arr[idx]
            arr[idx] = old + h
            up = _log_softmax_loss(params, contexts, targets)
            arr[idx] = old - h
            down = _log_softmax_loss(params, contexts, targets)
            arr[idx] = old
            numeric[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8, err_msg=name)
    assert np.abs(grads.b1).max() > 1e-3 and np.abs(grads.embed[len(VOCAB)]).max() > 1e-3


def _pre_refactor_grads(params: CharLMParams, xb: np.ndarray, yb: np.ndarray) -> list[np.ndarray]:
    """The gradient lines of ``charlm._fit``'s loop as of commit f988082 (before loss_and_grads)."""
    f = np.float32
    emb, w1, b1, w2, b2 = params
    bs, k = xb.shape
    d, v = emb.shape[1], w2.shape[1]
    rows = np.arange(bs)
    onehot = np.zeros((bs * k, v + 1), f)
    flat_rows = np.arange(bs * k)
    a0 = emb[xb].reshape(bs, k * d)  # [bs, k*d]
    pre = a0 @ w1 + b1  # [bs, H]
    act = np.maximum(pre, 0)
    z = act @ w2 + b2  # [bs, V]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[rows, yb] -= 1.0
    dz = p / bs  # d loss / d logits
    dact = dz @ w2.T
    dact *= pre > 0
    da0 = (dact @ w1.T).reshape(bs * k, d)
    onehot[flat_rows, xb.ravel()] = 1.0
    return [onehot.T @ da0, a0.T @ dact, dact.sum(0), act.T @ dz, dz.sum(0)]


def test_float32_gradients_are_bit_identical_to_the_pre_refactor_loop() -> None:
    """Only the optimiser's arithmetic changed charlm's weights (ALGORITHM /1 -> /2)."""
    cfg = CharLMConfig()
    corpus = load_corpus(60_000)
    x, y = charlm_mod._windows(list(corpus.documents), cfg.context_len)
    rng = np.random.default_rng(1)
    params = init_params(rng, cfg, y)
    pick = rng.integers(0, len(y), cfg.batch_size)
    with threadpool_limits(limits=1):
        loss, grads = loss_and_grads(params, x[pick], y[pick])
        old = _pre_refactor_grads(params, x[pick], y[pick])
    assert all(g.dtype == np.float32 for g in grads)
    for name, new, ref in zip(CharLMParams._fields, grads, old):
        assert np.array_equal(new, ref), name
    assert 0 < loss < math.log(len(VOCAB)) + 1


#: sha256 of the default seed-0 weights (sorted names, raw bytes) at the commit
#: that moved charlm onto the shared optimiser, on this BLAS build (other builds
#: sum matrix products in another order, so they get other bits).
_PINNED_BLAS = ("openblas", "0.3.31.188.0", "SkylakeX")
_PINNED_SHA256 = "2427d40eafc9a3c23559872e1f78fb6c8b27febd910072a5d9c21e69f6f9afc5"


def test_default_weights_are_pinned_on_the_reference_blas() -> None:
    blas = [(i["internal_api"], i["version"], i.get("architecture")) for i in threadpool_info()
            if i["user_api"] == "blas"]
    if blas != [_PINNED_BLAS]:
        pytest.skip(f"weights pinned on BLAS {_PINNED_BLAS}, this is {blas}")
    arrays, _ = charlm().to_arrays()
    digest = hashlib.sha256(b"".join(arrays[k].tobytes() for k in sorted(arrays))).hexdigest()
    assert digest == _PINNED_SHA256


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("steps", 0, "steps must be >= 1"),
        ("warmup_steps", 0, "warmup_steps must be >= 1"),
        ("heldout_every", 1, "heldout_every must be >= 2"),
        ("learning_rate", 0.0, "learning_rate must be > 0"),
        ("learning_rate", math.inf, "learning_rate must be > 0"),
        ("final_lr_fraction", 1.5, r"final_lr_fraction must be in \[0, 1\]"),
        ("beta2", 1.0, r"beta2 must be in \[0, 1\)"),
        ("eps", -1e-8, "eps must be finite and >= 0"),
    ],
)
def test_config_rejects_out_of_range_values(field: str, value: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CharLMConfig(**{field: value})


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    cfg = CharLMConfig(steps=200, warmup_steps=20, learning_rate=0.01, final_lr_fraction=0.1)
    lrs = [charlm_mod._learning_rate(cfg, t) for t in range(1, 201)]
    assert lrs[0] == pytest.approx(0.01 * (1 / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 200))))
    assert max(lrs) == lrs[19] and all(a < b for a, b in itertools.pairwise(lrs[:20]))
    assert all(a > b for a, b in itertools.pairwise(lrs[19:]))
    assert lrs[-1] == pytest.approx(0.001)


# -- the trained default model ------------------------------------------------------

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


def _logits_as_first_written(model: CharLM, contexts: np.ndarray) -> np.ndarray:
    """The original arithmetic of ``CharLM.logits`` on the model's quantised arrays: a per-row
    sum of the k table rows, relu, shift, the integer matmul, then the power-of-two scale."""
    h = np.zeros((len(contexts), model.hidden), np.int64)
    for j in range(model.context_len):
        h += model._tables[contexts[:, j] + j * (model.vocab_size + 1)]
    hq = np.maximum(h, 0) >> model._h_shift
    out = hq.astype(np.float64) @ model._w2
    out *= model._out_scale
    return out + model._b2


@pytest.mark.parametrize("b", [1, 2, 4, 5, 8, 31, 64, 257])
def test_logits_are_bitwise_those_of_the_original_arithmetic(b: int) -> None:
    """The optimised gathers and the folded output scale change no bit of any logit
    (so no generated token changes)."""
    model = charlm()
    rng = np.random.default_rng(b)
    ctx = rng.integers(0, model.pad_id + 1, (b, model.context_len))
    ctx[0] = model.pad_id  # an empty prompt's context
    assert np.array_equal(model.logits(ctx), _logits_as_first_written(model, ctx))


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


@pytest.fixture
def small_charlm(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Register charlm with the SMALL config; returns the seeds it was trained for."""
    trained: list[int] = []

    def train(*, seed: int) -> CharLM:
        trained.append(seed)
        return train_charlm(seed=seed, config=SMALL)

    monkeypatch.setitem(TRAINERS, "charlm", CachedTrainer(
        train, functools.partial(charlm_config, config=SMALL), CharLM.from_arrays))
    return trained


def test_registered_trainer_caches_the_default_model(tmp_path: Path) -> None:
    """The real registry entry: config holds the corpus hash; a second start loads the same weights."""
    entry = TRAINERS["charlm"]
    config = entry.config(0)
    assert config["corpus_sha256"] == load_corpus().sha256
    assert config["algorithm"] == charlm_mod.ALGORITHM and config["beta2"] == 0.99
    first = train_default_models(names=["charlm"], cache_dir=tmp_path)["charlm"]
    assert first.info.metrics["loaded_from_cache"] is False
    assert [p.name for p in tmp_path.iterdir()] == [modelstore.model_path(tmp_path, "charlm", config).name]
    second = train_default_models(names=["charlm"], cache_dir=tmp_path)["charlm"]
    assert second.info.metrics["loaded_from_cache"] is True
    reference, _ = charlm().to_arrays()  # trained without any cache, same seed
    for model in (first, second):
        arrays, _ = model.to_arrays()
        assert all(np.array_equal(arrays[k], reference[k]) for k in reference)


def test_cache_round_trip_loads_identical_weights(tmp_path: Path, small_charlm: list[int]) -> None:
    first = train_default_models(seed=1, cache_dir=tmp_path, names=["charlm"])["charlm"]
    assert first.info.metrics["loaded_from_cache"] is False
    assert len(list(tmp_path.glob("charlm-*.npz"))) == 1
    second = train_default_models(seed=1, cache_dir=tmp_path, names=["charlm"])["charlm"]
    assert second.info.metrics["loaded_from_cache"] is True and small_charlm == [1]
    ctx = np.random.default_rng(0).integers(0, first.pad_id + 1, (50, first.context_len))
    assert np.array_equal(first.logits(ctx), second.logits(ctx))
    assert second.info.metrics["heldout_bpc"] == first.info.metrics["heldout_bpc"]
    other_seed = train_default_models(seed=2, cache_dir=tmp_path, names=["charlm"])["charlm"]
    assert other_seed.info.metrics["loaded_from_cache"] is False and small_charlm == [1, 2]
    assert len(list(tmp_path.glob("charlm-*.npz"))) == 2


def test_corrupt_cache_file_is_retrained_and_replaced(
    tmp_path: Path, small_charlm: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    train_default_models(seed=1, cache_dir=tmp_path, names=["charlm"])
    (path,) = tmp_path.glob("charlm-*.npz")
    path.write_bytes(path.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="wsserve.trainer"):
        again = train_default_models(seed=1, cache_dir=tmp_path, names=["charlm"])["charlm"]
    assert again.info.metrics["loaded_from_cache"] is False and small_charlm == [1, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("retraining" in w and str(path) in w for w in warnings), warnings
    assert modelstore.load(tmp_path, "charlm", charlm_config(1, SMALL))  # rewritten, readable


def test_cache_file_with_unusable_arrays_is_retrained(
    tmp_path: Path, small_charlm: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed file whose arrays CharLM rejects (a 1-d embedding) is a warning, not a crash."""
    arrays, meta = train_charlm(seed=1, config=SMALL).to_arrays()
    config = charlm_config(1, SMALL)
    path = modelstore.save(tmp_path, "charlm", config, dict(arrays, embed=arrays["embed"][:, 0]), meta)
    with caplog.at_level(logging.WARNING, logger="wsserve.trainer"):
        model = train_default_models(seed=1, cache_dir=tmp_path, names=["charlm"])["charlm"]
    assert model.info.metrics["loaded_from_cache"] is False and small_charlm == [1]
    assert any(str(path) in r.getMessage() and "'embed'" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_cache_false_neither_reads_nor_writes(tmp_path: Path, small_charlm: list[int]) -> None:
    train_default_models(seed=1, cache_dir=tmp_path, names=["charlm"])
    before = sorted(tmp_path.iterdir())
    m = train_default_models(seed=1, cache_dir=tmp_path, cache=False, names=["charlm"])["charlm"]
    assert m.info.metrics["loaded_from_cache"] is False and small_charlm == [1, 1]
    assert sorted(tmp_path.iterdir()) == before
    train_default_models(seed=1, cache_dir=tmp_path / "none", cache=False, names=["charlm"])
    assert not (tmp_path / "none").exists()


def test_training_is_deterministic_for_a_seed() -> None:
    a = train_charlm(seed=5, config=SMALL)
    b = train_charlm(seed=5, config=SMALL)
    c = train_charlm(seed=6, config=SMALL)
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
    for name, bad_array in (("embed", arrays["embed"][:, 0]), ("w1", arrays["w1"][:, :0]),
                            ("b2", np.float64(0.0)), ("w2", arrays["w2"][None])):
        with pytest.raises(ValueError, match=f"'{name}' has shape"):
            CharLM.from_arrays(dict(arrays, **{name: bad_array}), meta)
