"""The ``charlm`` default model: a character-level language model for ``generate``.

Architecture (Bengio-style, one token = one character)::

    context  [B, k] int       last k character ids, left-padded with PAD
    embed    E[ctx]           [B, k, d]   shared character embedding
    hidden   relu(flat @ W1 + b1)         [B, k*d] @ [k*d, H] -> [B, H]
    logits   hidden @ W2 + b2             [B, H] @ [H, V] -> [B, V]

Vocabulary: ``"\\n"`` plus printable ASCII (32..126), ``V = 96`` ids; ``PAD = V``
is an input-only id.  There is no end-of-text token (PROTOCOL.md).

Corpus: the Python reference documentation shipped with CPython as
``pydoc_data.topics`` (sorted by topic, normalised to the vocabulary, capped at
``max_corpus_chars``); if that module is missing, the docstrings of the builtins.
Nothing third-party is shipped.  Held out: every 10th block of 2048 consecutive
target characters (their contexts may reach into training text).

Training: Adam on mini-batches, float32, one BLAS thread, deterministic for a
seed on a given machine (about 1 s on one core).  Weights are cached with
:mod:`wsserve.modelstore` keyed by the config, which includes a hash of the corpus.

Inference (:meth:`CharLM.logits`) is *batching-invariant bit for bit*: the
first layer is folded into per-position int32 lookup tables (so the hidden
pre-activation is an exact integer sum), and the output layer multiplies hidden
values and weights rounded to integer grids small enough that every partial sum
of the float64 matmul is an exactly representable integer.  Sums are then exact
in any order, so a row's logits cannot depend on how BLAS blocks a batch of size
B (a plain float matmul does: its rows differ in the last bits between B = 1 and
B = 300).  The quantised network *is* the model: held-out metrics are computed
with it; it stays within ~1e-4 of the float network.

Prompt characters outside the vocabulary are not rejected: :func:`normalize_text`
maps typographic quotes/dashes to ASCII, decomposes accented letters (``é`` ->
``e``), drops lone combining marks, turns ``\\r\\n``/``\\r`` into ``\\n`` and tabs
into a space, and replaces anything else with a space.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelInfo

__all__ = [
    "VOCAB",
    "CharLM",
    "CharLMConfig",
    "Corpus",
    "charlm_config",
    "load_corpus",
    "normalize_text",
    "train_charlm",
]

log = logging.getLogger(__name__)

NAME = "charlm"
VERSION = "1"
#: Bump when training or inference changes in a way the config does not show.
ALGORITHM = "mlp-adam-exactgrid/1"

#: The character vocabulary: newline + printable ASCII.  Token id = index.
VOCAB: str = "\n" + "".join(chr(c) for c in range(32, 127))
_STOI: dict[str, int] = {c: i for i, c in enumerate(VOCAB)}
_TRANSLATE = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
    "\u2014": "-", "\u2026": "...", "\t": " ", "\r": "\n", "\u00a0": " ",
}


@functools.lru_cache(maxsize=4096)
def _normalize_char(ch: str) -> str:
    if ch in _STOI:
        return ch
    if ch in _TRANSLATE:
        return _TRANSLATE[ch]
    if unicodedata.combining(ch):
        return ""
    out = "".join(c for c in unicodedata.normalize("NFKD", ch) if c in _STOI)
    return out or " "


def normalize_text(text: str) -> str:
    """Map ``text`` onto :data:`VOCAB` (see the module docstring); never raises."""
    text = text.replace("\r\n", "\n")
    if text.isascii() and text.isprintable():
        return text
    table = {ord(ch): _normalize_char(ch) for ch in set(text) if ch not in _STOI}
    return text.translate(table)


# --------------------------------------------------------------------------- corpus

@dataclass(frozen=True, slots=True)
class Corpus:
    """Normalised training text: ``documents`` in a fixed order, ``sha256`` over them."""

    source: str
    documents: tuple[str, ...]
    sha256: str

    @property
    def chars(self) -> int:
        return sum(len(d) for d in self.documents)


def _raw_documents() -> tuple[str, list[str]]:
    try:
        from pydoc_data.topics import topics  # CPython's own reference docs
    except ImportError:  # stripped Python builds
        import builtins

        docs = []
        for name in sorted(dir(builtins)):
            obj = getattr(builtins, name)
            if isinstance(getattr(obj, "__doc__", None), str):
                docs.append(obj.__doc__)
            for attr in sorted(vars(obj)) if isinstance(obj, type) else ():
                doc = getattr(vars(obj)[attr], "__doc__", None)
                if isinstance(doc, str):
                    docs.append(doc)
        return "builtins-docstrings", docs
    return "pydoc_data.topics", [topics[k] for k in sorted(topics)]


def load_corpus(max_chars: int = 600_000) -> Corpus:
    """The training corpus, deterministic for a Python installation, capped at ``max_chars``."""
    source, raw = _raw_documents()
    docs: list[str] = []
    total = 0
    for text in raw:
        doc = normalize_text(text).strip("\n")
        if not doc:
            continue
        doc = doc[: max_chars - total]
        docs.append(doc)
        total += len(doc)
        if total >= max_chars:
            break
    digest = hashlib.sha256("\x00".join(docs).encode("ascii")).hexdigest()
    return Corpus(source=source, documents=tuple(docs), sha256=digest)


def _windows(docs: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every position of every document: ``(contexts [n, k] int32, targets [n] int32)``."""
    table = np.full(256, 0, dtype=np.int32)
    table[np.frombuffer(VOCAB.encode("ascii"), np.uint8)] = np.arange(len(VOCAB), dtype=np.int32)
    xs, ys = [], []
    for doc in docs:
        ids = table[np.frombuffer(doc.encode("ascii"), np.uint8)]  # [n]
        padded = np.concatenate([np.full(k, len(VOCAB), np.int32), ids])  # [k + n]
        idx = np.arange(len(ids))[:, None] + np.arange(k)[None, :]  # [n, k]
        xs.append(padded[idx])
        ys.append(ids)
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------- config

@dataclass(frozen=True, slots=True)
class CharLMConfig:
    """Hyperparameters of :func:`train_charlm` (everything but the seed)."""

    context_len: int = 8
    embed_dim: int = 24
    hidden: int = 128
    steps: int = 500
    batch_size: int = 512
    learning_rate: float = 0.008
    heldout_every: int = 10  # every 10th block of positions is held out...
    heldout_block: int = 2048  # ...of this many target characters
    max_corpus_chars: int = 600_000


def charlm_config(seed: int, corpus: Corpus, config: CharLMConfig | None = None) -> dict[str, Any]:
    """The full training config (the cache key): seed, hyperparameters, versions, corpus hash."""
    cfg = config or CharLMConfig()
    return {
        "seed": int(seed), "version": VERSION, "algorithm": ALGORITHM, "vocab": VOCAB,
        "corpus_source": corpus.source, "corpus_sha256": corpus.sha256,
        "numpy": np.__version__.split(".")[0], **asdict(cfg),
    }


# --------------------------------------------------------------------------- model

def _pow2_exponent(max_abs: float, bits: int) -> int:
    """Largest ``s`` with ``max_abs * 2**s <= 2**bits`` (so rounded values fit in ``bits`` bits)."""
    if max_abs <= 0:
        return bits
    _, e = math.frexp(max_abs)  # max_abs < 2**e
    return bits - e


class CharLM:
    """Trained ``charlm`` weights and pure, batching-invariant inference.

    Attributes the generation engine relies on: ``context_len`` (k),
    ``vocab_size`` (V), ``pad_id`` (= V), ``id_to_text`` (token id -> str),
    :meth:`initial_context`, :meth:`logits`.  Thread-safe for concurrent reads.
    """

    def __init__(self, arrays: dict[str, np.ndarray], *, metrics: dict[str, Any] | None = None) -> None:
        emb = np.asarray(arrays["embed"], np.float64)  # [V+1, d]
        w1 = np.asarray(arrays["w1"], np.float64)  # [k*d, H]
        b1 = np.asarray(arrays["b1"], np.float64)  # [H]
        w2 = np.asarray(arrays["w2"], np.float64)  # [H, V]
        b2 = np.asarray(arrays["b2"], np.float64)  # [V]
        v, d = len(VOCAB), emb.shape[1]
        if emb.shape[0] != v + 1 or w1.shape[0] % d or w2.shape != (w1.shape[1], v) or b2.shape != (v,):
            raise ValueError(f"charlm arrays have inconsistent shapes: embed {emb.shape}, "
                             f"w1 {w1.shape}, w2 {w2.shape}, b2 {b2.shape}")
        if b1.shape != (w1.shape[1],):
            raise ValueError(f"charlm b1 has shape {b1.shape}, expected ({w1.shape[1]},)")
        for name, a in (("embed", emb), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
            if not np.isfinite(a).all():
                raise ValueError(f"charlm array {name!r} holds non-finite values")
        self._arrays = {k: np.asarray(a) for k, a in arrays.items()}
        self.context_len: int = w1.shape[0] // d
        self.vocab_size: int = v
        self.pad_id: int = v
        self.hidden: int = w1.shape[1]
        self.id_to_text: tuple[str, ...] = tuple(VOCAB)
        k, h = self.context_len, self.hidden

        # Layer 1 as lookup tables: T[j] = E @ W1[j*d:(j+1)*d], b1 folded into T[0].
        tables = np.einsum("vd,jdh->jvh", emb, w1.reshape(k, d, h))  # [k, V+1, H]
        tables[0] += b1
        # Exact integer arithmetic (module docstring).  Layer 1: int32 tables whose
        # k-term sums cannot overflow.  Layer 2: hidden values and weights on
        # integer grids coarse enough that every H-term float64 dot product is exact.
        t_bound = float(np.abs(tables).max(axis=(1, 2)).sum())  # >= |any sum of k entries|
        s_t = _pow2_exponent(t_bound, 30)  # sums stay below 2**30 (+ k/2 from rounding)
        self._tables = np.rint(np.ldexp(tables, s_t)).astype(np.int32).reshape(k * (v + 1), h)
        self._offsets = (np.arange(k) * (v + 1))[None, :]  # [1, k]: row offset of position j
        h_max = float(np.clip(tables.max(axis=1), 0, None).sum(axis=0).max())  # bound on relu(h)
        half = (52 - math.ceil(math.log2(h))) // 2  # hq, w2q < 2**half: H*hq*w2q < 2**52
        s_h = min(s_t, _pow2_exponent(h_max, half))
        s_w = _pow2_exponent(float(np.abs(w2).max()), half)
        self._h_shift = s_t - s_h  # hq = floor(h_int / 2**shift)
        self._w2 = np.rint(np.ldexp(w2, s_w))  # [H, V] integers (float64)
        self._out_scale = math.ldexp(1.0, -(s_h + s_w))
        self._b2 = b2

        params = sum(int(np.asarray(arrays[n]).size) for n in ("embed", "w1", "b1", "w2", "b2"))
        self.info = ModelInfo(
            name=NAME, version=VERSION, task="generation",
            input_shape=(k,), output_shape=(v,), parameters=params,
            metrics=dict(metrics or {}),
            extra={"context_len": k, "vocab_size": v},
        )

    # -- inference --------------------------------------------------------------
    def logits(self, contexts: np.ndarray) -> np.ndarray:
        """``[B, k]`` int ids (0..V, V = PAD) -> ``[B, V]`` float64 logits.

        Pure; row i depends only on ``contexts[i]`` and is bitwise identical
        whatever B is.  Raises ``IndexError`` on ids outside ``0..V``.
        """
        idx = contexts + self._offsets  # [B, k] rows of the stacked tables
        if len(idx) <= 8:
            h = self._tables[idx].sum(axis=1, dtype=np.int32)  # [B, k, H] -> [B, H], exact
        else:  # the same exact sums with less memory traffic for big batches
            h = self._tables.take(idx[:, 0], axis=0)  # [B, H] int32
            for j in range(1, self.context_len):
                h += self._tables.take(idx[:, j], axis=0)
        np.maximum(h, 0, out=h)  # relu
        if self._h_shift:
            np.right_shift(h, self._h_shift, out=h)  # onto the coarser grid (floor; exact)
        out = h.astype(np.float64) @ self._w2  # [B, H] @ [H, V] -> [B, V], exact integer dot products
        out *= self._out_scale
        out += self._b2
        return out

    def encode(self, text: str) -> np.ndarray:
        """``str -> [n]`` int64 token ids after :func:`normalize_text` (never raises)."""
        return np.array([_STOI[c] for c in normalize_text(text)], dtype=np.int64)

    def decode(self, ids: Any) -> str:
        """Token ids -> text.  Raises ``IndexError`` on an id outside ``0..V-1``."""
        return "".join(VOCAB[int(i)] for i in ids)

    def initial_context(self, prompt: str) -> np.ndarray:
        """``[k]`` int64: the last k ids of the normalised prompt, left-padded with PAD."""
        k = self.context_len
        ids = self.encode(prompt[-2 * k:])[-k:]
        ctx = np.full(k, self.pad_id, dtype=np.int64)
        if len(ids):
            ctx[k - len(ids):] = ids
        return ctx

    def flops_per_row(self) -> int:
        """Multiply-adds per generated token (gathers + output layer)."""
        return self.context_len * self.hidden + self.hidden * self.vocab_size

    def log_prob_bits(self, contexts: np.ndarray, targets: np.ndarray, *, chunk: int = 8192) -> float:
        """Mean ``-log2 p(target | context)`` over rows (bits per character)."""
        total = 0.0
        for i in range(0, len(targets), chunk):
            z = self.logits(contexts[i:i + chunk])  # [c, V]
            z -= z.max(axis=1, keepdims=True)
            lse = np.log(np.exp(z).sum(axis=1))  # [c]
            total += float((lse - z[np.arange(len(z)), targets[i:i + chunk]]).sum())
        return total / max(1, len(targets)) / math.log(2)

    # -- persistence (see wsserve.modelstore) -----------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` for :func:`wsserve.modelstore.save`."""
        return dict(self._arrays), {"metrics": self.info.metrics}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> CharLM:
        """Inverse of :meth:`to_arrays`. Raises ``KeyError``/``ValueError`` on bad contents."""
        return cls(arrays, metrics=dict(meta.get("metrics", {})))


# --------------------------------------------------------------------------- training

def _count_bpc(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> tuple[float, float]:
    """Add-one smoothed unigram and bigram (previous char or PAD) bits per char on the test split."""
    v = len(VOCAB)
    uni = np.bincount(train_y, minlength=v) + 1.0  # [V]
    uni_bpc = float(-np.log2(uni / uni.sum())[test_y].mean())
    big = np.ones((v + 1, v))  # [prev incl. PAD, next]
    np.add.at(big, (train_x[:, -1], train_y), 1.0)
    big /= big.sum(axis=1, keepdims=True)
    big_bpc = float(-np.log2(big[test_x[:, -1], test_y]).mean())
    return uni_bpc, big_bpc


def _fit(x: np.ndarray, y: np.ndarray, cfg: CharLMConfig, seed: int) -> dict[str, np.ndarray]:
    """Adam on softmax cross-entropy; float32; returns the trained arrays."""
    f = np.float32
    v, k, d, h, bs = len(VOCAB), cfg.context_len, cfg.embed_dim, cfg.hidden, cfg.batch_size
    rng = np.random.default_rng(seed)
    unigram = np.bincount(y, minlength=v) + 1.0
    params = [
        (rng.standard_normal((v + 1, d)) * 0.5).astype(f),  # embed [V+1, d]
        (rng.standard_normal((k * d, h)) / math.sqrt(k * d)).astype(f),  # w1 [k*d, H]
        np.zeros(h, f),  # b1 [H]
        (rng.standard_normal((h, v)) * (0.5 / math.sqrt(h))).astype(f),  # w2 [H, V]
        np.log(unigram / unigram.sum()).astype(f),  # b2 [V]
    ]
    m = [np.zeros_like(p) for p in params]
    s = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.99, 1e-8
    rows = np.arange(bs)
    onehot = np.zeros((bs * k, v + 1), f)
    flat_rows = np.arange(bs * k)
    for it in range(1, cfg.steps + 1):
        emb, w1, b1, w2, b2 = params
        pick = rng.integers(0, len(y), bs)
        xb, yb = x[pick], y[pick]  # [bs, k], [bs]
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
        grads = [onehot.T @ da0, a0.T @ dact, dact.sum(0), act.T @ dz, dz.sum(0)]
        onehot[flat_rows, xb.ravel()] = 0.0
        warm = min(1.0, it / 50)
        lr = cfg.learning_rate * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * it / cfg.steps)))
        c1, c2 = 1 - beta1**it, 1 - beta2**it
        for p_, g, m_, s_ in zip(params, grads, m, s):
            m_ *= beta1
            m_ += (1 - beta1) * g
            s_ *= beta2
            s_ += (1 - beta2) * (g * g)
            p_ -= (lr / c1) * m_ / (np.sqrt(s_ / c2) + eps)
    return dict(zip(("embed", "w1", "b1", "w2", "b2"), params))


def _train(seed: int, cfg: CharLMConfig, corpus: Corpus) -> CharLM:
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    t0 = time.perf_counter()
    x_all, y_all = _windows(list(corpus.documents), cfg.context_len)
    held_out = (np.arange(len(y_all)) // cfg.heldout_block) % cfg.heldout_every == cfg.heldout_every - 1
    x, y = x_all[~held_out], y_all[~held_out]
    hx, hy = x_all[held_out], y_all[held_out]
    with threadpool_limits(limits=1):
        arrays = _fit(x, y, cfg, seed)
    train_time_s = time.perf_counter() - t0
    model = CharLM(arrays)
    uni, big = _count_bpc(x, y, hx, hy)
    metrics = {
        "heldout_bpc": round(model.log_prob_bits(hx, hy), 4),
        "unigram_bpc": round(uni, 4),
        "bigram_bpc": round(big, 4),
        "train_bpc_sample": round(model.log_prob_bits(x[::20], y[::20]), 4),
        "train_chars": len(y),
        "heldout_chars": len(hy),
        "corpus": corpus.source,
        "corpus_sha256": corpus.sha256[:16],
        "train_time_s": round(train_time_s, 3),
    }
    return CharLM(arrays, metrics=metrics)


def train_charlm(
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    config: CharLMConfig | None = None,
) -> CharLM:
    """Load ``charlm`` from the weight cache, or train it (and cache it).

    ``cache_dir`` None means :func:`wsserve.modelstore.default_cache_dir`.  With
    ``use_cache`` false the cache is neither read nor written.  A corrupt cache
    file is logged and replaced; a cache that cannot be written is logged and
    ignored.  ``info.metrics`` holds held-out, unigram and bigram bits per
    character on the same split (plus ``loaded_from_cache``).
    """
    from .. import modelstore

    cfg = config or CharLMConfig()
    corpus = load_corpus(cfg.max_corpus_chars)
    key_config = charlm_config(seed, corpus, cfg)
    directory = Path(cache_dir) if cache_dir is not None else modelstore.default_cache_dir()
    if use_cache:
        try:
            found = modelstore.load(directory, NAME, key_config)
        except modelstore.ModelFileError as exc:
            log.warning("retraining charlm: %s", exc)
            found = None
        if found is not None:
            arrays, meta = found
            try:
                model = CharLM.from_arrays(arrays, meta)
            except (KeyError, ValueError) as exc:
                log.warning("retraining charlm: cached weights unusable: %s", exc)
            else:
                model.info.metrics["loaded_from_cache"] = True
                return model
    model = _train(seed, cfg, corpus)
    model.info.metrics["loaded_from_cache"] = False
    if use_cache:
        arrays, meta = model.to_arrays()
        try:
            modelstore.save(directory, NAME, key_config, arrays, meta)
        except OSError as exc:
            log.warning("could not cache charlm weights in %s: %s", directory, exc)
    return model
