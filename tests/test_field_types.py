"""Every field of every request shape, replaced by every JSON type, gets a wire error or a value.

The property fuzzers (tests/test_fuzz.py, tests/test_http_fuzz.py) draw random
bodies and once took hundreds of CI runs to draw an OIP tensor whose ``datatype``
was a list: ``datatype not in DATATYPES`` raised ``TypeError: unhashable type``
instead of ``bad_request``.  This file walks the same class of bug exhaustively
and deterministically: for one well-formed body of each decoder (WebSocket text
and binary frames, ``POST /predict``, Open Inference Protocol infer, OpenAI
completions), each value at each path (the body itself, every object member,
every array item) is replaced in turn by a value of each JSON type, unhashable
ones included, and the decoder must return or raise a
:class:`~wsserve.errors.WsserveError` carrying a wire code, nothing else.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from wsserve.errors import ERROR_CODES, WsserveError
from wsserve.protocol import decode, decode_binary, decode_predict_body
from wsserve.rest import oip
from wsserve.rest.openai import parse_completion

#: one value of each JSON type; the list and the objects are unhashable
REPLACEMENTS: tuple[Any, ...] = (None, True, 0, -1, 2**63, 1.5, "", "x", [], [[]], {}, {"a": []})

Path = tuple[str | int, ...]


def paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every path in ``value``: the root, each object member and each array item, depth first."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))


def replaced(value: Any, path: Path, new: Any) -> Any:
    if not path:
        return new
    out = copy.deepcopy(value)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return out


def mutations(body: Any) -> Iterator[tuple[Path, Any, Any]]:
    for path in paths(body):
        for new in REPLACEMENTS:
            yield path, new, replaced(body, path, new)


def check_all(body: Any, call: Callable[[Any], object]) -> int:
    """Run ``call`` on every mutation of ``body``; return how many it refused with a wire error."""
    refused = 0
    for path, new, mutated in mutations(body):
        try:
            call(mutated)
        except WsserveError as exc:
            assert exc.code in ERROR_CODES and exc.message, (path, new)
            refused += 1
        except Exception as exc:  # noqa: BLE001 - the defect this file exists to catch
            pytest.fail(f"{type(exc).__name__} at {list(path)} = {new!r}: {exc}")
    return refused


WS_BODIES = {
    "predict": {"type": "predict", "id": "p1", "model": "linear", "version": "1", "inputs": [[1.0], [2]],
                "stream": True, "chunk_rows": 2, "timeout_ms": 1000, "priority": 1, "explain": False},
    "generate": {"type": "generate", "id": 7, "model": "charlm", "prompt": "hi", "max_tokens": 5,
                 "temperature": 0.7, "top_k": 3, "top_p": 0.9, "seed": 1, "stop": ["a", "b"],
                 "timeout_ms": 1000, "priority": 0, "version": 1},
    "cancel": {"type": "cancel", "id": "p1"},
    "ping": {"type": "ping", "id": 1},
    "models": {"type": "models", "id": 2},
    "auth": {"type": "auth", "id": 3, "token": "secret"},
    "load": {"type": "load", "id": 4, "model": "custom", "version": 2},
    "reload": {"type": "reload", "id": 5, "model": "custom"},
}


@pytest.mark.parametrize("kind", sorted(WS_BODIES))
def test_websocket_text_requests(kind: str) -> None:
    body = WS_BODIES[kind]
    decode(orjson.dumps(body))  # the unmutated body is well-formed
    assert check_all(body, lambda b: decode(orjson.dumps(b), max_tokens=100)) > 0


def _frame(header: Any, payload: bytes) -> bytes:
    head = orjson.dumps(header)
    return len(head).to_bytes(4, "little") + head + payload


BINARY_ONE = {"type": "predict", "id": "b1", "model": "linear", "dtype": "float64", "shape": [2, 1],
              "binary_outputs": True, "stream": False, "timeout_ms": 5, "priority": 0, "explain": False}
BINARY_NAMED = {"type": "predict", "id": "b2", "model": "net", "version": 3,
                "inputs": [{"name": "a", "dtype": "float32", "shape": [1, 2]},
                           {"name": "b", "dtype": "int64", "shape": [1]}]}


@pytest.mark.parametrize("header,payload", [(BINARY_ONE, b"\0" * 16), (BINARY_NAMED, b"\0" * 16)],
                         ids=["dtype-shape", "named-inputs"])
def test_websocket_binary_frame_headers(header: dict, payload: bytes) -> None:
    decode_binary(_frame(header, payload), max_rows=64)
    assert check_all(header, lambda h: decode_binary(_frame(h, payload), max_rows=64)) > 0


@pytest.mark.parametrize("body", [
    {"x": [1.0, 2.0]},
    {"model": "linear", "version": 1, "inputs": [[1.0]], "timeout_ms": 10, "priority": 1, "stream": False,
     "chunk_rows": 1, "explain": True},
], ids=["seed-form", "predict-form"])
def test_http_predict_bodies(body: dict) -> None:
    decode_predict_body(orjson.dumps(body))
    assert check_all(body, lambda b: decode_predict_body(orjson.dumps(b))) > 0


INPUTS = (oip.Tensor("input", "FP64", (2,)),)
OUTPUTS = (oip.Tensor("output", "FP64", (1,)),)
OIP_JSON = {"id": "r1", "parameters": {"priority": 1, "timeout": 1000, "binary_data_output": False, "explain": True},
            "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2]}],
            "outputs": [{"name": "output", "parameters": {"binary_data": False}},
                        {"name": "output_attributions"}]}
OIP_BINARY = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64",
                          "parameters": {"binary_data_size": 16}}],
              "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}


def _infer(body: Any, binary: bytes | None) -> object:
    text = orjson.dumps(body)
    if binary is None:
        return oip.parse_infer(text, None, INPUTS, OUTPUTS, max_rows=64, explain_refusal=None)
    return oip.parse_infer(text + binary, len(text), INPUTS, OUTPUTS, max_rows=64, explain_refusal=None)


@pytest.mark.parametrize("body,binary", [(OIP_JSON, None), (OIP_BINARY, b"\0" * 16)], ids=["json", "binary"])
def test_open_inference_protocol_infer(body: dict, binary: bytes | None) -> None:
    _infer(body, binary)
    assert check_all(body, lambda b: _infer(b, binary)) > 0


def test_openai_completions() -> None:
    body = {"model": "charlm", "prompt": "hello", "max_tokens": 5, "temperature": 0.5, "top_p": 1,
            "top_k": 4, "seed": 3, "stop": ["x", "y"], "stream": True,
            "stream_options": {"include_usage": True}, "n": 1, "echo": False, "logprobs": None,
            "logit_bias": {}, "suffix": None}
    parse_completion(body, max_tokens_limit=100)
    assert check_all(body, lambda b: parse_completion(b, max_tokens_limit=100)) > 0


def test_the_walk_reaches_every_nested_value() -> None:
    """The mutation walk is not vacuous: it visits each leaf and container of a nested body."""
    found = list(paths({"a": [1, {"b": [2]}], "c": {}}))
    assert found == [(), ("a",), ("a", 0), ("a", 1), ("a", 1, "b"), ("a", 1, "b", 0), ("c",)]
    assert replaced({"a": [1, 2]}, ("a", 1), []) == {"a": [1, []]}


# --------------------------------------------------------------------------- a model's config.toml

def _toml_value(value: Any) -> str:
    """``value`` as a TOML inline value (strings in JSON escapes, which TOML basic strings share)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{orjson.dumps(k).decode()} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml(doc: Any) -> str:
    return "".join(f"{orjson.dumps(k).decode()} = {_toml_value(v)}\n" for k, v in doc.items())


CONFIGS = {
    "shorthand": {"backend": "onnx", "task": "regression", "input_shape": [3], "input_dtype": "float32",
                  "output_shape": [1], "output_dtype": "float64", "max_batch_size": 64, "max_delay_ms": 1.5,
                  "instances": 2, "flops_per_row": 100, "version_policy": {"latest": 2},
                  "onnx": {"intra_op_num_threads": 1}},
    "named": {"backend": "python", "task": "classification", "version_policy": {"specific": [1, 3]},
              "inputs": [{"name": "a", "shape": [2], "dtype": "int64"}, {"name": "b"}],
              "outputs": [{"name": "y", "shape": [4], "dtype": "float32"}]},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_config_toml(name: str) -> None:
    """config.toml has no null: each value becomes each other TOML type; the parser names the key or returns."""
    from wsserve.repository.config import parse_config
    from wsserve.repository.errors import ConfigError

    doc = CONFIGS[name]
    parse_config(_toml(doc))
    refused = 0
    for path in list(paths(doc))[1:]:  # the document itself is always a table
        for new in REPLACEMENTS:
            if new is None or new == 2**63:  # not TOML (no null; integers are 64-bit signed)
                continue
            try:
                parse_config(_toml(replaced(doc, path, new)))
            except ConfigError as exc:
                assert "config.toml" in str(exc), (path, new)
                refused += 1
            except Exception as exc:  # noqa: BLE001 - any other exception is the defect
                pytest.fail(f"{type(exc).__name__} at {list(path)} = {new!r}: {exc}")
    assert refused > 0


# --------------------------------------------------------------------------- a model.npz's header


def _npz_models() -> dict[str, tuple[dict, dict]]:
    """``architecture -> (arrays, meta)`` of a small valid model of each predictive architecture."""
    import numpy as np

    from wsserve.models.mlp import init_params
    from wsserve.models.mlp_int8 import MLPInt8Model
    from wsserve.models.mlp_sparse import MLPSparseModel

    params = init_params(np.random.default_rng(0), [4, 8, 3])
    mlp = {f"{p}{i}": a for i, layer in enumerate(params) for p, a in zip("wb", layer, strict=True)}
    masks = [np.arange(w.size).reshape(w.shape) % 2 == 0 for w, _ in params]
    return {
        "linear": ({"weight": np.array([3.0]), "bias": np.array([0.5])}, {"metrics": {"mse": 0.01}}),
        "mlp": (mlp, {"metrics": {"accuracy": 0.9}}),
        "mlp-int8": MLPInt8Model.from_params(params, meta={"metrics": {"accuracy": 0.9}}).to_arrays(),
        "mlp-sparse": MLPSparseModel.from_pruned(params, masks, meta={"metrics": {"accuracy": 0.9}}).to_arrays(),
    }


@pytest.mark.parametrize("architecture", ["linear", "mlp", "mlp-int8", "mlp-sparse"])
def test_model_npz_header(tmp_path, architecture: str) -> None:
    """Every field of a model.npz's JSON header (format, architecture, each meta value) as each JSON
    type: the file loads and predicts, or is refused with a ModelLoadError naming it."""
    import io
    import json

    import numpy as np

    from wsserve.repository.errors import ModelLoadError
    from wsserve.repository.npz import build_npz_model, read_npz

    arrays, meta = _npz_models()[architecture]
    header = json.loads(json.dumps({"format": 1, "architecture": architecture, "meta": meta}))
    path = tmp_path / "model.npz"

    def load(h: Any) -> None:
        buf = io.BytesIO()
        raw = np.frombuffer(json.dumps(h).encode(), dtype=np.uint8)
        np.savez(buf, allow_pickle=False, __meta__=raw, **arrays)
        path.write_bytes(buf.getvalue())
        try:
            model = build_npz_model(read_npz(path))
        except ModelLoadError as exc:
            assert str(path) in str(exc)
            raise Refused from None
        width = model.info.input_shape[0]
        assert np.isfinite(model.predict(np.ones((2, width)))).all()

    load(header)
    refused = 0
    for p in paths(header):
        for new in REPLACEMENTS:
            try:
                load(replaced(header, p, new))
            except Refused:
                refused += 1
            except Exception as exc:  # noqa: BLE001 - any other exception is the defect
                pytest.fail(f"{type(exc).__name__} at {list(p)} = {new!r}: {exc}")
    assert refused > 0


class Refused(Exception):
    """The loader refused the file with a ModelLoadError naming it (the outcome the test accepts)."""
