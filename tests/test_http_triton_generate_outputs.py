"""The additional outputs of Triton's vLLM backend on the generate extension (``return_*`` flags:
``finish_reason``, ``cumulative_logprob``, ``logprobs``, ``num_input_tokens``,
``num_output_tokens``), on the default server: the values against a reference computed here from
the server's charlm (its weights cache) and against the ``/v1/completions`` route's logprobs,
streamed (per event) and not (the whole output); flags off, the answer is the plain one, byte
for byte; a flag that is not a boolean is refused naming it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.charlm_reference import reference_logprobs
from tests.test_http_triton_generate import events, post

ALL = {"return_finish_reason": True, "return_cumulative_logprob": True, "return_logprobs": True,
       "return_num_input_tokens": True, "return_num_output_tokens": True}
OUTPUTS = ("finish_reason", "cumulative_logprob", "logprobs", "num_input_tokens", "num_output_tokens")


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _check_position(got: dict[str, Any], want: dict[str, Any]) -> None:
    """One position of the backend's ``logprobs``: the generated token first, then the likeliest
    (ranks 1..k; the generated one, when among them, keeps its place with its rank there)."""
    vocab = want["vocab"]
    expected = {str(want["id"]): (want["logprob"], want["rank"], vocab[want["id"]])}
    for rank, (i, lp) in enumerate(want["top"], 1):
        expected[str(i)] = (lp, rank, vocab[i])
    assert list(got) == list(expected)
    for key, (lp, rank, text) in expected.items():
        assert set(got[key]) == {"logprob", "rank", "decoded_token"}
        assert _close(got[key]["logprob"], lp) and got[key]["rank"] == rank and got[key]["decoded_token"] == text


async def test_a_whole_answer_carries_the_outputs_of_its_whole_text(server, model_cache: Path) -> None:
    body = {"text_input": "The ", "max_tokens": 12, **ALL, "parameters": {"logprobs": 2}}
    status, raw = post(server, "/v2/models/charlm/generate", body)
    assert status == 200, raw
    got = json.loads(raw)
    plain = json.loads(post(server, "/v2/models/charlm/generate", {"text_input": "The ", "max_tokens": 12})[1])
    assert set(got) == {*plain, *OUTPUTS} and got["text_output"] == plain["text_output"]  # the same greedy text
    assert got["text_output"].startswith("The ")  # the prompt prepended; the outputs are the generated text's
    text = got["text_output"].removeprefix("The ")
    assert (got["finish_reason"], got["num_input_tokens"], got["num_output_tokens"]) == ("length", 4, 12)
    assert type(got["logprobs"]) is str  # serialised JSON, as the backend's BYTES tensor
    positions = json.loads(got["logprobs"])
    ref = reference_logprobs(model_cache, "The ", text, 2)
    assert len(positions) == len(ref) == 12
    for position, want in zip(positions, ref, strict=True):
        _check_position(position, want)
        assert want["rank"] == 1 and len(position) == 2  # greedy: the likeliest, among the two listed
    assert "".join(p[next(iter(p))]["decoded_token"] for p in positions) == text
    assert _close(got["cumulative_logprob"], math.fsum(w["logprob"] for w in ref))
    # the same values as /v1/completions' for the same greedy request (another route, another encoder)
    status, raw = post(server, "/v1/completions", {"model": "charlm", "prompt": "The ", "max_tokens": 12,
                                                   "temperature": 0, "logprobs": 2})
    choice = json.loads(raw)["choices"][0]
    assert choice["text"] == text and json.loads(raw)["usage"]["prompt_tokens"] == got["num_input_tokens"]
    assert choice["logprobs"]["token_logprobs"] == [p[next(iter(p))]["logprob"] for p in positions]
    assert choice["logprobs"]["top_logprobs"] == [{v["decoded_token"]: v["logprob"] for v in p.values()}
                                                  for p in positions]


async def test_a_stream_carries_each_events_outputs(server, model_cache: Path) -> None:
    """Sampled (so a token may be of any rank), logprobs 0 (the generated token alone): each
    token's event has its own values, the last event none of its own but the finish reason and
    the whole sum, which is the non-streamed answer's."""
    args = {"text_input": "It was ", "max_tokens": 20, "temperature": 1.3, "seed": 11,
            "parameters": {**ALL, "logprobs": 0}}
    status, raw = post(server, "/v2/models/charlm/generate_stream", args)
    assert status == 200, raw
    got = events(raw)
    tokens, last = got[:-1], got[-1]
    text = "".join(e["text_output"] for e in tokens)
    ref = reference_logprobs(model_cache, "It was ", text, 0)
    assert len(tokens) == len(ref) == 20
    assert any(w["rank"] > 1 for w in ref)  # the sampling took a token other than the likeliest
    cumulative = 0.0
    for event, want in zip(tokens, ref, strict=True):
        assert set(event) == {"model_name", "model_version", "text_output", *OUTPUTS}
        assert (event["finish_reason"], event["num_input_tokens"], event["num_output_tokens"]) == ("None", 7, 1)
        [position] = json.loads(event["logprobs"])
        _check_position(position, want)
        cumulative += want["logprob"]
        assert _close(event["cumulative_logprob"], cumulative)
    assert last == {"model_name": "charlm", "model_version": "1", "text_output": "", "finish_reason": "length",
                    "cumulative_logprob": tokens[-1]["cumulative_logprob"], "logprobs": "[]",
                    "num_input_tokens": 7, "num_output_tokens": 0}
    whole = json.loads(post(server, "/v2/models/charlm/generate", {**args, "stream": False})[1])
    assert whole["text_output"] == "It was " + text and whole["cumulative_logprob"] == last["cumulative_logprob"]
    assert [json.loads(e["logprobs"])[0] for e in tokens] == json.loads(whole["logprobs"])


def test_flags_alone_as_inputs_or_parameters_and_off(server) -> None:
    """Each flag adds its field only; ``return_logprobs`` without the ``logprobs`` parameter is
    ``"null"`` (as the backend's); false flags give the plain answer, byte for byte."""
    base = {"text_input": "The ", "max_tokens": 30, "stop": "e "}
    plain = post(server, "/v2/models/charlm/generate", base)[1]
    text = json.loads(plain)["text_output"]
    assert text.startswith("The ")  # the prompt prepended: not counted in num_output_tokens
    text = text.removeprefix("The ")
    assert len(text) < 30  # the stop string ended it
    # num_output_tokens: vLLM's output token ids, the stop string's two (charlm: a token a character) too
    for name, value in [("finish_reason", "stop"), ("num_output_tokens", len(text) + 2), ("num_input_tokens", 4),
                        ("logprobs", "null")]:
        for body in ({**base, f"return_{name}": True}, {**base, "parameters": {f"return_{name}": True}}):
            got = json.loads(post(server, "/v2/models/charlm/generate", body)[1])
            assert got == {**json.loads(plain), name: value}, body
    alone = json.loads(post(server, "/v2/models/charlm/generate", {**base, "return_cumulative_logprob": True})[1])
    with_values = json.loads(post(server, "/v2/models/charlm/generate", {**base, **ALL, "logprobs": 1})[1])
    assert alone["cumulative_logprob"] == with_values["cumulative_logprob"] < 0  # no need of 'logprobs'
    # the stop string's tokens are counted but not listed (nor summed): their text is not sent
    assert len(json.loads(with_values["logprobs"])) == with_values["num_output_tokens"] - 2 == len(text)
    off = {name: False for name in ALL}
    assert post(server, "/v2/models/charlm/generate", {**base, **off, "logprobs": 3})[1] == plain
    assert post(server, "/v2/models/charlm/generate", {**base, "parameters": off})[1] == plain
    streamed = post(server, "/v2/models/charlm/generate_stream", base)[1]
    assert post(server, "/v2/models/charlm/generate_stream", {**base, **off})[1] == streamed
    got = events(post(server, "/v2/models/charlm/generate_stream", {**base, "return_num_output_tokens": True})[1])
    # the last event (no token) counts the stop string's two tokens: the events add up to the answer's
    assert [e["num_output_tokens"] for e in got] == [1] * len(text) + [2] and got[-1]["finish_reason"] == "stop"
    assert all("finish_reason" not in e for e in got[:-1])  # not asked for: the last event only, as without flags


@pytest.mark.parametrize("body,message", [
    ({"return_logprobs": "true"}, "'return_logprobs' must be a boolean (true or false), got 'true'"),
    ({"parameters": {"return_finish_reason": 1}}, "'return_finish_reason' must be a boolean (true or false), got 1"),
    ({"return_num_output_tokens": [True]}, "'return_num_output_tokens' must be a boolean"),
    ({"return_cumulative_logprob": True, "parameters": {"return_cumulative_logprob": True}},
     "'return_cumulative_logprob' is given both as an input and in 'parameters'"),
    ({"parameters": {"return_num_input_tokens": "yes"}}, "'return_num_input_tokens' must be a boolean"),
    ({"return_logprobs": True, "parameters": {"logprobs": 21}}, "'logprobs' must be an integer in [0, 20]"),
    ({"logprobs": "2"}, "'logprobs' must be an integer in [0, 20] (the likeliest tokens listed with each token's "
                        "log-probability), got '2'"),
    ({"logprobs": -1}, "'logprobs' must be an integer in [0, 20]"),
])
def test_bad_flags_are_named(server, body: dict[str, Any], message: str) -> None:
    for route in ("generate", "generate_stream"):
        status, raw = post(server, f"/v2/models/charlm/{route}", {"text_input": "a", "max_tokens": 2, **body})
        assert status == 400 and message in json.loads(raw)["error"], raw[:500]
