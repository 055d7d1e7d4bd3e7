"""vLLM's ``guided_choice`` on a real loopback server: the WebSocket ``generate``, and OpenAI's
``/v1/completions`` and ``/v1/chat/completions`` through the ``openai`` SDK (the field in
``extra_body``, as vLLM's users send it, or vLLM's newer ``structured_outputs: {"choice": ...}``).
Greedy and sampled generations, streamed or not, are always exactly one of the choices."""

from __future__ import annotations

import pytest

from tests.support import Conn
from tests.test_gen_wire import GEN, generate

openai = pytest.importorskip("openai")  # the test extra installs it

CHOICES = ["yes", "no", "maybe so", "I do not know"]
SEEDS = range(5)


async def test_websocket_generate_is_one_of_the_choices(server_url: str) -> None:
    conn = await Conn.open(server_url)
    limits = conn.hello["limits"]
    assert (limits["max_guided_choices"], limits["max_guided_choice_chars"]) == (64, 256)
    texts = set()
    for seed in SEEDS:
        for temperature in (0, 1.2):
            text, done = await generate(conn, f"g{seed}-{temperature}", prompt="Is it? ", max_tokens=40,
                                        temperature=temperature, seed=seed, guided_choice=CHOICES)
            assert text in CHOICES and (done["reason"], done["tokens"]) == ("stop", len(text)), (text, done)
            texts.add(text)
    assert len(texts) > 1  # sampling reaches more than one choice
    text, done = await generate(conn, "cap", prompt="", max_tokens=3, guided_choice=["I do not know"])
    assert (text, done["reason"]) == ("I d", "length")  # max_tokens still caps it
    await conn.close()


async def test_websocket_a_choice_a_longer_one_extends_is_the_models_to_end(server_url: str) -> None:
    """At "ab", which "ab c" extends, the step is unmasked (guided_regex's rule, vLLM's
    alternation): greedy with a bias for " " goes on to "ab c"; with a bias for "x" (no choice goes
    on with it) the text ends at "ab", and the "x" is not generated (not counted)."""
    space, x = ord(" ") - 31, ord("x") - 31  # charlm's ids of " " and "x"
    conn = await Conn.open(server_url)
    for bias, expected in ((space, "ab c"), (x, "ab")):
        text, done = await generate(conn, f"b{bias}", prompt="The ", max_tokens=40, temperature=0,
                                    guided_choice=["ab", "ab c"], logit_bias={str(bias): 100})
        assert (text, done["reason"], done["tokens"]) == (expected, "stop", len(expected)), (text, done)
    await conn.close()


@pytest.mark.parametrize(("fields", "says"), [
    ({"guided_choice": "yes"}, "field 'guided_choice' must be a non-empty list of strings (at most 64), got string"),
    ({"guided_choice": []}, "field 'guided_choice' must be a non-empty list of strings (at most 64), got an empty"),
    ({"guided_choice": ["a", 1]}, "field 'guided_choice' must hold non-empty strings of at most 256 characters, got 1"),
    ({"guided_choice": ["a", ""]}, "field 'guided_choice' must hold non-empty strings"),
    ({"guided_choice": ["x" * 257]}, "field 'guided_choice' must hold non-empty strings of at most 256 characters"),
    ({"guided_choice": ["a"] * 65}, "field 'guided_choice' holds 65 strings; at most 64"),
    ({"guided_choice": ["caf\u00e9"]}, "field 'guided_choice' holds 'caf\u00e9', which the model's tokens cannot write"),
    ({"guided_choice": ["a"], "min_tokens": 1}, "field 'guided_choice' cannot be combined with 'min_tokens'"),
])
async def test_websocket_bad_guided_choice_is_refused_by_name(server_url: str, fields: dict, says: str) -> None:
    conn = await Conn.open(server_url)
    reply = await conn.request({**GEN, "id": "bad", "prompt": "a", "max_tokens": 10, **fields})
    assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["id"] == "bad", reply
    assert says in reply["message"], reply["message"]
    await conn.close()


@pytest.mark.parametrize("stream", [False, True])
def test_openai_completions_are_one_of_the_choices(openai_client, stream: bool) -> None:
    texts = set()
    for seed in SEEDS:
        for temperature in (0, 1.0):
            r = openai_client.completions.create(model="charlm", prompt="Is it? ", max_tokens=40, temperature=temperature,
                                                 seed=seed, n=2, stream=stream, extra_body={"guided_choice": CHOICES})
            if stream:
                got: dict[int, list[str]] = {}
                ends: dict[int, str] = {}
                for chunk in r:
                    for c in chunk.choices:
                        got.setdefault(c.index, []).append(c.text)
                        if c.finish_reason:
                            ends[c.index] = c.finish_reason
                answers = [("".join(got[i]), ends[i]) for i in sorted(got)]
            else:
                answers = [(c.text, c.finish_reason) for c in r.choices]
            assert len(answers) == 2 and all(text in CHOICES and reason == "stop" for text, reason in answers), answers
            texts.update(text for text, _ in answers)
    assert len(texts) > 1


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_is_one_of_the_choices_with_either_spelling(openai_client, stream: bool) -> None:
    for seed in SEEDS:
        for extra in ({"guided_choice": CHOICES}, {"structured_outputs": {"choice": CHOICES}}):
            r = openai_client.chat.completions.create(
                model="charlm", messages=[{"role": "user", "content": "Is it?"}], max_tokens=40, temperature=1.0,
                seed=seed, stream=stream, extra_body=extra)
            if stream:
                chunks = [c.choices[0] for c in r if c.choices]
                text, reason = "".join(c.delta.content or "" for c in chunks), chunks[-1].finish_reason
            else:
                text, reason = r.choices[0].message.content, r.choices[0].finish_reason
            assert text in CHOICES and reason == "stop", (text, reason)


def test_openai_logprobs_stay_the_models_raw_ones(openai_client) -> None:
    """The first token's alternatives are the model's, as without the guide (vLLM's behaviour):
    the guide masks what is sampled, not what is reported."""
    base = {"model": "charlm", "prompt": "Is it? ", "max_tokens": 1, "temperature": 0, "logprobs": 5}
    plain = openai_client.completions.create(**base).choices[0].logprobs
    guided = openai_client.completions.create(**base, extra_body={"guided_choice": ["xylophone"]}).choices[0]
    assert guided.text == "x" and guided.logprobs.top_logprobs[0] == {**plain.top_logprobs[0],
                                                                      "x": guided.logprobs.token_logprobs[0]}


@pytest.mark.parametrize(("extra", "param"), [
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_choice": "yes"}, "guided_choice"),
    ({"guided_choice": [1]}, "guided_choice"),
    ({"guided_choice": ["x" * 257]}, "guided_choice"),
    ({"guided_choice": ["a"] * 65}, "guided_choice"),
    ({"guided_choice": ["caf\u00e9"]}, "guided_choice"),  # checked against the vocabulary when queued
    ({"guided_choice": ["a"], "min_tokens": 1}, "guided_choice"),
    ({"guided_choice": ["a"], "structured_outputs": {"choice": ["b"]}}, "guided_choice"),
    ({"structured_outputs": {"choice": []}}, "guided_choice"),
    ({"structured_outputs": {"choice": ["a"], "regex": "a"}}, "structured_outputs"),
    ({"structured_outputs": ["a"]}, "structured_outputs"),
    ({"guided_grammar": "root ::= \"a\""}, "guided_grammar"),  # still not done
    ({"structured_outputs": {"grammar": "root ::= \"a\""}}, "structured_outputs"),
])
def test_openai_bad_guided_choice_is_refused_by_name(openai_client, extra: dict, param: str) -> None:
    for create, args in [(openai_client.completions.create, {"prompt": "a"}),
                         (openai_client.chat.completions.create, {"messages": [{"role": "user", "content": "a"}]})]:
        with pytest.raises(openai.BadRequestError) as info:
            create(model="charlm", max_tokens=5, extra_body=extra, **args)
        assert info.value.status_code == 400
        assert info.value.body["param"] == param and info.value.body["code"] == "bad_request", info.value.body


@pytest.mark.parametrize("stream", [False, True])
def test_openai_echo_refuses_what_the_model_cannot_write(openai_client, stream: bool) -> None:
    """``echo`` with ``logprobs`` scores the prompt first; the choices are checked when the
    generation is queued, and the answer still names the field.  ``max_tokens: 0`` generates nothing."""
    with pytest.raises(openai.BadRequestError) as info:
        r = openai_client.completions.create(model="charlm", prompt="ab", max_tokens=3, echo=True, logprobs=1,
                                             stream=stream, extra_body={"guided_choice": ["caf\u00e9"]})
        if stream:
            list(r)
    assert info.value.body["param"] == "guided_choice", info.value.body
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.completions.create(model="charlm", prompt="ab", max_tokens=0, echo=True,
                                         extra_body={"guided_choice": ["a"]})
    assert info.value.body["param"] == "guided_choice", info.value.body
