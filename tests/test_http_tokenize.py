"""vLLM's tokenizer routes, ``POST /tokenize`` and ``POST /detokenize``, on a real server.

The ids are what a generation gives the model (``encode()`` of the prompt's last ``prompt_chars``
characters), so they are checked against the other code path that counts them: the
``usage.prompt_tokens`` of ``/v1/completions`` and ``/v1/chat/completions`` for the same prompt or
conversation.  Models: the repository model ``words`` (tests/repo_models.py ``WORDS_PY``, whose
tokens are words, ``prompt_chars`` 24, with a chat template), ``plain`` (the same without a
template), ``boom`` (an ``encode()`` that fails on some prompts), and the built-in ``charlm``
(normalises text, reads 16 characters) and ``mlp`` (predictive).  The server has an API key: every
request sends it, but those that test the key.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.repo_models import (
    WORDS_PROMPT_CHARS,
    WORDS_PY,
    WORDS_VOCAB,
    words_encode,
    write_py,
)
from tests.support import ServerProcess, http_get
from wsserve.models.charlm import normalize_text
from wsserve.rest.tokenize import MAX_DETOKENIZE_TOKENS

KEY = "tok-key"

#: ``words`` with a chat template: each message's content followed by a space.
WORDS_CHAT_PY = WORDS_PY + """
    def chat_prompt(self, messages):
        return "".join(m["content"] + " " for m in messages)
"""

#: An ``encode()`` that raises on "boom" and gives an id outside the vocabulary for "oob".
BOOM_PY = WORDS_PY + """
    def encode(self, prompt):
        if "boom" in prompt:
            raise KeyError("no boom")
        return [99] if "oob" in prompt else [0]
"""

LONG = "hello " * 10 + "wor"  # 63 characters; the model reads the last 24 (9 of its 13 tokens)
CONVERSATION = [{"role": "system", "content": "hello"}, {"role": "user", "content": "world hello world"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_transport: str, model_cache: Path) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("repository")
    for name, source in (("words", WORDS_CHAT_PY), ("plain", WORDS_PY), ("boom", BOOM_PY)):
        (root / name).mkdir()
        (root / name / "config.toml").write_text('task = "generation"\n')
        write_py(root / name / "1", source)
    with ServerProcess("--model-repository", str(root), "--api-key", KEY, cache_dir=model_cache,
                       transport=module_transport) as srv:
        yield srv


def post(server: ServerProcess, path: str, body: Any, *, key: str | None = KEY) -> tuple[int, dict[str, str], Any]:
    """``POST path`` with a JSON body (bytes as they are) -> ``(status, lower-cased headers, decoded body)``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(server.http + path, data, headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, head, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, head, raw = err.code, err.headers, err.read()
    return status, {k.lower(): v for k, v in head.items()}, json.loads(raw)


def ok(server: ServerProcess, path: str, body: Any) -> Any:
    status, _, obj = post(server, path, body)
    assert status == 200, obj
    return obj


def prompt_tokens(server: ServerProcess, path: str, **body: Any) -> int:
    """``usage.prompt_tokens`` of a one-token completion (``path``: completions or chat)."""
    return ok(server, path, {**body, "max_tokens": 1, "temperature": 0})["usage"]["prompt_tokens"]


@pytest.mark.parametrize("prompt", ["hello world ", LONG, "", "xyz hello?", "stop" * 7])
def test_tokens_are_what_a_completion_gives_the_model(server, prompt: str) -> None:
    got = ok(server, "/tokenize", {"model": "words", "prompt": prompt})
    assert got["tokens"] == words_encode(prompt[-WORDS_PROMPT_CHARS:])  # the model reads the last 24 characters
    assert got["count"] == len(got["tokens"]) == prompt_tokens(server, "/v1/completions", model="words", prompt=prompt)
    assert got["max_model_len"] == 2 and got["token_strs"] is None  # words' context_len; strings only when asked


def test_charlm_tokens_are_normalised_and_cut_as_a_completions(server) -> None:
    prompt = "The cat\r\nsat on the mat… and more"
    got = ok(server, "/tokenize", {"model": "charlm", "prompt": prompt, "add_special_tokens": True})
    assert got["count"] == len(got["tokens"]) == prompt_tokens(server, "/v1/completions", model="charlm", prompt=prompt)
    text = ok(server, "/detokenize", {"model": "charlm", "tokens": got["tokens"]})["prompt"]
    assert text == normalize_text(prompt[-16:]) == "he mat... and more"
    status, _, body = http_get(server.http + "/v1/models", key=KEY)
    charlm = next(m for m in json.loads(body) if m["name"] == "charlm")
    assert got["max_model_len"] == charlm["context_len"] == 8  # the tokens the model reads at each step


@pytest.mark.parametrize("prompt", ["hello world stop", LONG, "", "shell hello dew"])
def test_detokenize_of_tokenize_is_the_text_the_model_reads(server, prompt: str) -> None:
    got = ok(server, "/tokenize", {"model": "words", "prompt": prompt, "return_token_strs": True})
    assert got["token_strs"] == [WORDS_VOCAB[i] for i in got["tokens"]]
    text = ok(server, "/detokenize", {"model": "words", "tokens": got["tokens"]})["prompt"]
    assert text == "".join(got["token_strs"]) == prompt[-WORDS_PROMPT_CHARS:]


def test_detokenize_maps_any_ids_to_their_texts(server) -> None:
    assert ok(server, "/detokenize", {"model": "words", "tokens": [2, 13, 0, 0, 3]}) == {"prompt": "stop hello hello h"}
    assert ok(server, "/detokenize", {"model": "words", "tokens": []}) == {"prompt": ""}
    big = ok(server, "/detokenize", {"model": "words", "tokens": [2] * MAX_DETOKENIZE_TOKENS})
    assert big == {"prompt": "stop" * MAX_DETOKENIZE_TOKENS}


def test_the_chat_form_counts_what_the_chat_route_counts(server) -> None:
    got = ok(server, "/tokenize", {"model": "words", "messages": CONVERSATION, "add_generation_prompt": True,
                                   "add_special_tokens": False, "return_token_strs": True})
    templated = "hello world hello world "  # the template: each content and a space
    assert got["tokens"] == words_encode(templated[-WORDS_PROMPT_CHARS:]) == [0, 1, 0, 1]
    assert got["count"] == 4 == prompt_tokens(server, "/v1/chat/completions", model="words", messages=CONVERSATION)
    assert "".join(got["token_strs"]) == templated
    long = [{"role": "user", "content": LONG}]  # templated, then cut as a chat's prompt is
    got = ok(server, "/tokenize", {"model": "words", "messages": long})
    assert got["tokens"] == words_encode((LONG + " ")[-WORDS_PROMPT_CHARS:])
    assert got["count"] == prompt_tokens(server, "/v1/chat/completions", model="words", messages=long)


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"prompt": "a"}, "model", "'model' must be a string of 1 to"),
    ({"model": "words"}, "prompt", "'prompt' must be a string (or send 'messages'), got null"),
    ({"model": "words", "prompt": 7}, "prompt", "'prompt' must be a string (or send 'messages'), got number"),
    ({"model": "words", "prompt": [0, 1]}, "prompt", "token-id and list prompts are not tokenized"),
    ({"model": "words", "prompt": ["a", "b"]}, "prompt", "token-id and list prompts are not tokenized"),
    ({"model": "words", "prompt": "a", "messages": CONVERSATION}, "prompt", "either 'prompt' or 'messages'"),
    ({"model": "words", "prompt": "a", "add_special_tokens": False}, "add_special_tokens",
     "'add_special_tokens' is not supported other than true (wsserve's models have no special tokens"),
    ({"model": "words", "prompt": "a", "return_token_strs": "yes"}, "return_token_strs",
     "'return_token_strs' must be a boolean, got string"),
    ({"model": "words", "messages": []}, "messages", "field 'messages' must hold at least one message"),
    ({"model": "words", "messages": [{"role": "tool", "content": "x"}]}, "messages", "'messages[0].role' 'tool'"),
    ({"model": "words", "messages": CONVERSATION, "add_generation_prompt": False}, "add_generation_prompt",
     "'add_generation_prompt' is not supported other than true"),
    ({"model": "words", "messages": CONVERSATION, "continue_final_message": True}, "continue_final_message",
     "'continue_final_message' is not supported other than false"),
    ({"model": "words", "messages": CONVERSATION, "add_special_tokens": True}, "add_special_tokens",
     "'add_special_tokens' is not supported other than false"),
    ({"model": "words", "messages": CONVERSATION, "chat_template": "{{ x }}"}, "chat_template",
     "'chat_template' is not supported other than null (the model's own template applies); got '{{ x }}'"),
    ({"model": "words", "messages": CONVERSATION, "chat_template_kwargs": {"a": 1}}, "chat_template_kwargs",
     "'chat_template_kwargs' is not supported other than {}"),
    ({"model": "words", "messages": CONVERSATION, "tools": [{"type": "function"}]}, "tools",
     "'tools' is not supported other than []"),
    ({"model": "plain", "messages": CONVERSATION}, "messages", "model 'plain' has no chat template"),
])
def test_tokenize_refuses_what_it_cannot_honour_by_name(server, body: dict, param: str, message: str) -> None:
    status, _, obj = post(server, "/tokenize", body)
    assert status == 400 and obj["error"]["param"] == param and obj["error"]["code"] == "bad_request", obj
    assert obj["error"]["type"] == "invalid_request_error" and message in obj["error"]["message"], obj


@pytest.mark.parametrize(("tokens", "message"), [
    (None, "'tokens' must be an array of token ids, got null"),
    ("0 1", "'tokens' must be an array of token ids, got string"),
    ([0, 1.5], "'tokens[1]' must be an integer token id, got 1.5"),
    ([0, 1.0], "'tokens[1]' must be an integer token id, got 1.0"),
    ([True], "'tokens[0]' must be an integer token id, got boolean"),
    ([0, "1"], "'tokens[1]' must be an integer token id, got string"),
    ([[0]], "'tokens[0]' must be an integer token id, got array"),
    ([0, 1, -1], "'tokens[2]' is -1; model vocabulary has 14 tokens (ids 0 to 13)"),
    ([14], "'tokens[0]' is 14; model vocabulary has 14 tokens (ids 0 to 13)"),
    ([2**64 - 1], f"'tokens[0]' is {2**64 - 1}; model vocabulary has 14 tokens"),
    ([2**70], "got 1.1805916207174113e+21 (a JSON integer beyond 64 bits is read as a floating-point number)"),
    ([0] * (MAX_DETOKENIZE_TOKENS + 1), f"'tokens' holds {MAX_DETOKENIZE_TOKENS + 1} ids; at most "
                                        f"{MAX_DETOKENIZE_TOKENS} per request"),
], ids=["null", "string", "float", "integral-float", "bool", "string-id", "nested", "negative", "V", "u64", "huge",
        "too-many"])
def test_detokenize_refuses_bad_ids_naming_the_first(server, tokens: Any, message: str) -> None:
    status, _, obj = post(server, "/detokenize", {"model": "words", "tokens": tokens})
    assert status == 400 and obj["error"]["param"] == "tokens" and obj["error"]["code"] == "bad_request", obj
    assert message in obj["error"]["message"], obj


@pytest.mark.parametrize(("path", "body"), [("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [0]})])
def test_unknown_and_predictive_models_get_the_openai_routes_errors(server, path: str, body: dict) -> None:
    status, _, obj = post(server, path, {"model": "nope", **body})
    assert status == 404 and obj["error"]["code"] == "unknown_model" and obj["error"]["param"] == "model", obj
    assert "no model named 'nope'" in obj["error"]["message"]
    status, _, obj = post(server, path, {"model": "mlp", **body})
    assert status == 400 and obj["error"]["code"] == "bad_request" and obj["error"]["param"] == "model", obj
    assert "model 'mlp' does not generate text" in obj["error"]["message"]
    status, _, obj = post(server, path, b"[1, 2]")
    assert status == 400 and obj["error"]["message"] == "the body must be a JSON object, got array", obj
    status, _, obj = post(server, path, b"{nope")
    assert status == 400 and obj["error"]["code"] == "bad_json", obj


def test_a_failing_encode_is_an_internal_error_naming_the_model(server) -> None:
    status, _, obj = post(server, "/tokenize", {"model": "boom", "prompt": "a boom"})
    assert status == 500 and obj["error"]["code"] == "internal" and obj["error"]["type"] == "server_error", obj
    assert obj["error"]["message"] == "model 'boom': encode() raised KeyError: 'no boom'"
    status, _, obj = post(server, "/tokenize", {"model": "boom", "prompt": "oob"})
    assert status == 500 and obj["error"]["message"] == "model 'boom': encode() must return token ids in [0, 14)", obj
    assert ok(server, "/tokenize", {"model": "boom", "prompt": "fine"})["tokens"] == [0]  # the model still serves


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
@pytest.mark.parametrize("key", [None, "wrong"], ids=["missing", "wrong"])
def test_an_api_key_is_required(server, path: str, key: str | None) -> None:
    status, headers, obj = post(server, path, {"model": "words", "prompt": "a", "tokens": [0]}, key=key)
    assert status == 401 and headers["www-authenticate"] == "Bearer", obj
    assert obj["error"]["type"] == "authentication_error" and obj["error"]["code"] == "unauthorized", obj
