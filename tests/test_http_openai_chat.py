"""OpenAI-compatible chat completions (``POST /v1/chat/completions``) with the ``openai`` SDK, and
the WebSocket ``generate``'s ``messages`` extension.

A chat's prompt is the served model's template of its messages (``chat_prompt``): charlm joins
the contents with newlines, and the repository model ``words`` (tests/repo_models.py
``WORDS_PY`` with a template) joins them with spaces.  Texts are compared with what the
WebSocket ``generate`` gives for the templated prompt (greedy and seeded sampling do not depend on
what else runs), token counts with the templated prompt's tokens (computed here), and closing a
stream must cancel the generation on the server (seen in ``/metrics``).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.repo_models import (
    BIGRAM_CONFIG,
    BIGRAM_PY,
    WORDS_CHAT_PY,
    WORDS_PY,
    words_encode,
    write_py,
)
from tests.repo_wire import models_http, states
from tests.support import Conn, ServerProcess, scrape_metrics, wait_until

openai = pytest.importorskip("openai")  # the test extra installs it

#: A template that refuses some conversations (ValueError), breaks on others, or returns a non-string.
PICKY_PY = WORDS_PY + """
    def chat_prompt(self, messages):
        if messages[0]["role"] != "system" and messages[0]["content"] != "Hello":
            raise ValueError("the first message must be the system's")
        if messages[-1]["content"] == "boom":
            raise KeyError("template variable")
        if messages[-1]["content"] == "number":
            return 7
        return " ".join(m["content"] for m in messages)
"""

#: A template that fails on the load-time check.
BROKEN_CHAT_PY = WORDS_PY + """
    def chat_prompt(self, messages):
        return None
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_transport: str, model_cache: Path) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("repository")
    gen = 'task = "generation"\n'
    for name, source in (("words", WORDS_CHAT_PY), ("picky", PICKY_PY), ("brokenchat", BROKEN_CHAT_PY)):
        (root / name).mkdir()
        (root / name / "config.toml").write_text(gen)
        write_py(root / name / "1", source)
    (root / "bigram").mkdir()
    (root / "bigram" / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(root / "bigram" / "1", BIGRAM_PY, **{"seed.txt": "20"})
    with ServerProcess("--model-repository", str(root), cache_dir=model_cache, transport=module_transport) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Any]:
    c = openai.OpenAI(base_url=server.http + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield c
    c.close()


def http_post(url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """``POST url`` with a JSON body -> ``(status, lower-cased headers, body)``."""
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


async def _ws_generate(server: ServerProcess, **fields: Any) -> tuple[str, dict[str, Any]]:
    """The text and terminal frame of a WebSocket ``generate`` with ``fields``."""
    conn = await Conn.open(server.url)
    await conn.send({"type": "generate", "id": "g", **fields})
    frames, last = await conn.until_terminal("g")
    await conn.close()
    return "".join(f["text"] for f in frames if f["type"] == "token"), last


def _cancelled(server: ServerProcess, model: str) -> float:
    return scrape_metrics(server.http).get("wsserve_requests_total", code="cancelled", model=model, type="generate")


CONVERSATION = [
    {"role": "system", "content": "You continue text."},
    {"role": "user", "content": "The "},
]


async def test_chat_completion_is_the_generation_of_the_templated_prompt(server, client) -> None:
    r = client.chat.completions.create(model="charlm", messages=CONVERSATION, max_tokens=30, temperature=0)
    assert r.object == "chat.completion" and r.model == "charlm" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length"
    assert choice.message.role == "assistant" and len(choice.message.content) == 30
    prompt = "You continue text.\nThe "  # charlm's template: the contents joined by newlines
    text, done = await _ws_generate(server, model="charlm", prompt=prompt, max_tokens=30, temperature=0)
    assert choice.message.content == text
    assert r.usage.prompt_tokens == done["prompt_tokens"] == 16  # charlm is given the prompt's last 16 characters
    assert r.usage.completion_tokens == 30 and r.usage.total_tokens == 46


async def test_a_repository_models_template_makes_the_prompt(server, client) -> None:
    messages = [{"role": "system", "content": "hello"}, {"role": "user", "content": "world"}]
    r = client.chat.completions.create(model="words", messages=messages, max_completion_tokens=4, temperature=0)
    # "hello world " -> [hello, world]: then stop, hello, world, stop (the model's cycle)
    assert r.choices[0].message.content == "stophello world stop"
    assert r.usage.prompt_tokens == len(words_encode("hello world ")) == 2
    text, done = await _ws_generate(server, model="words", prompt="hello world ", max_tokens=4, temperature=0)
    assert (text, done["prompt_tokens"]) == ("stophello world stop", 2)


async def test_streamed_chat_is_the_same_text_in_chunks(server, client) -> None:
    args = {"model": "charlm", "messages": CONVERSATION, "max_tokens": 25, "temperature": 0.9, "seed": 5}
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks) and len({c.id for c in chunks}) == 1
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == "" and first.finish_reason is None
    deltas = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(deltas) == 25 and "".join(deltas) == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 25
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


async def test_sampling_fields_are_the_websockets(server, client) -> None:
    """``top_p``, OpenAI's penalties and ``logit_bias`` reach the engine: the chat's text is the WebSocket
    ``generate``'s of the templated prompt with the same fields."""
    fields = {"temperature": 1.2, "top_p": 0.85, "presence_penalty": 0.6, "frequency_penalty": 0.9, "seed": 5,
              "logit_bias": {"4": 2.5, "10": -100}}
    r = client.chat.completions.create(model="charlm", messages=CONVERSATION, max_tokens=40, **fields)
    text, _ = await _ws_generate(server, model="charlm", prompt="You continue text.\nThe ", max_tokens=40, **fields)
    assert r.choices[0].message.content == text
    plain, _ = await _ws_generate(server, model="charlm", prompt="You continue text.\nThe ", max_tokens=40,
                                  temperature=1.2, seed=5)
    assert text != plain


def test_stop_strings_end_with_finish_reason_stop(client) -> None:
    args = {"model": "charlm", "messages": CONVERSATION, "temperature": 0}
    full = client.chat.completions.create(**args, max_tokens=60).choices[0].message.content
    stop = full[10:13]
    r = client.chat.completions.create(**args, max_tokens=60, stop=stop)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == full[: full.index(stop)]


def test_without_max_tokens_a_chat_runs_to_the_servers_limit(server, client) -> None:
    """vLLM's default: what the context leaves; here the server's --max-tokens.  The stream is
    closed early: closing it cancels the generation on the server."""
    before = _cancelled(server, "charlm")
    stream = client.chat.completions.create(model="charlm", messages=CONVERSATION, temperature=0, stream=True)
    it = iter(stream)
    assert next(it).choices[0].delta.role == "assistant"
    assert [next(it).choices[0].delta.content for _ in range(50)]  # 50 tokens, still going (OpenAI's 16 is not the default)
    stream.close()
    wait_until(lambda: _cancelled(server, "charlm") == before + 1, 30.0, what="the generation was cancelled")


def test_an_sdk_response_message_can_be_sent_back(client) -> None:
    """The SDK's own message object, dumped with its null fields (refusal, tool_calls, audio...),
    is a valid assistant message of the next turn."""
    first = client.chat.completions.create(model="words", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=2, temperature=0)
    previous = first.choices[0].message.model_dump()
    assert "tool_calls" in previous and previous["tool_calls"] is None
    r = client.chat.completions.create(model="words", max_tokens=2, temperature=0,
                                       messages=[{"role": "user", "content": "hello"}, previous,
                                                 {"role": "user", "content": [{"type": "text", "text": "wor"},
                                                                              {"type": "text", "text": "ld"}]}])
    prompt = "hello " + first.choices[0].message.content + " world "
    assert r.usage.prompt_tokens == len(words_encode(prompt))


@pytest.mark.parametrize(
    "kwargs,param",
    [
        # tools without tool_choice: vLLM's "auto", which needs a tool parser (test_http_openai_tools)
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"n": 17}, "n"),
        ({"n": 0}, "n"),
        ({"extra_body": {"logprobs": 1}}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_p": -0.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"extra_body": {"repetition_penalty": -1}}, "repetition_penalty"),
        ({"response_format": {"type": "grammar"}}, "response_format"),
        ({"extra_body": {"chat_template": "{{ messages }}"}}, "chat_template"),
        ({"extra_body": {"guided_choice": []}}, "guided_choice"),  # vLLM's, taken: a bad value is refused
        ({"extra_body": {"structured_outputs": {"grammar": "a"}}}, "structured_outputs"),  # choice/regex/json only
        ({"extra_body": {"use_beam_search": True}}, "use_beam_search"),
        ({"extra_body": {"continue_final_message": True}}, "continue_final_message"),
        ({"extra_body": {"add_generation_prompt": False}}, "add_generation_prompt"),
        ({"extra_body": {"echo": True}}, "echo"),
        ({"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}, "chat_template_kwargs"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"max_completion_tokens": 3, "max_tokens": "x"}, "max_tokens"),  # checked, not dropped, beside it
        ({"max_completion_tokens": 3, "max_tokens": 10**9}, "max_tokens"),
        ({"temperature": 101}, "temperature"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages"),
        ({"messages": [{"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}]},
         "messages"),  # OpenAI's old function calling (tool_calls are taken: test_http_openai_tools)
        ({"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_unsupported_or_bad_parameters_are_refused_by_name(client, kwargs: dict, param: str) -> None:
    args = {"model": "charlm", "messages": [{"role": "user", "content": "a"}], "max_tokens": 5, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**args)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param and info.value.body["code"] == "bad_request"


def test_the_refusal_names_the_problem(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="charlm", max_tokens=5, messages=[
            {"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "input_audio"}]}])
    assert "'messages[1].content[0].type' 'input_audio' is not supported: only text parts" in info.value.body["message"]


def test_an_empty_content_array_is_refused_not_read_as_empty_text(server, client) -> None:
    """OpenAI refuses ``"content": []``; so does wsserve, naming the field as sent (it used to
    generate from an empty message), over HTTP and on the WebSocket alike."""
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="charlm", max_tokens=5, messages=[
            {"role": "system", "content": "a"}, {"role": "user", "content": []}])
    assert info.value.status_code == 400
    assert info.value.body == {"message": "'messages[1].content' is an empty array; send a string or at least one "
                                          "text part", "type": "invalid_request_error", "param": "messages",
                               "code": "bad_request"}


@pytest.mark.parametrize("kwargs,param,start", [
    ({"stop": ["x" * 100_000]}, "stop", "field 'stop' must hold non-empty strings of at most 256 characters, got 'xxx"),
    ({"extra_body": {"top_k": [7] * 100_000}}, "top_k", "field 'top_k' must be an integer in [0, 2147483647], got [7, 7"),
])
def test_a_refused_value_is_shown_cut(client, kwargs: dict, param: str, start: str) -> None:
    """The message shows the start of a refused value, not all of it (it may be most of the body)."""
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="charlm", messages=[{"role": "user", "content": "a"}], max_tokens=5,
                                       **kwargs)
    message = info.value.body["message"]
    assert info.value.body["param"] == param and message.startswith(start) and message.endswith("..."), message
    assert len(message) < len(start) + 80, len(message)


def test_model_errors(client) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=CONVERSATION)
    assert "no model named 'nope'" in info.value.body["message"] and info.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="mlp", messages=CONVERSATION)
    assert "does not generate text" in info.value.body["message"]


def test_a_model_without_a_template_refuses_chats_but_still_completes(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="bigram", messages=CONVERSATION, max_tokens=3)
    body = info.value.body
    assert body["param"] == "messages" and body["code"] == "bad_request"
    assert "model 'bigram' has no chat template (no chat_prompt())" in body["message"]
    assert len(client.completions.create(model="bigram", prompt="the ", max_tokens=3).choices[0].text) == 3


def test_a_template_failure_stays_in_its_request(server, client) -> None:
    def chat(*contents: str) -> Any:
        return client.chat.completions.create(model="picky", max_tokens=2, temperature=0, messages=[
            {"role": "system", "content": "hello"}, *({"role": "user", "content": c} for c in contents)])

    with pytest.raises(openai.BadRequestError) as info:  # the template's ValueError: the client's mistake
        client.chat.completions.create(model="picky", max_tokens=2, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["message"] == "model 'picky' refused the conversation: the first message must be the system's"
    with pytest.raises(openai.InternalServerError) as info:  # anything else: the model's bug
        chat("boom")
    assert info.value.body["code"] == "internal"
    assert "model 'picky': chat_prompt() raised KeyError" in info.value.body["message"]
    with pytest.raises(openai.InternalServerError) as info:
        chat("number")
    assert "chat_prompt() must return a string, got int" in info.value.body["message"]
    assert chat("world").usage.prompt_tokens == len(words_encode("hello world")) == 6  # "world": no space, 5 letters


def test_the_models_list_says_which_models_chat(server) -> None:
    models = models_http(server)
    assert {name: models[name].get("chat") for name in ("charlm", "words", "bigram", "mlp")} == {
        "charlm": True, "words": True, "bigram": False, "mlp": None}


def test_a_template_that_fails_its_load_check_fails_the_version(server) -> None:
    entry = models_http(server)["brokenchat"]
    assert states(entry) == {"1": "failed"}
    reason = entry["versions"][0]["reason"]
    assert "chat_prompt() must return a string, got NoneType" in reason, reason


# ------------------------------------------------------------------ the WebSocket generate's messages


async def test_websocket_generate_takes_messages(server) -> None:
    via_messages = await _ws_generate(server, model="charlm", messages=CONVERSATION, max_tokens=20, temperature=0)
    via_prompt = await _ws_generate(server, model="charlm", prompt="You continue text.\nThe ", max_tokens=20,
                                    temperature=0)
    assert via_messages[0] == via_prompt[0] and len(via_messages[0]) == 20
    assert via_messages[1]["type"] == "done" and via_messages[1]["prompt_tokens"] == via_prompt[1]["prompt_tokens"]


async def test_websocket_messages_errors_end_only_their_request(server) -> None:
    conn = await Conn.open(server.url)
    bad = [
        ({"model": "charlm", "messages": CONVERSATION, "prompt": "x"}, "'prompt' or 'messages', not both"),
        ({"model": "charlm", "messages": [{"role": "tool", "content": "1"}]}, "'messages[0].role' 'tool'"),
        ({"model": "charlm", "messages": "hi"}, "field 'messages' must be an array of messages"),
        ({"model": "charlm", "messages": [{"role": "user", "content": []}]},
         "'messages[0].content' is an empty array; send a string or at least one text part"),
        ({"model": "bigram", "messages": CONVERSATION}, "model 'bigram' has no chat template"),
        ({"model": "picky", "messages": [{"role": "system", "content": "boom"}]}, "chat_prompt() raised KeyError"),
    ]
    for i, (fields, message) in enumerate(bad):
        await conn.send({"type": "generate", "id": i, "max_tokens": 3, **fields})
    await conn.send({"type": "generate", "id": "ok", "model": "words", "max_tokens": 2, "temperature": 0,
                     "messages": [{"role": "user", "content": "hello"}]})
    answers = {}
    while len(answers) < len(bad) + 1:
        frame = await conn.recv()
        if frame["type"] in ("error", "done"):
            answers[frame["id"]] = frame
    await conn.close()
    for i, (_, message) in enumerate(bad):
        assert answers[i]["type"] == "error" and message in answers[i]["message"], answers[i]
    assert [answers[i]["code"] for i in range(len(bad))] == ["bad_request"] * 5 + ["internal"]
    assert answers["ok"]["type"] == "done" and answers["ok"]["prompt_tokens"] == 1


def test_raw_http_answer_shapes(server) -> None:
    """The bytes, for clients that are not the SDK: the non-streamed body and the SSE events."""
    body = {"model": "words", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "temperature": 0}
    status, headers, raw = http_post(server.http + "/v1/chat/completions", json.dumps(body).encode())
    obj = json.loads(raw)
    assert status == 200 and obj["object"] == "chat.completion"
    assert obj["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "world stop"},
                               "logprobs": None, "finish_reason": "length"}]
    assert obj["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    status, headers, raw = http_post(server.http + "/v1/chat/completions", json.dumps({**body, "stream": True}).encode())
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}, {"content": "world "},
                                                         {"content": "stop"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]


def test_chat_requests_are_counted_as_generations(server, client) -> None:
    def ok() -> float:
        return scrape_metrics(server.http).get("wsserve_requests_total", code="ok", model="words", type="generate")

    before = ok()
    client.chat.completions.create(model="words", messages=[{"role": "user", "content": "hello"}], max_tokens=1)
    wait_until(lambda: ok() == before + 1, 30.0, what="the chat was counted")


def test_vllm_template_controls_at_their_defaults_are_taken(openai_client) -> None:
    args = {"model": "charlm", "messages": [{"role": "user", "content": "The "}], "max_tokens": 8, "temperature": 0}
    plain = openai_client.chat.completions.create(**args).choices[0].message.content
    extra = {"add_generation_prompt": True, "continue_final_message": False, "echo": False,
             "chat_template_kwargs": {}, "mm_processor_kwargs": {}}
    assert openai_client.chat.completions.create(**args, extra_body=extra).choices[0].message.content == plain
