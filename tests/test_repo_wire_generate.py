"""A generative model.py from the repository, served by ``generate`` through the engine charlm uses.

The model is a bigram table written here (tests/repo_models.py ``BIGRAM_PY``); its greedy
text is recomputed in the test with numpy, so streamed tokens are checked exactly.  One server
(``--models none --max-generate-batch 4``) serves ``bigram`` in versions 1 and 2, ``slowgen``
(the same model, 2 ms per step: its generations stay unfinished long enough to be cancelled,
to pass a deadline or to be paused) and ``badgen`` (its logits have the wrong shape).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.repo_models import BIGRAM_CONFIG, BIGRAM_PY, bigram_greedy, write_py
from tests.repo_wire import models_http, states
from tests.support import Conn, ServerProcess, wait_until_async

SEEDS = {1: 20, 2: 29}  # bigram version -> table seed
SLOW_SEED = 23
MAX_BATCH = 4

BAD_LOGITS_PY = BIGRAM_PY.replace("return self.table[contexts[:, -1]]", "return self.table[contexts[:, -1], :3]")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_transport: str) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("repository")
    for name in ("bigram", "slowgen", "badgen"):
        (root / name).mkdir()
        (root / name / "config.toml").write_text(BIGRAM_CONFIG)
    for version, seed in SEEDS.items():
        write_py(root / "bigram" / str(version), BIGRAM_PY, **{"seed.txt": str(seed)})
    write_py(root / "slowgen" / "1", BIGRAM_PY, **{"seed.txt": str(SLOW_SEED), "delay.txt": "0.002"})
    write_py(root / "badgen" / "1", BAD_LOGITS_PY, **{"seed.txt": "1"})
    with ServerProcess("--models", "none", "--model-repository", str(root),
                       "--max-generate-batch", str(MAX_BATCH), transport=module_transport) as srv:
        srv.root = root  # type: ignore[attr-defined]
        yield srv


@pytest.fixture
async def conn(server: ServerProcess) -> Any:
    c = await Conn.open(server.url)
    yield c
    await c.close()


def text_of(frames: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Concatenated token text and the terminal frame; checks seq order and the token count."""
    *tokens, last = frames
    assert [f["type"] for f in tokens] == ["token"] * len(tokens)
    assert [f["seq"] for f in tokens] == list(range(len(tokens)))
    if last["type"] == "done":
        assert last["tokens"] == len(tokens)
    return "".join(f["text"] for f in tokens), last


async def generate(conn: Conn, rid: Any, model: str = "bigram", **fields: Any) -> tuple[str, dict[str, Any]]:
    await conn.send({"type": "generate", "id": rid, "model": model, **fields})
    frames, last = await conn.until_terminal(rid)
    return text_of([*frames, last])


# --------------------------------------------------------------------------- serving and versions


async def test_models_lists_the_generative_model_and_the_broken_one_as_failed(server: ServerProcess) -> None:
    listed = models_http(server)
    assert listed["bigram"]["version"] == "2" and states(listed["bigram"]) == {"1": "ready", "2": "ready"}
    assert listed["bigram"]["task"] == "generation"
    bad = listed["badgen"]
    assert bad["version"] is None and states(bad) == {"1": "failed"}
    assert bad["versions"][0]["reason"] == (
        f"{server.root / 'badgen' / '1' / 'model.py'}: ValueError: model 'badgen': logits() returned shape [2, 3], "  # type: ignore[attr-defined]
        "expected [2, 11]")


async def test_greedy_tokens_are_streamed_one_by_one_as_the_model_computes_them(conn: Conn) -> None:
    text, done = await generate(conn, "g", prompt="ab", max_tokens=40)
    assert text == bigram_greedy(SEEDS[2], "ab", 40)
    assert all(len(f["text"]) == 1 for f in conn.frames if f["type"] == "token")  # one token, one frame
    assert (done["type"], done["reason"], done["tokens"], done["version"]) == ("done", "length", 40, "2")
    assert done["timing"]["ttft_ms"] >= 0 and done["timing"]["total_ms"] >= done["timing"]["ttft_ms"]


@pytest.mark.parametrize("pin", ["1", 1])
async def test_generate_pins_a_version(conn: Conn, pin: Any) -> None:
    text, done = await generate(conn, "v", prompt="ab", max_tokens=25, version=pin)
    assert text == bigram_greedy(SEEDS[1], "ab", 25) != bigram_greedy(SEEDS[2], "ab", 25)
    assert done["version"] == "1"


async def test_generate_errors_name_the_problem(conn: Conn) -> None:
    for msg, code, message in (
        ({"model": "bigram", "version": 3}, "unknown_model", "model 'bigram' has no version '3'; available: 1, 2"),
        ({"model": "badgen"}, "unknown_model", "model 'badgen' has no ready version (1: failed)"),
        ({"model": "nope"}, "unknown_model", "no model named 'nope'; known: badgen, bigram, slowgen"),
    ):
        _, err = await generate(conn, "e", prompt="a", **msg)
        assert (err["type"], err["code"], err["message"]) == ("error", code, message)
    await conn.send({"type": "predict", "id": "p", "model": "bigram", "inputs": [[1]]})
    _, err = await conn.until_terminal("p")
    assert (err["code"], err["message"]) == ("bad_request", "model 'bigram' serves generate, not predict")


# --------------------------------------------------------------------------- stop strings


@pytest.mark.parametrize("stop, text", [
    (["fb"], "\nca "),
    (["zz", " f"], "\nca"),
    ("a fb", "\nc"),             # spans three tokens: "a", " ", "f" were held back, then dropped
    (["\nca f"], ""),            # the very first tokens
])
async def test_a_stop_string_ends_the_generation_and_is_never_streamed(conn: Conn, stop: Any, text: str) -> None:
    full = bigram_greedy(SEEDS[2], "ab", 30)
    assert full.startswith("\nca fb\nca fb")
    got, done = await generate(conn, "s", prompt="ab", max_tokens=30, stop=stop)
    assert (got, done["reason"], done["tokens"]) == (text, "stop", len(text))
    streamed = [f["text"] for f in conn.frames if f.get("id") == "s" and f["type"] == "token"]
    assert "".join(streamed) == text


async def test_text_held_back_for_a_stop_string_is_sent_when_the_generation_ends_by_length(conn: Conn) -> None:
    # "\nca fb" ends with "b", the start of the stop string "b\nx": held back, then sent at the end.
    got, done = await generate(conn, "h", prompt="ab", max_tokens=6, stop=["b\nx"])
    assert (got, done["reason"], done["tokens"]) == ("\nca fb", "length", 6)


# --------------------------------------------------------------------------- sampling, batching invariance


def sampled(i: int) -> dict[str, Any]:
    return {"prompt": ("ab", "", "h. ")[i % 3], "max_tokens": 20 + 7 * (i % 5), "temperature": (0.7, 1.0, 1.6)[i % 3],
            "top_k": (0, 4, 0)[i % 3], "seed": 1000 + i}


async def test_seeded_sampling_gives_the_same_text_alone_and_among_32_concurrent_generations(
        server: ServerProcess, conn: Conn) -> None:
    alone = [await generate(conn, f"alone{i}", **sampled(i)) for i in range(32)]
    assert len({text for text, _ in alone}) > 16  # sampling, not one fixed text
    crowd = [await Conn.open(server.url) for _ in range(4)]  # 32 generations over 4 connections, 4 slots
    for i in range(32):
        await crowd[i % 4].send({"type": "generate", "id": i, "model": "bigram", **sampled(i)})
    for k, c in enumerate(crowd):
        got = await c.collect({i for i in range(32) if i % 4 == k})
        for i, frames in got.items():
            text, done = text_of(frames)
            assert (text, done["reason"], done["version"]) == (alone[i][0], "length", "2"), sampled(i)
        await c.close()


# --------------------------------------------------------------------------- cancel, deadline, fair share


async def test_cancel_ends_the_generation_with_done_cancelled(conn: Conn) -> None:
    await conn.send({"type": "generate", "id": "c", "model": "slowgen", "prompt": "a", "max_tokens": 100_000})
    for _ in range(3):
        assert (await conn.recv())["type"] == "token"
    await conn.send({"type": "cancel", "id": "c"})
    frames, done = await conn.until_terminal("c")
    assert (done["type"], done["reason"], done["version"]) == ("done", "cancelled", "1")
    assert done["tokens"] == 3 + len(frames) < 100_000
    assert await conn.request({"type": "ping", "id": "after"}) == {"type": "pong", "id": "after"}


async def test_timeout_ms_ends_the_generation_with_deadline_exceeded(conn: Conn) -> None:
    await conn.send({"type": "generate", "id": "t", "model": "slowgen", "prompt": "a", "max_tokens": 100_000,
                     "timeout_ms": 300})
    frames, last = await conn.until_terminal("t")
    assert (last["type"], last["code"]) == ("error", "deadline_exceeded")
    assert len(frames) < 100_000
    assert await conn.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}


async def test_one_connection_cannot_hold_every_slot_and_a_paused_generation_keeps_its_text(
        server: ServerProcess, conn: Conn) -> None:
    def hog_params(i: int) -> dict[str, Any]:
        return {"prompt": "ab", "temperature": 1.0, "seed": 77 + i}

    prefix = 30
    alone = [(await generate(conn, f"a{i}", "slowgen", max_tokens=prefix, **hog_params(i)))[0] for i in range(2 * MAX_BATCH)]
    hog = await Conn.open(server.url)
    for i in range(2 * MAX_BATCH):  # MAX_BATCH run, as many wait: 100,000 tokens each
        await hog.send({"type": "generate", "id": i, "model": "slowgen", "max_tokens": 100_000, **hog_params(i)})
    assert (await hog.recv())["type"] == "token"
    other = await Conn.open(server.url)
    text, done = await generate(other, "short", prompt="ab", max_tokens=20)
    assert (text, done["reason"]) == (bigram_greedy(SEEDS[2], "ab", 20), "length")
    # ... finished while every one of the hog's generations is still unfinished:
    hog_frames = [f for f in hog.frames if f.get("type") != "token"]
    assert hog_frames == [], hog_frames

    def tokens(i: int) -> int:
        return sum(1 for f in hog.frames if f.get("id") == i and f["type"] == "token")

    async def enough() -> bool:
        # read what has arrived (at most a bounded batch: the hog's tokens keep coming, so "until
        # nothing arrives for 50 ms" may never end), then look
        for _ in range(256):
            try:
                await hog.recv(timeout=0.05)
            except TimeoutError:
                break
        return all(tokens(i) >= prefix for i in range(MAX_BATCH))

    await wait_until_async(enough, 60, what=f"the hog's first {MAX_BATCH} generations reach {prefix} tokens")
    for i in range(2 * MAX_BATCH):
        await hog.send({"type": "cancel", "id": i})
    ended = await hog.collect(set(range(2 * MAX_BATCH)))
    for i in ended:
        text, done = text_of([f for f in hog.frames if f.get("id") == i])
        assert done["reason"] == "cancelled"
        assert text[:prefix] == alone[i][: len(text)], i  # paused or not: the same text
    await hog.close()
    await other.close()
