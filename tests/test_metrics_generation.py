"""Generation metrics on ``/metrics`` (as vLLM's ``prompt_tokens_total``, ``time_to_first_token_seconds``,
``request_time_per_output_token_seconds`` and ``num_requests_running``), after real generations on
the WebSocket and over HTTP, read by differences between two scrapes."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import Conn, Metrics, scrape_metrics, wait_until


def _moved(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    return after.get(name, **labels) - before.get(name, **labels)


async def test_each_generation_counts_its_prompt_and_times_its_tokens(server) -> None:
    before = scrape_metrics(server.http)
    conn = await Conn.open(server.url)
    prompts = {"a": 1, "The ": 4, "It was the ": 11}  # charlm: one token per character
    for i, prompt in enumerate(prompts):
        await conn.send({"type": "generate", "id": i, "model": "charlm", "prompt": prompt, "max_tokens": 6})
    ttfts = []
    for i in range(len(prompts)):
        _, done = await conn.until_terminal(i)
        assert done["type"] == "done" and done["reason"] == "length" and done["tokens"] == 6, done
        ttfts.append(done["timing"]["ttft_ms"] / 1e3)
    await conn.send({"type": "generate", "id": "one", "model": "charlm", "prompt": "xy", "max_tokens": 1})
    _, done = await conn.until_terminal("one")
    assert done["type"] == "done"
    await conn.close()
    after = scrape_metrics(server.http)
    charlm = {"model": "charlm"}
    assert _moved(before, after, "wsserve_prompt_tokens_total", **charlm) == sum(prompts.values()) + 2
    assert _moved(before, after, "wsserve_time_to_first_token_seconds_count", **charlm) == 4
    # every generation's TTFT, as its done frame reports it (rounded there to the microsecond)
    assert abs(_moved(before, after, "wsserve_time_to_first_token_seconds_sum", **charlm)
               - sum(ttfts) - done["timing"]["ttft_ms"] / 1e3) < 1e-5
    # a mean time between tokens for the three of 6 tokens only (not the one of one token)
    assert _moved(before, after, "wsserve_request_time_per_output_token_seconds_count", **charlm) == 3
    assert _moved(before, after, "wsserve_request_time_per_output_token_seconds_sum", **charlm) > 0
    assert after.value("wsserve_generation_running", **charlm) == 0
    assert not after.has("wsserve_generation_running", model="linear")  # generative models only


async def test_running_generations_are_a_gauge_and_a_cancelled_one_has_no_token_time(server) -> None:
    before = scrape_metrics(server.http)
    conn = await Conn.open(server.url)
    await conn.send({"type": "generate", "id": "long", "model": "charlm", "prompt": "The ", "max_tokens": 100_000})
    # the client reads nothing meanwhile: the generation holds its slot (paused by its socket's
    # buffer once that fills, or still running)
    await asyncio.to_thread(
        wait_until, lambda: scrape_metrics(server.http).value("wsserve_generation_running", model="charlm") == 1, 30,
        what="the generation counted as running")
    await conn.send({"type": "cancel", "id": "long"})
    frames, done = await conn.until_terminal("long")
    assert done["type"] == "done" and done["reason"] == "cancelled" and frames
    await conn.close()

    def settled() -> Metrics | None:
        m = scrape_metrics(server.http)
        return m if m.value("wsserve_generation_running", model="charlm") == 0 else None

    after = await asyncio.to_thread(wait_until, settled, 30, what="no generation running")
    assert _moved(before, after, "wsserve_prompt_tokens_total", model="charlm") == 4
    assert _moved(before, after, "wsserve_time_to_first_token_seconds_count", model="charlm") == 1
    assert _moved(before, after, "wsserve_request_time_per_output_token_seconds_count", model="charlm") == 0


def test_completion_choices_each_count_their_prompt(openai_client, server) -> None:
    """Each of ``n`` choices is a generation of its own: its prompt counts each time (usage counts
    it once: the request's)."""
    before = scrape_metrics(server.http)
    r = openai_client.completions.create(model="charlm", prompt="It was ", n=3, max_tokens=4, seed=1)
    assert r.usage.prompt_tokens == 7
    after = scrape_metrics(server.http)
    assert _moved(before, after, "wsserve_prompt_tokens_total", model="charlm") == 3 * 7
    assert _moved(before, after, "wsserve_request_time_per_output_token_seconds_count", model="charlm") == 3


def test_scored_prompts_count_as_prompt_tokens(openai_client, server) -> None:
    """``echo`` with ``logprobs`` has the model read the prompt (scored); ``echo`` alone with
    ``max_tokens: 0`` does not (nothing is computed)."""
    before = scrape_metrics(server.http)
    openai_client.completions.create(model="charlm", prompt=["It was ", "The"], max_tokens=0, echo=True, logprobs=1)
    openai_client.completions.create(model="charlm", prompt="unscored", max_tokens=0, echo=True)
    after = scrape_metrics(server.http)
    assert _moved(before, after, "wsserve_prompt_tokens_total", model="charlm") == 7 + 3
    assert _moved(before, after, "wsserve_time_to_first_token_seconds_count", model="charlm") == 0


def test_a_request_refused_for_its_token_ids_scores_nothing(openai_client, server) -> None:
    """``echo`` with ``logprobs`` scores the prompt before the generation is queued: a
    ``stop_token_ids`` or ``logit_bias`` id outside the vocabulary is refused first, so no prompt
    is scored for nothing."""
    openai = pytest.importorskip("openai")
    before = scrape_metrics(server.http)
    for extra in ({"stop_token_ids": [96]}, {"logit_bias": {"96": 1}}):
        with pytest.raises(openai.BadRequestError):
            openai_client.completions.create(model="charlm", prompt="It was the", max_tokens=3, echo=True, logprobs=1,
                                             extra_body=extra)
    after = scrape_metrics(server.http)
    assert _moved(before, after, "wsserve_prompt_tokens_total", model="charlm") == 0
