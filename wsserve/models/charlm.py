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

Training: softmax cross-entropy whose gradient :func:`loss_and_grads` computes
(a pure function, generic over float dtype, checked against finite differences
in float64), minimised by :class:`wsserve.models.optim.Adam` (shared with
``mlp``) on mini-batches in float32 with a warm-up + cosine learning-rate
schedule; one BLAS thread, deterministic for a seed on a given machine (about
1-2 s on one core).  :func:`train_charlm` only trains: :mod:`wsserve.trainer`
caches the weights, keyed by :func:`charlm_config`, which includes a hash of
the corpus.

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
import math
import time
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits

from .base import ModelInfo
from .optim import Adam

__all__ = [
    "VOCAB",
    "CharLM",
    "CharLMConfig",
    "CharLMParams",
    "Corpus",
    "charlm_config",
    "forward",
    "init_params",
    "load_corpus",
    "loss_and_grads",
    "normalize_text",
    "train_charlm",
]

NAME = "charlm"
VERSION = "1"
#: Bump when training or inference changes in a way the config does not show.
ALGORITHM = "mlp-adam-exactgrid/2"  # /2: the shared optimiser (float64 step size)

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
    """Hyperparameters of :func:`train_charlm` (everything but the seed).

    Raises ``ValueError`` naming the field when a value is out of range.
    """

    context_len: int = 8
    embed_dim: int = 24
    hidden: int = 128
    steps: int = 500
    batch_size: int = 512
    learning_rate: float = 0.008
    warmup_steps: int = 50  # linear warm-up, then cosine decay...
    final_lr_fraction: float = 0.1  # ...to this fraction of learning_rate
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    heldout_every: int = 10  # every 10th block of positions is held out...
    heldout_block: int = 2048  # ...of this many target characters
    max_corpus_chars: int = 600_000

    def __post_init__(self) -> None:
        for name in ("context_len", "embed_dim", "hidden", "steps", "batch_size", "warmup_steps",
                     "heldout_block", "max_corpus_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"CharLMConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.heldout_every < 2:
            raise ValueError(f"CharLMConfig.heldout_every must be >= 2, got {self.heldout_every!r}")
        if not 0.0 < self.learning_rate < math.inf:
            raise ValueError(f"CharLMConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError("CharLMConfig.final_lr_fraction must be in [0, 1], "
                             f"got {self.final_lr_fraction!r}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"CharLMConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0.0 <= self.eps < math.inf:
            raise ValueError(f"CharLMConfig.eps must be finite and >= 0, got {self.eps!r}")


def charlm_config(seed: int = 0, config: CharLMConfig | None = None) -> dict[str, Any]:
    """The full training config (the cache key): seed, hyperparameters, versions, corpus hash.

    Loads the corpus (tens of milliseconds) to hash it, so a changed Python
    documentation set never loads stale weights.
    """
    cfg = config or CharLMConfig()
    corpus = load_corpus(cfg.max_corpus_chars)
    return {
        "seed": int(seed), "version": VERSION, "algorithm": ALGORITHM, "vocab": VOCAB,
        "corpus_source": corpus.source, "corpus_sha256": corpus.sha256,
        "numpy": np.__version__.split(".")[0], **asdict(cfg),
    }


# --------------------------------------------------------------------------- model

#: Batches up to this size gather with one fancy index and a sum (fewest calls); bigger ones
#: with one ``take`` and halving adds (less work per row).  Both are exact integer sums.
_SMALL_BATCH = 4
#: Batches up to this size take the relu's zeros and the output bias from arrays of their
#: own shape (same-shape operands: about twice as fast as broadcasting a scalar or a row).
_TILED_ROWS = 256

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
        ndims = {"embed": (emb, 2), "w1": (w1, 2), "b1": (b1, 1), "w2": (w2, 2), "b2": (b2, 1)}
        for name, (a, ndim) in ndims.items():
            if a.ndim != ndim or 0 in a.shape:
                raise ValueError(f"charlm array {name!r} has shape {a.shape}, expected {ndim} "
                                 "non-empty dimension(s)")
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
        #: The generative-model interface (wsserve.generation.model): encode() needs only the prompt's tail.
        self.prompt_chars: int = 2 * k

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
        self._offsets_t = self._offsets.T.copy()  # [k, 1]: the same, for position-major gathers
        h_max = float(np.clip(tables.max(axis=1), 0, None).sum(axis=0).max())  # bound on relu(h)
        half = (52 - math.ceil(math.log2(h))) // 2  # hq, w2q < 2**half: H*hq*w2q < 2**52
        s_h = min(s_t, _pow2_exponent(h_max, half))
        s_w = _pow2_exponent(float(np.abs(w2).max()), half)
        self._h_shift = s_t - s_h  # hq = floor(h_int / 2**shift)
        self._w2 = np.rint(np.ldexp(w2, s_w))  # [H, V] integers (float64)
        self._out_scale = math.ldexp(1.0, -(s_h + s_w))
        # The scale is a power of two, so hq @ (w2q * scale) == (hq @ w2q) * scale bit for bit:
        # every partial sum is the exact integer one times 2**-(s_h + s_w) (normal numbers:
        # the smallest nonzero |w2q| * scale is >= 2**-(s_h + s_w) >> the float64 minimum).
        self._w2_scaled = self._w2 * self._out_scale  # [H, V]
        self._b2 = b2
        self._b2_rows = np.tile(b2, (_TILED_ROWS, 1))  # [R, V]: b2 in every row
        self._zeros_h = np.zeros((_TILED_ROWS, h), np.int32)  # [R, H]

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
        b = len(contexts)
        if b <= _SMALL_BATCH:
            idx = contexts + self._offsets  # [B, k] rows of the stacked tables
            h = self._tables[idx].sum(axis=1, dtype=np.int32)  # [B, k, H] -> [B, H], exact
        else:  # the same exact sums with fewer calls: one gather, then halving adds
            idx = contexts.T + self._offsets_t  # [k, B], position-major
            g = self._tables.take(idx.ravel(), axis=0).reshape(self.context_len, b, self.hidden)  # [k, B, H]
            n = self.context_len
            while n > 1:  # g[0] += g[n - 1], ... pairwise (integer sums: any order is exact)
                half = n // 2
                g[:half] += g[n - half:n]
                n -= half
            h = g[0]  # [B, H] int32
        tiled = b <= _TILED_ROWS
        np.maximum(h, self._zeros_h[:b] if tiled else 0, out=h)  # relu
        if self._h_shift:
            np.right_shift(h, self._h_shift, out=h)  # onto the coarser grid (floor; exact)
        out = h.astype(np.float64) @ self._w2_scaled  # [B, H] @ [H, V] -> [B, V], exact (see __init__)
        out += self._b2_rows[:b] if tiled else self._b2  # the same additions either way
        return out

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Token id -> text (the generative-model interface of :mod:`wsserve.generation.model`)."""
        return self.id_to_text

    def encode(self, text: str) -> np.ndarray:
        """``str -> [n]`` int64 token ids after :func:`normalize_text` (never raises)."""
        return np.array([_STOI[c] for c in normalize_text(text)], dtype=np.int64)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """A conversation as charlm's prompt (the generative-model interface's chat template).

        charlm was trained on plain text, not on conversations: its template is the messages'
        contents joined by newlines, so a reply continues the last message's text (as a
        completion of that text would; only the prompt's last :attr:`prompt_chars` characters
        count)."""
        return "\n".join(m["content"] for m in messages)

    def decode(self, ids: Any) -> str:
        """Token ids -> text.  Raises ``IndexError`` on an id outside ``0..V-1``."""
        return "".join(VOCAB[int(i)] for i in ids)

    def initial_context(self, prompt: str) -> np.ndarray:
        """``[k]`` int64: the last k ids of the normalised prompt, left-padded with PAD."""
        return self.encode_prompt(prompt)[0]

    def prompt_ids(self, prompt: str) -> np.ndarray:
        """``[n]`` int64: the ids :meth:`encode` gives for the prompt's last ``prompt_chars``
        characters (what the model is given; :meth:`encode_prompt` keeps the last k)."""
        return self.encode(prompt[-self.prompt_chars:])

    def encode_prompt(self, prompt: str) -> tuple[np.ndarray, int]:
        """``(context, n)``: :meth:`initial_context`, and ``n``, the ids :meth:`encode` gave for
        the prompt's last ``prompt_chars`` characters (characters after normalisation)."""
        k = self.context_len
        ids = self.prompt_ids(prompt)
        tail = ids[-k:]
        ctx = np.full(k, self.pad_id, dtype=np.int64)
        if len(tail):
            ctx[k - len(tail):] = tail
        return ctx, len(ids)

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


class CharLMParams(NamedTuple):
    """The trainable arrays, in any one float dtype (float32 in training)."""

    embed: np.ndarray  # [V+1, d]  row V is PAD
    w1: np.ndarray  # [k*d, H]
    b1: np.ndarray  # [H]
    w2: np.ndarray  # [H, V]
    b2: np.ndarray  # [V]


def init_params(rng: np.random.Generator, cfg: CharLMConfig, targets: np.ndarray,
                dtype: Any = np.float32) -> CharLMParams:
    """Random weights for ``cfg``; ``b2`` starts at the add-one unigram log-frequencies of ``targets``."""
    v, k, d, h = len(VOCAB), cfg.context_len, cfg.embed_dim, cfg.hidden
    unigram = np.bincount(targets, minlength=v) + 1.0  # [V]
    embed = (rng.standard_normal((v + 1, d)) * 0.5).astype(dtype)
    w1 = (rng.standard_normal((k * d, h)) / math.sqrt(k * d)).astype(dtype)
    w2 = (rng.standard_normal((h, v)) * (0.5 / math.sqrt(h))).astype(dtype)
    return CharLMParams(embed, w1, np.zeros(h, dtype), w2, np.log(unigram / unigram.sum()).astype(dtype))


def forward(params: CharLMParams, contexts: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The float network (training's, not the quantised :meth:`CharLM.logits`).

    ``[n, k]`` ids (0..V) -> ``([n, V]`` logits, ``(a0, pre, act)`` for backprop).
    """
    n = len(contexts)
    a0 = params.embed[contexts].reshape(n, -1)  # [n, k, d] -> [n, k*d]
    pre = a0 @ params.w1 + params.b1  # [n, k*d] @ [k*d, H] -> [n, H]
    act = np.maximum(pre, 0)  # [n, H]
    return act @ params.w2 + params.b2, (a0, pre, act)  # [n, H] @ [H, V] -> [n, V]


def loss_and_grads(params: CharLMParams, contexts: np.ndarray,
                   targets: np.ndarray) -> tuple[float, CharLMParams]:
    """Mean cross-entropy (nats) of ``targets [n]`` given ``contexts [n, k]``, and its gradient.

    Pure; the gradient has the layout and dtype of ``params``.  Ids are not
    checked (this is the training inner loop): ``contexts`` must hold ``0..V``
    and ``targets`` ``0..V-1``.
    """
    n, k = contexts.shape
    logits, (a0, pre, act) = forward(params, contexts)
    rows = np.arange(n)
    z = logits - logits.max(axis=1, keepdims=True)  # [n, V]
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)  # [n, 1]
    loss = float((np.log(total[:, 0]) - z[rows, targets]).mean())
    p = e / total  # softmax
    p[rows, targets] -= 1.0
    dz = p / n  # d loss / d logits  [n, V]
    dact = dz @ params.w2.T  # [n, V] @ [V, H] -> [n, H]
    dact *= pre > 0
    da0 = (dact @ params.w1.T).reshape(n * k, -1)  # [n, k*d] -> [n*k, d]
    # Scatter-add into the embedding rows as one matmul (fast, and its sums are
    # ordered like any other product): onehot [n*k, V+1].T @ da0 [n*k, d].
    onehot = np.zeros((n * k, len(params.embed)), dz.dtype)
    onehot[np.arange(n * k), contexts.ravel()] = 1.0
    grads = CharLMParams(
        embed=onehot.T @ da0,  # [V+1, d]
        w1=a0.T @ dact,  # [k*d, H]
        b1=dact.sum(0),  # [H]
        w2=act.T @ dz,  # [H, V]
        b2=dz.sum(0),  # [V]
    )
    return loss, grads


def _learning_rate(cfg: CharLMConfig, step: int) -> float:
    """Step ``1..steps``: linear warm-up over ``warmup_steps``, cosine decay to ``final_lr_fraction``."""
    warm = min(1.0, step / cfg.warmup_steps)
    f = cfg.final_lr_fraction
    return cfg.learning_rate * warm * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))


def _fit(x: np.ndarray, y: np.ndarray, cfg: CharLMConfig, seed: int) -> dict[str, np.ndarray]:
    """Adam on mini-batches of ``(x [n, k], y [n])``; float32; returns the trained arrays."""
    rng = np.random.default_rng(seed)
    params = init_params(rng, cfg, y)
    adam = Adam(params, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps)
    for step in range(1, cfg.steps + 1):
        pick = rng.integers(0, len(y), cfg.batch_size)
        _, grads = loss_and_grads(params, x[pick], y[pick])
        adam.step(grads, _learning_rate(cfg, step))
    return params._asdict()


def train_charlm(*, seed: int = 0, config: CharLMConfig | None = None) -> CharLM:
    """Train ``charlm`` on :func:`load_corpus`; deterministic for a seed on a given machine.

    Trains every time (about 1-2 s): serve it through :mod:`wsserve.trainer`,
    which caches the weights.  BLAS is limited to one thread while fitting.
    ``info.metrics`` holds held-out, unigram and bigram bits per character on
    the same split, a training-sample bpc, the split sizes and the train time.
    """
    cfg = config or CharLMConfig()
    corpus = load_corpus(cfg.max_corpus_chars)
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
