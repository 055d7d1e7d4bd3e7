"""``/v1/completions`` prompt forms beyond text, with the ``openai`` SDK: token-id prompts (a list
of ids, or a list of such lists, as vLLM takes them) and ``max_tokens: 0`` with ``echo`` (the
prompt scored, nothing generated: OpenAI's legacy loglikelihood form)."""

from __future__ import annotations

from typing import Any

import pytest

from wsserve.models.charlm import VOCAB

openai = pytest.importorskip("openai")  # the test extra installs it


def ids_of(text: str) -> list[int]:
    """charlm's token ids of ``text`` (one per character; the built-in model's vocabulary)."""
    return [VOCAB.index(c) for c in text]


GREEDY = {"model": "charlm", "max_tokens": 20, "temperature": 0}


def _bad(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The error body of a request the server must refuse with 400."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**body)
    assert info.value.status_code == 400 and info.value.body["code"] == "bad_request"
    return info.value.body


# ---------------------------------------------------------------------------- token-id prompts


def test_a_token_id_prompt_is_answered_as_its_text(openai_client) -> None:
    text = "It was the "
    by_text = openai_client.completions.create(prompt=text, **GREEDY)
    by_ids = openai_client.completions.create(prompt=ids_of(text), **GREEDY)
    assert by_ids.choices[0].text == by_text.choices[0].text and by_ids.choices[0].text
    assert by_ids.usage.prompt_tokens == len(text) == by_text.usage.prompt_tokens
    echoed = openai_client.completions.create(prompt=ids_of(text), echo=True, **GREEDY)
    assert echoed.choices[0].text == text + by_text.choices[0].text  # echo shows the ids' text


def test_several_token_id_prompts_each_get_their_own_answer(openai_client) -> None:
    texts = ["The ", "It was ", "and "]
    r = openai_client.completions.create(prompt=[ids_of(t) for t in texts], n=2, **GREEDY)
    assert [c.index for c in r.choices] == list(range(6))
    singles = [openai_client.completions.create(prompt=t, **GREEDY).choices[0].text for t in texts]
    assert [c.text for c in r.choices] == [s for s in singles for _ in range(2)]
    assert r.usage.prompt_tokens == sum(len(t) for t in texts)


def test_token_id_prompts_with_sampling_penalties_and_scoring_match_text(openai_client) -> None:
    """The paths where the ids themselves are used: the repetition penalty's prompt tokens (the
    context from the same ids) and the prompt's scoring under ``echo`` with ``logprobs``."""
    text = "the the the the "
    args = {"model": "charlm", "max_tokens": 16, "temperature": 0.8, "seed": 3, "logprobs": 2, "echo": True,
            "extra_body": {"repetition_penalty": 1.7}}  # vLLM's field: not in the SDK's signature
    by_text = openai_client.completions.create(prompt=text, **args).choices[0]
    by_ids = openai_client.completions.create(prompt=ids_of(text), **args).choices[0]
    assert by_ids.text == by_text.text
    assert by_ids.logprobs.tokens == by_text.logprobs.tokens
    assert by_ids.logprobs.token_logprobs == by_text.logprobs.token_logprobs
    assert by_ids.logprobs.token_logprobs[0] is None and len(by_ids.logprobs.tokens) == len(text) + 16
    plain = openai_client.completions.create(prompt=ids_of(text), **{**args, "extra_body": {}}).choices[0]
    assert plain.text != by_ids.text  # the penalty did act on this prompt


def test_a_streamed_token_id_prompt(openai_client) -> None:
    text = "It was "
    whole = openai_client.completions.create(prompt=text, **GREEDY).choices[0].text
    chunks = list(openai_client.completions.create(prompt=ids_of(text), stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole


@pytest.mark.parametrize(("prompt", "says"), [
    ([len(VOCAB)], f"token id {len(VOCAB)}"),  # past the vocabulary: checked against the model
    ([[1, 2], [3, 10**6]], "token id 1000000"),
    ([2**63], f"token id {2**63}"),  # past int64 (JSON integers up to 2**64 - 1 are read as such)
    ([[1, 2], [3, 2**64 - 1]], f"token id {2**64 - 1}"),
    ([1, -4], "non-negative"),
    ([1, True], "non-negative"),  # a JSON boolean is not an id
    ([True, 1], "got true"),  # the first value too: named, as any bad id
    ([1.0], "got 1.0"),
    ([2**70], "beyond 64 bits"),  # read as a float by the JSON decoder: said so
    ([[1], [1, 2**70]], "beyond 64 bits"),
    ([1, 2.0], "non-negative"),
    ([[1, 2], []], "'prompt[1]' must not be an empty list"),
    ([[1, 2], "text"], "list of lists of token ids"),
    ([1, "a"], "non-negative"),
    (["a", 1], "list of lists of token ids"),
    ([], "an empty list"),
    # more prompts than choices a request may make (256): counted before any is read
    ([[1]] * 257, "'prompt' holds 257 prompts; at most 256 per request"),
    (["a"] * 257, "'prompt' holds 257 prompts; at most 256 per request"),
    ([[1], *[[-1]] * 300], "'prompt' holds 301 prompts"),
])
def test_bad_token_id_prompts_are_refused_naming_the_prompt(openai_client, prompt: Any, says: str) -> None:
    err = _bad(openai_client, {"model": "charlm", "prompt": prompt, "max_tokens": 2})
    assert err["param"] == "prompt" and says in err["message"], err


def test_a_token_id_prompt_longer_than_the_model_reads_is_refused(openai_client) -> None:
    chars = _prompt_chars(openai_client)
    ok = openai_client.completions.create(prompt=ids_of("a") * chars, **GREEDY)
    assert ok.usage.prompt_tokens == chars
    err = _bad(openai_client, {"model": "charlm", "prompt": ids_of("a") * (chars + 1), "max_tokens": 2})
    assert err["param"] == "prompt" and f"reads at most {chars}" in err["message"], err


def _prompt_chars(openai_client: Any) -> int:
    """charlm's ``prompt_chars``, found on the wire: the longest prompt whose every character is
    counted (a longer text prompt is cut to its last ``prompt_chars`` characters)."""
    r = openai_client.completions.create(prompt="a" * 10_000, model="charlm", max_tokens=1)
    return r.usage.prompt_tokens


# ---------------------------------------------------------------------------- max_tokens 0 with echo


def test_max_tokens_0_with_echo_answers_the_prompt_alone(openai_client) -> None:
    r = openai_client.completions.create(model="charlm", prompt="It was the best", max_tokens=0, echo=True, n=2)
    assert [(c.text, c.finish_reason, c.logprobs) for c in r.choices] == [("It was the best", "length", None)] * 2
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (15, 0)


def test_max_tokens_0_with_echo_and_logprobs_scores_the_prompt_as_a_generation_would(openai_client) -> None:
    """lm-evaluation-harness's legacy loglikelihood request: the prompt's records are those the
    same request gives with a generated token after them (two paths, one answer)."""
    args = {"model": "charlm", "prompt": ["It was the ", "The end"], "echo": True, "logprobs": 3, "temperature": 0}
    scored = openai_client.completions.create(max_tokens=0, **args)
    longer = openai_client.completions.create(max_tokens=1, **args)
    for s, g, prompt in zip(scored.choices, longer.choices, args["prompt"], strict=True):
        assert s.text == prompt and s.finish_reason == "length"
        assert s.logprobs.tokens == g.logprobs.tokens[:-1] == list(prompt)
        assert s.logprobs.token_logprobs == g.logprobs.token_logprobs[:-1]
        assert s.logprobs.top_logprobs == g.logprobs.top_logprobs[:-1]
        assert s.logprobs.text_offset == g.logprobs.text_offset[:-1]
    assert scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens == 11 + 7
    ids = openai_client.completions.create(max_tokens=0, **{**args, "prompt": [ids_of(p) for p in args["prompt"]]})
    assert [c.logprobs.token_logprobs for c in ids.choices] == [c.logprobs.token_logprobs for c in scored.choices]


def test_max_tokens_0_with_echo_streams_the_prompt_then_the_end(openai_client) -> None:
    chunks = list(openai_client.completions.create(model="charlm", prompt="Once upon", max_tokens=0, echo=True,
                                                   logprobs=1, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].text == "Once upon" and chunks[0].choices[0].finish_reason is None
    assert chunks[0].choices[0].logprobs.tokens == list("Once upon")
    assert chunks[1].choices[0].text == "" and chunks[1].choices[0].finish_reason == "length"
    assert chunks[2].usage.prompt_tokens == 9 and chunks[2].usage.completion_tokens == 0
    assert len(chunks) == 3


@pytest.mark.parametrize("body", [
    {"max_tokens": 0},  # without echo: nothing to answer
    {"max_tokens": 0, "echo": False},
    {"max_tokens": -1, "echo": True},
])
def test_max_tokens_0_needs_echo(openai_client, body: dict[str, Any]) -> None:
    err = _bad(openai_client, {"model": "charlm", "prompt": "It was", **body})
    assert err["param"] == "max_tokens" and "0 only with 'echo': true" in err["message"], err


def test_max_tokens_0_checks_logit_bias_as_a_generation_does(openai_client) -> None:
    for extra in ({}, {"logprobs": 1}):
        err = _bad(openai_client, {"model": "charlm", "prompt": "ab", "max_tokens": 0, "echo": True,
                                   "logit_bias": {str(len(VOCAB)): 1}, **extra})
        assert err["param"] == "logit_bias" and f"names token {len(VOCAB)}" in err["message"], err
