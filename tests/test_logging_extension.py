"""Triton's logging extension (``GET``/``POST /v2/logging``, gRPC ``LogSettings``).

The settings' rules (:mod:`wsserve.logcontrol`) on a private logger, then a real server on
loopback driven by ``tritonclient.http`` and ``tritonclient.grpc``: what it reports, who may
change it, and that a change reaches the server's log (an INFO record of a model load is
dropped with ``log_info`` off and written again with it on).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.repo_models import AFFINE_CONFIG, write_affine
from tests.support import ServerProcess, wait_until
from wsserve.errors import BadRequest, Forbidden
from wsserve.logcontrol import (
    LOG_SETTINGS,
    MAX_VERBOSE_LEVEL,
    LogControl,
    LogSettings,
    settings_for_level,
    updated,
)

grpc = pytest.importorskip("grpc")  # the grpc extra installs it
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.test_grpc import grpc_address  # noqa: E402

ADMIN = "admin-key-0123456789"
API = "api-key-9876543210"
DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
            "log_format": "text"}

# -- the rules, without a server


@pytest.mark.parametrize(("level", "info", "warning", "verbose"), [
    ("debug", True, True, 1), ("info", True, True, 0), ("warning", False, True, 0), ("error", False, False, 0)])
def test_log_level_flag_gives_triton_settings(level: str, info: bool, warning: bool, verbose: int) -> None:
    s = settings_for_level(level, "json")
    assert (s.log_info, s.log_warning, s.log_error, s.log_verbose_level, s.log_format, s.log_file) == (
        info, warning, True, verbose, "json", "")
    assert list(s.as_dict()) == list(LOG_SETTINGS)


@pytest.mark.parametrize(("changes", "message"), [
    ({"log_colour": True}, "unknown log setting 'log_colour'"),
    ({"log_info": 1}, "'log_info' must be a boolean"),
    ({"log_error": "false"}, "'log_error' must be a boolean"),
    ({"log_verbose_level": -1}, "'log_verbose_level' must be an integer"),
    ({"log_verbose_level": MAX_VERBOSE_LEVEL + 1}, "'log_verbose_level' must be an integer"),
    ({"log_verbose_level": True}, "'log_verbose_level' must be an integer"),
    ({"log_verbose_level": 1.0}, "'log_verbose_level' must be an integer"),
    ({"log_file": "/etc/passwd"}, "'log_file' must be \"\""),
    ({"log_file": 0}, "'log_file' must be a string"),
    ({"log_format": "ISO8601"}, "'log_format' is 'text' (--log-format) and cannot be changed"),
])
def test_bad_setting_is_refused_naming_it(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        updated(LogSettings(), changes)


def test_one_bad_setting_changes_none() -> None:
    control = LogControl(LogSettings(), root=logging.getLogger("test.logcontrol.atomic"))
    with pytest.raises(BadRequest):
        control.update({"log_info": False, "log_verbose_level": 3, "log_nonsense": 1})
    assert control.settings == LogSettings()


def test_current_file_and_format_may_be_sent_back() -> None:
    """What GET answered can be POSTed back unchanged (a client that round-trips the settings)."""
    s = settings_for_level("info", "json")
    assert updated(s, {**s.as_dict(), "log_verbose_level": 2}) == LogSettings(log_verbose_level=2, log_format="json")


def _private_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    logger = logging.getLogger(name)
    logger.propagate = False
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger, out


def test_settings_drop_and_restore_each_severity() -> None:
    logger, out = _private_logger("test.logcontrol.severities")
    child = logging.getLogger("test.logcontrol.severities.child")  # a module's logger: its records propagate
    control = LogControl.from_logging(root=logger)
    assert control.settings == settings_for_level("info")

    def emit_all() -> list[str]:
        out.seek(0)
        out.truncate()
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
            child.log(level, "x")
        return out.getvalue().split()[::2]

    assert emit_all() == ["INFO", "WARNING", "ERROR", "CRITICAL"]
    control.update({"log_verbose_level": 1, "log_warning": False})
    assert emit_all() == ["DEBUG", "INFO", "ERROR", "CRITICAL"]
    control.update({"log_verbose_level": 0, "log_info": False, "log_error": False})
    assert emit_all() == []
    control.update({"log_warning": True})
    assert emit_all() == ["WARNING"]
    control.update({"log_info": True, "log_error": True})
    assert emit_all() == ["INFO", "WARNING", "ERROR", "CRITICAL"]


def test_fixed_settings_refuse_changes_but_not_reads() -> None:
    control = LogControl(LogSettings(), fixed="not here", root=logging.getLogger("test.logcontrol.fixed"))
    assert control.update({}) == LogSettings()
    with pytest.raises(Forbidden, match="not here"):
        control.update({"log_info": False})


# -- a real server


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logging-repo") / "repository"
    (root / "aff").mkdir(parents=True)
    (root / "aff" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(root / "aff" / "1", bias=1.0)
    return root


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[tuple[ServerProcess, str]]:
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(repo))
    yield proc, grpc_address(proc)
    proc.stop()


def _serving_lines(proc: ServerProcess) -> int:
    return proc.stderr_text().count("serving model 'aff' version 1")


def _reload(client: Any) -> None:
    client.unload_model("aff")
    client.load_model("aff")


def test_http_reports_changes_and_the_log_follows(served: tuple[ServerProcess, str]) -> None:
    proc, _ = served
    client = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
    try:
        assert "logging" in client.get_server_metadata()["extensions"]
        assert client.get_log_settings() == DEFAULTS
        before = _serving_lines(proc)
        assert client.update_log_settings({"log_info": False}) == {**DEFAULTS, "log_info": False}
        assert client.get_log_settings() == {**DEFAULTS, "log_info": False}
        _reload(client)  # its "serving model" INFO record is dropped
        assert client.update_log_settings({"log_info": True})["log_info"] is True
        _reload(client)  # this one is written
        client.update_log_settings({"log_error": True})  # its WARNING record comes after both loads'
        wait_until(lambda: 'log settings changed by 127.0.0.1: {"log_error":true}' in proc.stderr_text(), 30.0,
                   what="the last change's WARNING record")
        assert _serving_lines(proc) == before + 1
        # a change that turns warnings off is still recorded (its record is written before it applies)
        client.update_log_settings({"log_warning": False})
        client.update_log_settings({"log_warning": True})
        wait_until(lambda: 'log settings changed by 127.0.0.1: {"log_warning":true}' in proc.stderr_text(), 30.0,
                   what="the record of turning warnings back on")
        assert 'log settings changed by 127.0.0.1: {"log_warning":false}' in proc.stderr_text()
        with pytest.raises(InferenceServerException, match="unknown log setting 'log_colour'"):
            client.update_log_settings({"log_colour": True})
        with pytest.raises(InferenceServerException, match="'log_file' must be"):
            client.update_log_settings({"log_file": "/tmp/elsewhere.log", "log_info": False})
        assert client.get_log_settings() == DEFAULTS  # the refused requests changed nothing
    finally:
        client.close()


def test_grpc_reports_and_changes_the_same_settings(served: tuple[ServerProcess, str]) -> None:
    proc, address = served
    client = tgrpc.InferenceServerClient(address)
    http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
    try:
        assert "logging" in client.get_server_metadata().extensions
        assert client.get_log_settings(as_json=True)["settings"] == {
            k: ({"string_param": v} if type(v) is str else {"bool_param": v} if type(v) is bool
                else {"uint32_param": v}) for k, v in DEFAULTS.items()}
        # protobuf's JSON drops a default value (a false bool, a 0), as Triton's answers read there
        changed = client.update_log_settings({"log_verbose_level": 2, "log_warning": False}, as_json=True)["settings"]
        assert changed["log_verbose_level"] == {"uint32_param": 2}
        assert http.get_log_settings() == {**DEFAULTS, "log_verbose_level": 2, "log_warning": False}
        with pytest.raises(InferenceServerException, match="'log_format' is 'text'"):
            client.update_log_settings({"log_format": "ISO8601"})
        client.update_log_settings({"log_verbose_level": 0, "log_warning": True})
        assert http.get_log_settings() == DEFAULTS
    finally:
        client.close()
        http.close()


def test_changing_needs_the_admin_key_reading_an_api_key(repo: Path) -> None:
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(repo),
                         "--api-key", API, "--admin-key", ADMIN)
    try:
        address = grpc_address(proc)
        http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
        gclient = tgrpc.InferenceServerClient(address)
        api, admin = {"Authorization": f"Bearer {API}"}, {"Authorization": f"Bearer {ADMIN}"}
        with pytest.raises(InferenceServerException, match="401|[Uu]nauthori"):
            http.get_log_settings()
        assert http.get_log_settings(headers=api) == DEFAULTS
        with pytest.raises(InferenceServerException, match="changing log settings needs the admin key"):
            http.update_log_settings({"log_info": False}, headers=api)
        with pytest.raises(InferenceServerException, match="changing log settings needs the admin key"):
            gclient.update_log_settings({"log_info": False}, headers={"authorization": f"Bearer {API}"})
        assert http.get_log_settings(headers=api) == DEFAULTS
        assert http.update_log_settings({"log_info": False}, headers=admin)["log_info"] is False
        assert gclient.update_log_settings({"log_info": True}, headers={"authorization": f"Bearer {ADMIN}"},
                                           as_json=True)["settings"]["log_info"] == {"bool_param": True}
        http.close()
        gclient.close()
    finally:
        proc.stop()


def test_workers_refuse_changes(repo: Path) -> None:
    proc = ServerProcess("--workers", "2", "--models", "none", "--model-repository", str(repo))
    try:
        http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
        assert http.get_log_settings() == DEFAULTS
        with pytest.raises(InferenceServerException, match="not available with --workers"):
            http.update_log_settings({"log_info": False})
        http.close()
    finally:
        proc.stop()


EMBEDDED = f'''
import logging
import sys

import wsserve

logging.basicConfig(level=logging.WARNING, format="PROGRAM %(levelname)s %(name)s: %(message)s")
ident = wsserve.FunctionModel(lambda x: x, name="ident", input_shape=(2,), output_shape=(2,))
sys.exit(wsserve.serve(models={{"ident": ident}}, host="127.0.0.1", port=0, log_level=None,
                       api_key=frozenset({{{API!r}}}), admin_key=frozenset({{{ADMIN!r}}})))
'''


def test_an_embedding_programs_own_logging_is_not_changed(tmp_path: Path) -> None:
    """``wsserve.serve(log_level=None)`` leaves logging to the program: its handlers neither mask
    credentials nor take the server's settings, so a change is refused (an admin's
    ``log_verbose_level`` once lowered the program's root logger to DEBUG, and the handshake's
    ``Authorization`` header reached the program's log); reading still answers."""
    import sys

    import websockets.sync.client

    script = tmp_path / "embedded.py"
    script.write_text(EMBEDDED)
    proc = ServerProcess.from_command([sys.executable, str(script)])
    try:
        http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert http.get_log_settings(headers=admin)["log_verbose_level"] == 0
        with pytest.raises(InferenceServerException, match="handlers it did not set up"):
            http.update_log_settings({"log_verbose_level": 1}, headers=admin)
        assert http.get_log_settings(headers=admin)["log_verbose_level"] == 0
        with websockets.sync.client.connect(proc.url, additional_headers={"Authorization": f"Bearer {API}"}) as ws:
            ws.send('{"type":"models","id":1}')
            assert '"type":"hello"' in ws.recv()
        http.close()
    finally:
        proc.stop()
    assert API not in proc.stderr_text() and "PROGRAM DEBUG" not in proc.stderr_text()
