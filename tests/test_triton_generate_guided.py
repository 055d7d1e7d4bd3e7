"""vLLM's guided decoding (``guided_choice``, ``guided_regex``, ``guided_json``, ``structured_outputs``
and the vLLM backend's ``guided_decoding``) and ``logit_bias`` on Triton's generate extension, on a real loopback server: HTTP ``generate`` / ``generate_stream``
(a plain HTTP client) and gRPC's ``ModelStreamInfer`` (``tritonclient.grpc``, the fields in the vLLM
backend's ``sampling_parameters`` input).  Each is honoured as on the OpenAI routes and the WebSocket
``generate`` (the same engine), taken as an input or in ``parameters`` (refused given both ways),
checked by the same code with the same messages; the vLLM fields wsserve does not do are refused by
name, as the OpenAI routes refuse them."""

from __future__ import annotations

import json
import queue
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import ServerProcess
from tests.test_http_triton_generate import events, post, ws_text
from wsserve.errors import BadRequest
from wsserve.rest.tritongen import parse_generate

CHOICES = ["yes", "no", "maybe so", "I do not know"]
REGEX = r"[0-9]{3}-[a-z]+"
#: charlm's token id of "z" (its tokens are the printable characters, " " being 1)
Z = ord("z") - 31


def _generate(server: ServerProcess, body: dict[str, Any], stream: bool = False) -> tuple[str, str | None]:
    """The generated text of one HTTP generate (the prompt excluded) and its finish reason (a
    stream's last event's; None for a whole answer, which carries none)."""
    route = "generate_stream" if stream else "generate"
    status, raw = post(server, f"/v2/models/charlm/{route}", {**body, "exclude_input_in_output": True})
    assert status == 200, raw[:500]
    if not stream:
        return json.loads(raw)["text_output"], None
    got = events(raw)
    return "".join(e["text_output"] for e in got), got[-1]["finish_reason"]


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("stream", [False, True])
def test_guided_choice_makes_the_text_one_of_the_choices_either_way(server, stream: bool) -> None:
    texts = set()
    for seed in range(4):
        for where in ("input", "parameters"):
            fields = {"guided_choice": CHOICES, "temperature": 1.2, "seed": seed, "max_tokens": 40}
            body = {"text_input": "Is it? ", **(fields if where == "input" else {"parameters": fields})}
            text, reason = _generate(server, body, stream)
            assert text in CHOICES and reason in (None, "stop"), (text, reason)
            texts.add(text)
    assert len(texts) > 1  # sampling reaches more than one choice: the guide is not one fixed answer


@pytest.mark.parametrize("form", [{"structured_outputs": {"choice": CHOICES}},
                                  {"structured_outputs": json.dumps({"choice": CHOICES})},
                                  {"guided_decoding": {"choice": CHOICES}},
                                  {"guided_decoding": json.dumps({"choice": CHOICES})}])
def test_structured_outputs_and_logprobs_go_with_a_guided_choice(server, form: dict[str, Any]) -> None:
    """vLLM's newer spelling is taken as on the OpenAI routes, and as the vLLM backend reads it
    (``structured_outputs`` or its ``guided_decoding``, an object or a string holding one); the
    additional outputs stay the model's (the guide masks what is sampled, not what is reported),
    one entry per token."""
    for seed in range(3):
        status, raw = post(server, "/v2/models/charlm/generate", {
            "text_input": "Is it? ", "exclude_input_in_output": True, "return_logprobs": True,
            "return_finish_reason": True, "parameters": {**form, "logprobs": 2, "temperature": 1.0, "seed": seed,
                                                         "max_tokens": 40}})
        body = json.loads(raw)
        assert status == 200 and body["text_output"] in CHOICES and body["finish_reason"] == "stop", body
        assert len(json.loads(body["logprobs"])) == len(body["text_output"])  # charlm: a token per character


async def test_logit_bias_changes_the_text_as_the_websockets(server) -> None:
    plain, _ = _generate(server, {"text_input": "The ", "max_tokens": 12})
    forced, _ = _generate(server, {"text_input": "The ", "max_tokens": 12, "parameters": {"logit_bias": {str(Z): 100}}})
    assert forced == "z" * 12 and plain != forced
    bias = {"4": 2.5, "10": -100}
    text, _ = _generate(server, {"text_input": "The ", "max_tokens": 30, "temperature": 1.0, "seed": 3,
                                 "logit_bias": bias})
    assert text == (await ws_text(server, prompt="The ", max_tokens=30, temperature=1.0, seed=3, logit_bias=bias))[0]


def test_guided_regex_and_json_are_honoured(server) -> None:
    pytest.importorskip("outlines_core")  # the structured extra
    text, reason = _generate(server, {"text_input": "Call ", "max_tokens": 14, "parameters": {"guided_regex": REGEX}},
                             True)
    assert re.fullmatch(REGEX if reason == "stop" else r"[0-9]{0,3}|[0-9]{3}-[a-z]*", text), (text, reason)
    schema = {"type": "object", "properties": {"a": {"enum": ["x", "yy"]}}, "required": ["a"]}
    text, _ = _generate(server, {"text_input": "{", "max_tokens": 40, "guided_json": schema})
    assert json.loads(text)["a"] in ("x", "yy"), text


@pytest.mark.parametrize(("fields", "says"), [
    ({"guided_choice": "yes"}, "field 'guided_choice' must be a non-empty list of strings (at most 64), got string"),
    ({"parameters": {"guided_choice": ["a", 1]}},
     "field 'guided_choice' must hold non-empty strings of at most 256 characters, got 1"),
    ({"guided_choice": ["caf\u00e9"]}, "field 'guided_choice' holds 'caf\u00e9', which the model's tokens cannot write"),
    ({"guided_choice": ["a"], "min_tokens": 1}, "field 'guided_choice' cannot be combined with 'min_tokens'"),
    ({"guided_choice": ["a"], "parameters": {"guided_regex": "a"}},
     "one guided decoding form per request: 'guided_choice' and 'guided_regex' were given"),
    ({"guided_regex": ""}, "field 'guided_regex' must hold a non-empty regex string"),
    ({"guided_json": 3}, "field 'guided_json' must be a JSON Schema (an object, or a string holding one), got number"),
    ({"logit_bias": [1]}, "field 'logit_bias' must be an object mapping token ids to biases, got array"),
    ({"parameters": {"logit_bias": {"1": 101}}}, "field 'logit_bias' must bias each token by a number in [-100, 100]"),
    ({"logit_bias": {"96": 1}}, "field 'logit_bias' names token 96; the model's vocabulary has 96"),
    # given both ways
    ({"guided_choice": ["a"], "parameters": {"guided_choice": ["a"]}},
     "'guided_choice' is given both as an input and in 'parameters'; give it once"),
    ({"logit_bias": {"1": 1}, "parameters": {"logit_bias": {"1": 1}}},
     "'logit_bias' is given both as an input and in 'parameters'; give it once"),
    # vLLM's fields wsserve does not do, refused as the OpenAI routes refuse them
    ({"guided_grammar": "root ::= \"a\""}, "'guided_grammar' is not supported (only its default)"),
    ({"parameters": {"use_beam_search": True}}, "'use_beam_search' is not supported (only its default); got true"),
    ({"parameters": {"n": 2}}, "'n' is not supported (only 1); got 2"),
    ({"best_of": 3}, "'best_of' is not supported (only 1); got 3"),
    ({"parameters": {"prompt_logprobs": 1}}, "'prompt_logprobs' is not supported (only its default); got 1"),
    ({"structured_outputs": {"grammar": "x"}}, "'structured_outputs' key 'grammar' is not supported"),
    ({"guided_decoding": {"choice": ["a"], "backend": "xgrammar"}}, "'guided_decoding' key 'backend' is not supported"),
    ({"parameters": {"structured_outputs": "{choice"}},
     "'structured_outputs' must be an object, or a string holding one (JSON), got '{choice'"),
    ({"guided_decoding": "[1]"}, "'guided_decoding' must be an object, or a string holding one (JSON), got '[1]'"),
    ({"guided_decoding": {"regex": "a"}, "guided_choice": ["a"]},
     "one guided decoding form per request: 'guided_choice' and 'guided_decoding' were given"),
    ({"guided_decoding": {"choice": []}}, "field 'guided_choice' must be a non-empty list of strings"),
    ({"parameters": {"lora_name": "mine"}}, "'lora_name' is not supported (only its default); got 'mine'"),
])
@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_bad_guided_or_bias_fields_are_refused_by_name(server, fields: dict[str, Any], says: str, route: str) -> None:
    status, raw = post(server, f"/v2/models/charlm/{route}", {"text_input": "a", "max_tokens": 5, **fields})
    assert status == 400 and says in json.loads(raw)["error"], raw[:500]


def test_a_guided_pattern_refused_when_compiled_is_a_400_naming_it(server) -> None:
    pytest.importorskip("outlines_core")
    status, raw = post(server, "/v2/models/charlm/generate_stream", {"text_input": "a", "guided_regex": "("})
    assert status == 400 and "field 'guided_regex': outlines-core cannot use this pattern" in json.loads(raw)["error"]


def test_without_the_structured_extra_a_pattern_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server without outlines-core (its one boundary, the import system, stood in for): the
    refusal of the OpenAI routes and the WebSocket ``generate`` (:class:`GenerationParams`'s)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "outlines_core" else real(name, *a))
    for fields in ({"guided_regex": "a+"}, {"parameters": {"guided_json": {"type": "object"}}}):
        name = next(iter(fields)) if "parameters" not in fields else next(iter(fields["parameters"]))
        says = rf"field '{name}' needs structured outputs.*pip install 'wsserve\[structured\]'"
        with pytest.raises(BadRequest, match=says):
            parse_generate({"text_input": "a", **fields}, model="m", stream=False, max_tokens_limit=10)
    completion = parse_generate({"text_input": "a", "guided_choice": ["a"]}, model="m", stream=False,
                                max_tokens_limit=10)[0]
    assert completion.params.guided_choice == ("a",)  # a choice needs no extra


# --------------------------------------------------------------------------- gRPC

@pytest.fixture(scope="module")
def served(model_cache: Path):
    pytest.importorskip("grpc")  # the grpc extra installs it, and tritonclient[grpc] its client
    pytest.importorskip("tritonclient.grpc")
    from tests.test_grpc import start

    proc, address = start(model_cache)
    yield proc, address
    proc.stop()


@pytest.fixture
def client(served):
    import tritonclient.grpc as tgrpc

    c = tgrpc.InferenceServerClient(served[1])
    yield c
    c.close()


def _stream(client, rid: str, sampling: dict[str, Any] | None = None, **params: Any) -> list[tuple[str, bool] | str]:
    """One generation over ModelStreamInfer (streamed), as the vLLM backend takes it: a
    ``text_input``, a ``stream`` input, ``sampling`` as its ``sampling_parameters`` JSON input
    and ``params`` as request parameters; each response's ``(text, final)``, or the error's message."""
    import tritonclient.grpc as tgrpc

    inputs = []
    for name, datatype, value in (("text_input", "BYTES", np.array([b"Is it? "], dtype=np.object_)),
                                  ("stream", "BOOL", np.array([True])),
                                  *((("sampling_parameters", "BYTES", np.array([json.dumps(sampling).encode()],
                                                                               dtype=np.object_)),)
                                    if sampling is not None else ())):
        tensor = tgrpc.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    out: list[tuple[str, bool] | str] = []
    try:
        client.async_stream_infer("charlm", inputs, request_id=rid, parameters=params)
        while True:
            result, error = results.get(timeout=60)
            if error is not None:
                out.append(error.message())
                return out
            final = result.get_response().parameters["triton_final_response"].bool_param
            out.append((result.as_numpy("text_output")[0].decode(), final))
            if final:
                return out
    finally:
        client.stop_stream()


def _text(answers: list[tuple[str, bool] | str]) -> str:
    assert all(type(a) is tuple for a in answers), answers
    return "".join(a[0] for a in answers)  # type: ignore[index]


def test_grpc_guided_choice_and_logit_bias_are_honoured(client) -> None:
    texts = set()
    for seed in range(4):
        text = _text(_stream(client, f"c{seed}", {"guided_choice": CHOICES, "temperature": 1.2, "seed": seed,
                                                   "max_tokens": 40}))
        assert text in CHOICES, text
        texts.add(text)
    assert len(texts) > 1
    assert _text(_stream(client, "z", {"logit_bias": {str(Z): 100}, "max_tokens": 8})) == "z" * 8
    assert _text(_stream(client, "p", max_tokens=8)) != "z" * 8
    # a string field may be a request parameter too
    pytest.importorskip("outlines_core")
    text = _text(_stream(client, "r", {"max_tokens": 14}, guided_regex=REGEX))
    assert re.fullmatch(r"[0-9]{0,3}|[0-9]{3}-[a-z]*", text) or re.fullmatch(REGEX, text), text
    # the vLLM backend's structured_outputs: a string holding its object, here a request parameter
    text = _text(_stream(client, "s", {"max_tokens": 14}, structured_outputs=json.dumps({"regex": REGEX})))
    assert re.fullmatch(r"[0-9]{0,3}|[0-9]{3}-[a-z]*", text) or re.fullmatch(REGEX, text), text


def test_grpc_bad_and_doubled_fields_are_refused_by_name(client) -> None:
    assert _stream(client, "b", {"logit_bias": {"1": 101}}) == [
        "field 'logit_bias' must bias each token by a number in [-100, 100], got 101 for token 1"]
    assert _stream(client, "c", {"guided_choice": []}) == [
        "field 'guided_choice' must be a non-empty list of strings (at most 64), got an empty list"]
    assert _stream(client, "d", {"guided_regex": "a"}, guided_regex="b") == [
        "'guided_regex' is given both as an input and in 'parameters'; give it once"]
    assert _stream(client, "g", {"guided_grammar": "root ::= \"a\""}) == [
        "'guided_grammar' is not supported (only its default); got 'root ::= \"a\"'"]
