"""``n`` choices on the OpenAI routes, with the ``openai`` SDK: each choice is a generation of its
own (choice ``i`` seeded ``seed + i``, so it is the ``n: 1`` answer with that seed), streamed with
its ``index``; usage counts the prompt once and every choice's tokens; closing the stream cancels
every choice."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from tests.support import http_get, scrape_metrics, wait_until

openai = pytest.importorskip("openai")  # the test extra installs it



ARGS = {"model": "charlm", "prompt": "It was ", "max_tokens": 24, "temperature": 0.9}


def test_n_choices_are_the_single_answers_of_successive_seeds(openai_client) -> None:
    r = openai_client.completions.create(n=3, seed=40, **ARGS)
    assert [c.index for c in r.choices] == [0, 1, 2]
    singles = [openai_client.completions.create(seed=40 + i, **ARGS).choices[0] for i in range(3)]
    assert [(c.text, c.finish_reason) for c in r.choices] == [(c.text, c.finish_reason) for c in singles]
    assert len({c.text for c in r.choices}) == 3  # sampled: different texts
    assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 3 * 24 and r.usage.total_tokens == 7 + 72
    greedy = openai_client.completions.create(n=2, **{**ARGS, "temperature": 0})
    assert greedy.choices[0].text == greedy.choices[1].text


def test_streamed_n_choices_carry_their_index_and_end_each(openai_client) -> None:
    whole = openai_client.completions.create(n=3, seed=7, stop=["e "], **ARGS)
    chunks = list(openai_client.completions.create(n=3, seed=7, stop=["e "], stream=True,
                                            stream_options={"include_usage": True}, **ARGS))
    texts: dict[int, str] = defaultdict(str)
    ends: dict[int, list[str]] = defaultdict(list)
    for c in chunks[:-1]:
        (choice,) = c.choices
        if choice.finish_reason is None:
            assert not ends[choice.index], "a token after its choice's end"
            texts[choice.index] += choice.text
        else:
            ends[choice.index].append(choice.finish_reason)
    assert dict(texts) == {c.index: c.text for c in whole.choices}
    assert dict(ends) == {c.index: [c.finish_reason] for c in whole.choices}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_with_echo_and_logprobs_gives_each_choice_its_own_offsets(openai_client) -> None:
    r = openai_client.completions.create(model="charlm", prompt="The cat", max_tokens=5, temperature=0.8, seed=3, n=2,
                                  echo=True, logprobs=1)
    for choice in r.choices:
        assert choice.text.startswith("The cat") and len(choice.text) == 12
        assert choice.logprobs.tokens == list(choice.text) and choice.logprobs.text_offset == list(range(12))
        assert choice.logprobs.token_logprobs[0] is None
    assert r.choices[0].logprobs.token_logprobs[:7] == r.choices[1].logprobs.token_logprobs[:7]


def test_chat_n_choices_streamed_and_not(openai_client) -> None:
    args = {"model": "charlm", "messages": [{"role": "user", "content": "The "}], "max_tokens": 10,
            "temperature": 1.0, "seed": 5, "n": 2}
    whole = openai_client.chat.completions.create(**args)
    assert [c.index for c in whole.choices] == [0, 1] and whole.usage.completion_tokens == 20
    texts: dict[int, str] = defaultdict(str)
    roles: dict[int, str] = {}
    for chunk in openai_client.chat.completions.create(stream=True, **args):
        for c in chunk.choices:
            if c.delta.role:
                roles[c.index] = c.delta.role
            texts[c.index] += c.delta.content or ""
    assert roles == {0: "assistant", 1: "assistant"}
    assert dict(texts) == {c.index: c.message.content for c in whole.choices}


def test_closing_a_stream_of_n_choices_cancels_them_all(server, openai_client) -> None:
    def cancelled() -> float:
        return scrape_metrics(server.http).get("wsserve_requests_total", code="cancelled", model="charlm",
                                               type="generate")

    before = cancelled()
    stream = openai_client.completions.create(model="charlm", prompt="a", max_tokens=100000, temperature=0, n=4,
                                       stream=True)
    it = iter(stream)
    seen = {next(it).choices[0].index for _ in range(20)}
    assert seen == {0, 1, 2, 3}
    stream.close()
    wait_until(lambda: cancelled() == before + 1, 30.0, what="the request was cancelled")
    assert scrape_metrics(server.http).value("wsserve_inflight_requests") == 0
    # Nothing of the four still steps: a request of 5 tokens now adds exactly 5 sequence-steps to
    # the model's statistics (Triton's inference_count: each step counts its sequences).
    def steps() -> int:
        status, _, body = http_get(server.http + "/v2/models/charlm/stats")
        assert status == 200
        return sum(m["inference_count"] for m in json.loads(body)["model_stats"])

    before_steps = steps()
    openai_client.completions.create(model="charlm", prompt="a", max_tokens=5, temperature=0)
    assert steps() == before_steps + 5


def test_several_prompts_get_their_own_choices_in_vllms_order(openai_client) -> None:
    """A list of prompts (what lm-evaluation-harness batches): prompt ``a``'s ``n`` choices are
    indexes ``a * n`` to ``a * n + n - 1``, each the answer to that prompt alone with ``seed + j``."""
    prompts = ["It was ", "The ", "x = "]
    r = openai_client.completions.create(model="charlm", prompt=prompts, n=2, max_tokens=12, temperature=0.9,
                                         seed=11)
    assert [c.index for c in r.choices] == list(range(6))
    for a, prompt in enumerate(prompts):
        alone = openai_client.completions.create(model="charlm", prompt=prompt, n=2, max_tokens=12, temperature=0.9,
                                                 seed=11)
        assert [c.text for c in r.choices[2 * a:2 * a + 2]] == [c.text for c in alone.choices]
    assert r.usage.prompt_tokens == 7 + 4 + 4 and r.usage.completion_tokens == 6 * 12
    chunks = list(openai_client.completions.create(model="charlm", prompt=prompts, n=2, max_tokens=12,
                                                   temperature=0.9, seed=11, stream=True))
    texts: dict[int, str] = defaultdict(str)
    for chunk in chunks:
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert dict(texts) == {c.index: c.text for c in r.choices}


def test_several_prompts_echoed_and_scored_each_with_its_own_tokens(openai_client) -> None:
    prompts = ["The cat", "It was"]
    r = openai_client.completions.create(model="charlm", prompt=prompts, max_tokens=3, temperature=0, echo=True,
                                         logprobs=1)
    for prompt, choice in zip(prompts, r.choices, strict=True):
        alone = openai_client.completions.create(model="charlm", prompt=prompt, max_tokens=3, temperature=0,
                                                 echo=True, logprobs=1).choices[0]
        assert choice.text == alone.text and choice.text.startswith(prompt)
        assert choice.logprobs.tokens == alone.logprobs.tokens
        assert choice.logprobs.token_logprobs == alone.logprobs.token_logprobs
    streamed = [c.choices[0] for c in openai_client.completions.create(
        model="charlm", prompt=prompts, max_tokens=3, temperature=0, echo=True, logprobs=1, stream=True)]
    firsts = {c.index: c for c in reversed(streamed)}  # each choice's first chunk: its echoed prompt
    assert [firsts[i].text for i in range(2)] == prompts
    assert [firsts[i].logprobs.token_logprobs for i in range(2)] == \
        [c.logprobs.token_logprobs[:len(p)] for c, p in zip(r.choices, prompts)]


def test_each_choice_counts_against_max_inflight(start_server) -> None:
    """A connection's ``max_inflight`` counts choices (each a generation of its own): a request of
    more choices than it allows is refused naming ``n`` or ``prompt``; up to it, answered."""
    server = start_server("--models", "charlm", "--max-inflight", "4")
    c = openai.OpenAI(base_url=server.http + "/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        ok = c.completions.create(model="charlm", prompt=["a", "b"], n=2, max_tokens=3)
        assert len(ok.choices) == 4
        for kwargs, param in (({"n": 5}, "n"), ({"prompt": ["a", "b", "c"], "n": 2}, "prompt"),
                              ({"prompt": [[66], [67], [68]], "n": 2}, "prompt"),  # token-id prompts too
                              ({"prompt": [66, 67], "n": 5}, "n")):
            with pytest.raises(openai.BadRequestError) as info:
                c.completions.create(**{"model": "charlm", "prompt": "a", "max_tokens": 3, **kwargs})
            assert info.value.body["param"] == param
            assert "makes" in info.value.body["message"] and "at most 4 unfinished requests" in info.value.body["message"]
    finally:
        c.close()


def test_a_request_alone_is_accepted_whatever_its_choices_and_the_generation_queue(start_server) -> None:
    """``--max-generate-queue`` bounds the generations waiting for a slot, but a request alone on
    the queue is always accepted (PROTOCOL.md): its choices are admitted together, not refused
    ``overloaded`` (a 503 its client would retry for ever) from the third one on."""
    server = start_server("--models", "charlm", "--max-generate-batch", "1", "--max-generate-queue", "1")
    c = openai.OpenAI(base_url=server.http + "/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        r = c.completions.create(model="charlm", prompt=["a", "b"], n=3, max_tokens=3)
        assert [ch.index for ch in r.choices] == list(range(6)) and r.usage.completion_tokens == 18
        r = c.chat.completions.create(model="charlm", messages=[{"role": "user", "content": "a"}], n=4, max_tokens=2)
        assert len(r.choices) == 4
        chunks = list(c.completions.create(model="charlm", prompt="a", n=5, max_tokens=2, stream=True))
        assert sorted(ch.choices[0].index for ch in chunks if ch.choices[0].finish_reason) == list(range(5))
    finally:
        c.close()
