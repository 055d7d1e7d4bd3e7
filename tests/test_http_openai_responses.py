"""OpenAI's Responses API (``POST /v1/responses``) with the ``openai`` SDK's ``client.responses``.

A response is the chat completion of the same conversation: ``input`` (a string is one user
message) after ``instructions`` (a system message), templated by the served model
(``charlm`` joins the contents with newlines, the repository model ``words`` with spaces).  So
texts and token counts are compared with ``/v1/chat/completions``' for the same messages
(greedy: temperature 0), and the answers are validated against the SDK's own pydantic types
(``openai.types.responses``), not just read through its lenient parsing.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.repo_models import (
    BIGRAM_CONFIG,
    BIGRAM_PY,
    FAILS_AFTER_E_PY,
    WORDS_CHAT_PY,
    words_encode,
    write_py,
)
from tests.support import (
    RawHttp,
    ServerProcess,
    request_bytes,
    scrape_metrics,
    wait_until,
)

openai = pytest.importorskip("openai")  # the test extra installs it
from openai.types.responses import Response, ResponseStreamEvent  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402

#: The bigram model with a chat template, 2 ms a step: a stream that runs until the drain deadline.
SLOW_CHAT_PY = BIGRAM_PY + """
    def chat_prompt(self, messages):
        return " ".join(m["content"] for m in messages)
"""


EVENTS = TypeAdapter(ResponseStreamEvent)
INCLUDE = ["message.output_text.logprobs"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_transport: str, model_cache: Path) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("repository")
    (root / "words").mkdir()
    (root / "words" / "config.toml").write_text('task = "generation"\n')
    write_py(root / "words" / "1", WORDS_CHAT_PY)
    (root / "bigram").mkdir()
    (root / "bigram" / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(root / "bigram" / "1", BIGRAM_PY, **{"seed.txt": "20"})
    (root / "failing").mkdir()
    (root / "failing" / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(root / "failing" / "1", FAILS_AFTER_E_PY)
    with ServerProcess("--model-repository", str(root), cache_dir=model_cache, transport=module_transport) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Any]:
    c = openai.OpenAI(base_url=server.http + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield c
    c.close()


def _create(client: Any, **kwargs: Any) -> Response:
    """``client.responses.create(**kwargs)``, the raw JSON validated as the SDK's ``Response``."""
    raw = client.responses.with_raw_response.create(**kwargs)
    return Response.model_validate(json.loads(raw.http_response.content))


def _chat(client: Any, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    return client.chat.completions.create(model=kwargs.pop("model", "charlm"), messages=messages, **kwargs)


def _stream(client: Any, **kwargs: Any) -> list[Any]:
    """A streamed response's events, each validated as the SDK's ``ResponseStreamEvent``."""
    with client.responses.create(**kwargs, stream=True) as stream:
        return [EVENTS.validate_python(event.model_dump(exclude_unset=True)) for event in stream]


def _cancelled(server: ServerProcess, model: str) -> float:
    return scrape_metrics(server.http).get("wsserve_requests_total", code="cancelled", model=model, type="generate")


# ------------------------------------------------------------------ the answer


def test_a_string_input_is_one_user_message(client) -> None:
    r = _create(client, model="charlm", input="The ", max_output_tokens=30, temperature=0)
    chat = _chat(client, [{"role": "user", "content": "The "}], max_tokens=30, temperature=0)
    assert r.object == "response" and r.model == "charlm" and r.id.startswith("resp_")
    assert r.output_text == chat.choices[0].message.content and len(r.output_text) == 30
    [message] = r.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [(p.type, p.annotations) for p in message.content] == [("output_text", [])]
    usage = r.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        chat.usage.prompt_tokens, 30, chat.usage.prompt_tokens + 30)
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0


def test_the_length_limit_makes_an_incomplete_response(client) -> None:
    r = _create(client, model="charlm", input="The ", max_output_tokens=5, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and len(r.output_text) == 5 and r.max_output_tokens == 5


def test_a_stop_string_completes_the_response(client) -> None:
    full = _create(client, model="charlm", input="The ", max_output_tokens=60, temperature=0).output_text
    stop = full[10:13]
    r = _create(client, model="charlm", input="The ", max_output_tokens=60, temperature=0, extra_body={"stop": stop})
    assert r.status == "completed" and r.incomplete_details is None and r.output[0].status == "completed"
    assert r.output_text == full[: full.index(stop)]


def test_instructions_are_a_system_message_first(client) -> None:
    r = _create(client, model="charlm", instructions="You continue text.", input="The ", max_output_tokens=30,
                temperature=0)
    chat = _chat(client, [{"role": "system", "content": "You continue text."}, {"role": "user", "content": "The "}],
                 max_tokens=30, temperature=0)
    plain = _create(client, model="charlm", input="The ", max_output_tokens=30, temperature=0)
    assert r.output_text == chat.choices[0].message.content != plain.output_text
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.instructions == "You continue text."


def test_message_items_and_a_previous_output_sent_back(client) -> None:
    first = _create(client, model="words", input=[{"role": "user", "content": "hello"}], max_output_tokens=2,
                    temperature=0)
    assert first.output_text == "world stop"
    previous = first.output[0].model_dump()  # id, status, annotations...: taken as the assistant's message
    r = _create(client, model="words", max_output_tokens=2, temperature=0, instructions="stop", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "hello"}]}, previous,
        {"type": "message", "role": "developer", "content": "wor"},
        {"role": "user", "content": [{"type": "input_text", "text": "wor"}, {"type": "input_text", "text": "ld"}]}])
    chat = _chat(client, model="words", max_tokens=2, temperature=0, messages=[
        {"role": "system", "content": "stop"}, {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "world stop"}, {"role": "developer", "content": "wor"},
        {"role": "user", "content": "world"}])
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens == len(words_encode("stop hello world stop wor world "))


def test_request_fields_are_echoed(client) -> None:
    metadata = {f"k{i}": "v" * 512 for i in range(15)} | {"x" * 64: "y"}
    r = _create(client, model="words", input="hello", max_output_tokens=2, temperature=0.5, top_p=0.9,
                metadata=metadata, user="u1", store=True, parallel_tool_calls=False, tool_choice="none", tools=[],
                text={"format": {"type": "text"}}, truncation="disabled")
    assert r.metadata == metadata and r.user == "u1" and r.temperature == 0.5 and r.top_p == 0.9
    assert r.parallel_tool_calls is False and r.tool_choice == "none" and r.tools == []
    assert r.text.format.type == "text" and r.truncation == "disabled" and r.max_output_tokens == 2
    assert r.model_extra["store"] is False  # taken, and nothing is stored (as vLLM without its store)
    plain = _create(client, model="words", input="hello", max_output_tokens=2)
    assert (plain.metadata, plain.user, plain.instructions, plain.temperature, plain.top_p) == ({}, None, None, 1.0, 1.0)
    assert plain.parallel_tool_calls is True


# ------------------------------------------------------------------ streaming


def _text_and_usage(events: list[Any]) -> tuple[str, Any]:
    return events[-1].response.output_text, events[-1].response.usage


def test_a_stream_is_the_same_text_in_events(client) -> None:
    args = {"model": "charlm", "instructions": "You continue text.", "input": "The ", "max_output_tokens": 25,
            "temperature": 0}
    whole = _create(client, **args)
    events = _stream(client, **args)
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 25, "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created = events[0].response
    assert created.status == "in_progress" and created.output == [] and created.id == events[-1].response.id
    item_id = events[2].item.id
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert all((e.item_id, e.output_index, e.content_index, e.logprobs) == (item_id, 0, 0, []) for e in deltas)
    text = "".join(e.delta for e in deltas)
    assert text == events[-4].text == events[-3].part.text == events[-2].item.content[0].text == whole.output_text
    final = events[-1].response
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == text and final.output[0].id == item_id
    assert (final.usage.input_tokens, final.usage.output_tokens) == (whole.usage.input_tokens, 25)


def test_a_completed_stream_ends_with_response_completed(client) -> None:
    events = _stream(client, model="words", input="hello", max_output_tokens=10, temperature=0,
                     extra_body={"stop": "hello"})
    assert events[-1].type == "response.completed" and events[-1].response.status == "completed"
    assert events[-1].response.output_text == "world stop" and events[-2].item.status == "completed"


def test_raw_events_name_their_type_and_end_without_done(server) -> None:
    """The bytes, for clients that are not the SDK: ``event:`` names each ``data:``'s type; no ``[DONE]``."""
    body = json.dumps({"model": "words", "input": "hello", "max_output_tokens": 2, "temperature": 0, "stream": True})
    req = urllib.request.Request(server.http + "/v1/responses", body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    for event in events:
        head, data = event.split("\n")
        assert head.removeprefix("event: ") == json.loads(data.removeprefix("data: "))["type"]
    assert "[DONE]" not in raw and len(events) == 10, raw[-400:]


def test_closing_a_stream_cancels_the_generation(server, client) -> None:
    before = _cancelled(server, "charlm")
    stream = client.responses.create(model="charlm", input="The ", temperature=0, stream=True)
    it = iter(stream)
    assert [next(it).type for _ in range(4)][-1] == "response.content_part.added"
    assert [next(it).delta for _ in range(50)]  # no max_output_tokens: the server's limit, still going
    stream.close()
    wait_until(lambda: _cancelled(server, "charlm") == before + 1, 30.0, what="the generation was cancelled")


# ------------------------------------------------------------------ logprobs


def _chat_logprobs(client, top: int) -> list[dict[str, Any]]:
    """The chat route's ``logprobs.content`` for the greedy chat of "The ", as plain dicts."""
    chat = _chat(client, [{"role": "user", "content": "The "}], max_tokens=12, temperature=0, logprobs=True,
                 top_logprobs=top)
    return [c.model_dump() for c in chat.choices[0].logprobs.content]


def test_included_logprobs_are_the_chat_routes(client) -> None:
    r = _create(client, model="charlm", input="The ", max_output_tokens=12, temperature=0, include=INCLUDE,
                top_logprobs=3)
    [part] = r.output[0].content
    want = _chat_logprobs(client, 3)
    assert [lp.model_dump() for lp in part.logprobs] == want  # token, logprob, bytes, top_logprobs: the same
    assert "".join(lp.token for lp in part.logprobs) == r.output_text and len(part.logprobs) == 12
    assert all(len(lp.top_logprobs) == 3 and lp.bytes == list(lp.token.encode()) for lp in part.logprobs)
    assert r.top_logprobs == 3
    none = _create(client, model="charlm", input="The ", max_output_tokens=12, temperature=0, include=INCLUDE)
    assert [lp.model_dump() for lp in none.output[0].content[0].logprobs] == _chat_logprobs(client, 0)
    assert all(lp.top_logprobs == [] for lp in none.output[0].content[0].logprobs) and none.top_logprobs == 0


def test_top_logprobs_without_the_include_asks_for_nothing(client) -> None:
    """As vLLM takes it: the alternatives' count is taken (and echoed), no logprobs are given."""
    r = _create(client, model="charlm", input="The ", max_output_tokens=12, temperature=0, top_logprobs=2)
    plain = _create(client, model="charlm", input="The ", max_output_tokens=12, temperature=0, include=[])
    assert r.output[0].content[0].logprobs == [] == plain.output[0].content[0].logprobs
    assert r.output_text == plain.output_text and (r.top_logprobs, plain.top_logprobs) == (2, 0)


def test_streamed_logprobs_come_with_each_delta_and_add_up_to_the_answer(client) -> None:
    args = {"model": "charlm", "input": "The ", "max_output_tokens": 12, "temperature": 0, "include": INCLUDE,
            "top_logprobs": 2}
    whole = [lp.model_dump() for lp in _create(client, **args).output[0].content[0].logprobs]
    assert whole == _chat_logprobs(client, 2)
    unbyted = [{"token": w["token"], "logprob": w["logprob"],
                "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in w["top_logprobs"]]}
               for w in whole]  # the stream events' shape (the SDK's delta and done types have no bytes)
    events = _stream(client, **args)
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [e.logprobs[0].token for e in deltas] == [e.delta for e in deltas]
    assert [lp.model_dump(exclude_unset=True) for e in deltas for lp in e.logprobs] == unbyted
    assert all(len(e.logprobs) == 1 for e in deltas)
    done, part_done, item_done, final = events[-4:]
    assert [lp.model_dump(exclude_unset=True) for lp in done.logprobs] == unbyted
    assert [lp.model_dump() for lp in part_done.part.logprobs] == whole
    assert [lp.model_dump() for lp in item_done.item.content[0].logprobs] == whole
    assert [lp.model_dump() for lp in final.response.output[0].content[0].logprobs] == whole
    with client.responses.stream(**args) as stream:  # the SDK's helper, its parsed types
        seen = list(stream)
    got = [(e.snapshot, e.logprobs[0].logprob) for e in seen if e.type == "response.output_text.delta"]
    final = seen[-1].response  # response.incomplete: the length limit ended it
    assert [g[1] for g in got] == [w["logprob"] for w in whole] and got[-1][0] == final.output_text
    assert [lp.model_dump() for lp in final.output[0].content[0].logprobs] == whole


# ------------------------------------------------------------------ a failure mid-stream


def test_a_generation_that_fails_mid_stream_ends_with_response_failed(client) -> None:
    """The ``failing`` model writes b, c, d, e after "a" and raises at the step after 'e'."""
    with client.responses.stream(model="failing", input="a", max_output_tokens=10, temperature=0,
                                 include=INCLUDE) as stream:
        events = list(stream)
        with pytest.raises(RuntimeError, match="response.completed"):
            stream.get_final_response()
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.output_item.added",
                                        "response.content_part.added", *["response.output_text.delta"] * 4,
                                        "response.failed"]
    assert [e.sequence_number for e in events] == list(range(9))
    assert "".join(e.delta for e in events[4:8]) == "bcde" and all(len(e.logprobs) == 1 for e in events[4:8])
    failed = EVENTS.validate_python(events[-1].model_dump(exclude_unset=True))  # the SDK's own types, strictly
    response = failed.response
    assert response.id == events[0].response.id and response.status == "failed"
    assert (response.error.code, response.error.message, response.error.type) == (
        "server_error", "generation step failed: RuntimeError: no letter after e", "internal")
    assert response.output_text == "bcde" and response.output[0].status == "incomplete"
    assert [lp.token for lp in response.output[0].content[0].logprobs] == list("bcde")
    with pytest.raises(openai.InternalServerError) as info:  # not streamed: the error is the answer
        client.responses.create(model="failing", input="a", max_output_tokens=10, temperature=0)
    assert info.value.body["message"] == "generation step failed: RuntimeError: no letter after e"


def test_a_chat_completion_that_fails_mid_stream_ends_with_one_error_event(server, client) -> None:
    """A streamed chat completion failing after its first tokens: the tokens, exactly one error
    event in OpenAI's shape, ``[DONE]`` and the end of the chunked body; the SDK raises the error;
    the connection serves the next request."""
    body = {"model": "failing", "messages": [{"role": "user", "content": "a"}], "max_tokens": 10, "temperature": 0,
            "stream": True}
    with RawHttp(server.port) as http:
        a = http.request("POST", "/v1/chat/completions", json.dumps(body).encode(),
                         {"Content-Type": "application/json"})
        assert a.status == 200 and a.header("content-type") == "text/event-stream"
        events = [e for e in a.body.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]" and sum(b'"error"' in e for e in events) == 1
        assert json.loads(events[-2][len(b"data: "):]) == {"error": {
            "message": "generation step failed: RuntimeError: no letter after e", "type": "server_error",
            "param": None, "code": "internal"}}
        texts = [json.loads(e[len(b"data: "):])["choices"][0]["delta"].get("content") for e in events[:-2]]
        assert "".join(t for t in texts if t) == "bcde"
        assert http.request("GET", "/v1/models").status == 200  # the connection is fine
    stream = client.chat.completions.create(model="failing", messages=[{"role": "user", "content": "a"}],
                                            max_tokens=10, temperature=0, stream=True)
    with pytest.raises(openai.APIError, match="no letter after e"):
        for _ in stream:
            pass


def test_response_failed_carries_the_usage_of_what_was_generated(client) -> None:
    """As OpenAI's failed or incomplete response: the prompt's tokens ("a": 1) and the 4 generated
    before the failure, not ``usage: null``."""
    with client.responses.stream(model="failing", input="a", max_output_tokens=10, temperature=0) as stream:
        events = list(stream)
    failed = EVENTS.validate_python(events[-1].model_dump(exclude_unset=True))
    assert failed.type == "response.failed" and failed.response.output_text == "bcde"
    usage = failed.response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (1, 4, 5)
    assert (usage.input_tokens_details.cached_tokens, usage.output_tokens_details.reasoning_tokens) == (0, 0)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"text": {"format": {"type": "grammar"}}}, "text"),
        ({"text": {"verbosity": "low"}}, "text"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"include": ["message.output_text.logprobs", "message.input_image.image_url"]}, "include"),
        ({"extra_body": {"include": "message.output_text.logprobs"}}, "include"),
        ({"extra_body": {"include": [1]}}, "include"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": -1, "include": INCLUDE}, "top_logprobs"),
        ({"extra_body": {"top_logprobs": 2.0}}, "top_logprobs"),
        ({"extra_body": {"top_logprobs": True}}, "top_logprobs"),
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"extra_body": {"previous_response": {"id": "resp_1"}}}, "previous_response"),
        ({"extra_body": {"structured_outputs": {"choice": ["a"]}}}, "structured_outputs"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]}, "input"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, "input"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
        ({"input": [{"role": "tool", "content": "1"}]}, "input"),
        ({"input": [{"role": "user", "content": []}]}, "input"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"instructions": ["a"]}, "instructions"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": 10**9}, "max_output_tokens"),
        ({"temperature": 101}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"x" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"store": "yes"}, "store"),
        # the other OpenAI routes' fields this one has no use for, refused as the chat route refuses them
        ({"extra_body": {"n": 2}}, "n"),
        ({"extra_body": {"logprobs": True}}, "logprobs"),
        ({"extra_body": {"response_format": {"type": "json_object"}}}, "response_format"),
        ({"extra_body": {"use_beam_search": True}}, "use_beam_search"),
        ({"extra_body": {"guided_regex": "a+"}}, "guided_regex"),
        ({"extra_body": {"guided_choice": ["a"]}}, "guided_choice"),  # served on the other two routes only
        ({"model": "bigram"}, "input"),  # no chat template
    ],
)
def test_unsupported_or_bad_fields_are_refused_by_name(client, kwargs: dict, param: str) -> None:
    args = {"model": "charlm", "input": "a", "max_output_tokens": 5, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**args)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param and info.value.body["code"] == "bad_request", info.value.body


def test_refusals_name_the_problem(client) -> None:
    def refused(**kwargs: Any) -> str:
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model="charlm", max_output_tokens=5, **kwargs)
        return info.value.body["message"]

    assert refused(input="a", previous_response_id="resp_1") == (
        "'previous_response_id' is not supported: wsserve stores no responses; send the whole conversation in "
        "'input'; got 'resp_1'")
    assert refused(input=[{"role": "user", "content": "a"}, {"role": "user", "content": [
        {"type": "input_image", "image_url": "data:,"}]}]) == (
        "'input[1].content[0].type' 'input_image' is not supported: only text parts (input_text, output_text)")
    assert refused(input=[{"type": "function_call_output", "call_id": "c", "output": "1"}]).startswith(
        "'input[0].type' 'function_call_output' is not supported: only message items")
    assert refused(input="a", include=["reasoning.encrypted_content"]) == (
        "'include' value 'reasoning.encrypted_content' is not supported: only \"message.output_text.logprobs\" "
        "(wsserve's models have no tool results, images or reasoning to include)")
    assert refused(input="a", include=INCLUDE, top_logprobs=21) == "'top_logprobs' must be an integer in [0, 20], got 21"
    assert refused(input="a", extra_body={"logprobs": True}) == (
        "'logprobs' is not supported on this route: this route's logprobs are asked for with 'include': "
        "[\"message.output_text.logprobs\"] and 'top_logprobs'; got true")


@pytest.mark.parametrize("extra", [
    {"temperature": 0, "frequency_penalty": 2},
    {"temperature": 0, "presence_penalty": 2},
    {"temperature": 1, "seed": 7, "min_p": 0.5},
    {"temperature": 0, "min_tokens": 20, "stop": "e"},
    {"temperature": 0, "stop_token_ids": "t"},  # the token id of "t", from /tokenize
], ids=["frequency_penalty", "presence_penalty", "min_p", "min_tokens", "stop_token_ids"])
def test_the_sampling_and_stop_fields_of_every_generate_are_taken_as_on_the_chat_route(server, client,
                                                                                        extra: dict) -> None:
    """``protocol.SAMPLING_FIELDS`` and ``STOP_FIELDS`` (every protocol's generate takes them): they were
    dropped here as unknown fields, so the same request gave another text than on the chat route."""
    if "stop_token_ids" in extra:
        body = json.dumps({"model": "charlm", "prompt": extra["stop_token_ids"]}).encode()
        with urllib.request.urlopen(urllib.request.Request(server.http + "/tokenize", body), timeout=30) as resp:
            extra = {**extra, "stop_token_ids": json.loads(resp.read())["tokens"]}
    plain = {k: v for k, v in extra.items() if k in ("temperature", "seed")}
    chat = _chat(client, [{"role": "user", "content": "The "}], max_tokens=30, extra_body=extra)
    assert chat.choices[0].message.content != _chat(client, [{"role": "user", "content": "The "}], max_tokens=30,
                                                    extra_body=plain).choices[0].message.content  # it changes the text
    r = _create(client, model="charlm", input="The ", max_output_tokens=30, extra_body=extra)
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.output_tokens == chat.usage.completion_tokens


def test_unknown_fields_are_ignored_as_on_the_chat_route(client) -> None:
    args = {"model": "words", "input": "hello", "max_output_tokens": 2, "temperature": 0}
    assert _create(client, **args, extra_body={"no_such_field": 1}).output_text == _create(client, **args).output_text


def test_model_errors(client) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="nope", input="a")
    assert "no model named 'nope'" in info.value.body["message"] and info.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="mlp", input="a")
    assert "does not generate text" in info.value.body["message"] and info.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="bigram", input="a")
    assert "model 'bigram' has no chat template (no chat_prompt())" in info.value.body["message"]


# ------------------------------------------------------------------ keys, limits, drain


def test_api_keys_and_the_body_limit(start_server) -> None:
    server = start_server("--api-key", "secret", "--max-message-bytes", "4096", "--models", "charlm")
    base = server.http + "/v1"
    with openai.OpenAI(base_url=base, api_key="wrong", max_retries=0, timeout=60) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.responses.create(model="charlm", input="a", max_output_tokens=2)
        assert info.value.status_code == 401
    with openai.OpenAI(base_url=base, api_key="secret", max_retries=0, timeout=60) as good:
        r = _create(good, model="charlm", input="a" * 3000, max_output_tokens=2, temperature=0)
        assert r.usage.input_tokens == 16  # charlm reads a prompt's last 16 characters, as for a chat
        with pytest.raises(openai.APIStatusError) as info:  # over --max-message-bytes, as any request body
            good.responses.create(model="charlm", input="a" * 5000, max_output_tokens=2)
        assert info.value.status_code == 413


def test_the_drain_deadline_ends_a_running_stream_with_response_failed(start_server, tmp_path) -> None:
    root = tmp_path / "repository"
    (root / "slowchat").mkdir(parents=True)
    (root / "slowchat" / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(root / "slowchat" / "1", SLOW_CHAT_PY, **{"seed.txt": "3", "delay.txt": "0.002"})  # 2 ms a step
    server = start_server("--drain-timeout", "1", "--models", "none", "--model-repository", str(root))
    stream = RawHttp(server.port)
    stream.send(request_bytes("POST", "/v1/responses", json.dumps(
        {"model": "slowchat", "input": "a", "stream": True}).encode()))
    assert stream.interim().status == 200
    assert stream._line()  # the first events' chunk size: the generation runs
    server.signal(signal.SIGTERM)
    while not stream.closed():
        pass
    tail = stream.buf.rsplit(b"event: ", 1)[-1]
    head, data = tail.split(b"\n", 1)
    assert head == b"response.failed", stream.buf[-300:]
    failed = EVENTS.validate_python(json.loads(data.split(b"\n\n")[0].removeprefix(b"data: ")))
    assert failed.type == "response.failed" and failed.response.status == "failed"
    error = failed.response.error
    assert (error.code, error.message, error.param, error.type) == (
        "server_error", "drain deadline reached", None, "shutting_down")
    assert failed.response.output_text  # the text as far as it went
    assert stream.buf.endswith(b"\n\n\r\n0\r\n\r\n")  # and the stream ends
    assert server.wait(30) == 0
