"""Every call type through the client against a real server on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import time

import numpy as np
import pytest
from wsserve_client import (
    BadRequestError,
    Client,
    ClientClosed,
    Generation,
    InvalidInput,
    PredictStream,
    RequestTooLarge,
    TokenLogprob,
)

from tests.support import ServerProcess


async def test_hello_limits_and_models(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        assert c.hello is not None
        assert c.hello.server == "wsserve" and c.hello.protocol == 1
        assert c.hello.limits.max_inflight and c.hello.limits.max_message_bytes
        assert c.stats().capacity == c.hello.limits.max_inflight
        models = {m.name: m for m in await c.models()}
        assert {"linear", "mlp"} <= set(models)
        assert models["linear"].input_shape == (1,) and models["linear"].output_shape == (1,)
        assert models["mlp"].parameters and models["mlp"].input_shape


async def test_predict_linear(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        r = await c.predict("linear", [[0.0], [0.5], [1.0]])
        assert r.model == "linear" and r.version
        assert len(r.outputs) == 3
        y = [row[0] for row in r.outputs]
        assert y[0] < y[1] < y[2]  # y ~ 3x + 0.5
        assert y[1] == pytest.approx(2.0, abs=0.5)
        assert {"queue_ms", "compute_ms", "batch_size"} <= set(r.timing)
        assert r.timing["batch_size"] >= 3


async def test_predict_numpy_in_and_out(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        (mlp,) = [m for m in await c.models() if m.name == "mlp"]
        assert mlp.input_shape is not None and mlp.output_shape is not None
        x = np.random.default_rng(0).normal(size=(5, mlp.input_shape[0])).astype(np.float32)
        r = await c.predict("mlp", x, as_numpy=True)
        assert isinstance(r.outputs, np.ndarray)
        assert r.outputs.shape == (5, mlp.output_shape[0])
        plain = await c.predict("mlp", x.tolist())
        np.testing.assert_allclose(r.outputs, np.asarray(plain.outputs), rtol=1e-6)


async def test_priority_and_version_are_accepted(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        (lin,) = [m for m in await c.models() if m.name == "linear"]
        r = await c.predict("linear", [[0.25]], version=lin.version, priority=1, timeout=5)
        assert r.version == lin.version
        with pytest.raises(BadRequestError) as ei:
            await c.predict("linear", [[0.25]], priority=7)
        assert ei.value.request_id is not None


async def test_predict_with_explain_returns_attributions(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        x = np.random.default_rng(4).normal(size=(3, 32))
        r = await c.predict("mlp", x, explain=True, as_numpy=True)
        assert isinstance(r.attributions, np.ndarray) and r.attributions.shape == (3, 32)
        assert r.explanation is not None and r.explanation["method"] == "integrated-gradients"
        base = (await c.predict("mlp", [[0.0] * 32], as_numpy=True)).outputs[0]
        target = r.outputs.argmax(axis=1)
        gap = r.attributions.sum(axis=1) - (r.outputs[np.arange(3), target] - base[target])
        assert np.abs(gap).max() <= 0.01  # the server's stated completeness bound
        plain = await c.predict("mlp", x)
        assert plain.attributions is None and plain.explanation is None
        with pytest.raises(BadRequestError, match="'charlm'"):
            await c.predict("charlm", [[0.0]], explain=True)


async def test_predict_stream_chunks_in_order_with_summary(server: ServerProcess) -> None:
    rows = [[i / 100] for i in range(100)]
    async with Client(server.url) as c:
        whole = await c.predict("linear", rows)
        stream = c.predict_stream("linear", rows, chunk_rows=7)
        assert isinstance(stream, PredictStream)
        got = []
        seqs = []
        async for chunk in stream:
            assert chunk.offset == len(got)
            seqs.append(chunk.seq)
            got.extend(chunk.outputs)
        assert seqs == list(range(len(seqs))) and len(seqs) == 15  # ceil(100 / 7)
        assert got == whole.outputs
        assert stream.summary.rows == 100 and stream.summary.reason == "complete"
        assert stream.finished
        assert c.stats().inflight == 0


async def test_predict_stream_as_numpy_with_async_with(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        async with c.predict_stream("linear", [[0.1], [0.2], [0.3]], chunk_rows=2, as_numpy=True) as s:
            chunks = [ch async for ch in s]
        assert [ch.outputs.shape for ch in chunks] == [(2, 1), (1, 1)]
        assert s.summary.rows == 3


async def test_summary_before_end_is_an_error(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        s = c.predict_stream("linear", [[0.1]])
        with pytest.raises(RuntimeError, match="not completed"):
            _ = s.summary
        await s.aclose()


async def test_500_concurrent_calls_on_one_socket(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        xs = [i / 500 for i in range(500)]
        results = await asyncio.gather(*(c.predict("linear", [[x]]) for x in xs))
        ys = [r.outputs[0][0] for r in results]
        # Each answer belongs to its own call: y is strictly increasing in x.
        assert all(a < b for a, b in zip(ys, ys[1:], strict=False))
        stats = c.stats()
        assert stats.connects == 1 and stats.requests_sent == 500 and stats.inflight == 0
        # Batching across the concurrent calls really happened on the server.
        assert max(r.timing["batch_size"] for r in results) > 1


async def test_mixed_concurrent_call_types(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        async def stream_rows() -> int:
            n = 0
            async for ch in c.predict_stream("linear", [[0.5]] * 20, chunk_rows=3):
                n += len(ch.outputs)
            return n

        t0 = time.perf_counter()
        out = await asyncio.gather(
            *(c.predict("linear", [[0.1]]) for _ in range(50)),
            *(stream_rows() for _ in range(20)),
            *(c.ping() for _ in range(20)),
            c.models(),
        )
        took = time.perf_counter() - t0
        assert all(n == 20 for n in out[50:70])
        assert all(0 < rtt <= took for rtt in out[70:90]), (out[70:90], took)  # each ping inside the gather


async def test_ping_measures_rtt(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        for _ in range(5):
            t0 = time.perf_counter()
            rtt = await c.ping()
            took = time.perf_counter() - t0
            # In seconds, and the round trip itself: positive, and no more than the whole call took.
            assert 0 < rtt <= took, (rtt, took)


async def test_bad_inputs_raise_and_connection_survives(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        with pytest.raises(InvalidInput, match="row"):
            await c.predict("linear", [[1.0, 2.0]])
        with pytest.raises(InvalidInput):
            await c.predict("linear", [[float("nan")]])
        r = await c.predict("linear", [[0.5]])
        assert len(r.outputs) == 1 and c.stats().connects == 1


async def test_request_too_large_is_refused_before_sending(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        assert c.hello is not None and c.hello.limits.max_message_bytes is not None
        rows = c.hello.limits.max_message_bytes // 8 + 10  # "[0.125]," is 8 bytes per row
        sent_before = c.stats().requests_sent
        with pytest.raises(RequestTooLarge, match="max_message_bytes"):
            await c.predict("linear", [[0.125]] * rows)
        with pytest.raises(RequestTooLarge):
            async for _ in c.predict_stream("linear", [[0.125]] * rows):
                pass
        assert c.stats().requests_sent == sent_before and c.stats().inflight == 0
        assert len((await c.predict("linear", [[0.5]])).outputs) == 1


async def test_calls_after_close_raise_client_closed(server: ServerProcess) -> None:
    c = Client(server.url)
    await c.connect()
    await c.close()
    await c.close()  # idempotent
    with pytest.raises(ClientClosed):
        await c.predict("linear", [[0.5]])


async def test_lazy_connect_without_async_with(server: ServerProcess) -> None:
    c = Client(server.url)
    try:
        assert c.hello is None
        r = await c.predict("linear", [[0.5]])
        assert len(r.outputs) == 1 and c.stats().connected
    finally:
        await c.close()


# -- generate ---------------------------------------------------------------------------

async def test_generate_streams_tokens_and_result(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        gen = c.generate("charlm", "The ", max_tokens=20)
        assert isinstance(gen, Generation)
        tokens = [t async for t in gen]
        assert len(tokens) == 20 and all(isinstance(t, str) and len(t) == 1 for t in tokens)
        r = gen.result
        assert r.reason == "length" and r.tokens == 20 and r.text == "".join(tokens)
        assert r.prompt_tokens == 4  # "The ": one id a character for charlm
        assert {"ttft_ms", "total_ms"} <= set(r.timing)
        # greedy is deterministic
        again = await c.complete("charlm", "The ", max_tokens=20)
        assert again.text == r.text and again.reason == "length" and again.tokens == 20
        assert again.prompt_tokens == 4
        assert r.completion_tokens == again.completion_tokens == 20


async def test_a_stop_token_counts_in_completion_tokens_not_in_tokens(server: ServerProcess) -> None:
    """vLLM's count: the stop token that ends the text is generated (completion_tokens), not sent (tokens)."""
    async with Client(server.url) as c:
        free = await c.complete("charlm", "The ", max_tokens=20)
        stop_id = ord(free.text[5]) - 31 if free.text[5] != "\n" else 0  # charlm: printable c is ord(c) - 31
        first = free.text.index(free.text[5])  # the first place the model writes that character
        r = await c.complete("charlm", "The ", max_tokens=20, stop_token_ids=[stop_id])
        assert (r.reason, r.text) == ("stop", free.text[:first])
        assert (r.tokens, r.completion_tokens) == (first, first + 1)


async def test_generate_seeded_sampling_and_stop(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        a = await c.complete("charlm", "a", max_tokens=30, temperature=1.0, top_k=5, seed=42)
        b = await c.complete("charlm", "a", max_tokens=30, temperature=1.0, top_k=5, seed=42)
        assert a.text == b.text
        # Use a character the seeded sample actually produced as a stop string.
        stop = a.text[5]
        s = await c.complete("charlm", "a", max_tokens=30, temperature=1.0, top_k=5, seed=42, stop=[stop])
        assert s.reason == "stop" and stop not in s.text and a.text.startswith(s.text)
        # top_p reaches the server: a nucleus of one token is greedy at any temperature
        greedy = await c.complete("charlm", "a", max_tokens=30)
        narrow = await c.complete("charlm", "a", max_tokens=30, temperature=2.0, top_p=1e-9, seed=42)
        assert narrow.text == greedy.text != (await c.complete("charlm", "a", max_tokens=30, temperature=2.0,
                                                               seed=42)).text
        # so do the penalties (greedy included): the text differs from the plain greedy one
        penalised = await c.complete("charlm", "a", max_tokens=30, presence_penalty=1.0, frequency_penalty=1.0)
        assert penalised.tokens == 30 and penalised.text != greedy.text
        one = await c.complete("charlm", "a", max_tokens=30, temperature=2.0, min_p=1.0, seed=42)
        assert one.text == greedy.text  # min_p 1: only the likeliest token
        forced = await c.complete("charlm", "a", max_tokens=10, logit_bias={3: 100})
        assert len(set(forced.text)) == 1 and forced.tokens == 10  # one token, forced


def _repeated_bigrams(text: str) -> int:
    """How many of ``text``'s character pairs repeat an earlier one (charlm: a token a character)."""
    pairs = [text[i:i + 2] for i in range(len(text) - 1)]
    return len(pairs) - len(set(pairs))


async def test_generate_repetition_penalty(server: ServerProcess) -> None:
    """``repetition_penalty`` reaches the server (greedy included): at 1.5 the greedy text differs
    from the plain one and repeats itself less; 1 is off; a value outside (0, 2] or not a number
    is the server's ``bad_request`` naming the field, raised by ``complete`` and on iteration."""
    async with Client(server.url) as c:
        greedy = await c.complete("charlm", "The ", max_tokens=60)
        penalised = await c.complete("charlm", "The ", max_tokens=60, repetition_penalty=1.5)
        assert penalised.tokens == 60 and penalised.text != greedy.text
        assert _repeated_bigrams(penalised.text) < _repeated_bigrams(greedy.text)
        assert len(set(penalised.text)) > len(set(greedy.text))
        assert (await c.complete("charlm", "The ", max_tokens=60, repetition_penalty=1)).text == greedy.text
        for bad in (0, -1, 2.5, "1.5", True):
            with pytest.raises(BadRequestError, match=r"field 'repetition_penalty' must be a number in \(0, 2\]") as ei:
                await c.complete("charlm", "The ", max_tokens=5, repetition_penalty=bad)  # type: ignore[arg-type]
            assert ei.value.code == "bad_request"
        gen = c.generate("charlm", "The ", max_tokens=5, repetition_penalty=3.0)
        with pytest.raises(BadRequestError, match="'repetition_penalty'"):
            async for _ in gen:
                pass
        assert (await c.complete("charlm", "The ", max_tokens=3, repetition_penalty=2)).tokens == 3  # 2: in range


async def test_generate_stop_controls(server: ServerProcess) -> None:
    """vLLM's stop controls reach the server: ``stop_token_ids`` cuts the greedy text at the first
    stop token (kept with ``include_stop_str_in_output``), ``min_tokens`` defers a stop string past
    its first occurrence; bad values are the server's ``bad_request`` naming the field."""
    async with Client(server.url) as c:
        assert c.hello is not None and c.hello.limits.max_stop_token_ids == 64
        plain = (await c.complete("charlm", "The ", max_tokens=80)).text
        at = plain.index("t")
        r = await c.complete("charlm", "The ", max_tokens=80, stop_token_ids=[ord("t") - 31])  # charlm's id of "t"
        assert (r.text, r.reason, r.tokens) == (plain[:at], "stop", at)
        r = await c.complete("charlm", "The ", max_tokens=80, stop_token_ids=(ord("t") - 31,),
                             include_stop_str_in_output=True)
        assert (r.text, r.reason, r.tokens) == (plain[:at + 1], "stop", at + 1)
        second = plain.index("t", at + 1)
        gen = c.generate("charlm", "The ", max_tokens=80, stop="t", min_tokens=at + 1)
        texts = [t async for t in gen]
        assert ("".join(texts), gen.result.reason, len(texts)) == (plain[:second], "stop", second)
        for kwargs, field in [({"min_tokens": 6}, "min_tokens"), ({"stop_token_ids": [-1]}, "stop_token_ids"),
                              ({"include_stop_str_in_output": "yes"}, "include_stop_str_in_output")]:
            with pytest.raises(BadRequestError, match=f"field '{field}'"):
                await c.complete("charlm", "The ", max_tokens=5, **kwargs)  # type: ignore[arg-type]


async def test_generate_guided_choice(server: ServerProcess) -> None:
    """vLLM's ``guided_choice`` reaches the server: greedy and sampled texts are one of the
    choices, ending with ``stop``; a bad value is the server's ``bad_request`` naming the field,
    a single string a ``TypeError`` before anything is sent."""
    choices = ["yes", "no", "maybe so"]
    async with Client(server.url) as c:
        assert c.hello is not None and (c.hello.limits.max_guided_choices, c.hello.limits.max_guided_choice_chars) == (
            64, 256)
        for seed in range(4):
            r = await c.complete("charlm", "Is it? ", max_tokens=20, temperature=1.0, seed=seed, guided_choice=choices)
            assert r.text in choices and (r.reason, r.tokens) == ("stop", len(r.text))
        gen = c.generate("charlm", "Is it? ", max_tokens=20, guided_choice=tuple(choices))
        assert "".join([t async for t in gen]) in choices and gen.result.reason == "stop"
        with pytest.raises(BadRequestError, match="field 'guided_choice'"):
            await c.complete("charlm", "The ", max_tokens=5, guided_choice=[])
        with pytest.raises(TypeError, match="guided_choice"):
            c.generate("charlm", "The ", guided_choice="yes")


async def test_generate_guided_regex_and_json(server: ServerProcess) -> None:
    """``guided_regex`` and ``guided_json`` reach the server: a text ending with ``stop`` fully
    matches, the JSON follows its schema; a bad pattern is the server's ``bad_request`` naming
    the field, a mapping that is not JSON a ``TypeError`` before anything is sent."""
    pytest.importorskip("outlines_core")  # the server's structured extra
    regex = r"[0-9]{3}-[a-z]+"
    schema = {"type": "object", "properties": {"a": {"enum": ["x", "yy"]}}, "required": ["a"]}
    async with Client(server.url) as c:
        assert c.hello is not None and c.hello.limits.max_guided_pattern_chars == 16384
        for seed in range(3):
            r = await c.complete("charlm", "Call ", max_tokens=30, temperature=1.0, seed=seed, guided_regex=regex)
            assert r.reason == "stop" and re.fullmatch(regex, r.text), r
            r = await c.complete("charlm", "{", max_tokens=40, temperature=1.0, seed=seed, guided_json=schema)
            assert r.reason == "stop" and json.loads(r.text)["a"] in ("x", "yy"), r
        with pytest.raises(BadRequestError, match="field 'guided_regex'"):
            await c.complete("charlm", "The ", max_tokens=5, guided_regex="(")
        with pytest.raises(TypeError, match="guided_json"):
            c.generate("charlm", "The ", guided_json={"a": object()})


async def test_generate_chat_messages(server: ServerProcess) -> None:
    """A conversation is sent as ``messages``: charlm's chat template joins the contents with
    newlines, so the answer is the text prompt's, token for token."""
    chat = [{"role": "system", "content": "You continue text."}, {"role": "user", "content": "The "}]
    as_text = "You continue text.\nThe "
    async with Client(server.url) as c:
        by_text = await c.complete("charlm", as_text, max_tokens=12)
        by_chat = await c.complete("charlm", chat, max_tokens=12)
        assert by_chat.text == by_text.text and by_chat.tokens == 12
        assert by_chat.prompt_tokens == by_text.prompt_tokens is not None
        gen = c.generate("charlm", tuple(chat), max_tokens=12)  # any sequence of mappings
        chat.append({"role": "user", "content": "changed after the call"})  # copied at the call
        assert "".join([t async for t in gen]) == by_text.text
        # The server checks the messages and names the field; the connection goes on.
        with pytest.raises(BadRequestError, match=r"messages\[0\]\.role"):
            await c.complete("charlm", [{"role": "tool", "content": "x"}], max_tokens=3)
        with pytest.raises(BadRequestError, match="messages"):
            await c.complete("charlm", [], max_tokens=3)
        # Not a conversation at all: refused here, before anything is sent.
        with pytest.raises(TypeError, match="sequence of chat messages"):
            c.generate("charlm", {"role": "user", "content": "x"})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="chat message 1"):
            c.generate("charlm", [{"role": "user", "content": "x"}, "y"])  # type: ignore[list-item]
        assert (await c.complete("charlm", as_text, max_tokens=12)).text == by_text.text


def _check_logprobs(records: object, text: str, k: int, *, greedy: bool) -> None:
    """``records`` are one :class:`TokenLogprob` per token of ``text`` (charlm: a character
    each), each a log-probability with its ``k`` likeliest tokens, likeliest first (ties by id);
    greedy: the chosen token is the likeliest."""
    assert isinstance(records, tuple) and all(isinstance(r, TokenLogprob) for r in records)
    assert "".join(r.text for r in records) == text and all(len(r.text) == 1 for r in records)
    for r in records:
        assert r.logprob is not None and r.logprob <= 0.0
        assert len(r.top) == k
        order = [(-t.logprob, t.id) for t in r.top]  # type: ignore[operator]
        assert order == sorted(order) and all(t.logprob <= 0.0 for t in r.top)  # type: ignore[operator]
        if greedy and k:
            assert (r.top[0].text, r.top[0].logprob) == (r.text, r.logprob)


async def test_generate_logprobs(server: ServerProcess) -> None:
    """``logprobs=k``: iteration still yields the same texts; each token's record arrives with it."""
    async with Client(server.url) as c:
        plain = await c.complete("charlm", "The ", max_tokens=20)
        assert plain.logprobs is None
        gen = c.generate("charlm", "The ", max_tokens=20, logprobs=3)
        assert gen.logprobs == []
        texts = []
        async for text in gen:
            texts.append(text)
            assert gen.logprobs is not None and len(gen.logprobs) == len(texts)
            assert gen.logprobs[-1].text == text  # the record of the text just yielded
        r = gen.result
        assert r.text == "".join(texts) == plain.text and r.tokens == 20 and r.reason == "length"
        assert r.logprobs == tuple(gen.logprobs)
        _check_logprobs(r.logprobs, r.text, 3, greedy=True)
        done = await c.complete("charlm", "The ", max_tokens=20, logprobs=3)
        assert done.text == plain.text and done.logprobs == r.logprobs  # greedy: the same values
        # k = 0: the chosen token's log-probability alone; k = 20, the server's most
        zero = await c.complete("charlm", "The ", max_tokens=20, logprobs=0)
        _check_logprobs(zero.logprobs, plain.text, 0, greedy=True)
        assert [z.logprob for z in zero.logprobs or ()] == [x.logprob for x in r.logprobs]
        most = await c.complete("charlm", "The ", max_tokens=5, logprobs=20)
        _check_logprobs(most.logprobs, plain.text[:5], 20, greedy=True)
        # a generation without logprobs has none, and its token frames are plain
        bare = c.generate("charlm", "The ", max_tokens=3)
        assert "".join([t async for t in bare]) == plain.text[:3]
        assert bare.logprobs is None and bare.result.logprobs is None


async def test_generate_logprobs_with_sampling_and_stop(server: ServerProcess) -> None:
    """Sampled tokens have their records too (the chosen one need not be the likeliest), and a
    stop string cuts the records with the text."""
    async with Client(server.url) as c:
        free = await c.complete("charlm", "a", max_tokens=30, temperature=1.0, top_k=5, seed=42, logprobs=2)
        _check_logprobs(free.logprobs, free.text, 2, greedy=False)
        assert free.text == (await c.complete("charlm", "a", max_tokens=30, temperature=1.0, top_k=5, seed=42)).text
        stop = free.text[5]
        cut = await c.complete("charlm", "a", max_tokens=30, temperature=1.0, top_k=5, seed=42, logprobs=2,
                               stop=[stop])
        assert cut.reason == "stop" and free.text.startswith(cut.text) and stop not in cut.text
        assert cut.logprobs == free.logprobs[:len(cut.text)]  # type: ignore[index]


async def test_generate_bad_logprobs(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        assert c.hello is not None and c.hello.limits.max_logprobs == 20
        with pytest.raises(BadRequestError, match="'logprobs'"):  # over the server's max_logprobs (20)
            await c.complete("charlm", "x", max_tokens=3, logprobs=21)
        with pytest.raises(TypeError, match="logprobs must be"):  # OpenAI chat's logprobs=True: refused here
            c.generate("charlm", "x", logprobs=True)  # type: ignore[arg-type]
        assert (await c.complete("charlm", "x", max_tokens=3, logprobs=1)).tokens == 3  # the connection goes on


async def test_generate_bad_parameters(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        with pytest.raises(BadRequestError):
            await c.complete("charlm", "x", max_tokens=0)
        with pytest.raises(BadRequestError):
            await c.complete("linear", "x", max_tokens=3)  # linear does not generate
        with pytest.raises(BadRequestError):
            await c.predict("charlm", [[0.5]])  # charlm does not predict


async def test_many_concurrent_generations(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        alone = await c.complete("charlm", "To be", max_tokens=16)
        outs = await asyncio.gather(*(c.complete("charlm", "To be", max_tokens=16) for _ in range(32)))
        assert all(o.text == alone.text for o in outs)
