"""Triton's model repository extension over gRPC (``RepositoryIndex``, ``RepositoryModelLoad``,
``RepositoryModelUnload``), driven by ``tritonclient.grpc`` against a real server on loopback.

The server serves a repository of ``aff`` (a ``model.py`` with versions 1 and 2) and ``broken``
(a ``model.py`` that fails to load).  Answers are compared with the HTTP routes' (one
implementation, :mod:`wsserve.rest.modelrepo`); admin operations follow the HTTP rule: loopback
without keys, the admin key with keys.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.repo_models import AFFINE_CONFIG, SYNTAX_ERROR_PY, write_affine, write_py
from tests.support import ServerProcess, wait_until

grpc = pytest.importorskip("grpc")  # the grpc extra installs it
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.test_grpc import grpc_address  # noqa: E402
from wsserve.oipgrpc.service import _address  # noqa: E402

ADMIN = "admin-key-0123456789"
API = "api-key-9876543210"
FORBIDDEN = "{op} needs the admin key (--admin-key), or loopback when no keys are configured"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc-repo") / "repository"
    (root / "aff").mkdir(parents=True)
    (root / "aff" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(root / "aff" / "1", bias=1.0)
    write_affine(root / "aff" / "2", bias=2.0)
    (root / "broken").mkdir()
    (root / "broken" / "config.toml").write_text(AFFINE_CONFIG)
    write_py(root / "broken" / "1", SYNTAX_ERROR_PY)
    return root


def _serve(repo: Path, *flags: str) -> tuple[ServerProcess, str]:
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(repo), *flags)
    return proc, grpc_address(proc)


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[tuple[ServerProcess, str]]:
    """No keys: admin operations from loopback."""
    proc, address = _serve(repo)
    yield proc, address
    proc.stop()


@pytest.fixture
def client(served: tuple[ServerProcess, str]) -> Iterator[Any]:
    c = tgrpc.InferenceServerClient(served[1])
    yield c
    c.close()


@pytest.fixture
def stub(served: tuple[ServerProcess, str]) -> Iterator[Any]:
    channel = grpc.insecure_channel(served[1])
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def index(client: Any, **kwargs: Any) -> list[tuple[str, str, str, str]]:
    """``get_model_repository_index`` as ``[(name, version, state, reason)]``, in its order."""
    return [(m.name, m.version, m.state, m.reason) for m in client.get_model_repository_index(**kwargs).models]


def ready_index(stub: Any) -> list[tuple[str, str, str, str]]:
    """The index of the ready versions only (``ready``: ``tritonclient.grpc`` does not send it)."""
    rows = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True)).models
    return [(m.name, m.version, m.state, m.reason) for m in rows]


def http_index(proc: ServerProcess, **kwargs: Any) -> list[tuple[str, str, str, str]]:
    """The same index over HTTP (``tritonclient.http``)."""
    rows = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}").get_model_repository_index(**kwargs)
    return [(m["name"], m.get("version", ""), m["state"], m.get("reason", "")) for m in rows]


def _refused(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def _rpc_error(call: Any, request: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, **kwargs)
    return info.value


def _all_ready(client: Any) -> bool:
    return client.is_model_ready("aff", "1") and client.is_model_ready("aff", "2")


def test_index_lists_every_version_with_its_state_as_the_http_route(served, client, stub) -> None:
    rows = index(client)
    assert [r[:3] for r in rows] == [("aff", "1", "READY"), ("aff", "2", "READY"), ("broken", "1", "UNAVAILABLE")]
    assert rows[2][3] and "model.py" in rows[2][3]  # the load failure's reason
    assert rows == http_index(served[0])
    assert ready_index(stub) == rows[:2]
    assert "model_repository" in client.get_server_metadata().extensions


def test_unload_and_load_a_model_with_tritonclient(served, client, stub) -> None:
    client.unload_model("aff")
    wait_until(lambda: ("aff", "", "UNAVAILABLE", "unloaded") in index(client), 30.0, what="aff unloaded")
    assert not client.is_model_ready("aff") and not client.is_model_ready("aff", "1")
    assert "aff" not in {r[0] for r in ready_index(stub)}
    assert index(client) == http_index(served[0])
    client.load_model("aff")  # answered once loaded
    assert _all_ready(client) and index(client)[:2] == [("aff", "1", "READY", ""), ("aff", "2", "READY", "")]


def test_unload_and_load_one_version_with_the_version_parameter(client, stub) -> None:
    request = service_pb2.RepositoryModelUnloadRequest(model_name="aff")
    request.parameters["version"].int64_param = 1
    request.parameters["unload_dependents"].bool_param = False
    stub.RepositoryModelUnload(request)
    wait_until(lambda: [r[:2] for r in index(client) if r[0] == "aff"] == [("aff", "2")], 30.0,
               what="aff version 1 unloaded")
    assert not client.is_model_ready("aff", "1") and client.is_model_ready("aff", "2")
    request = service_pb2.RepositoryModelLoadRequest(model_name="aff")
    request.parameters["version"].string_param = "1"
    stub.RepositoryModelLoad(request)
    assert _all_ready(client)


@pytest.mark.parametrize("op, model, params, status, message", [
    ("Load", "zzz", {}, "NOT_FOUND", "no model named 'zzz' in the model repository"),
    ("Load", "aff", {"version": ("int64_param", 9)}, "NOT_FOUND", "model 'aff' has no version '9' in the repository"),
    ("Unload", "zzz", {}, "NOT_FOUND", "no model named 'zzz' is loaded"),
    ("Unload", "aff", {"config": ("string_param", "{}")}, "INVALID_ARGUMENT",
     "parameter 'config' is for load only, not unload"),
    ("Load", "aff", {"file:1/model.py": ("bytes_param", b"x")}, "INVALID_ARGUMENT",
     "parameter 'file:1/model.py' is not supported (only 'version' and 'config'; model files load from the repository)"),
    ("Load", "aff", {"version": ("int64_param", 0)}, "INVALID_ARGUMENT",
     "parameter 'version' must be a positive integer or a string of at most 64 characters"),
    ("Load", "aff", {"version": ("bool_param", True)}, "INVALID_ARGUMENT",
     "parameter 'version' must be a positive integer or a string of at most 64 characters"),
    ("Unload", "aff", {"unload_dependents": ("string_param", "yes")}, "INVALID_ARGUMENT",
     "parameter 'unload_dependents' must be a boolean"),
    ("Unload", "", {}, "INVALID_ARGUMENT", "'model_name' is required"),
    # a name as long as HTTP's path segment and the WebSocket's 'model' may be (256): was INTERNAL
    # ("File name too long"); a longer one is refused before anything looks for it
    pytest.param("Load", "x" * 256, {}, "NOT_FOUND", f"no model named {'x' * 256!r} in the model repository",
                 id="Load-name-of-256"),
    pytest.param("Load", "x" * 257, {}, "INVALID_ARGUMENT", "'model_name' has 257 characters; the limit is 256",
                 id="Load-name-of-257"),
    pytest.param("Unload", "x" * 257, {}, "INVALID_ARGUMENT", "'model_name' has 257 characters; the limit is 256",
                 id="Unload-name-of-257"),
])
def test_errors_name_the_problem(client, stub, op: str, model: str, params: dict[str, tuple[str, Any]], status: str,
                                 message: str) -> None:
    request = getattr(service_pb2, f"RepositoryModel{op}Request")(model_name=model)
    for key, (field, value) in params.items():
        setattr(request.parameters[key], field, value)
    err = _rpc_error(getattr(stub, f"RepositoryModel{op}"), request)
    assert (err.code().name, err.details()) == (status, message)
    assert _all_ready(client)  # nothing changed


def test_tritonclient_load_with_files_is_refused_by_name(client) -> None:
    err = _refused(client.load_model, "aff", config='{"backend": "python"}', files={"file:1/model.py": b"x"})
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "parameter 'file:1/model.py' is not supported" in err.message()


def test_an_unknown_repository_name_is_refused(client, stub) -> None:
    message = ("unknown repository_name 'other': wsserve serves its model repositories as one (each model name "
               "once); leave repository_name empty")
    for call, request in ((stub.RepositoryIndex, service_pb2.RepositoryIndexRequest(repository_name="other")),
                          (stub.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest(
                              repository_name="other", model_name="aff")),
                          (stub.RepositoryModelUnload, service_pb2.RepositoryModelUnloadRequest(
                              repository_name="other", model_name="aff"))):
        err = _rpc_error(call, request)
        assert (err.code().name, err.details()) == ("INVALID_ARGUMENT", message)
    assert _all_ready(client)


@pytest.mark.parametrize("header", [("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.9"),
                                    ("x-real-ip", "203.0.113.9"), ("origin", "http://evil.example")])
def test_without_keys_a_forwarded_or_browser_rpc_may_not_load_or_unload(client, stub, header: tuple[str, str]) -> None:
    for op in ("Load", "Unload"):
        request = getattr(service_pb2, f"RepositoryModel{op}Request")(model_name="aff")
        err = _rpc_error(getattr(stub, f"RepositoryModel{op}"), request, metadata=(header,))
        assert (err.code().name, err.details()) == ("PERMISSION_DENIED", FORBIDDEN.format(op=op.lower()))
    assert _all_ready(client)


def test_with_keys_only_the_admin_key_may_load_and_unload(repo: Path) -> None:
    proc, address = _serve(repo, "--api-key", API, "--admin-key", ADMIN)
    client = tgrpc.InferenceServerClient(address)
    try:
        api, admin = {"authorization": f"Bearer {API}"}, {"authorization": f"Bearer {ADMIN}"}
        for op, call in (("load", client.load_model), ("unload", client.unload_model)):
            err = _refused(call, "aff", headers=api)
            assert (err.status(), err.message()) == ("StatusCode.PERMISSION_DENIED", FORBIDDEN.format(op=op))
            for headers in (None, {"authorization": "Bearer nope"}):
                assert _refused(call, "aff", headers=headers).status() == "StatusCode.UNAUTHENTICATED"
        assert _refused(client.get_model_repository_index).status() == "StatusCode.UNAUTHENTICATED"
        assert index(client, headers=api)[:2] == [("aff", "1", "READY", ""), ("aff", "2", "READY", "")]
        client.unload_model("aff", headers=admin)
        wait_until(lambda: ("aff", "", "UNAVAILABLE", "unloaded") in index(client, headers=api), 30.0,
                   what="aff unloaded")
        client.load_model("aff", headers=admin)
        assert client.is_model_ready("aff", "1", headers=api) and client.is_model_ready("aff", "2", headers=api)
    finally:
        client.close()
        proc.stop()


def test_a_load_that_leaves_a_version_failed_is_an_error_as_tritons(client: Any) -> None:
    # RepositoryModelLoad answered OK for a model whose version failed to load; Triton answers
    # INVALID_ARGUMENT naming the version (tritonclient's load_model raises).
    with pytest.raises(InferenceServerException) as info:
        client.load_model("broken")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message().startswith("load failed for model 'broken': version 1: ")
    assert not client.is_model_ready("broken")


def test_without_keys_a_repeated_authorization_entry_is_not_looked_at(stub) -> None:
    """Without keys no RPC reads ``authorization``; the admin rule is the address's (as HTTP's)."""
    request = service_pb2.RepositoryModelLoadRequest(model_name="zzz")
    err = _rpc_error(stub.RepositoryModelLoad, request, metadata=(("authorization", "Bearer a"),
                                                                  ("authorization", "Bearer b")))
    assert (err.code().name, err.details()) == ("NOT_FOUND", "no model named 'zzz' in the model repository")


# --------------------------------------------------------------------------- IPv6 peers
# grpc writes an IPv6 peer percent-encoded (``ipv6:%5B::1%5D:PORT``): it was taken whole for the
# client's address, so an IPv6 loopback client was not loopback (no admin without keys), and each
# of a client's connections (another port) had a failed-authentication budget of its own.

#: The gRPC port in the server's log, whatever the host (``localhost`` here).
GRPC_PORT = re.compile(r"gRPC \(Open Inference Protocol\) on \S+:(\d+)")
#: A channel of its own (a new connection, a new peer port), as another client process would have.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")


def _serve_v6(repo: Path, *flags: str) -> tuple[ServerProcess, str]:
    """A server on ``localhost`` (grpc listens on 127.0.0.1 and ::1); its gRPC address over ::1."""
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(repo), "--host",
                         "localhost", *flags)
    found = wait_until(lambda: GRPC_PORT.search(proc.stderr_text()), 30.0, what="the gRPC port in the server's log")
    return proc, f"[::1]:{found.group(1)}"


@pytest.mark.parametrize("peer, address", [
    ("ipv4:127.0.0.1:5000", "127.0.0.1"),
    ("ipv6:%5B::1%5D:5000", "::1"),  # grpc >= 1.5x: percent-encoded
    ("ipv6:[::1]:5000", "::1"),  # older grpc
    ("ipv6:%5B2001:db8::7%5D:443", "2001:db8::7"),
    ("ipv6:%5Bfe80::1%25eth0%5D:5000", "fe80::1%eth0"),  # a zone
    ("unix:/run/wsserve.sock", "unix:/run/wsserve.sock"),  # no IP address: never loopback
])
def test_the_clients_address_in_a_grpc_peer_string(peer: str, address: str) -> None:
    assert _address(peer) == address


@needs_ipv6
def test_without_keys_an_ipv6_loopback_client_may_load_and_unload(repo: Path) -> None:
    proc, address = _serve_v6(repo)
    client = tgrpc.InferenceServerClient(address)
    try:
        client.unload_model("aff")  # was PERMISSION_DENIED: the peer was not seen as loopback
        wait_until(lambda: ("aff", "", "UNAVAILABLE", "unloaded") in index(client), 30.0, what="aff unloaded")
        client.load_model("aff")
        assert _all_ready(client)
        err = _refused(client.unload_model, "aff", headers={"x-forwarded-for": "2001:db8::9"})
        assert (err.status(), err.message()) == ("StatusCode.PERMISSION_DENIED", FORBIDDEN.format(op="unload"))
    finally:
        client.close()
        proc.stop()


@needs_ipv6
def test_an_ipv6_clients_failed_attempts_count_across_its_connections(repo: Path) -> None:
    """10 wrong keys a minute per address (its /64), whichever connection they come on; then even
    the admin key is refused until the budget refills (``RESOURCE_EXHAUSTED``)."""
    proc, address = _serve_v6(repo, "--api-key", API, "--admin-key", ADMIN)
    try:
        codes = []
        for headers in [{"authorization": "Bearer nope"}] * 11 + [{"authorization": f"Bearer {ADMIN}"}]:
            client = tgrpc.InferenceServerClient(address, channel_args=OWN_CONNECTION)
            try:
                codes.append(_refused(client.load_model, "aff", headers=headers).status())
            finally:
                client.close()
        assert codes == ["StatusCode.UNAUTHENTICATED"] * 10 + ["StatusCode.RESOURCE_EXHAUSTED"] * 2
    finally:
        proc.stop()


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_failed_key_budget(repo: Path) -> None:
    """--trusted-proxy held for HTTP only: behind a gRPC proxy (nginx's grpc_pass on the same host)
    every client shared the proxy's budget of failed keys, so one client guessing keys locked all
    of them out.  Now, as over HTTP, the client the proxy names in x-forwarded-for is whose."""
    proc, address = _serve(repo, "--api-key", API, "--admin-key", ADMIN, "--trusted-proxy", "127.0.0.1")
    try:
        def load(forwarded_for: str, key: str) -> str:
            client = tgrpc.InferenceServerClient(address, channel_args=OWN_CONNECTION)
            try:
                return _refused(client.load_model, "nope", headers={"authorization": f"Bearer {key}",
                                                                    "x-forwarded-for": forwarded_for}).status()
            finally:
                client.close()

        guesser = [load("203.0.113.7", "nope") for _ in range(11)]
        assert guesser == ["StatusCode.UNAUTHENTICATED"] * 10 + ["StatusCode.RESOURCE_EXHAUSTED"]
        assert load("203.0.113.7", ADMIN) == "StatusCode.RESOURCE_EXHAUSTED"  # its budget is spent
        # Another client behind the same proxy is not locked out: its admin key is taken (the model
        # is unknown, so the load itself is NOT_FOUND).
        assert load("198.51.100.2", ADMIN) == "StatusCode.NOT_FOUND"
        # The forwarded client, not the proxy's loopback address, is whom the admin rule sees: with
        # keys off that is tested elsewhere; here a forwarded API key is still not an admin key.
        assert load("198.51.100.2", API) == "StatusCode.PERMISSION_DENIED"
    finally:
        proc.stop()
