"""OpenAI-compatible completions with a client we did not write: the ``openai`` Python SDK.

``base_url`` points at wsserve; texts are compared with what the WebSocket
``generate`` gives for the same parameters (greedy and seeded sampling do not
depend on what else runs), and closing a stream must cancel the generation
on the server (seen in ``/metrics``).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.support import Conn, http_get, scrape_metrics, wait_until

openai = pytest.importorskip("openai")  # the test extra installs it



async def _ws_text(server, **params) -> tuple[str, str]:
    conn = await Conn.open(server.url)
    await conn.send({"type": "generate", "id": "g", "model": "charlm", **params})
    frames, done = await conn.until_terminal("g")
    await conn.close()
    return "".join(f["text"] for f in frames if f["type"] == "token"), done["reason"]


def _cancelled(server) -> float:
    return scrape_metrics(server.http).get("wsserve_requests_total", code="cancelled", model="charlm", type="generate")


async def test_completion_matches_the_websocket_generation(server, openai_client) -> None:
    r = openai_client.completions.create(model="charlm", prompt="The ", max_tokens=40, temperature=0)
    assert r.object == "text_completion" and r.model == "charlm" and r.id.startswith("cmpl-")
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.index == 0 and len(choice.text) == 40
    assert r.usage.completion_tokens == 40 and r.usage.prompt_tokens == 4 and r.usage.total_tokens == 44
    assert (choice.text, "length") == await _ws_text(server, prompt="The ", max_tokens=40, temperature=0)


async def test_streamed_completion_is_the_same_text_in_chunks(server, openai_client) -> None:
    whole = openai_client.completions.create(model="charlm", prompt="It was ", max_tokens=30, temperature=0.8, seed=11)
    stream = openai_client.completions.create(model="charlm", prompt="It was ", max_tokens=30, temperature=0.8, seed=11,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) == 30 and "".join(texts) == whole.choices[0].text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30
    assert len({c.id for c in chunks}) == 1
    ws, _ = await _ws_text(server, prompt="It was ", max_tokens=30, temperature=0.8, seed=11)
    assert ws == whole.choices[0].text


async def test_top_p_and_penalties_are_honoured_as_on_the_websocket(server, openai_client) -> None:
    """Nucleus sampling and OpenAI's penalties: the same text as the WebSocket ``generate``
    with the same fields; a nucleus too small for a second token is greedy whatever the
    temperature."""
    args = {"prompt": "It was ", "max_tokens": 40, "temperature": 1.5, "seed": 21}
    r = openai_client.completions.create(model="charlm", top_p=0.6, **args)
    ws_text, _ = await _ws_text(server, **args, top_p=0.6)
    assert r.choices[0].text == ws_text
    greedy = openai_client.completions.create(model="charlm", prompt="It was ", max_tokens=40, temperature=0)
    narrow = openai_client.completions.create(model="charlm", top_p=1e-9, **args)
    assert narrow.choices[0].text == greedy.choices[0].text
    hot = openai_client.completions.create(model="charlm", top_p=1, **args)  # 1: off
    assert hot.choices[0].text == openai_client.completions.create(model="charlm", **args).choices[0].text
    assert hot.choices[0].text not in (r.choices[0].text, greedy.choices[0].text)
    penalised = openai_client.completions.create(model="charlm", presence_penalty=0.5, frequency_penalty=1.5, **args)
    ws_text, _ = await _ws_text(server, **args, presence_penalty=0.5, frequency_penalty=1.5)
    assert penalised.choices[0].text == ws_text != hot.choices[0].text
    narrowed = openai_client.completions.create(model="charlm", extra_body={"min_p": 0.3}, **args)  # vLLM's field
    ws_text, _ = await _ws_text(server, **args, min_p=0.3)
    assert narrowed.choices[0].text == ws_text != hot.choices[0].text
    forced = openai_client.completions.create(model="charlm", prompt="The ", max_tokens=10, temperature=0,
                                       logit_bias={"3": 100})  # charlm's token 3
    assert forced.choices[0].text == (await _ws_text(server, prompt="The ", max_tokens=10, logit_bias={"3": 100}))[0]
    assert len(set(forced.choices[0].text)) == 1


def test_stop_strings_end_with_finish_reason_stop(openai_client) -> None:
    full = openai_client.completions.create(model="charlm", prompt="The ", max_tokens=60, temperature=0).choices[0].text
    stop = full[10:13]
    r = openai_client.completions.create(model="charlm", prompt="The ", max_tokens=60, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == full[: full.index(stop)]
    assert stop not in r.choices[0].text


def test_closing_a_stream_cancels_the_generation(server, openai_client) -> None:
    before = _cancelled(server)
    stream = openai_client.completions.create(model="charlm", prompt="a", max_tokens=100000, temperature=0, stream=True)
    it = iter(stream)
    assert [next(it).choices[0].text for _ in range(5)]
    stream.close()
    wait_until(lambda: _cancelled(server) == before + 1, 30.0, what="the generation was cancelled")
    m = scrape_metrics(server.http)
    assert m.value("wsserve_inflight_requests") == 0
    tokens = m.value("wsserve_generated_tokens_total", model="charlm")
    time.sleep(0.3)  # a generation still running would add tokens meanwhile
    assert scrape_metrics(server.http).value("wsserve_generated_tokens_total", model="charlm") == tokens


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"extra_body": {"repetition_penalty": 3}}, "repetition_penalty"),
        ({"logit_bias": {"a": 1}}, "logit_bias"),
        ({"logit_bias": {"1": 500}}, "logit_bias"),
        ({"logit_bias": {"96": 1}}, "logit_bias"),  # charlm has 96 tokens: checked when queued
        ({"n": 17}, "n"),
        ({"n": 0}, "n"),
        ({"logprobs": 21}, "logprobs"),
        ({"n": 2, "best_of": 3}, "best_of"),
        ({"logprobs": True}, "logprobs"),
        ({"extra_body": {"echo": 1}}, "echo"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", 1]}, "prompt"),
        ({"prompt": ["a"] * 17, "n": 16}, "prompt"),
        ({"prompt": [1, 2, 96]}, "prompt"),  # a token-id prompt: its ids checked against the vocabulary
        ({"stop": ["x"] * 20}, "stop"),
        ({"seed": 1.5}, "seed"),
        # vLLM's fields for what wsserve does not do: refused, not ignored
        ({"extra_body": {"guided_json": ["not a schema"]}}, "guided_json"),  # taken: a bad value is refused
        ({"extra_body": {"guided_regex": ""}}, "guided_regex"),
        ({"extra_body": {"use_beam_search": True}}, "use_beam_search"),
        ({"extra_body": {"length_penalty": 0.5}}, "length_penalty"),
        ({"extra_body": {"prompt_logprobs": 1}}, "prompt_logprobs"),
        ({"extra_body": {"allowed_token_ids": [1, 2]}}, "allowed_token_ids"),
        ({"extra_body": {"truncate_prompt_tokens": 4}}, "truncate_prompt_tokens"),
        ({"extra_body": {"bad_words": ["the"]}}, "bad_words"),
        ({"extra_body": {"priority": -1}}, "priority"),
        ({"extra_body": {"response_format": {"type": "grammar"}}}, "response_format"),
        ({"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
         "stream_options"),
    ],
)
def test_unsupported_or_bad_parameters_are_refused_by_name(openai_client, kwargs: dict, param: str) -> None:
    args = {"model": "charlm", "prompt": "a", "max_tokens": 5, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.completions.create(**args)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param and info.value.body["code"] == "bad_request"
    if param == "seed":  # the number is shown, not only its JSON type
        assert info.value.body["message"] == "'seed' must be an integer, got 1.5"


def test_model_errors(openai_client) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.completions.create(model="nope", prompt="a")
    assert "no model named 'nope'" in info.value.body["message"] and info.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.completions.create(model="mlp", prompt="a")
    assert "does not generate text" in info.value.body["message"]


async def test_models_list_in_the_openai_shape(server, openai_client) -> None:
    page = await asyncio.to_thread(openai_client.models.list, extra_query={"format": "openai"})
    assert [m.id for m in page.data] == ["linear", "mlp", "charlm"]
    assert all(m.object == "model" and m.owned_by == "wsserve" for m in page.data)
    # The SDK's plain models.list() (vLLM's quick start: models.list().data[0].id) failed on our
    # JSON array ("'list' object has no attribute '_set_private_attributes'"): OpenAI's SDKs
    # (X-Stainless-Lang) get OpenAI's shape without asking.
    plain = await asyncio.to_thread(openai_client.models.list)
    assert [m.id for m in plain.data] == ["linear", "mlp", "charlm"]
    import urllib.request

    asked = urllib.request.Request(server.http + "/v1/models?format=wsserve", headers={"X-Stainless-Lang": "python"})
    with await asyncio.to_thread(urllib.request.urlopen, asked, timeout=10) as answer:
        assert [m["name"] for m in json.loads(answer.read())] == ["linear", "mlp", "charlm"]
        assert answer.headers["Vary"] == "X-Stainless-Lang"
    # Without the parameter, /v1/models answers our own list: the WebSocket models reply's, versions included.
    status, _, body = await asyncio.to_thread(http_get, server.http + "/v1/models")
    ours = json.loads(body)
    assert status == 200 and [m["name"] for m in ours] == ["linear", "mlp", "charlm"]
    conn = await Conn.open(server.url)
    reply = await conn.request({"type": "models", "id": "m"})
    await conn.close()
    assert ours == reply["models"]
    assert all(m["version"] == "1" and [v["version"] for v in m["versions"]] == ["1"] for m in ours)
    assert all(v["state"] == "ready" for m in ours for v in m["versions"])


def test_vllm_fields_without_effect_on_wsserve_models_are_taken(openai_client) -> None:
    """wsserve's models have no end-of-sequence or special tokens: vLLM's fields about them change
    nothing, whatever their value, and neutral values of the refused ones are taken too."""
    args = {"model": "charlm", "prompt": "It was ", "max_tokens": 12, "temperature": 0}
    plain = openai_client.completions.create(**args).choices[0].text
    extra = {"ignore_eos": True, "skip_special_tokens": False, "spaces_between_special_tokens": False,
             "add_special_tokens": True, "use_beam_search": False, "length_penalty": 1.0, "priority": 0,
             "bad_words": [], "response_format": {"type": "text"}}
    assert openai_client.completions.create(**args, extra_body=extra).choices[0].text == plain
