"""Reference log-probabilities of the server's charlm, computed by the tests themselves (from the
model's weights cache, one context at a time in float64): what the server's logprobs are checked
against, by the WebSocket and the HTTP tests alike."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from wsserve.trainer import train_default_models


def reference_logprobs(cache: Path, prompt: str, text: str, k: int) -> list[dict[str, Any]]:
    """Per token of ``text`` (generated after ``prompt``), from the server's charlm read from its
    weights cache ``cache``: ``id``, ``logprob`` (the raw log-softmax), ``rank`` (tokens at least as
    likely, itself included, as vLLM counts) and ``top``: the k likeliest ``(id, logprob)``, ties by
    id; ``vocab``: the model's token texts."""
    model: Any = train_default_models(names=["charlm"], cache_dir=cache)["charlm"]
    ctx, out = model.initial_context(prompt), []
    for ch in text:
        z = model.logits(ctx[None, :])[0].astype(np.float64)
        lp = z - z.max() - math.log(float(np.exp(z - z.max()).sum()))
        tok = model.id_to_text.index(ch)
        order = sorted(range(len(lp)), key=lambda i: (-lp[i], i))[:k]
        out.append({"id": tok, "logprob": float(lp[tok]), "rank": sum(1 for v in z if v >= z[tok]),
                    "top": [(i, float(lp[i])) for i in order], "vocab": model.id_to_text})
        ctx = np.append(ctx[1:], tok)
    return out
