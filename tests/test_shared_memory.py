"""Triton's system shared memory extension over HTTP and gRPC, driven by ``tritonclient`` against a
real server on loopback: regions registered, used by inference inputs and outputs, listed,
unregistered; and the refusals (bad keys, bounds, who may).

The regions are made here with :class:`multiprocessing.shared_memory.SharedMemory` (key
``/name``; ``tritonclient.utils.shared_memory`` needs ``pkg_resources``).  The model is
``aff`` (:data:`tests.repo_models.AFFINE_PY`: FP64 ``input`` ``[-1, 3]`` -> ``output`` ``[-1, 1]``).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.repo_models import (
    AFFINE_CONFIG,
    NAMED_CONFIG,
    NAMED_PY,
    affine,
    write_affine,
    write_py,
)
from tests.support import ServerProcess, serve_command

grpc = pytest.importorskip("grpc")  # the grpc extra installs it
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.test_grpc import grpc_address  # noqa: E402

ADMIN = "admin-key-0123456789"
API = "api-key-9876543210"
X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
Y = np.asarray(affine(X.tolist(), 1.0))  # what aff version 1 answers for X: [2, 1]
MAX_MESSAGE_BYTES = 64 << 10  # the served server's --max-message-bytes
REGISTER_REFUSED = "registering shared memory needs the admin key (--admin-key), or loopback when no keys are configured"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shm-repo") / "repository"
    (root / "aff").mkdir(parents=True)
    (root / "aff" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(root / "aff" / "1", bias=1.0)
    (root / "named").mkdir()
    (root / "named" / "config.toml").write_text(NAMED_CONFIG)
    write_py(root / "named" / "1", NAMED_PY)
    return root


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[tuple[ServerProcess, str]]:
    """No keys: shared memory from loopback.  Requests (bodies, and inputs in shared memory) of at
    most :data:`MAX_MESSAGE_BYTES`."""
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(repo),
                         "--max-message-bytes", str(MAX_MESSAGE_BYTES))
    yield proc, grpc_address(proc)
    proc.stop()


@pytest.fixture
def http(served: tuple[ServerProcess, str]) -> Iterator[Any]:
    client = thttp.InferenceServerClient(f"127.0.0.1:{served[0].port}")
    yield client
    client.unregister_system_shared_memory()  # every test starts with none registered
    client.close()


@pytest.fixture
def grpc_client(served: tuple[ServerProcess, str]) -> Iterator[Any]:
    client = tgrpc.InferenceServerClient(served[1])
    yield client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def shm() -> Iterator[shared_memory.SharedMemory]:
    """A 1 KiB POSIX shared memory object (key ``"/" + shm.name``), unlinked afterwards."""
    region = shared_memory.SharedMemory(create=True, size=1024)
    yield region
    region.close()
    try:
        region.unlink()
    except FileNotFoundError:  # a test unlinked it
        pass


def key(region: shared_memory.SharedMemory) -> str:
    return "/" + region.name


def put(region: shared_memory.SharedMemory, offset: int, array: np.ndarray) -> None:
    region.buf[offset : offset + array.nbytes] = array.tobytes()


def get(region: shared_memory.SharedMemory, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(bytes(region.buf[offset : offset + 8 * int(np.prod(shape))]), dtype="<f8").reshape(shape)


def refused(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def infer_in_shm(module: Any, client: Any, region: str, *, in_size: int = X.nbytes, in_offset: int = 0,
                 out_size: int = Y.nbytes, out_offset: int = 512, **kwargs: Any) -> Any:
    """``aff``'s inference with its input read from ``region`` and its output written there."""
    given = module.InferInput("input", list(X.shape), "FP64")
    given.set_shared_memory(region, in_size, offset=in_offset)
    wanted = module.InferRequestedOutput("output")
    wanted.set_shared_memory(region, out_size, offset=out_offset)
    return client.infer("aff", [given], outputs=[wanted], **kwargs)


# --------------------------------------------------------------------------- the extension at work


def test_the_server_announces_system_shared_memory(http: Any, grpc_client: Any) -> None:
    assert "system_shared_memory" in http.get_server_metadata()["extensions"]
    assert "system_shared_memory" in grpc_client.get_server_metadata().extensions


def test_http_register_infer_status_unregister(http: Any, shm: shared_memory.SharedMemory) -> None:
    put(shm, 0, X)
    http.register_system_shared_memory("in_out", key(shm), 1024)
    assert http.get_system_shared_memory_status() == [{"name": "in_out", "key": key(shm), "offset": 0,
                                                       "byte_size": 1024}]
    assert http.get_system_shared_memory_status("in_out") == http.get_system_shared_memory_status()
    result = infer_in_shm(thttp, http, "in_out")
    assert get(shm, 512, (2, 1)).tolist() == Y.tolist()
    (output,) = result.get_response()["outputs"]
    # no data (it is in the region) and no parameters, as Triton answers it (its C++ client reads an
    # output's parameters as binary data's)
    assert output == {"name": "output", "datatype": "FP64", "shape": [2, 1]}
    http.unregister_system_shared_memory("in_out")
    assert http.get_system_shared_memory_status() == []
    err = refused(infer_in_shm, thttp, http, "in_out")
    assert "shared memory region 'in_out' is not registered" in err.message()


def test_grpc_register_infer_status_unregister(grpc_client: Any, shm: shared_memory.SharedMemory) -> None:
    put(shm, 64, X)
    grpc_client.register_system_shared_memory("g", key(shm), 960, offset=64)  # the region starts at byte 64
    status = grpc_client.get_system_shared_memory_status().regions
    assert {n: (r.name, r.key, r.offset, r.byte_size) for n, r in status.items()} == {"g": ("g", key(shm), 64, 960)}
    result = infer_in_shm(tgrpc, grpc_client, "g", out_offset=448)  # 448 into the region: byte 512 of the file
    assert get(shm, 512, (2, 1)).tolist() == Y.tolist()
    response = result.get_response()  # an empty raw entry per output in shared memory, as Triton's
    assert ([(o.name, list(o.shape)) for o in response.outputs], list(response.raw_output_contents)) == (
        [("output", [2, 1])], [b""])
    grpc_client.unregister_system_shared_memory("g")
    assert not grpc_client.get_system_shared_memory_status().regions


def test_a_grpc_stream_request_takes_shared_memory(grpc_client: Any, shm: shared_memory.SharedMemory) -> None:
    put(shm, 0, X)
    grpc_client.register_system_shared_memory("s", key(shm), 1024)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        given = tgrpc.InferInput("input", list(X.shape), "FP64")
        given.set_shared_memory("s", X.nbytes)
        wanted = tgrpc.InferRequestedOutput("output")
        wanted.set_shared_memory("s", Y.nbytes, offset=512)
        grpc_client.async_stream_infer("aff", [given], outputs=[wanted])
        result, error = results.get(timeout=60)
    finally:
        grpc_client.stop_stream()
    assert error is None and result.get_output("output").shape == [2, 1]
    assert get(shm, 512, (2, 1)).tolist() == Y.tolist()


def test_an_input_in_shared_memory_with_others_raw_and_an_output_inline(grpc_client: Any, http: Any,
                                                                       shm: shared_memory.SharedMemory) -> None:
    # Only the input is in shared memory; the output comes back as data (both transports).
    put(shm, 0, X)
    http.register_system_shared_memory("in", key(shm), 1024)
    for module, client in ((thttp, http), (tgrpc, grpc_client)):
        given = module.InferInput("input", list(X.shape), "FP64")
        given.set_shared_memory("in", X.nbytes)
        assert client.infer("aff", [given]).as_numpy("output").tolist() == Y.tolist()



def test_a_grpc_region_parameter_without_a_value_is_no_region(served: tuple[ServerProcess, str]) -> None:
    """An input whose ``shared_memory_region`` parameter is set to no value names no region (as
    :func:`~wsserve.rest.sharedmem.shm_ref` reads it): ``raw_input_contents`` must then hold its
    entry too, refused by count as any short list, not read past its end (an internal error)."""
    channel = grpc.insecure_channel(served[1])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="named")
    a = request.inputs.add(name="a", datatype="FP64", shape=[1, 2])
    a.parameters["shared_memory_region"].CopyFrom(service_pb2.InferParameter())  # present, no value
    request.inputs.add(name="b", datatype="FP64", shape=[1, 1])
    request.raw_input_contents.append(np.array([1.0, 2.0]).tobytes())
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code().name == "INVALID_ARGUMENT"
        assert "raw_input_contents holds 1 tensors and 'inputs' 2" in info.value.details()
        request.raw_input_contents.append(np.array([3.0]).tobytes())  # one entry each: served
        assert np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], "<f8").tolist() == [6.0]
    finally:
        channel.close()


def test_a_region_unlinked_by_its_client_stays_usable_until_unregistered(http: Any,
                                                                           shm: shared_memory.SharedMemory) -> None:
    put(shm, 0, X)
    http.register_system_shared_memory("gone", key(shm), 1024)
    shm.unlink()
    infer_in_shm(thttp, http, "gone")
    assert get(shm, 512, (2, 1)).tolist() == Y.tolist()


def test_a_region_truncated_by_its_client_is_refused_and_the_server_lives(http: Any,
                                                                          shm: shared_memory.SharedMemory) -> None:
    put(shm, 0, X)
    http.register_system_shared_memory("cut", key(shm), 1024)
    os.truncate(Path("/dev/shm") / shm.name, 16)  # a mapping past the end would be SIGBUS
    err = refused(infer_in_shm, thttp, http, "cut")  # reading its input
    assert "input 'input': shared memory region 'cut' no longer holds its bytes" in err.message()
    given = thttp.InferInput("input", list(X.shape), "FP64")
    given.set_data_from_numpy(X)
    wanted = thttp.InferRequestedOutput("output")
    wanted.set_shared_memory("cut", Y.nbytes, offset=512)
    err = refused(http.infer, "aff", [given], outputs=[wanted])  # writing its output
    assert "output 'output': shared memory region 'cut' no longer holds its bytes" in err.message()
    assert http.is_server_live()


def test_input_values_are_checked_as_raw_ones(http: Any, shm: shared_memory.SharedMemory) -> None:
    put(shm, 0, np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]]))
    http.register_system_shared_memory("nan", key(shm), 1024)
    assert "holds a value that is not finite" in refused(infer_in_shm, thttp, http, "nan").message()
    err = refused(infer_in_shm, thttp, http, "nan", in_size=40)
    assert "'shared_memory_byte_size' must be 48 (6 FP64 values), got 40" in err.message()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_an_output_refused_leaves_every_region_untouched(http: Any, grpc_client: Any,
                                                         shm: shared_memory.SharedMemory, transport: str) -> None:
    # ``named``: ``sum`` fits its place, ``scaled`` does not: the request fails, and ``sum``'s bytes
    # must not have been written (the client was told the request failed).
    module, client = (thttp, http) if transport == "http" else (tgrpc, grpc_client)
    meta = http.get_model_metadata("named")
    dtype = {o["name"]: np.dtype(thttp_dtype(o["datatype"])) for o in meta["outputs"]}
    http.register_system_shared_memory("outs", key(shm), 1024)
    shm.buf[:1024] = b"\xab" * 1024
    inputs = []
    for name, value in (("a", np.array([[1.0, 2.0]])), ("b", np.array([[3.0]]))):
        spec = next(t for t in meta["inputs"] if t["name"] == name)
        tensor = module.InferInput(name, list(value.shape), spec["datatype"])
        tensor.set_data_from_numpy(value.astype(thttp_dtype(spec["datatype"])))
        inputs.append(tensor)
    total = module.InferRequestedOutput("sum")
    total.set_shared_memory("outs", dtype["sum"].itemsize)
    scaled = module.InferRequestedOutput("scaled")
    scaled.set_shared_memory("outs", dtype["scaled"].itemsize, offset=512)  # it has 2 values
    err = refused(client.infer, "named", inputs, outputs=[total, scaled])
    assert "output 'scaled' has" in err.message()
    got = bytes(shm.buf[:1024])
    assert got == b"\xab" * 1024


def thttp_dtype(datatype: str) -> Any:
    from tritonclient.utils import triton_to_np_dtype

    return triton_to_np_dtype(datatype)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_an_output_refused_counts_as_a_failure(http: Any, grpc_client: Any, shm: shared_memory.SharedMemory,
                                               transport: str) -> None:
    # The statistics extension: a request answered with an error is a failure, not a success.
    module, client = (thttp, http) if transport == "http" else (tgrpc, grpc_client)
    put(shm, 0, X)
    http.register_system_shared_memory("st", key(shm), 1024)

    def counts() -> tuple[int, int]:
        stats = http.get_inference_statistics("aff")["model_stats"][0]["inference_stats"]
        return stats["success"]["count"], stats["fail"]["count"]

    before = counts()
    refused(infer_in_shm, module, client, "st", out_size=8)  # the output has 16 bytes
    assert counts() == (before[0], before[1] + 1)


def test_a_region_the_system_cannot_write_is_refused_naming_it(repo: Path, shm: shared_memory.SharedMemory) -> None:
    # An OS error writing a region (as ENOSPC: a sparse object larger than a full /dev/shm) answers
    # the request with an error naming the output and the region, on both transports.  Here the
    # server's RLIMIT_FSIZE (256 bytes) makes a write at byte 512 fail with EFBIG.
    proc = ServerProcess.from_command(
        ["prlimit", "--fsize=256", *serve_command("--grpc-port", "0", "--models", "none", "--model-repository",
                                                  str(repo))], env={"PYTHONDONTWRITEBYTECODE": "1"})
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}", network_timeout=60)
    gclient = tgrpc.InferenceServerClient(grpc_address(proc))
    try:
        put(shm, 0, X)
        http.register_system_shared_memory("full", key(shm), 1024)
        for module, client in ((thttp, http), (tgrpc, gclient)):
            err = refused(infer_in_shm, module, client, "full")
            assert "output 'output': shared memory region 'full' cannot be written: File too large" in err.message()
        assert http.is_server_live()
    finally:
        http.close()
        gclient.close()
        proc.stop()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("bad", "says"), [
    ("/a/b", "may not hold '/', '..' or NUL"),
    ("/..x", "may not hold '/', '..' or NUL"),
    ("/a\x00b", "may not hold '/', '..' or NUL"),
    ("/" + "k" * 256, "has 256 bytes; at most 255"),
    ("/wsserve-test-no-such-key", "cannot open shared memory key '/wsserve-test-no-such-key'"),
])
def test_bad_keys_are_refused_by_name(http: Any, grpc_client: Any, bad: str, says: str) -> None:
    assert says in refused(http.register_system_shared_memory, "r", bad, 64).message()
    err = refused(grpc_client.register_system_shared_memory, "r", bad, 64)
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and says in err.message()
    assert http.get_system_shared_memory_status() == []


def test_regions_outside_their_file_or_region_are_refused(http: Any, grpc_client: Any,
                                                          shm: shared_memory.SharedMemory) -> None:
    size = os.stat(Path("/dev/shm") / shm.name).st_size
    err = refused(http.register_system_shared_memory, "big", key(shm), size, offset=8)
    assert f"holds {size} bytes; 'offset' + 'byte_size' is {size + 8}" in err.message()
    err = refused(http.register_system_shared_memory, "huge", key(shm), (1 << 32) + 1)
    assert "'byte_size' must be an integer in [1, 4294967296]" in err.message()
    put(shm, 0, X)
    http.register_system_shared_memory("small", key(shm), 64)
    err = refused(infer_in_shm, thttp, http, "small", in_offset=32)  # 48 bytes at 32 of a 64-byte region
    assert "input 'input': 48 bytes at offset 32 do not fit shared memory region 'small' (64 bytes)" in err.message()
    err = refused(infer_in_shm, tgrpc, grpc_client, "small", out_offset=56)
    assert "output 'output': 16 bytes at offset 56 do not fit shared memory region 'small'" in err.message()
    err = refused(infer_in_shm, thttp, http, "small", out_size=8, out_offset=48)  # the output has 16 bytes
    assert "output 'output' has 16 bytes; its 'shared_memory_byte_size' in shared memory region 'small' is 8" \
        in err.message()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_inputs_take_at_most_max_message_bytes_from_shared_memory(http: Any, grpc_client: Any, transport: str) -> None:
    """A request's inputs in shared memory are bounded as a body carrying them is
    (``--max-message-bytes``, here 64 KiB), in all, before anything is read: a region of any size
    does not let a request make the server read and hold more."""
    module, client = (thttp, http) if transport == "http" else (tgrpc, grpc_client)
    region = shared_memory.SharedMemory(create=True, size=4 * MAX_MESSAGE_BYTES)
    try:
        rows = MAX_MESSAGE_BYTES // 24  # aff's rows are 3 FP64 values: 65,520 bytes, the most that fit
        x = np.arange(3 * (rows + 1), dtype="<f8").reshape(rows + 1, 3)
        put(region, 0, x)
        http.register_system_shared_memory("big", key(region), 4 * MAX_MESSAGE_BYTES)

        def infer(n: int) -> Any:
            given = module.InferInput("input", [n, 3], "FP64")
            given.set_shared_memory("big", 24 * n)
            return client.infer("aff", [given])

        assert infer(rows).as_numpy("output").tolist() == affine(x[:rows].tolist(), 1.0)
        err = refused(infer, rows + 1)  # 65,544 bytes
        assert ("input 'input': 65544 bytes in shared memory; a request's inputs may take at most 65536 bytes from "
                "shared memory (max_message_bytes, the bound on a request's body)") in err.message()
        assert err.status() == ("400" if transport == "http" else "StatusCode.INVALID_ARGUMENT")
        # the same values in the body are refused too, by the same limit
        inline = module.InferInput("input", [rows + 1, 3], "FP64")
        inline.set_data_from_numpy(x)
        err = refused(client.infer, "aff", [inline])
        assert err.status() == ("413" if transport == "http" else "StatusCode.RESOURCE_EXHAUSTED")

        # several inputs count together: ``named``'s FP64 a (2 values a row) and b (1)
        assert {t["datatype"] for t in http.get_model_metadata("named")["inputs"]} == {"FP64"}
        n = MAX_MESSAGE_BYTES // 16  # a's 4096 rows take all 64 KiB: b's go past them
        a = module.InferInput("a", [n, 2], "FP64")
        a.set_shared_memory("big", 16 * n)
        b = module.InferInput("b", [n, 1], "FP64")
        b.set_shared_memory("big", 8 * n, offset=16 * n)
        err = refused(client.infer, "named", [a, b])
        assert ("input 'b': 32768 bytes in shared memory after the 65536 bytes of the inputs before it; a request's "
                "inputs may take at most 65536 bytes") in err.message()
        half = module.InferInput("a", [n // 2, 2], "FP64")  # 32 KiB + 16 KiB: they fit
        half.set_shared_memory("big", 8 * n)
        b = module.InferInput("b", [n // 2, 1], "FP64")
        b.set_shared_memory("big", 4 * n, offset=16 * n)
        assert client.infer("named", [half, b]).as_numpy("sum").shape == (n // 2, 1)
        assert http.is_server_live()
    finally:
        region.close()
        region.unlink()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_an_outputs_place_past_its_region_is_refused_before_the_model_runs(
        http: Any, grpc_client: Any, shm: shared_memory.SharedMemory, transport: str) -> None:
    # The output's 16 bytes would fit at offset 32 of the 64-byte region, but the place the request
    # names (64 bytes there) does not: refused as Triton refuses it, before the model runs, and
    # nothing is written.
    module, client = (thttp, http) if transport == "http" else (tgrpc, grpc_client)
    shm.buf[:64] = b"\xab" * 64
    http.register_system_shared_memory("small", key(shm), 64)
    given = module.InferInput("input", list(X.shape), "FP64")
    given.set_data_from_numpy(X)
    wanted = module.InferRequestedOutput("output")
    wanted.set_shared_memory("small", 64, offset=32)
    err = refused(client.infer, "aff", [given], outputs=[wanted])
    assert "output 'output': 64 bytes at offset 32 do not fit shared memory region 'small' (64 bytes)" in err.message()
    assert bytes(shm.buf[:64]) == b"\xab" * 64
    wanted.set_shared_memory("nowhere", 16)
    err = refused(client.infer, "aff", [given], outputs=[wanted])
    assert "shared memory region 'nowhere' is not registered" in err.message()


def test_at_most_64_regions(http: Any, grpc_client: Any, shm: shared_memory.SharedMemory) -> None:
    for i in range(64):
        http.register_system_shared_memory(f"r{i}", key(shm), 64)
    err = refused(grpc_client.register_system_shared_memory, "r64", key(shm), 64)
    assert "64 shared memory regions are registered; at most 64" in err.message()
    assert "already registered" in refused(http.register_system_shared_memory, "r0", key(shm), 64).message()
    assert len(http.get_system_shared_memory_status()) == 64


def test_cuda_shared_memory_is_answered_as_a_server_without_gpus(http: Any, grpc_client: Any) -> None:
    assert http.get_cuda_shared_memory_status() == []
    assert "CUDA shared memory is not supported" in refused(http.register_cuda_shared_memory, "c", b"aGFuZGxl", 0, 8).message()
    assert not grpc_client.get_cuda_shared_memory_status().regions
    err = refused(grpc_client.register_cuda_shared_memory, "c", b"aGFuZGxl", 0, 8)
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "CUDA shared memory is not supported" in err.message()



def test_with_keys_cuda_shared_memory_needs_an_api_key_as_every_route(repo: Path) -> None:
    """With ``--api-key`` every route but the probes and every RPC but the liveness ones need a
    key: CUDA shared memory's register and unregister too (401 / ``UNAUTHENTICATED``), though the
    one refuses and the other changes nothing; with a key they answer as without keys."""
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(repo), "--api-key", API)
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    gclient = tgrpc.InferenceServerClient(grpc_address(proc))
    api = {"Authorization": f"Bearer {API}"}
    try:
        assert refused(http.register_cuda_shared_memory, "c", b"aGFuZGxl", 0, 8).status() == "401"
        assert refused(http.unregister_cuda_shared_memory).status() == "401"
        assert refused(http.unregister_cuda_shared_memory, "c").status() == "401"
        assert refused(gclient.register_cuda_shared_memory, "c", b"aGFuZGxl", 0, 8).status() == \
            "StatusCode.UNAUTHENTICATED"
        assert refused(gclient.unregister_cuda_shared_memory).status() == "StatusCode.UNAUTHENTICATED"
        err = refused(http.register_cuda_shared_memory, "c", b"aGFuZGxl", 0, 8, headers=api)
        assert err.status() == "400" and "CUDA shared memory is not supported" in err.message()
        http.unregister_cuda_shared_memory(headers=api)
        err = refused(gclient.register_cuda_shared_memory, "c", b"aGFuZGxl", 0, 8, headers={"authorization": api["Authorization"]})
        assert err.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        http.close()
        gclient.close()
        proc.stop()


def test_without_keys_a_forwarded_client_may_not_register(served: tuple[ServerProcess, str], http: Any,
                                                          shm: shared_memory.SharedMemory) -> None:
    err = refused(http.register_system_shared_memory, "f", key(shm), 64, headers={"X-Forwarded-For": "203.0.113.9"})
    assert err.status() == "403" and REGISTER_REFUSED in err.message()
    channel = grpc.insecure_channel(served[1])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.SystemSharedMemoryRegister(service_pb2.SystemSharedMemoryRegisterRequest(
            name="f", key=key(shm), byte_size=64), metadata=(("x-forwarded-for", "203.0.113.9"),))
    channel.close()
    assert (info.value.code().name, info.value.details()) == ("PERMISSION_DENIED", REGISTER_REFUSED)
    assert http.get_system_shared_memory_status() == []
    err = refused(http.get_system_shared_memory_status, headers={"X-Forwarded-For": "203.0.113.9"})
    assert (err.status(), err.message()) == ("403", STATUS_REFUSED)


def test_with_keys_only_the_admin_key_may_register_and_use_regions(repo: Path,
                                                                   shm: shared_memory.SharedMemory) -> None:
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(repo),
                         "--api-key", API, "--admin-key", ADMIN)
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    gclient = tgrpc.InferenceServerClient(grpc_address(proc))
    api, admin = {"Authorization": f"Bearer {API}"}, {"Authorization": f"Bearer {ADMIN}"}
    try:
        put(shm, 0, X)
        err = refused(http.register_system_shared_memory, "k", key(shm), 1024, headers=api)
        assert (err.status(), err.message()) == ("403", REGISTER_REFUSED)
        err = refused(gclient.register_system_shared_memory, "k", key(shm), 1024, headers={"authorization": api[
            "Authorization"]})
        assert (err.status(), err.message()) == ("StatusCode.PERMISSION_DENIED", REGISTER_REFUSED)
        http.register_system_shared_memory("k", key(shm), 1024, headers=admin)
        assert [r["name"] for r in http.get_system_shared_memory_status(headers=admin)] == ["k"]
        err = refused(infer_in_shm, thttp, http, "k", headers=api)  # using a region is the admin's too
        assert err.status() == "403" and "using a shared memory region needs the admin key" in err.message()
        err = refused(http.unregister_system_shared_memory, "k", headers=api)
        assert err.status() == "403"
        infer_in_shm(thttp, http, "k", headers=admin)
        assert get(shm, 512, (2, 1)).tolist() == Y.tolist()
        http.unregister_system_shared_memory(headers=admin)
        assert http.get_system_shared_memory_status(headers=admin) == []
    finally:
        http.close()
        gclient.close()
        proc.stop()


STATUS_REFUSED = ("reading the shared memory regions' status needs the admin key (--admin-key), or loopback when "
                  "no keys are configured")


def test_with_keys_only_the_admin_key_may_read_the_regions_status(repo: Path, shm: shared_memory.SharedMemory) -> None:
    """A region's key is the name of a shared memory object on the server's machine (another tenant's,
    for whoever may open it there) and its name is what an inference uses: its status is the
    admin's, as registering it is (Triton restricts status with register and unregister: its
    ``shared-memory`` API category).  CUDA's status, which never lists a region, needs an API key."""
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(repo),
                         "--api-key", API, "--admin-key", ADMIN)
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    gclient = tgrpc.InferenceServerClient(grpc_address(proc))
    api, admin = {"Authorization": f"Bearer {API}"}, {"Authorization": f"Bearer {ADMIN}"}
    try:
        http.register_system_shared_memory("tenant-a", key(shm), 1024, headers=admin)
        for name in ("", "tenant-a"):
            err = refused(http.get_system_shared_memory_status, name, headers=api)
            assert (err.status(), err.message()) == ("403", STATUS_REFUSED)
            assert key(shm) not in err.message()
            err = refused(gclient.get_system_shared_memory_status, name, headers={"authorization": api["Authorization"]})
            assert (err.status(), err.message()) == ("StatusCode.PERMISSION_DENIED", STATUS_REFUSED)
        assert refused(http.get_system_shared_memory_status).status() == "401"
        assert refused(gclient.get_system_shared_memory_status).status() == "StatusCode.UNAUTHENTICATED"
        assert http.get_system_shared_memory_status(headers=admin) == [
            {"name": "tenant-a", "key": key(shm), "offset": 0, "byte_size": 1024}]
        regions = gclient.get_system_shared_memory_status(headers={"authorization": admin["Authorization"]}).regions
        assert regions["tenant-a"].key == key(shm)
        assert http.get_cuda_shared_memory_status(headers=api) == []
        assert refused(http.get_cuda_shared_memory_status).status() == "401"
    finally:
        http.close()
        gclient.close()
        proc.stop()


def test_with_workers_registering_is_refused(repo: Path, shm: shared_memory.SharedMemory) -> None:
    # A region registered in one worker process would be unknown to the others.
    with ServerProcess("--workers", "2", "--models", "none", "--model-repository", str(repo)) as proc:
        http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
        err = refused(http.register_system_shared_memory, "w", key(shm), 64)
        assert err.status() == "403" and "not available with --workers" in err.message()
        assert "system_shared_memory" not in http.get_server_metadata()["extensions"]
        http.close()


def test_closing_unregisters_every_region_and_closes_its_file(tmp_path: Path) -> None:
    from wsserve.rest.sharedmem import SystemSharedMemory

    (tmp_path / "obj").write_bytes(bytes(128))
    regions = SystemSharedMemory(directory=tmp_path)
    regions.register("a", "/obj", 0, 64)
    regions.register("b", "obj", 64, 64)
    fds = [r.fd for r in regions._regions.values()]
    regions.close()
    assert len(regions) == 0 and regions.status() == []
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    regions.close()  # idempotent


def test_a_read_the_system_returns_in_parts_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux returns at most ~2 GiB per read while a region may be 4 GiB: a short read goes on from
    where it stopped (it was refused as a truncated file).  The system call is the boundary faked:
    here it returns at most 5 bytes a call."""
    from wsserve.rest.sharedmem import ShmRef, SystemSharedMemory

    payload = bytes(range(64))
    (tmp_path / "obj").write_bytes(payload)
    regions = SystemSharedMemory(directory=tmp_path)
    regions.register("a", "/obj", 0, 64)
    real = os.preadv

    def at_most_5(fd: int, buffers: list[Any], offset: int) -> int:
        return real(fd, [memoryview(buffers[0])[:5]], offset)

    monkeypatch.setattr(os, "preadv", at_most_5)
    assert bytes(regions.read(ShmRef("a", 3, 40), "input 'x'")) == payload[3:43]
    regions.close()


# --------------------------------------------------------------------------- Triton's perf_analyzer

_PERF_ANALYZER_DEFAULT = Path(__file__).resolve().parent.parent / ".cache" / "perf_analyzer" / "perf_analyzer"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_with_system_shared_memory(served: tuple[ServerProcess, str], http: Any,
                                                      protocol: str) -> None:
    """``perf_analyzer --shared-memory system``: Triton's own C++ clients register their regions, put
    every input and output in them, and unregister them at the end."""
    binary = os.environ.get("WSSERVE_PERF_ANALYZER") or (
        str(_PERF_ANALYZER_DEFAULT) if _PERF_ANALYZER_DEFAULT.exists() else shutil.which("perf_analyzer"))
    if not binary:
        pytest.skip("perf_analyzer is not installed: bash scripts/install-perf-analyzer")
    url = served[1] if protocol == "grpc" else f"127.0.0.1:{served[0].port}"
    run = subprocess.run(
        [binary, "-m", "aff", "-u", url, "-i", protocol, "-b", "4", "--shared-memory", "system",
         "--output-shared-memory-size", "64", "--measurement-mode", "count_windows",
         "--measurement-request-count", "50", "--max-trials", "3", "--stability-percentage", "100000"],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = dict(re.findall(r"^\s+(Inference count|Successful request count): (\d+)$", run.stdout, re.M))
    assert int(figures["Successful request count"]) >= 50
    assert http.get_system_shared_memory_status() == []  # it unregistered its regions


def test_an_inputs_bytes_are_copied_out_when_the_request_is_read(tmp_path: Path) -> None:
    # The request is queued with its own copy: the client may rewrite the region at once.
    from wsserve.rest import oip
    from wsserve.rest.sharedmem import SystemSharedMemory

    (tmp_path / "obj").write_bytes(bytes(16) + X.tobytes())
    regions = SystemSharedMemory(directory=tmp_path)
    regions.register("r", "/obj", 16, X.nbytes)
    spec_in, spec_out = oip.Tensor("input", "FP64", (3,)), oip.Tensor("output", "FP64", (1,))
    body = b'{"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64", "parameters": ' \
           b'{"shared_memory_region": "r", "shared_memory_byte_size": 48}}]}'
    req = oip.parse_infer(body, None, (spec_in,), (spec_out,), max_rows=8, shm=lambda: regions,
                          max_message_bytes=1 << 20)
    (tmp_path / "obj").write_bytes(bytes(16 + X.nbytes))  # the client reuses its region
    assert req.arrays["input"].tolist() == X.tolist()
    regions.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_another_users_shared_memory_is_refused(tmp_path: Path) -> None:
    from wsserve.errors import BadRequest
    from wsserve.rest.sharedmem import SystemSharedMemory

    (tmp_path / "theirs").write_bytes(bytes(64))
    os.chown(tmp_path / "theirs", 65534, 65534)
    with pytest.raises(BadRequest, match="belongs to another user"):
        SystemSharedMemory(directory=tmp_path).register("r", "/theirs", 0, 64)
    (tmp_path / "target").write_bytes(bytes(64))
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(BadRequest, match="cannot open shared memory key '/link'"):
        SystemSharedMemory(directory=tmp_path).register("r", "/link", 0, 64)


def test_bytes_tensors_do_not_go_through_shared_memory() -> None:
    """A BYTES input or output named in a region is refused naming it (its elements are
    length-prefixed, not a fixed size per value), before any region is read or written."""
    from wsserve.errors import BadRequest
    from wsserve.rest import oip
    from wsserve.rest.sharedmem import ShmRef

    text = oip.Tensor("text", "BYTES", (1,))
    with pytest.raises(BadRequest, match="input 'text' is BYTES: send its strings in the request"):
        oip.shm_input(ShmRef("r", 0, 8), None, [1, 1], text, 1, np.dtype(object), "BYTES")  # type: ignore[arg-type]
    wanted = {"outputs": [{"name": "text", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 8}}]}
    with pytest.raises(BadRequest, match="output 'text' is BYTES: it is answered in the response"):
        oip.requested(wanted, (text,), False, (), {})
