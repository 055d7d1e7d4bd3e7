"""OpenAI ``usage`` counts tokens, as vLLM does: ``prompt_tokens`` is the number of token ids the
model was given for the prompt (``encode()`` of the prompt's last ``prompt_chars`` characters),
``completion_tokens`` the tokens generated, ``total_tokens`` their sum.

``completion_tokens`` counts every token generated, as vLLM's (its output token ids): the tokens of
a stop string and a stop token (``stop_token_ids``) too, although their text is not sent.

Checked with the ``openai`` SDK against real servers: a repository model whose tokens are words
(tests/repo_models.py ``WORDS_CHAT_PY``: ``"hello "`` is one token, ``prompt_chars`` 24; it writes
``hello world stop hello ...``), and the
built-in ``charlm``, whose ``encode`` normalises text (``"\\r\\n"`` -> ``"\\n"``, ``"…"`` -> ``"..."``)
before mapping one character to one id, and which is given at most 16 characters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.repo_models import WORDS_CHAT_PY, WORDS_PROMPT_CHARS, words_encode, write_py
from tests.support import Conn, ServerProcess
from tests.test_http_triton_generate import events, post

openai = pytest.importorskip("openai")  # the test extra installs it

LONG = "hello " * 10 + "wor"  # 63 characters, 13 token ids; the model gets the last 24 characters


@pytest.fixture(scope="module")
def words_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("repository")
    (root / "words").mkdir()
    (root / "words" / "config.toml").write_text('task = "generation"\n')
    write_py(root / "words" / "1", WORDS_CHAT_PY)
    with ServerProcess("--models", "none", "--model-repository", str(root)) as srv:
        yield srv


def _client(server: ServerProcess) -> Any:
    return openai.OpenAI(base_url=server.http + "/v1", api_key="unused", max_retries=0, timeout=60)


def _complete(server: ServerProcess, stream: bool, **params: Any) -> tuple[str, Any]:
    """(text, usage) of one completion, streamed (with ``include_usage``) or not."""
    with _client(server) as client:
        if not stream:
            r = client.completions.create(**params)
            return r.choices[0].text, r.usage
        chunks = list(client.completions.create(**params, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1])
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage


def _counts(usage: Any) -> tuple[int, int, int]:
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def test_the_test_tokenizer_cuts_the_long_prompt_as_intended() -> None:
    """The reference figures below: 12 characters are 2 tokens; LONG is 13 tokens, and its
    last 24 characters ("lo hello hello hello wor") 9."""
    assert words_encode("hello world ") == [0, 1]
    assert len(LONG) == 63 and len(words_encode(LONG)) == 13
    assert LONG[-WORDS_PROMPT_CHARS:] == "lo hello hello hello wor" and len(words_encode(LONG[-WORDS_PROMPT_CHARS:])) == 9


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_usage_counts_multi_character_tokens(words_server: ServerProcess, stream: bool) -> None:
    text, usage = _complete(words_server, stream, model="words", prompt="hello world ", max_tokens=4, temperature=0)
    assert text == "stophello world stop"  # 4 tokens, 20 characters
    assert _counts(usage) == (2, 4, 6)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_prompt_tokens_of_a_prompt_cut_at_prompt_chars_are_the_tail_s_ids(words_server: ServerProcess,
                                                                         stream: bool) -> None:
    text, usage = _complete(words_server, stream, model="words", prompt=LONG, max_tokens=3, temperature=0)
    assert text == "hello world stop"  # after "r": hello
    assert _counts(usage) == (9, 3, 12)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_usage_with_a_stop_string_counts_its_tokens_as_vllm(words_server: ServerProcess, stream: bool) -> None:
    """vLLM cuts the text at a stop string but keeps its tokens in the output token ids: "hello "
    is generated (the third token) and counted, its text is not sent."""
    text, usage = _complete(words_server, stream, model="words", prompt="hello ", max_tokens=8, temperature=0,
                            stop=["hello"])
    assert text == "world stop"
    assert _counts(usage) == (1, 3, 4)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_usage_with_a_stop_string_across_tokens_counts_every_token(words_server: ServerProcess, stream: bool) -> None:
    """"ld st" begins in "world " and ends in "stop": the text is "wor", the tokens two."""
    text, usage = _complete(words_server, stream, model="words", prompt="hello ", max_tokens=8, temperature=0,
                            stop=["ld st"])
    assert text == "wor"
    assert _counts(usage) == (1, 2, 3)


STOP_ID = 2  # words' "stop"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_completion_tokens_count_the_stop_token_as_vllm(words_server: ServerProcess, stream: bool) -> None:
    """vLLM's ``check_stop`` ends on a stop token after appending it to the output token ids, and its
    detokenizer only leaves its text out: ``completion_tokens`` counts it, sent or not."""
    for include, sent in [(False, "world "), (True, "world stop")]:
        text, usage = _complete(words_server, stream, model="words", prompt="hello ", max_tokens=8, temperature=0,
                                extra_body={"stop_token_ids": [STOP_ID], "include_stop_str_in_output": include})
        assert text == sent
        assert _counts(usage) == (1, 2, 3)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_completion_tokens_count_the_stop_token(words_server: ServerProcess, stream: bool) -> None:
    args: dict[str, Any] = {"model": "words", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
                            "temperature": 0, "extra_body": {"stop_token_ids": [STOP_ID]}}
    with _client(words_server) as client:
        if stream:
            chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usage = chunks[-1].usage
        else:
            r = client.chat.completions.create(**args)
            text, usage = r.choices[0].message.content, r.usage
    assert text == "world "
    assert _counts(usage) == (1, 2, 3)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_output_tokens_count_the_stop_token(words_server: ServerProcess, stream: bool) -> None:
    args: dict[str, Any] = {"model": "words", "input": "hello", "max_output_tokens": 8, "temperature": 0,
                            "extra_body": {"stop_token_ids": [STOP_ID]}}
    with _client(words_server) as client:
        if stream:
            with client.responses.stream(**args) as events_:
                r = events_.get_final_response()
        else:
            r = client.responses.create(**args)
    assert (r.output_text, r.status) == ("world ", "completed")
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (1, 2, 3)


def test_triton_num_output_tokens_count_the_stop_token(words_server: ServerProcess) -> None:
    """Triton's vLLM backend's ``num_output_tokens`` is the length of vLLM's output token ids too."""
    body = {"text_input": "hello ", "max_tokens": 8, "stop_token_ids": [STOP_ID], "exclude_input_in_output": True,
            "return_num_output_tokens": True, "return_num_input_tokens": True}
    status, raw = post(words_server, "/v2/models/words/generate", body)
    assert status == 200, raw
    answer = json.loads(raw)
    assert (answer["text_output"], answer["num_input_tokens"], answer["num_output_tokens"]) == ("world ", 1, 2)


async def test_the_websocket_done_reports_the_same_prompt_tokens(words_server: ServerProcess) -> None:
    conn = await Conn.open(words_server.url)
    try:
        await conn.send({"type": "generate", "id": "g", "model": "words", "prompt": LONG, "max_tokens": 3})
        frames, done = await conn.until_terminal("g")
    finally:
        await conn.close()
    assert [f["text"] for f in frames if f["type"] == "token"] == ["hello ", "world ", "stop"]
    assert (done["reason"], done["tokens"], done["prompt_tokens"]) == ("length", 3, 9)


@pytest.mark.parametrize(("fields", "frames"), [
    ({"stop_token_ids": [STOP_ID]}, ["world "]),
    ({"stop": ["hello"]}, ["world ", "stop"]),
])
async def test_the_websocket_done_adds_the_completion_tokens_of_usage(words_server: ServerProcess, fields: dict,
                                                                      frames: list[str]) -> None:
    """``tokens`` stays the count of ``token`` frames (the wire contract); ``completion_tokens`` is
    the figure of ``usage``, with the stop token's or the stop string's tokens."""
    conn = await Conn.open(words_server.url)
    try:
        await conn.send({"type": "generate", "id": "g", "model": "words", "prompt": "hello ", "max_tokens": 8,
                         **fields})
        got, done = await conn.until_terminal("g")
    finally:
        await conn.close()
    assert [f["text"] for f in got if f["type"] == "token"] == frames
    assert (done["reason"], done["tokens"], done["completion_tokens"], done["prompt_tokens"]) == (
        "stop", len(frames), len(frames) + 1, 1)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("prompt", "prompt_tokens"), [
    ("The ", 4),
    ("", 0),
    ("a\r\nb\u2026", 6),  # 5 characters; normalised "a\nb...": 6 ids
    ("x" * 30 + "\u2026", 18),  # charlm is given the last 16 characters: 15 x and "..."
])
def test_charlm_prompt_tokens_are_the_characters_it_was_given_after_normalisation(
        server: ServerProcess, stream: bool, prompt: str, prompt_tokens: int) -> None:
    text, usage = _complete(server, stream, model="charlm", prompt=prompt, max_tokens=5, temperature=0)
    assert len(text) == 5
    assert _counts(usage) == (prompt_tokens, 5, prompt_tokens + 5)


def test_triton_streamed_num_output_tokens_add_up_to_the_answer_s(words_server: ServerProcess) -> None:
    """Streamed, each token's event counts 1 and the last event (no token) the tokens generated but
    not sent, as the vLLM backend's last response counts its stop token."""
    body = {"text_input": "hello ", "max_tokens": 8, "stop_token_ids": [STOP_ID], "return_num_output_tokens": True}
    status, raw = post(words_server, "/v2/models/words/generate_stream", body)
    assert status == 200, raw
    got = [(e["text_output"], e["num_output_tokens"]) for e in events(raw)]
    assert got == [("world ", 1), ("", 1)]
