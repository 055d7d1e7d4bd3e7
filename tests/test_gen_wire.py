"""``generate`` over a real socket: invariance, stop strings, cancel, disconnect, deadline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import Conn
from wsserve.trainer import train_default_models

GEN = {"type": "generate", "model": "charlm"}


def text_of(frames: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Concatenated token text and the terminal frame; checks seq order and the token count."""
    *tokens, last = frames
    assert [f["type"] for f in tokens] == ["token"] * len(tokens)
    assert [f["seq"] for f in tokens] == list(range(len(tokens)))
    if last["type"] == "done":
        assert last["tokens"] == len(tokens)
    return "".join(f["text"] for f in tokens), last


async def generate(conn: Conn, rid: Any, **fields: Any) -> tuple[str, dict[str, Any]]:
    await conn.send({**GEN, "id": rid, **fields})
    frames, last = await conn.until_terminal(rid)
    return text_of([*frames, last])


TARGETS = [
    {"prompt": "The ", "max_tokens": 60},
    {"prompt": "The ", "max_tokens": 60, "temperature": 0.9, "seed": 7},
    {"prompt": "def ", "max_tokens": 40, "temperature": 1.2, "top_k": 12, "seed": 99, "stop": ["\n\n"]},
    {"prompt": "x = ", "max_tokens": 40, "temperature": 1.5, "top_p": 0.75, "seed": 5},
    {"prompt": "The ", "max_tokens": 60, "frequency_penalty": 1.5, "presence_penalty": 0.3},
    {"prompt": "A ", "max_tokens": 60, "temperature": 0.8, "seed": 2, "repetition_penalty": 1.3},
    {"prompt": "The ", "max_tokens": 90, "temperature": 0.9, "seed": 21, "stop_token_ids": [0, 69, 74],
     "min_tokens": 25, "stop": ["ion"], "include_stop_str_in_output": True},
]


async def test_same_text_alone_and_among_32_concurrent_generations(server_url: str) -> None:
    conn = await Conn.open(server_url)
    alone = [await generate(conn, f"alone{i}", **t) for i, t in enumerate(TARGETS)]
    crowd = await Conn.open(server_url)  # a second connection keeps the batch busy
    for i in range(32):
        await crowd.send({**GEN, "id": i, "prompt": ("x", "import ", "A ")[i % 3],
                          "max_tokens": 10 + 17 * i % 150, "temperature": (0, 0.8, 1.5)[i % 3], "seed": i,
                          "top_p": (1, 0.9)[i % 2], "frequency_penalty": (0, 0, 0.5)[i % 3],
                          "repetition_penalty": (1, 1.2, 1, 0.9)[i % 4]})
    for i, t in enumerate(TARGETS):
        await conn.send({**GEN, "id": f"busy{i}", **t})
    got = await conn.collect({f"busy{i}" for i in range(len(TARGETS))})
    crowd_frames = await crowd.collect(set(range(32)))
    assert all(text_of(f)[1]["reason"] == "length" for f in crowd_frames.values())
    for i, (text, last) in enumerate(alone):
        busy_text, busy_last = text_of(got[f"busy{i}"])
        assert (busy_text, busy_last["reason"]) == (text, last["reason"]), TARGETS[i]
    await conn.close()
    await crowd.close()


async def test_top_p_narrows_sampling_and_is_bounded(server_url: str) -> None:
    """``top_p`` is honoured (it used to be ignored as an unknown field): a nucleus too small
    for a second token is greedy at any temperature, 1 is off; values outside (0, 1] are refused."""
    conn = await Conn.open(server_url)
    hot = {"prompt": "The ", "max_tokens": 40, "temperature": 2.0, "seed": 3}
    greedy, _ = await generate(conn, "g", prompt="The ", max_tokens=40)
    narrow, _ = await generate(conn, "n", **hot, top_p=1e-9)
    assert narrow == greedy
    free, _ = await generate(conn, "f", **hot)
    assert free != greedy
    assert (await generate(conn, "off", **hot, top_p=1))[0] == free
    mid, _ = await generate(conn, "m", **hot, top_p=0.5)
    assert mid not in (free, greedy)
    for bad in (0, -0.1, 1.0001, "0.5", True):
        reply = await conn.request({**GEN, "id": "bad", **hot, "top_p": bad})
        assert reply["type"] == "error" and reply["code"] == "bad_request", (bad, reply)
        assert "field 'top_p' must be a number in (0, 1]" in reply["message"]
    await conn.close()


def _reference_greedy(cache: Path, prompt: str, max_tokens: int, presence: float, frequency: float) -> str:
    """Greedy text with OpenAI's penalties, by the formula, one token at a time on the
    server's own charlm (read from the weights cache the server wrote)."""
    model: Any = train_default_models(names=["charlm"], cache_dir=cache)["charlm"]
    ctx, counts, out = model.initial_context(prompt), np.zeros(model.vocab_size), []
    for _ in range(max_tokens):
        logits = model.logits(ctx[None, :])[0] - counts * frequency - (counts > 0) * presence
        tok = int(logits.argmax())
        counts[tok] += 1
        ctx = np.append(ctx[1:], tok)
        out.append(model.id_to_text[tok])
    return "".join(out)


async def test_min_p_narrows_sampling_and_is_bounded(server_url: str) -> None:
    """``min_p`` 1 keeps only the likeliest token: greedy at any temperature; 0 is off; values
    outside [0, 1] are refused by name."""
    conn = await Conn.open(server_url)
    hot = {"prompt": "The ", "max_tokens": 40, "temperature": 2.0, "seed": 8}
    greedy, _ = await generate(conn, "g", prompt="The ", max_tokens=40)
    assert (await generate(conn, "one", **hot, min_p=1))[0] == greedy
    free, _ = await generate(conn, "f", **hot)
    assert (await generate(conn, "off", **hot, min_p=0))[0] == free != greedy
    assert (await generate(conn, "some", **hot, min_p=0.2))[0] not in (free, greedy)
    for bad in (-0.1, 1.5, "0.1"):
        reply = await conn.request({**GEN, "id": "bad", **hot, "min_p": bad})
        assert reply["type"] == "error" and reply["code"] == "bad_request", (bad, reply)
        assert "field 'min_p' must be a number in [0, 1]" in reply["message"]
    await conn.close()


async def test_logit_bias_forces_and_bans_tokens_and_is_bounded(server_url: str, model_cache: Path) -> None:
    """OpenAI's ``logit_bias``: +100 on one token makes greedy text that token only, -100 bans
    one from greedy text that had it; malformed maps and ids outside the vocabulary are refused."""
    vocab = train_default_models(names=["charlm"], cache_dir=model_cache)["charlm"].id_to_text
    conn = await Conn.open(server_url)
    forced, _ = await generate(conn, "z", prompt="The ", max_tokens=20, logit_bias={str(vocab.index("z")): 100})
    assert forced == "z" * 20
    plain, _ = await generate(conn, "p", prompt="The ", max_tokens=60)
    banned = max(set(plain), key=plain.count)
    text, _ = await generate(conn, "b", prompt="The ", max_tokens=60, logit_bias={str(vocab.index(banned)): -100})
    assert banned not in text and len(text) == 60
    for bad, says in [([1], "must be an object"), ({"-1": 1}, "keys must be token ids"), ({"x": 1}, "keys must be"),
                      ({"1": 101}, "a number in [-100, 100], got 101 for token 1"), ({"1": "1"}, "got '1'"),
                      ({str(i): 1 for i in range(conn.hello["limits"]["max_logit_bias_tokens"] + 1)}, "at most 300"),
                      ({"1": 1, "01": 2}, "names a token id twice"),
                      ({str(len(vocab)): 1}, f"names token {len(vocab)}; the model's vocabulary has {len(vocab)}")]:
        reply = await conn.request({**GEN, "id": "bad", "prompt": "a", "logit_bias": bad})
        assert reply["type"] == "error" and reply["code"] == "bad_request", (bad, reply)
        assert "'logit_bias'" in reply["message"] and says in reply["message"], (bad, reply["message"])
    await conn.close()


async def test_presence_and_frequency_penalties_follow_openais_formula(server_url: str, model_cache: Path) -> None:
    """The penalties are honoured (they used to be ignored as unknown fields): the greedy
    text is the formula's, and it repeats itself less than without them; out-of-range
    values are refused by name."""
    conn = await Conn.open(server_url)
    plain, _ = await generate(conn, "p", prompt="The ", max_tokens=80)
    assert plain == _reference_greedy(model_cache, "The ", 80, 0.0, 0.0)
    penalised, _ = await generate(conn, "q", prompt="The ", max_tokens=80, presence_penalty=0.4,
                                  frequency_penalty=1.2)
    assert penalised == _reference_greedy(model_cache, "The ", 80, 0.4, 1.2) != plain
    assert max(penalised.count(c) for c in set(penalised)) < max(plain.count(c) for c in set(plain))
    for field, bad in (("presence_penalty", 2.5), ("frequency_penalty", -3), ("frequency_penalty", "1")):
        reply = await conn.request({**GEN, "id": "bad", "prompt": "a", field: bad})
        assert reply["type"] == "error" and reply["code"] == "bad_request", (field, bad, reply)
        assert f"field '{field}' must be a number in [-2, 2]" in reply["message"]
    await conn.close()


def _reference_repetition(cache: Path, prompt: str, max_tokens: int, penalty: float) -> str:
    """Greedy text with vLLM's repetition penalty, by its formula, one token at a time on the
    server's own charlm: a token of the prompt (the part the model reads) or generated so far has
    its logit divided by the penalty when positive, multiplied by it otherwise."""
    model: Any = train_default_models(names=["charlm"], cache_dir=cache)["charlm"]
    seen = np.zeros(model.vocab_size, bool)
    seen[model.prompt_ids(prompt)] = True
    ctx, out = model.initial_context(prompt), []
    for _ in range(max_tokens):
        z = model.logits(ctx[None, :])[0]
        tok = int(np.where(seen, np.where(z > 0, z / penalty, z * penalty), z).argmax())
        seen[tok] = True
        ctx = np.append(ctx[1:], tok)
        out.append(model.id_to_text[tok])
    return "".join(out)


async def test_repetition_penalty_follows_vllms_formula_prompt_included(server_url: str, model_cache: Path) -> None:
    """vLLM's ``repetition_penalty`` (it used to be refused over HTTP and ignored here): the greedy
    text is the formula's, counting the prompt's tokens (the reference below), and not the plain
    text; 1 is off; a sampled stream with it is the same alone or among others; out-of-range values are refused."""
    conn = await Conn.open(server_url)
    plain, _ = await generate(conn, "p", prompt="The ", max_tokens=80)
    assert (await generate(conn, "one", prompt="The ", max_tokens=80, repetition_penalty=1))[0] == plain
    text, _ = await generate(conn, "r", prompt="The ", max_tokens=80, repetition_penalty=1.5)
    assert text == _reference_repetition(model_cache, "The ", 80, 1.5) != plain
    # the prompt counts: a prompt holding the plain text's first character changes the first token
    first = plain[0]
    shifted, _ = await generate(conn, "s", prompt=first + "he ", max_tokens=5, repetition_penalty=2)
    assert shifted == _reference_repetition(model_cache, first + "he ", 5, 2.0)
    below, _ = await generate(conn, "b", prompt="The ", max_tokens=40, repetition_penalty=0.5)  # favours repeats
    assert below == _reference_repetition(model_cache, "The ", 40, 0.5)
    for bad in (0, 2.5, -1, "1.2"):
        reply = await conn.request({**GEN, "id": "bad", "prompt": "a", "repetition_penalty": bad})
        assert reply["type"] == "error" and reply["code"] == "bad_request", (bad, reply)
        assert "field 'repetition_penalty' must be a number in (0, 2] (1 is off)" in reply["message"], reply
    await conn.close()


async def test_stop_string_is_not_streamed(server_url: str) -> None:
    conn = await Conn.open(server_url)
    free, _ = await generate(conn, 1, prompt="The ", max_tokens=50)
    stop = free[12:15]
    cut = free.find(stop)
    text, done = await generate(conn, 2, prompt="The ", max_tokens=50, stop=[stop])
    assert (text, done["reason"], done["tokens"]) == (free[:cut], "stop", cut)
    # a stop string that is never produced: everything held back is flushed on length
    text, done = await generate(conn, 3, prompt="The ", max_tokens=50, stop=[free[-2:] + "\u00a7"])
    assert (text, done["reason"]) == (free, "length")
    await conn.close()


async def test_cancel_mid_stream_then_nothing_more(server_url: str) -> None:
    conn = await Conn.open(server_url)
    await conn.send({**GEN, "id": "c", "prompt": "a", "max_tokens": 100_000})
    for _ in range(5):
        assert (await conn.recv())["type"] == "token"
    await conn.send({"type": "cancel", "id": "c"})
    frames, done = await conn.until_terminal("c")
    assert done["type"] == "done" and done["reason"] == "cancelled"
    assert done["tokens"] == 5 + len(frames) < 100_000
    assert done["timing"]["total_ms"] > 0
    pong = await conn.request({"type": "ping", "id": "after"})  # ordered after anything still in flight
    assert pong == {"type": "pong", "id": "after"}
    await conn.close()


async def test_disconnect_frees_the_slot(start_server) -> None:
    server = start_server("--models", "charlm", "--max-generate-batch", "1")
    hog = await Conn.open(server.url)
    await hog.send({**GEN, "id": 1, "prompt": "a", "max_tokens": 100_000})
    assert (await hog.recv())["type"] == "token"
    waiter = await Conn.open(server.url)
    await waiter.send({**GEN, "id": 2, "prompt": "b", "max_tokens": 5})
    with pytest.raises(asyncio.TimeoutError):  # no slot while the hog runs
        await waiter.recv(timeout=0.3)
    await hog.close()
    text, done = await generate(waiter, 3, prompt="c", max_tokens=3)  # queued behind id 2
    frames = [f for f in waiter.frames if f.get("id") == 2]
    assert frames and frames[-1]["type"] == "done" and frames[-1]["tokens"] == 5
    assert done["reason"] == "length" and len(text) == 3
    await waiter.close()


async def test_timeout_ms_ends_with_deadline_exceeded(server_url: str) -> None:
    conn = await Conn.open(server_url)
    await conn.send({**GEN, "id": "t", "prompt": "a", "max_tokens": 100_000, "timeout_ms": 100})
    frames, last = await conn.until_terminal("t")
    assert last["type"] == "error" and last["code"] == "deadline_exceeded"
    assert 0 < len(frames) < 100_000
    assert await conn.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
    await conn.close()


@pytest.mark.parametrize("prompt", ["caf\u00e9 \u201cquoted\u201d \u65e5\u672c", ""])
async def test_any_prompt_text_is_accepted(server_url: str, prompt: str) -> None:
    conn = await Conn.open(server_url)
    text, done = await generate(conn, "p", prompt=prompt, max_tokens=8)
    assert done["reason"] == "length" and len(text) == 8
    await conn.close()


async def test_hello_announces_the_stop_string_limits_it_enforces(server_url: str) -> None:
    conn = await Conn.open(server_url)
    limits = conn.hello["limits"]
    count, chars = limits["max_stop_strings"], limits["max_stop_chars"]
    _, done = await generate(conn, "ok", prompt="a", max_tokens=2, stop=["\x00" * chars] * count)
    assert done["type"] == "done"
    for rid, stop in (("many", ["z"] * (count + 1)), ("long", ["z" * (chars + 1)])):
        _, last = await generate(conn, rid, prompt="a", max_tokens=2, stop=stop)
        assert (last["type"], last["code"]) == ("error", "bad_request")
    await conn.close()
