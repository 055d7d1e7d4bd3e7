"""The client against a server of repository models: pinned versions, versions in results and
``models``, and the admin calls (``load``, ``unload``, ``reload``) with and without the admin key.

The repository is written here with the model.py sources of the server's tests
(tests/repo_models.py): ``adm`` answers ``x @ [1, 2, 3] + bias`` with ``bias = version``, and
``gen`` is a generative bigram model in two versions, ``two`` takes and answers named tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from wsserve_client import (
    Client,
    Forbidden,
    ModelStatus,
    Unauthorized,
    UnknownModelError,
    VersionStatus,
    as_tensor,
)

from tests.repo_models import CLIENT_GEN_SEEDS as GEN_SEEDS
from tests.repo_models import affine, bigram_greedy, write_client_repository
from tests.support import ServerProcess, wait_until_async

ADMIN = "client-admin-key-42"
ROWS = [[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_client_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess("--log-level", "warning", "--models", "none", "--model-repository", str(repo),
                       "--admin-key", ADMIN) as srv:
        yield srv


async def test_predict_pins_a_version_as_a_string_or_an_integer(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        r = await c.predict("adm", ROWS)
        assert r.version == "10"  # the highest ready version, as a number
        np.testing.assert_allclose(r.outputs, affine(ROWS, 10.0))
        for pin in ("2", 2):
            r = await c.predict("adm", ROWS, version=pin)
            assert r.version == "2"
            np.testing.assert_allclose(r.outputs, affine(ROWS, 2.0))
        chunks = []
        stream = c.predict_stream("adm", ROWS, version=1, chunk_rows=1)
        async for chunk in stream:
            chunks.append(chunk.outputs[0])
        assert stream.summary.version == "1" and stream.summary.rows == 2
        np.testing.assert_allclose(chunks, affine(ROWS, 1.0))
        with pytest.raises(UnknownModelError, match="model 'adm' has no version '4'"):
            await c.predict("adm", ROWS, version=4)
        with pytest.raises(UnknownModelError, match=r"version '3' of model 'adm' is failed \(.*holds no model file"):
            await c.predict("adm", ROWS, version="3")
        with pytest.raises(TypeError, match="version"):
            await c.predict("adm", ROWS, version=True)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="version"):
            c.predict_stream("adm", ROWS, version=0)
        assert c.stats().requests_sent == 6  # the versions refused client-side were never sent


async def test_named_inputs_and_outputs(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        r = await c.predict("two", {"a": [[1, 2], [3, 4]], "b": [[10], [-1]]})
        assert r.version == "1" and r.outputs == {"sum": [[13.0], [6.0]], "scaled": [[10.0, 20.0], [-3.0, -4.0]]}
        chunks = [ch.outputs async for ch in c.predict_stream("two", {"a": [[1, 2], [3, 4]], "b": [[10], [-1]]},
                                                              chunk_rows=1)]
        assert chunks == [{"sum": [[13.0]], "scaled": [[10.0, 20.0]]}, {"sum": [[6.0]], "scaled": [[-3.0, -4.0]]}]
        arrays = (await c.predict("two", {"a": [[1, 2]], "b": [[2]]}, as_numpy=True)).outputs
        assert arrays["scaled"].shape == (1, 2) and arrays["sum"].tolist() == [[5.0]]


async def test_generate_pins_a_version_and_says_which_one_answered(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        gen = c.generate("gen", "ab", max_tokens=12)
        text = "".join([t async for t in gen])
        assert text == bigram_greedy(GEN_SEEDS[2], "ab", 12) and gen.result.version == "2"
        for pin in (1, "1"):
            done = await c.complete("gen", "ab", max_tokens=12, version=pin)
            assert (done.text, done.version, done.reason) == (bigram_greedy(GEN_SEEDS[1], "ab", 12), "1", "length")
        with pytest.raises(UnknownModelError, match="model 'gen' has no version '5'"):
            await c.complete("gen", "ab", version=5)
        with pytest.raises(TypeError, match="version"):
            c.generate("gen", "ab", version=2.0)  # type: ignore[arg-type]


async def test_models_lists_every_version_with_its_state(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        models = {m.name: m for m in await c.models()}
    adm = models["adm"]
    assert adm.version == "10"
    assert [(v.version, v.state) for v in adm.versions] == [("1", "ready"), ("2", "ready"), ("3", "failed"),
                                                            ("10", "ready")]
    assert adm.versions[2].reason is not None and adm.versions[2].reason.endswith("holds no model file "
                                                                                  "(model.onnx, model.npz, model.py)")
    assert all(v.reason is None for v in adm.versions if v.state == "ready")
    assert models["gen"].versions == (VersionStatus("1", "ready"), VersionStatus("2", "ready"))


async def test_admin_calls_without_the_admin_key_raise_forbidden(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        for call in (c.load, c.unload, c.reload):
            with pytest.raises(Forbidden) as info:
                await call("adm", version=1)
            assert info.value.code == "forbidden" and isinstance(info.value.request_id, int)
            assert info.value.message.endswith("needs the admin key (--admin-key), or loopback when no keys are configured")
        assert (await c.predict("adm", ROWS)).version == "10"  # the connection serves on
    with pytest.raises(Unauthorized, match="401"):  # a wrong key on the handshake
        async with Client(server.url, token="not-the-admin-key"):
            pass


@pytest.mark.parametrize("auth_message", [False, True])
async def test_the_admin_key_unloads_loads_and_reloads(server: ServerProcess, repo: Path, auth_message: bool) -> None:
    async with Client(server.url, token=ADMIN, auth_message=auth_message) as c:
        status = await c.unload("adm", version=10)
        assert isinstance(status, ModelStatus) and status.model == "adm"
        assert status.states().get("10") in ("unloading", None)

        async def default_is(version: str) -> bool:
            return {m.name: m for m in await c.models()}["adm"].version == version

        await wait_until_async(lambda: default_is("2"), 30, what="version 2 the default once 10 is unloaded")
        assert (await c.predict("adm", ROWS)).version == "2"
        status = await c.load("adm", version=10)
        assert status.states() == {"1": "ready", "2": "ready", "3": "failed", "10": "ready"}
        assert (await c.predict("adm", ROWS)).version == "10"
        (repo / "adm" / "10" / "bias.txt").write_text("100.0")
        try:
            status = await c.reload("adm", version="10")
            assert status.states()["10"] == "ready"
            r = await c.predict("adm", ROWS)
            assert r.version == "10"
            np.testing.assert_allclose(r.outputs, affine(ROWS, 100.0))
        finally:
            (repo / "adm" / "10" / "bias.txt").write_text("10.0")
            await c.reload("adm", version=10)
        status = await c.reload("adm")  # every version; the failed one is reported, not raised
        failed = [v for v in status.versions if v.state == "failed"]
        assert [v.version for v in failed] == ["3"] and failed[0].reason
        with pytest.raises(UnknownModelError, match="no model named 'zzz' in the model repository"):
            await c.load("zzz")
        with pytest.raises(UnknownModelError, match="model 'adm' has no version '9' in the repository"):
            await c.load("adm", version=9)
        np.testing.assert_allclose((await c.predict("adm", ROWS)).outputs, affine(ROWS, 10.0))


async def test_the_built_in_models_are_repository_entries_too(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--models", "linear")
    async with Client(srv.url) as c:  # loopback, no keys: admin calls are allowed
        status = await c.unload("linear")
        assert status.model == "linear" and set(status.states().values()) <= {"unloading"}

        async def gone() -> bool:
            return all(m.name != "linear" for m in await c.models())

        await wait_until_async(gone, 30, what="linear unloaded")
        with pytest.raises(UnknownModelError, match="no model named 'linear'"):
            await c.predict("linear", [[0.5]])
        status = await c.load("linear")
        assert status.states() == {"1": "ready"}
        assert (await c.predict("linear", [[0.5]])).version == "1"
        with pytest.raises(UnknownModelError, match="no model named 'mlp' in the model repository"):
            await c.load("mlp")  # a default model this server was not asked to serve


#: ``bf``'s input and what it answers: each value of ``2 * X`` is exact in bfloat16.
BF_X = [[1.5, -2.0, 3.140625], [0.0, 256.0, -0.0078125]]


async def test_a_bfloat16_output_comes_back_as_float32(server: ServerProcess) -> None:
    """A binary answer with a bfloat16 output (``bf``: a Triton ``TYPE_BF16`` model's) is decoded
    widened to float32, which holds each value exactly; it was a ``ProtocolError`` ("bad tensor
    description") that failed the call."""
    async with Client(server.url) as c:
        r = await c.predict("bf", np.array(BF_X, dtype=np.float32), binary=True, timeout=30)
        assert isinstance(r.outputs, np.ndarray) and r.outputs.dtype == np.float32, r.outputs
        assert r.outputs.tolist() == (2 * np.array(BF_X)).tolist()
        assert (await c.predict("bf", BF_X, timeout=30)).outputs == r.outputs.tolist()  # as JSON answers it


def test_a_bfloat16_output_comes_back_as_float32_without_numpy(server: ServerProcess) -> None:
    """A child interpreter where ``import numpy`` fails: the bfloat16 output is a float32 Tensor."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["numpy"] = None  # import numpy now raises ImportError
        import array, asyncio
        from wsserve_client import Client, Tensor, as_tensor

        async def main():
            async with Client({server.url!r}) as c:
                x = as_tensor(array.array("f", [v for row in {BF_X!r} for v in row]), shape=(2, 3))
                r = await c.predict("bf", x, binary=True, timeout=30)
                assert isinstance(r.outputs, Tensor), type(r.outputs)
                print(r.outputs.dtype, r.outputs.shape, r.outputs.tolist())

        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"float32 (2, 3) {(2 * np.array(BF_X)).tolist()}"


#: Values ``bfid`` (a bfloat16 input answered as it came) is sent: exact ones, ties (1 + 2**-8 rounds
#: down to 1, 1 + 3 * 2**-8 up to 1 + 2**-6: to the even neighbour) and ones in between.
BF_TIES = [[1.5, 1.00390625, 1.01171875], [-3.140625, 0.1, -65504.0]]


async def test_bfloat16_inputs_go_as_bfloat16(server: ServerProcess) -> None:
    """A bfloat16 input from float values (``as_tensor(x, dtype="bfloat16")``, rounded by the client,
    ties to even, as ml_dtypes rounds), from their 16-bit patterns (a uint16 array with that dtype) and
    from an ``ml_dtypes.bfloat16`` array: ``bfid`` answers what it received, exactly what ml_dtypes
    makes of the values.  Before, the dtype was ignored (float32 sent), a uint16 array went as the
    integers of its bit patterns, and a bfloat16 array was refused (``TypeError``)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    want = np.array(BF_TIES, np.float32).astype(ml_dtypes.bfloat16)
    async with Client(server.url) as c:
        await c.ping()
        assert "bfloat16" in c.hello.binary_dtypes
        for x in (np.array(BF_TIES, np.float32), np.array(BF_TIES, np.float64)):
            t = as_tensor(x, dtype="bfloat16")
            assert t.dtype == "bfloat16" and t.shape == (2, 3) and t.data == want.tobytes(), x.dtype
            r = await c.predict("bfid", t, binary=True, timeout=30)
            assert r.outputs.dtype == np.float32 and r.outputs.tolist() == want.astype(np.float32).tolist()
        bits = as_tensor(want.view(np.uint16), dtype="bfloat16")
        assert (await c.predict("bfid", bits, binary=True, timeout=30)).outputs.tolist() == r.outputs.tolist()
        own = await c.predict("bfid", want, binary=True, timeout=30)  # bfloat16 is in the hello: as it is
        assert own.outputs.tolist() == r.outputs.tolist()
    async with Client(server.url) as c:  # no hello yet: widened to the float32 it holds, exactly
        assert (await c.predict("bfid", want, binary=True, timeout=30)).outputs.tolist() == r.outputs.tolist()


def test_bfloat16_inputs_without_numpy(server: ServerProcess) -> None:
    """A child interpreter where ``import numpy`` fails: an ``array.array("f")`` with
    ``dtype="bfloat16"`` is rounded in pure Python and sent as bfloat16."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["numpy"] = None  # import numpy now raises ImportError
        import array, asyncio
        from wsserve_client import Client, as_tensor

        async def main():
            async with Client({server.url!r}) as c:
                x = as_tensor(array.array("f", [v for row in {BF_TIES!r} for v in row]), dtype="bfloat16",
                              shape=(2, 3))
                r = await c.predict("bfid", x, binary=True, timeout=30)
                print(x.dtype, r.outputs.dtype, r.outputs.tolist())

        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    want = np.array(BF_TIES, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32).tolist()
    assert out.stdout.strip() == f"bfloat16 float32 {want}"
