"""Triton's generate extension (``POST /v2/models/{name}[/versions/{v}]/generate`` and
``generate_stream``) on the default server: texts equal the WebSocket ``generate``'s for the same
parameters (greedy and seeded sampling do not depend on what else runs), after the prompt unless
``exclude_input_in_output`` (as Triton's vLLM backend answers), a stream is one event per token,
and closing it cancels the generation (seen in ``/metrics``)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support import Conn, ServerProcess, scrape_metrics, wait_until
from wsserve.errors import ShuttingDown
from wsserve.rest.tritongen import GenerateEncoder


def post(server: ServerProcess, path: str, body: Any) -> tuple[int, bytes]:
    req = urllib.request.Request(server.http + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def events(raw: bytes) -> list[dict[str, Any]]:
    chunks = [e for e in raw.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in chunks), chunks
    return [json.loads(e.removeprefix("data: ")) for e in chunks]


async def ws_text(server: ServerProcess, **fields: Any) -> tuple[str, str]:
    conn = await Conn.open(server.url)
    await conn.send({"type": "generate", "id": "g", "model": "charlm", **fields})
    frames, done = await conn.until_terminal("g")
    await conn.close()
    return "".join(f["text"] for f in frames if f["type"] == "token"), done["reason"]


async def test_generate_is_the_websocket_generation(server) -> None:
    status, raw = post(server, "/v2/models/charlm/generate", {"text_input": "The ", "parameters": {"max_tokens": 30}})
    body = json.loads(raw)
    assert status == 200 and set(body) == {"model_name", "model_version", "text_output"}
    assert (body["model_name"], body["model_version"]) == ("charlm", "1")
    text, reason = await ws_text(server, prompt="The ", max_tokens=30)
    assert (body["text_output"], reason) == ("The " + text, "length")  # the prompt, then the generated text
    # fields as inputs rather than parameters (TensorRT-LLM's style), a version, an id, seeded sampling
    status, raw = post(server, "/v2/models/charlm/versions/1/generate",
                       {"id": "r7", "text_input": "Once ", "max_tokens": 25, "temperature": 0.8, "top_k": 20, "seed": 4})
    body = json.loads(raw)
    assert status == 200 and body["id"] == "r7"
    text, _ = await ws_text(server, prompt="Once ", max_tokens=25, temperature=0.8, top_k=20, seed=4)
    assert body["text_output"] == "Once " + text and len(text) == 25
    # nucleus sampling and OpenAI's penalties, as the WebSocket's
    fields = {"max_tokens": 40, "temperature": 1.3, "top_p": 0.8, "min_p": 0.02, "presence_penalty": 0.5,
              "frequency_penalty": 1, "seed": 9}
    status, raw = post(server, "/v2/models/charlm/generate",
                       {"text_input": "The ", "exclude_input_in_output": True, "parameters": fields})
    assert status == 200
    assert json.loads(raw)["text_output"] == (await ws_text(server, prompt="The ", **fields))[0]
    assert json.loads(raw)["text_output"] != (await ws_text(server, prompt="The ", max_tokens=40, temperature=1.3,
                                                            seed=9))[0]


async def test_generate_stream_is_one_event_per_token(server) -> None:
    args = {"text_input": "It ", "max_tokens": 20, "temperature": 1.0, "seed": 9}
    status, raw = post(server, "/v2/models/charlm/generate_stream", {**args, "stream": True})
    assert status == 200
    got = events(raw)
    tokens, last = got[:-1], got[-1]
    assert len(tokens) == 20 and all(len(e["text_output"]) >= 1 and "finish_reason" not in e for e in tokens)
    assert last == {"model_name": "charlm", "model_version": "1", "text_output": "", "finish_reason": "length"}
    whole = json.loads(post(server, "/v2/models/charlm/generate", args)[1])["text_output"]
    assert "It " + "".join(e["text_output"] for e in tokens) == whole  # the prompt is not streamed


def test_stop_strings_end_the_stream_with_reason_stop(server) -> None:
    full = json.loads(post(server, "/v2/models/charlm/generate", {"text_input": "The ", "max_tokens": 60,
                                                                  "exclude_input_in_output": True})[1])["text_output"]
    stop = full[10:13]
    got = events(post(server, "/v2/models/charlm/generate_stream",
                      {"text_input": "The ", "max_tokens": 60, "parameters": {"stop_words": [stop]}})[1])
    assert got[-1]["finish_reason"] == "stop"
    assert "".join(e["text_output"] for e in got) == full[: full.index(stop)]


async def test_the_prompt_is_prepended_unless_excluded_as_the_vllm_backends(server) -> None:
    """Not streamed, ``text_output`` is the prompt as given (whole: longer than the tokens charlm
    reads of it) then the generated text, unless ``exclude_input_in_output`` is true (an input or a
    parameter); the additional outputs are the generated text's.  Streamed, the events hold the
    generated text only (flag absent or true), and false is refused naming the field."""
    prompt = "It was the best of times, it was the worst of times, " * 4
    generated, _ = await ws_text(server, prompt=prompt, max_tokens=10)
    for extra in ({}, {"exclude_input_in_output": False}, {"parameters": {"exclude_input_in_output": False}}):
        status, raw = post(server, "/v2/models/charlm/generate", {"text_input": prompt, "max_tokens": 10, **extra})
        assert status == 200 and json.loads(raw)["text_output"] == prompt + generated, (extra, raw[:500])
    status, raw = post(server, "/v2/models/charlm/generate", {"text_input": prompt, "max_tokens": 10,
                                                              "return_num_input_tokens": True,
                                                              "return_num_output_tokens": True})
    got = json.loads(raw)
    assert got["text_output"] == prompt + generated and got["num_output_tokens"] == 10
    assert got["num_input_tokens"] < len(prompt)  # the model read the prompt's tail; the answer holds it whole
    for extra in ({"exclude_input_in_output": True}, {"parameters": {"exclude_input_in_output": True}}):
        status, raw = post(server, "/v2/models/charlm/generate", {"text_input": prompt, "max_tokens": 10, **extra})
        assert status == 200 and json.loads(raw)["text_output"] == generated, (extra, raw[:500])
    for extra in ({}, {"exclude_input_in_output": True}, {"parameters": {"exclude_input_in_output": True}}):
        status, raw = post(server, "/v2/models/charlm/generate_stream", {"text_input": prompt, "max_tokens": 10,
                                                                         **extra})
        got_events = events(raw)
        assert status == 200 and "".join(e["text_output"] for e in got_events) == generated, extra
        assert got_events[-1]["finish_reason"] == "length"
    for extra in ({"exclude_input_in_output": False}, {"parameters": {"exclude_input_in_output": False}}):
        status, raw = post(server, "/v2/models/charlm/generate_stream", {"text_input": prompt, "max_tokens": 10,
                                                                         **extra})
        assert status == 400 and json.loads(raw) == {"error": (
            "'exclude_input_in_output' false (the prompt before the generated text) is not allowed when streaming: "
            "leave it out or set it true (as Triton's vLLM backend)")}, (extra, raw[:500])


def _cancelled(server: ServerProcess) -> float:
    return scrape_metrics(server.http).get("wsserve_requests_total", code="cancelled", model="charlm", type="generate")


def test_closing_a_stream_cancels_the_generation(server) -> None:
    before = _cancelled(server)
    url = urlsplit(server.http)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", "/v2/models/charlm/generate_stream", json.dumps({"text_input": "a", "max_tokens": 100000}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    conn.close()
    wait_until(lambda: _cancelled(server) == before + 1, 30.0, what="the generation was cancelled")


@pytest.mark.parametrize("path,body,status,message", [
    ("/v2/models/charlm/generate", {"max_tokens": 3}, 400, "'text_input' must be a string (the prompt), got null"),
    ("/v2/models/charlm/generate", {"text_input": "a", "parameters": {"max_tokens": 0}}, 400, "'max_tokens' must be"),
    ("/v2/models/charlm/generate", {"text_input": "a", "max_tokens": 3, "parameters": {"max_tokens": 3}}, 400,
     "'max_tokens' is given both as an input and in 'parameters'"),
    ("/v2/models/charlm/generate", {"text_input": "a", "top_p": 0}, 400, "field 'top_p' must be a number in (0, 1], got 0"),
    ("/v2/models/charlm/generate", {"text_input": "a", "parameters": {"beam_width": 4}}, 400, "'beam_width'"),
    ("/v2/models/charlm/generate", {"text_input": "a", "repetition_penalty": 2.2}, 400,
     "field 'repetition_penalty' must be a number in (0, 2] (1 is off), got 2.2"),
    ("/v2/models/charlm/generate", {"text_input": "a", "frequency_penalty": 9}, 400,
     "field 'frequency_penalty' must be a number in [-2, 2], got 9"),
    ("/v2/models/charlm/generate", {"text_input": "a", "stream": True}, 400, "'stream' must be true on generate_stream"),
    ("/v2/models/charlm/generate", {"text_input": "a", "stop": "x", "stop_words": ["y"]}, 400, "not both"),
    ("/v2/models/charlm/generate", {"text_input": "a", "temperature": -1}, 400, "'temperature' must be"),
    ("/v2/models/charlm/generate", {"text_input": "a", "parameters": 3}, 400, "'parameters' must be an object"),
    # a string is shown as one (not "got 3" for "3")
    # a refused value is shown cut, not whole (it may be most of the body)
    ("/v2/models/charlm/generate", {"text_input": "a", "parameters": {"stop_words": ["y" * 100_000]}}, 400,
     "field 'stop_words' must hold non-empty strings of at most 256 characters, got 'yyyyyyyyyyyyyyyyyy"),
    # stop_words is named as sent
    ("/v2/models/charlm/generate", {"text_input": "a", "parameters": {"stop_words": ["s"] * 17}}, 400,
     "field 'stop_words' holds 17 strings; at most 16"),
    ("/v2/models/charlm/generate", {"text_input": "a", "stop_words": [""]}, 400,
     "field 'stop_words' must hold non-empty strings"),
    ("/v2/models/charlm/generate", {"text_input": "a", "stop_words": 5}, 400,
     "'stop_words' must be a string or an array of strings"),
    ("/v2/models/charlm/generate", {"text_input": "a", "max_tokens": "3"}, 400,
     "'max_tokens' must be an integer in [1, 100000], got '3'"),
    ("/v2/models/charlm/generate", {"text_input": "a", "temperature": "0.5"}, 400,
     "'temperature' must be a number in [0, 100], got '0.5'"),
    ("/v2/models/charlm/generate", {"text_input": "a", "parameters": {"top_p": "1"}}, 400,
     "field 'top_p' must be a number in (0, 1], got '1'"),
    ("/v2/models/charlm/generate", {"text_input": "a", "exclude_input_in_output": "true"}, 400,
     "'exclude_input_in_output' must be a boolean (true or false), got 'true'"),
    ("/v2/models/charlm/generate_stream", {"text_input": "a", "parameters": {"exclude_input_in_output": 1}}, 400,
     "'exclude_input_in_output' must be a boolean (true or false), got 1"),
    ("/v2/models/charlm/generate", {"text_input": "a", "exclude_input_in_output": True,
                                    "parameters": {"exclude_input_in_output": True}}, 400,
     "'exclude_input_in_output' is given both as an input and in 'parameters'"),
    ("/v2/models/charlm/generate", [1], 400, "the body must be a JSON object"),
    ("/v2/models/mlp/generate", {"text_input": "a"}, 400, "model 'mlp' does not generate text"),
    ("/v2/models/nope/generate_stream", {"text_input": "a"}, 404, "no model named 'nope'"),
    ("/v2/models/charlm/versions/3/generate", {"text_input": "a"}, 404, "model 'charlm' has no version '3'"),
])
def test_bad_requests_are_named(server, path: str, body: Any, status: int, message: str) -> None:
    got_status, raw = post(server, path, body)
    assert got_status == status and message in json.loads(raw)["error"] and len(raw) < 1000, raw[:500]


def test_an_error_after_the_stream_started_is_an_event() -> None:
    assert GenerateEncoder.error_event(ShuttingDown("server is shutting down")) == (
        b'data: {"error":"server is shutting down"}\n\n')
