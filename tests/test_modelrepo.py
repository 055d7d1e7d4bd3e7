"""Triton's model repository extension, sans-I/O (:mod:`wsserve.rest.modelrepo`) and its gRPC
messages (:mod:`wsserve.oipgrpc.convert`): the index rows, the admin rule, the parameters, with
no server (the wire tests: tests/test_http_repository.py, tests/test_grpc_repository.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wsserve.auth import KeyRegistry
from wsserve.config import ServerConfig
from wsserve.errors import BadRequest, Forbidden, Unauthorized
from wsserve.rest import modelrepo


@dataclass
class _Status:
    state: str
    reason: str | None = None


class _Pool:
    names = ("b", "a")

    @staticmethod
    def status(name: str) -> dict[str, _Status]:
        return {"a": {"10": _Status("ready"), "2": _Status("loading"), "3": _Status("failed", "bad weights")},
                "b": {"1": _Status("unloading")}}.get(name, {})


def test_index_rows_by_name_then_numeric_version_with_triton_states() -> None:
    rows = modelrepo.index_rows(_Pool(), ["gone"], ready_only=False)
    assert [(r["name"], r["version"], r["state"], r["reason"]) for r in rows] == [
        ("a", "2", "LOADING", ""), ("a", "3", "UNAVAILABLE", "bad weights"), ("a", "10", "READY", ""),
        ("b", "1", "UNLOADING", ""), ("gone", "", "UNAVAILABLE", "unloaded")]
    assert [(r["name"], r["version"]) for r in modelrepo.index_rows(_Pool(), ["gone"], ready_only=True)] == [
        ("a", "10")]


@pytest.mark.parametrize("params, expected", [({}, (None, None)), ({"version": 2}, ("2", None)),
                                              ({"version": "7"}, ("7", None)), ({"unload_dependents": True}, (None, None)),
                                              ({"config": "{}", "version": 3}, ("3", "{}"))])
def test_admin_params(params: dict, expected: tuple[str | None, str | None]) -> None:
    assert modelrepo.admin_params("load", params) == expected


@pytest.mark.parametrize("params, message", [
    ({"file:1/model.onnx": "AAAA"}, "parameter 'file:1/model.onnx' is not supported"),
    ({"config": 7}, "parameter 'config' must be a model configuration in JSON"),
    ({"config": ""}, "parameter 'config' must be a model configuration in JSON"),
    ({"config": "{" * (modelrepo.MAX_CONFIG_PARAM_CHARS + 1)}, "parameter 'config' must be a model configuration"),
    ({"version": True}, "parameter 'version' must be a positive integer"),
    ({"version": b"1"}, "parameter 'version' must be a positive integer"),
    ({"version": 1 << 63}, "parameter 'version' must be a positive integer"),
    ({"unload_dependents": 1}, "parameter 'unload_dependents' must be a boolean"),
])
def test_admin_params_refuses_by_name(params: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=f"^{message}"):
        modelrepo.admin_params("load", params)


def test_config_is_for_load_only() -> None:
    with pytest.raises(BadRequest, match="^parameter 'config' is for load only, not unload"):
        modelrepo.admin_params("unload", {"config": "{}"})


def test_check_admin_rule() -> None:
    keyless = ServerConfig()
    modelrepo.check_admin(keyless, KeyRegistry(()), "load", address="127.0.0.1", authorization=None, local=True,
                          now=0.0)
    with pytest.raises(Forbidden, match="^unload needs the admin key"):
        modelrepo.check_admin(keyless, KeyRegistry(()), "unload", address="10.0.0.1", authorization=None,
                              local=False, now=0.0)
    keyed = ServerConfig(api_key=("api-key-0123456789",), admin_key=("admin-key-0123456789",))
    keys = KeyRegistry(keyed.api_key, admin_keys=keyed.admin_key)
    modelrepo.check_admin(keyed, keys, "load", address="10.0.0.1", authorization="Bearer admin-key-0123456789",
                          local=False, now=0.0)
    with pytest.raises(Forbidden):  # another key, even from loopback
        modelrepo.check_admin(keyed, keys, "load", address="127.0.0.1", authorization="Bearer api-key-0123456789",
                              local=True, now=0.0)
    with pytest.raises(Unauthorized):
        modelrepo.check_admin(keyed, keys, "load", address="127.0.0.1", authorization=None, local=True, now=0.0)


def test_grpc_repository_op_reads_tritons_parameters() -> None:
    convert = pytest.importorskip("wsserve.oipgrpc.convert")  # the grpc extra
    from tritonclient.grpc import service_pb2

    request = service_pb2.RepositoryModelUnloadRequest(model_name="m")
    request.parameters["unload_dependents"].bool_param = False  # what tritonclient's unload_model sends
    assert convert.repository_op("unload", request) == ("m", None, None)
    request.parameters["version"].int64_param = 3
    assert convert.repository_op("unload", request) == ("m", "3", None)
    request.parameters["version"].string_param = "4"
    assert convert.repository_op("unload", request) == ("m", "4", None)
    load = service_pb2.RepositoryModelLoadRequest(model_name="m")
    load.parameters["config"].string_param = '{"max_batch_size": 4}'  # what tritonclient's load_model(config=) sends
    assert convert.repository_op("load", load) == ("m", None, '{"max_batch_size": 4}')
    request.parameters["nothing"].Clear()
    with pytest.raises(BadRequest, match="^parameter 'nothing' sets no value$"):
        convert.repository_op("unload", request)
    with pytest.raises(BadRequest, match="^unknown repository_name 'r'"):
        convert.repository_op("load", service_pb2.RepositoryModelLoadRequest(repository_name="r", model_name="m"))
    rows = [{"name": "m", "version": "1", "state": "READY", "reason": ""}]
    assert [(m.name, m.version, m.state) for m in convert.repository_index(rows).models] == [("m", "1", "READY")]


def test_a_load_with_a_failed_version_is_triton_s_error() -> None:
    result = {"model": "m", "versions": [{"version": "1", "state": "ready"},
                                         {"version": "2", "state": "failed", "reason": "bad weights"},
                                         {"version": "3", "state": "failed", "reason": "no file"}]}
    err = modelrepo.failed_load("load", "m", None, result)
    assert isinstance(err, BadRequest)
    assert err.message == "load failed for model 'm': version 2: bad weights; version 3: no file"
    assert modelrepo.failed_load("load", "m", "3", result).message == "load failed for model 'm': version 3: no file"
    assert modelrepo.failed_load("load", "m", "1", result) is None  # the version loaded did not fail
    assert modelrepo.failed_load("unload", "m", None, result) is None
    assert modelrepo.failed_load("load", "m", None, BadRequest("x")) is None  # an error stays the error
    answers: list[object] = []
    hook = modelrepo.admin_hook(lambda op, name, version, done, config: done(result), "load")
    hook("load", "m", None, answers.append)
    assert isinstance(answers[0], BadRequest)
    hook("load", "m", "1", answers.append)
    assert answers[1] is result
