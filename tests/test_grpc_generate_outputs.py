"""The vLLM backend's additional outputs (``return_*`` flags) on gRPC's ``ModelStreamInfer``,
driven by ``tritonclient.grpc`` streaming against a real server on loopback: the same values as
the HTTP generate route's for the same request (one implementation,
:class:`wsserve.rest.tritongen.OutputValues`), as the backend's output tensors
(``finish_reason``, ``logprobs``: BYTES ``[1]``; ``cumulative_logprob``: FP32 ``[1]``;
``num_input_tokens``: UINT32 ``[]``; ``num_output_tokens``: UINT32 ``[1]``)."""

from __future__ import annotations

import json
import math
import queue
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")  # the grpc extra installs it
tgrpc = pytest.importorskip("tritonclient.grpc")

from tests.test_grpc import start  # noqa: E402

FLAGS = ("return_finish_reason", "return_cumulative_logprob", "return_logprobs", "return_num_input_tokens",
         "return_num_output_tokens")
#: Each output's (datatype, shape), as the backend makes them.
OUTPUTS = {"finish_reason": ("BYTES", [1]), "cumulative_logprob": ("FP32", [1]), "logprobs": ("BYTES", [1]),
           "num_input_tokens": ("UINT32", []), "num_output_tokens": ("UINT32", [1])}


@pytest.fixture(scope="module")
def served(model_cache: Path):
    proc, address = start(model_cache)
    yield proc, address
    proc.stop()


@pytest.fixture
def client(served):
    c = tgrpc.InferenceServerClient(served[1])
    yield c
    c.close()


def _http(served, route: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The HTTP generate route's answer (``generate``: one object; ``generate_stream``: its events)."""
    with urllib.request.urlopen(f"{served[0].http}/v2/models/charlm/{route}", data=json.dumps(body).encode()) as a:
        text = a.read().decode()
    if route == "generate":
        return [json.loads(text)]
    return [json.loads(line[len("data: "):]) for line in text.split("\n\n") if line.startswith("data: ")]


def _stream(client, stream: bool, flags: dict[str, bool], outputs: list[str] | None = None, **params: Any) -> list[Any]:
    """One generation over ModelStreamInfer: ``text_input`` and ``stream`` inputs, each flag a
    BOOL input (as the vLLM backend reads them), ``params`` request parameters; its results until
    the final one (an error raises)."""
    results: queue.Queue = queue.Queue()
    inputs = []
    for name, datatype, value in (("text_input", "BYTES", np.array([b"The "], dtype=np.object_)),
                                  ("stream", "BOOL", np.array([stream])),
                                  *((f, "BOOL", np.array([v])) for f, v in flags.items())):
        tensor = tgrpc.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    out = []
    try:
        client.async_stream_infer("charlm", inputs, request_id="r", parameters=params,
                                  outputs=None if outputs is None else [tgrpc.InferRequestedOutput(n) for n in outputs])
        while True:
            result, error = results.get(timeout=60)
            if error is not None:
                raise AssertionError(error.message())
            out.append(result)
            if result.get_response().parameters["triton_final_response"].bool_param:
                return out
    finally:
        client.stop_stream()


def _outputs(result: Any) -> dict[str, Any]:
    """A response's additional outputs as the HTTP route's JSON values (datatype and shape checked)."""
    found: dict[str, Any] = {}
    for tensor in result.get_response().outputs:
        if tensor.name == "text_output":
            continue
        assert (tensor.datatype, list(tensor.shape)) == OUTPUTS[tensor.name], tensor
        value = result.as_numpy(tensor.name).reshape(-1)[0]
        found[tensor.name] = value.decode() if tensor.datatype == "BYTES" else value.item()
    return found


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    """The gRPC outputs are the HTTP ones (``cumulative_logprob`` as FP32, the backend's type)."""
    want = {k: want[k] for k in OUTPUTS if k in want}
    assert set(got) == set(want)
    for name, value in want.items():
        if name == "cumulative_logprob":
            assert math.isclose(got[name], value, rel_tol=1e-6), (got, want)
        else:
            assert got[name] == value, name


def test_a_stream_carries_each_tokens_outputs_as_the_http_routes_events(served, client) -> None:
    flags = dict.fromkeys(FLAGS, True)
    events = _http(served, "generate_stream", {"text_input": "The ", "max_tokens": 6, "temperature": 0,
                                               **flags, "logprobs": 2})
    results = _stream(client, True, flags, max_tokens=6, temperature=0, logprobs=2)
    tokens, end = events[:-1], events[-1]
    assert len(results) == len(tokens) == 6
    assert "".join(r.as_numpy("text_output")[0].decode() for r in results) == "".join(e["text_output"] for e in tokens)
    for result, event in zip(results[:-1], tokens[:-1]):
        assert _outputs(result)["finish_reason"] == "None"
        _same(_outputs(result), event)
    # the last response is the last token's (as the backend's), with the stream's finish reason
    _same(_outputs(results[-1]), {**tokens[-1], "finish_reason": end["finish_reason"]})
    assert _outputs(results[-1])["finish_reason"] == "length"
    assert json.loads(_outputs(results[0])["logprobs"])[0]  # records: the token and its 2 likeliest


def test_a_whole_answer_carries_the_outputs_of_its_whole_text(served, client) -> None:
    flags = dict.fromkeys(FLAGS, True)
    [answer] = _http(served, "generate", {"text_input": "The ", "max_tokens": 5, "temperature": 0, **flags,
                                          "logprobs": 1})
    [result] = _stream(client, False, flags, max_tokens=5, temperature=0, logprobs=1)
    assert result.as_numpy("text_output")[0].decode() == answer["text_output"]
    assert len(answer["text_output"]) == len("The ") + 5  # the prompt prepended: not counted below
    _same(_outputs(result), answer)
    assert _outputs(result)["num_output_tokens"] == 5 and len(json.loads(_outputs(result)["logprobs"])) == 5


def test_some_flags_as_parameters_and_flags_off(served, client) -> None:
    [answer] = _http(served, "generate", {"text_input": "The ", "max_tokens": 3, "temperature": 0,
                                          "return_num_input_tokens": True, "return_cumulative_logprob": True})
    [result] = _stream(client, False, {}, max_tokens=3, temperature=0, return_num_input_tokens=True,
                       return_cumulative_logprob=True)
    assert set(_outputs(result)) == {"num_input_tokens", "cumulative_logprob"}
    _same(_outputs(result), answer)
    for flags in ({}, dict.fromkeys(FLAGS, False)):  # the plain answer: text_output only
        results = _stream(client, True, flags, max_tokens=3, temperature=0)
        assert [[t.name for t in r.get_response().outputs] for r in results] == [["text_output"]] * 3
    with pytest.raises(AssertionError, match=r"^'return_logprobs' must be a boolean \(true or false\), got 1$"):
        _stream(client, False, {}, max_tokens=3, return_logprobs=1)


def test_a_stream_that_sends_no_token_ends_with_the_outputs_of_its_end(served, client) -> None:
    """A stop string met at the first token: no token is sent, the one response is the end's (no
    text, ``finish_reason`` ``stop``, the token generated counted, as vLLM's output token ids hold
    it), as the HTTP route's last event."""
    flags = dict.fromkeys(FLAGS, True)
    [plain] = _http(served, "generate", {"text_input": "The ", "max_tokens": 4, "temperature": 0,
                                         "exclude_input_in_output": True})
    first = plain["text_output"][0]  # the first generated character
    [end] = _http(served, "generate_stream", {"text_input": "The ", "max_tokens": 4, "temperature": 0, "stop": first,
                                              **flags, "logprobs": 1})
    [result] = _stream(client, True, flags, max_tokens=4, temperature=0, stop=first, logprobs=1)
    assert result.as_numpy("text_output")[0] == b""
    _same(_outputs(result), end)
    assert _outputs(result)["finish_reason"] == "stop" and _outputs(result)["num_output_tokens"] == 1


def _unread_stream_request(rid: str) -> Any:
    """A ``ModelStreamInferRequest`` for a long streamed generation of ``charlm`` with every
    additional output and the likeliest tokens' logprobs (each response far larger than its text)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="charlm", id=rid)
    for name, datatype, raw in (("text_input", "BYTES", (4).to_bytes(4, "little") + b"The "),
                                ("stream", "BOOL", b"\x01"), *((f, "BOOL", b"\x01") for f in FLAGS)):
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.append(1)
        request.raw_input_contents.append(raw)
    request.parameters["max_tokens"].int64_param = 100_000
    request.parameters["logprobs"].int64_param = 20
    return request


def test_an_unread_stream_counts_its_outputs_against_the_write_buffer_bound(model_cache: Path) -> None:
    """A client that stops reading holds at most ``--max-write-buffer-bytes`` of answers: the
    additional outputs count with the text (the HTTP stream counts its whole events).  Counted as
    the text alone, a response of ~1.5 KiB weighed its one byte of text: thousands of them were
    held (megabytes against a bound of 4 KiB) before the stream was refused."""
    from tests.test_grpc import unread_stream_answers

    answers = unread_stream_answers(model_cache, _unread_stream_request("slow"))
    assert answers[-1].error_message.startswith("slow consumer: this stream's client left")
    # counted as text alone, the refusal came past 4096 bytes of text: over 1024 tokens (at
    # most 4 bytes each), all then sent (6755 when this was written); counted whole, a few
    assert 0 < len(answers[:-1]) < 1024


def test_a_stop_string_s_tokens_count_in_the_last_response(served, client) -> None:
    """A stop string two tokens long after two tokens sent: vLLM's output token ids hold all four,
    so the responses' ``num_output_tokens`` add up to 4, as the HTTP answer's; the last response
    (the last token sent, with the end) carries the two not sent."""
    flags = {"return_num_output_tokens": True}
    [plain] = _http(served, "generate", {"text_input": "The ", "max_tokens": 4, "temperature": 0,
                                         "exclude_input_in_output": True})
    stop = plain["text_output"][2:4]
    assert plain["text_output"].find(stop) == 2
    [whole] = _http(served, "generate", {"text_input": "The ", "max_tokens": 8, "temperature": 0, "stop": stop,
                                         "exclude_input_in_output": True, **flags})
    assert (whole["text_output"], whole["num_output_tokens"]) == (plain["text_output"][:2], 4)
    results = _stream(client, True, flags, max_tokens=8, temperature=0, stop=stop)
    assert b"".join(r.as_numpy("text_output")[0] for r in results).decode() == plain["text_output"][:2]
    assert [_outputs(r)["num_output_tokens"] for r in results] == [1, 3]


def test_only_the_requested_outputs_are_answered_as_tritons(client) -> None:
    # A request naming its outputs got every output anyway, and an unknown name was ignored.
    flags = {"return_num_output_tokens": True, "return_finish_reason": True}
    results = _stream(client, True, flags, outputs=["num_output_tokens"], max_tokens=3, temperature=0)
    assert len(results) == 3
    for result in results:
        assert [t.name for t in result.get_response().outputs] == ["num_output_tokens"]
    assert sum(_outputs(r)["num_output_tokens"] for r in results) == 3  # streamed: each response's own
    text_only = _stream(client, True, flags, outputs=["text_output"], max_tokens=2, temperature=0)
    assert [[t.name for t in r.get_response().outputs] for r in text_only] == [["text_output"]] * 2
    everything = _stream(client, True, flags, max_tokens=2, temperature=0)  # none named: all of them
    assert {t.name for t in everything[-1].get_response().outputs} == {"text_output", "finish_reason",
                                                                        "num_output_tokens"}
    for outputs, message in ((["text_output", "nope"], "unknown output 'nope'; the model produces: text_output, "
                              "finish_reason, cumulative_logprob, logprobs, num_input_tokens, num_output_tokens"),
                             (["text_output", "text_output"], "output 'text_output' is requested twice")):
        with pytest.raises(AssertionError) as refused:
            _stream(client, True, flags, outputs=outputs, max_tokens=2)
        assert str(refused.value).startswith(message)


def test_a_generation_refuses_shared_memory_by_name(client) -> None:
    """A generation's inputs and outputs are never in a shared memory region (docs/PROTOCOL.md): an
    output asked in one is refused naming it (not answered inline while the client reads its
    region), and so is an input naming one (not a count of raw entries)."""
    results: queue.Queue = queue.Queue()
    text = tgrpc.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"The "], dtype=np.object_))
    stream = tgrpc.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([False]))
    in_region = tgrpc.InferInput("return_num_output_tokens", [1], "BOOL")
    in_region.set_shared_memory("r", 1)
    flag = tgrpc.InferInput("return_num_output_tokens", [1], "BOOL")
    flag.set_data_from_numpy(np.array([True]))
    wanted = tgrpc.InferRequestedOutput("num_output_tokens")
    wanted.set_shared_memory("r", 4)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("charlm", [text, stream, flag], outputs=[wanted])
        result, error = results.get(timeout=60)
        assert result is None and "output 'num_output_tokens' names a shared memory region" in error.message()
        client.async_stream_infer("charlm", [text, stream, in_region])
        result, error = results.get(timeout=60)
        assert result is None and "input 'return_num_output_tokens' names a shared memory region" in error.message()
    finally:
        client.stop_stream()
