"""The request's ``Content-Type`` on the HTTP JSON routes, on the default server (raw HTTP).

A body is read as JSON whatever its Content-Type, as Triton and KServe read ``curl -d`` bodies
(``application/x-www-form-urlencoded``); only when it fails to parse does the ``bad_json`` message
name a Content-Type that is not JSON, in each route family's envelope.  The OIP binary tensor
extension (``application/octet-stream`` with ``Inference-Header-Content-Length``) is unaffected.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from tests.support import RawHttp

FORM = "application/x-www-form-urlencoded"  # what `curl -d` sends
NOTE = " (the request's Content-Type is '{}'; send JSON)"
BINARY_NOTE = " (the request's Content-Type is '{}'; send JSON, or binary tensors after an " \
              "Inference-Header-Content-Length header)"

INFER = {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64", "data": [0.5]}]}

# (path, a body the route serves, where its error message is, whether the route takes binary tensors)
ROUTES = [
    ("/predict", {"model": "linear", "inputs": [[0.5]]}, "wsserve", False),
    ("/v2/models/linear/infer", INFER, "oip", True),
    ("/v2/models/linear/versions/1/infer", INFER, "oip", True),
    ("/v1/models/linear:predict", {"instances": [[0.5]]}, "oip", False),
    ("/v2/models/charlm/generate", {"text_input": "The ", "max_tokens": 2}, "oip", False),
    ("/v1/completions", {"model": "charlm", "prompt": "The ", "max_tokens": 2}, "openai", False),
    ("/v1/chat/completions", {"model": "charlm", "messages": [{"role": "user", "content": "The "}], "max_tokens": 2},
     "openai", False),
]


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    with RawHttp(port) as c:
        a = c.request("POST", path, body, headers)
    return a.status, a.body


def message(style: str, raw: bytes) -> str:
    error = json.loads(raw)["error"]
    return error if style == "oip" else error["message"]


@pytest.mark.parametrize("path,good,style,binary", ROUTES, ids=[r[0] for r in ROUTES])
def test_a_body_that_is_not_json_names_a_content_type_that_is_not_json(server, path: str, good: dict[str, Any],
                                                                        style: str, binary: bool) -> None:
    form_body = b"model=linear&x=0.5"  # what a form would send
    status, raw = post(server.port, path, form_body, {"Content-Type": FORM})
    note = (BINARY_NOTE if binary else NOTE).format(FORM)
    got = message(style, raw)
    assert status == 400 and got.startswith("message is not valid JSON: ") and got.endswith(note), got
    if style != "oip":
        assert json.loads(raw)["error"]["code"] == "bad_json"
    # The same bad body with a JSON Content-Type, or none, is the plain bad_json message.
    for headers in ({"Content-Type": "application/json"}, {"Content-Type": "application/vnd.api+json; charset=utf-8"},
                    None):
        status, raw = post(server.port, path, form_body, headers)
        assert status == 400 and "Content-Type" not in message(style, raw), (headers, raw)
    # Valid JSON is served whatever the Content-Type says (curl -d, a text/plain client), as Triton and KServe do.
    for content_type in (FORM, "text/plain", "application/json"):
        status, raw = post(server.port, path, json.dumps(good).encode(), {"Content-Type": content_type})
        assert status == 200, (content_type, raw[:300])


def test_invalid_utf8_names_the_content_type_too(server) -> None:
    status, raw = post(server.port, "/predict", b'{"x": "\xff"}', {"Content-Type": "text/plain; charset=latin-1"})
    assert status == 400
    assert json.loads(raw)["error"] == {"code": "bad_json", "message": "message is not valid UTF-8 (byte 7)"
                                        + NOTE.format("text/plain; charset=latin-1")}


def test_a_long_content_type_is_shown_cut(server) -> None:
    content_type = "application/x-" + "y" * 5000
    status, raw = post(server.port, "/v1/completions", b"prompt=The", {"Content-Type": content_type})
    got = message("openai", raw)
    assert status == 400 and "(the request's Content-Type is 'application/x-yyy" in got, got
    note = got[got.index(" (the request's Content-Type"):]
    assert note.endswith("...; send JSON)") and len(note) < 120, got


def test_the_binary_tensor_extension_keeps_its_content_type(server) -> None:
    """``application/octet-stream`` with ``Inference-Header-Content-Length`` is the binary extension:
    served, and a broken JSON header is not blamed on the (right) Content-Type; without the header
    length the body is read as JSON, and the refusal says which two forms the route takes."""
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 4}}]}).encode()
    binary = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    status, raw = post(server.port, "/v2/models/linear/infer", header + struct.pack("<f", 0.5), binary)
    assert status == 200 and abs(json.loads(raw)["outputs"][0]["data"][0] - 2.02) < 0.05, raw
    broken = b"{" + header[2:]
    status, raw = post(server.port, "/v2/models/linear/infer", broken + struct.pack("<f", 0.5), binary)
    got = json.loads(raw)["error"]
    assert status == 400 and got.startswith("message is not valid JSON: ") and "Content-Type" not in got, got
    status, raw = post(server.port, "/v2/models/linear/infer", header + struct.pack("<f", 0.5),
                       {"Content-Type": "application/octet-stream"})
    got = json.loads(raw)["error"]
    assert status == 400 and got.endswith(BINARY_NOTE.format("application/octet-stream")), got
