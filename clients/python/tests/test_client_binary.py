"""Binary tensor frames through the client against a real server: numpy, array.array, bytes."""

from __future__ import annotations

import array
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from wsserve_client import (
    BadRequestError,
    Client,
    InvalidInput,
    RequestTooLarge,
    Tensor,
    as_tensor,
)
from wsserve_client.codec import split_attributions
from wsserve_client.tensors import decode_frame, encode_frame, peek_header

from tests.support import ServerProcess


async def test_binary_predict_with_numpy_answers_arrays_equal_to_json(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        width = next(m for m in await c.models() if m.name == "mlp").input_shape[0]
        x = np.random.default_rng(1).random((4, width), dtype=np.float32)
        want = await c.predict("mlp", x.tolist(), as_numpy=True)
        got = await c.predict("mlp", x, binary=True)
        assert isinstance(got.outputs, np.ndarray) and got.outputs.shape == want.outputs.shape
        np.testing.assert_allclose(got.outputs, want.outputs, rtol=1e-6)
        assert got.model == "mlp" and got.version == want.version and got.timing["batch_size"] >= 1


async def test_array_array_and_raw_bytes_inputs(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        want = (await c.predict("linear", [[0.25]])).outputs
        one_row = await c.predict("linear", array.array("d", [0.25]), binary=True)
        assert one_row.outputs.tolist() == want
        raw = await c.predict("linear", as_tensor(array.array("f", [0.25, 0.25]), shape=(2, 1)), binary=True)
        assert raw.outputs.tolist() == want * 2
        t = Tensor(np.array([[0.25]], "<f8").tobytes(), "float64", (1, 1))
        assert (await c.predict("linear", t, binary=True)).outputs.tolist() == want


async def test_binary_header_over_the_server_limit_is_refused_before_sending(server: ServerProcess) -> None:
    """The server cannot read the id of a binary frame whose header is over
    ``max_binary_header_bytes``: its ``bad_request`` carries id null and answers no call, so
    such a request would wait forever. The client refuses it unsent, as a frame over
    ``max_message_bytes``."""
    async with Client(server.url) as c:
        assert c.hello is not None and c.hello.limits.max_binary_header_bytes == 4096
        # 20 named inputs with 250-character names: a header of about 6 KB
        inputs = {f"{i:02d}" + "n" * 248: np.zeros((1, 1)) for i in range(20)}
        sent_before = c.stats().requests_sent
        with pytest.raises(RequestTooLarge, match="max_binary_header_bytes"):
            await c.predict("linear", inputs, binary=True, timeout=5)
        with pytest.raises(RequestTooLarge, match="max_binary_header_bytes"):
            async for _ in c.predict_stream("linear", inputs, binary=True, timeout=5):
                pass
        assert c.stats().requests_sent == sent_before and c.stats().inflight == 0
        assert (await c.predict("linear", np.array([[0.5]]), binary=True)).outputs.shape == (1, 1)


async def test_binary_stream_yields_array_chunks(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        x = np.linspace(0, 1, 5).reshape(5, 1)
        want = (await c.predict("linear", x.tolist())).outputs
        chunks = [ch async for ch in c.predict_stream("linear", x, chunk_rows=2, binary=True)]
        assert [ch.offset for ch in chunks] == [0, 2, 4]
        assert np.concatenate([ch.outputs for ch in chunks]).tolist() == want


async def test_binary_refusals_are_the_server_errors(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        with pytest.raises(InvalidInput, match="not finite"):
            await c.predict("linear", np.array([[np.nan]]), binary=True)
        with pytest.raises(InvalidInput, match=r"the model takes \[n, 1\]"):
            await c.predict("linear", np.zeros((1, 2)), binary=True)
        assert (await c.predict("linear", np.zeros((1, 1)), binary=True)).outputs.shape == (1, 1)


async def test_binary_explain_returns_the_json_attributions_and_explanation(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        x = np.random.default_rng(4).normal(size=(3, 32)).astype(np.float32)
        want = await c.predict("mlp", x.astype(np.float64), explain=True, as_numpy=True)
        got = await c.predict("mlp", x, binary=True, explain=True)
        assert isinstance(got.attributions, np.ndarray) and got.attributions.dtype == np.float64
        assert np.array_equal(got.attributions, want.attributions)  # bit for bit
        assert isinstance(got.outputs, np.ndarray) and got.outputs.shape == (3, 10)
        np.testing.assert_allclose(got.outputs, want.outputs, rtol=1e-6)
        assert got.explanation == want.explanation and got.explanation["method"] == "integrated-gradients"
        plain = await c.predict("mlp", x, binary=True)
        assert plain.attributions is None and plain.explanation is None and plain.outputs.shape == (3, 10)
        # streamed: each chunk its rows' attributions, the summary how they were computed
        stream = c.predict_stream("mlp", x, chunk_rows=2, binary=True, explain=True)
        chunks = [ch async for ch in stream]
        assert [(ch.offset, ch.attributions.shape) for ch in chunks] == [(0, (2, 32)), (2, (1, 32))]
        assert np.array_equal(np.concatenate([ch.attributions for ch in chunks]), want.attributions)
        assert stream.summary.explanation == want.explanation
        json_chunks = [ch async for ch in c.predict_stream("mlp", x.tolist(), chunk_rows=2, explain=True)]
        assert [a for ch in json_chunks for a in ch.attributions] == want.attributions.tolist()
        with pytest.raises(BadRequestError, match="'charlm'"):
            await c.predict("charlm", np.zeros((1, 1)), binary=True, explain=True)


def test_split_attributions_takes_only_the_named_pair() -> None:
    out, attr = object(), object()
    assert split_attributions({"y": out, "y_attributions": attr}) == (out, attr)
    assert split_attributions({"y": out, "z_attributions": attr}) == ({"y": out, "z_attributions": attr}, None)
    assert split_attributions(out) == (out, None)


def test_frames_round_trip_without_numpy_types() -> None:
    t = as_tensor(array.array("i", [1, -2, 3, 4]), shape=(2, 2))
    frame = encode_frame({"type": "result", "id": 1}, {"a": t, "b": Tensor(b"\x01\x00", "bool", (2,))}, key="outputs")
    assert type(frame).__name__ == "BinaryFrame" and (4 + int.from_bytes(frame[:4], "little")) % 8 == 0
    back = decode_frame(bytes(frame), as_numpy=False)
    assert back["outputs"]["a"].tolist() == [[1, -2], [3, 4]] and back["outputs"]["b"].tolist() == [True, False]
    with pytest.raises(ValueError):
        decode_frame(bytes(frame)[:-1], as_numpy=False)
    with pytest.raises(ValueError, match="do not hold"):
        Tensor(b"\0" * 3, "float32", (1,))


def test_a_reply_header_long_with_response_parameters_is_read_and_routed() -> None:
    """A reply's header has no bound of its own (PROTOCOL.md): a model's response parameters, up to
    16 KiB a response and 64 keys merged, can make it longer than 64 KiB.  The client refused such a
    header, and could not even read the id to end the request with: the request was left unanswered."""
    params = {f"p{i}": "v" * 16000 for i in range(5)}  # 80 KB of parameters
    frame = encode_frame({"type": "result", "id": "r", "model": "m", "parameters": params},
                         {"y": Tensor(b"\x01\x00\x00\x00", "int32", (1, 1))}, key="outputs")
    assert int.from_bytes(frame[:4], "little") > 1 << 16
    back = decode_frame(bytes(frame), as_numpy=False)
    assert back["parameters"] == params and back["outputs"]["y"].tolist() == [[1]]
    assert peek_header(bytes(frame))["id"] == "r"
    with pytest.raises(ValueError, match="out of range"):  # a length past the frame is still refused
        decode_frame(bytes(frame)[: 1 << 16], as_numpy=False)


def test_the_client_works_without_numpy(server: ServerProcess) -> None:
    """A child interpreter where ``import numpy`` fails: array.array in, Tensor out."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["numpy"] = None  # import numpy now raises ImportError
        import array, asyncio
        from wsserve_client import Client, Tensor

        async def main():
            async with Client({server.url!r}) as c:
                r = await c.predict("linear", array.array("d", [0.25]), binary=True)
                assert isinstance(r.outputs, Tensor), type(r.outputs)
                want = (await c.predict("linear", [[0.25]])).outputs
                assert r.outputs.tolist() == want, (r.outputs.tolist(), want)
                e = await c.predict("linear", array.array("d", [0.25]), binary=True, explain=True)
                assert isinstance(e.attributions, Tensor) and e.explanation["method"] == "linear-exact"
                want = (await c.predict("linear", [[0.25]], explain=True)).attributions
                assert e.attributions.tolist() == want and e.outputs.tolist() == r.outputs.tolist()
                print("ok", r.outputs.dtype, r.outputs.shape, e.attributions.dtype, e.attributions.shape)

        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok float64 (1, 1) float64 (1, 1)"


def _sent(frame: bytes) -> tuple[str, np.ndarray]:
    """The dtype a request frame declares and its payload read in it."""
    import json

    n = int.from_bytes(frame[:4], "little")
    header = json.loads(frame[4 : 4 + n])
    return header["dtype"], np.frombuffer(frame[4 + n :], dtype=np.dtype(header["dtype"]).newbyteorder("<"))


def test_numpy_arrays_keep_their_dtype_only_where_the_server_lists_it() -> None:
    from wsserve_client.codec import encode_predict, parse_hello

    image = np.array([[0, 255]], dtype=np.uint8)
    dtype, values = _sent(encode_predict(1, "m", image, binary=True))  # a server without the list: widened
    assert dtype == "int32" and values.tolist() == [0, 255]
    dtype, values = _sent(encode_predict(1, "m", image, binary=True, dtypes=("uint8",)))
    assert dtype == "uint8" and values.tolist() == [0, 255]
    dtype, values = _sent(encode_predict(1, "m", np.array([1.5], np.float16), binary=True, dtypes=("float16",)))
    assert dtype == "float16" and values.tolist() == [1.5]
    dtype, values = _sent(encode_predict(1, "m", np.array([2**64 - 1], ">u8"), binary=True, dtypes=("uint64",)))
    assert dtype == "uint64" and values.tolist() == [2**64 - 1]
    hello = {"type": "hello", "protocol": 1, "binary_dtypes": ["uint8", "bfloat99", 7, "float16"]}
    assert parse_hello(hello).binary_dtypes == ("uint8", "float16")  # unknown names and non-strings dropped
    assert parse_hello({"type": "hello", "binary_dtypes": "uint8"}).binary_dtypes == ()


async def test_a_uint64_array_is_never_wrapped_around_into_int64(server: ServerProcess) -> None:
    """Before a hello (or from a server whose hello does not list uint64) a uint64 array is widened
    to int64: 2**63 became -2**63, and ``linear`` answered for it, a silently wrong answer. Values
    int64 holds are still widened; others are refused unsent."""
    from wsserve_client.codec import encode_predict

    big = np.array([[2**63]], dtype=np.uint64)
    dtype, values = _sent(encode_predict(1, "m", np.array([[2**63 - 1]], np.uint64), binary=True))
    assert dtype == "int64" and values.tolist() == [2**63 - 1]
    c = Client(server.url)  # not connected yet: no binary_dtypes known
    try:
        with pytest.raises(ValueError, match=r"uint64 array holds 9223372036854775808, beyond int64"):
            await c.predict("linear", big, binary=True)
        assert c.stats().requests_sent == 0
        await c.connect()
        assert "uint64" in c.hello.binary_dtypes
        got = await c.predict("linear", big, binary=True)
        want = await c.predict("linear", [[float(2**63)]])
        assert got.outputs.tolist() == want.outputs
    finally:
        await c.close()


def test_float_values_round_to_bfloat16_as_ml_dtypes_rounds() -> None:
    """The client's float -> bfloat16 rounding (pure Python for float32 bytes, numpy for float16,
    float32 and float64 arrays) gives ml_dtypes' bit patterns: ties to even, overflow to infinities,
    subnormals, NaN the quiet NaN of its sign; float64 rounded once (not through float32)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from wsserve_client.tensors import float32_to_bfloat16

    rng = np.random.default_rng(16)
    words = np.concatenate([rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32), np.array(
        [0x7F7FFFFF, 0xFF7F8000, 0x7F7F7FFF, 0x3F808000, 0x3F818000, 0x7FC00000, 0xFFC00001, 0x7F800001,
         0x7F800000, 0xFF800000, 0, 0x80000000, 0x00008000, 0x00018000, 1], np.uint32)])
    f32 = words.view(np.float32)
    with np.errstate(invalid="ignore"):
        want = f32.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.frombuffer(float32_to_bfloat16(f32.tobytes()), "<u2").tolist() == want.tolist()
    assert np.frombuffer(as_tensor(f32, dtype="bfloat16").data, "<u2").tolist() == want.tolist()
    f64 = np.concatenate([rng.integers(0, 2**64, 100_000, dtype=np.uint64).view(np.float64),
                          rng.standard_normal(100_000) * 10.0 ** rng.integers(-45, 40, 100_000),
                          [1 + 2**-8 + 2**-30, 3.3961e38, 3.3959e38, 1e300, -1e-300, 2**-134, 2**-134 * 1.0000001]])
    with np.errstate(all="ignore"):
        want = f64.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.frombuffer(as_tensor(f64, dtype="bfloat16").data, "<u2").tolist() == want.tolist()
    f16 = rng.standard_normal(1000).astype(np.float16)
    assert as_tensor(f16, dtype="bfloat16").data == f16.astype(ml_dtypes.bfloat16).tobytes()


def test_bfloat16_tensors_are_made_from_values_or_bit_patterns() -> None:
    """What ``as_tensor`` takes with ``dtype="bfloat16"``, and what it refuses."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from wsserve_client.codec import encode_predict, parse_hello

    x = np.array([[1.0, -2.5, 3.0]], ml_dtypes.bfloat16)
    bits = x.view(np.uint16)
    for value in (x, bits, bits.tobytes(), array.array("H", bits.ravel().tolist()), np.asarray(x, np.float32)):
        t = as_tensor(value, dtype="bfloat16", shape=(1, 3))
        assert t == Tensor(bits.tobytes(), "bfloat16", (1, 3)), type(value)
        assert t.tolist() == [[1.0, -2.5, 3.0]] and t.numpy().dtype == np.float32
    dtype, values = _sent(encode_predict(1, "m", x, binary=True, dtypes=("bfloat16",)))
    assert dtype == "bfloat16" and values.view(np.uint16).tolist() == bits.ravel().tolist()
    dtype, values = _sent(encode_predict(1, "m", x, binary=True))  # a server that does not list it: float32
    assert dtype == "float32" and values.tolist() == [1.0, -2.5, 3.0]
    assert parse_hello({"type": "hello", "binary_dtypes": ["float16", "bfloat16"]}).binary_dtypes == (
        "float16", "bfloat16")
    with pytest.raises(TypeError, match="dtype='bfloat16' takes float values or uint16 bit patterns"):
        as_tensor(np.array([1], np.int32), dtype="bfloat16")
    with pytest.raises(TypeError, match="typecode 'd'"):
        as_tensor(array.array("d", [1.0]), dtype="bfloat16")
    with pytest.raises(TypeError, match="dtype='float16' is taken only with raw bytes"):
        as_tensor(np.array([1.0]), dtype="float16")
