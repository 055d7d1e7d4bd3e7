"""Tests of :class:`wsserve.config.ServerConfig` and the ``wsserve`` command line.

Only argument handling: no server is started (every ``main`` call here exits
before ``run``), except one subprocess that checks ``python -m wsserve``
reports a bad flag the same way.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from wsserve import __version__
from wsserve.cli import build_parser, config_from_args, main
from wsserve.config import DEFAULT_MODELS, ServerConfig, flag

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSSERVE_API_KEYS", raising=False)
    monkeypatch.delenv("WSSERVE_ADMIN_KEYS", raising=False)


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(argv)``; it must exit with status 2.  Returns stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err
    return err


# --------------------------------------------------------------------------- ServerConfig


def test_defaults_are_valid_and_match_the_protocol() -> None:
    cfg = ServerConfig()
    assert cfg.validate() is cfg
    assert cfg.public_limits() == {
        "max_message_bytes": 1048576, "max_inflight": 256, "max_rows": 65536, "max_tokens": 100000,
        "max_inflight_bytes": 32 << 20, "max_explain_rows": 256,
        "guide_compile_memory_bytes": 1 << 30, "guide_compile_cpu_s": 10, "guide_compile_timeout_s": 15.0,
    }
    assert cfg.models == DEFAULT_MODELS == ("linear", "mlp", "charlm")
    assert cfg.max_delay_ms is None  # greedy by default
    assert cfg.drain_timeout_s == 10.0


def test_config_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        ServerConfig("0.0.0.0")  # type: ignore[misc]
    cfg = ServerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_field_names() -> None:
    names = ServerConfig.field_names()
    for name in ("host", "port", "max_batch_size", "max_delay_ms", "max_inflight", "max_message_bytes", "drain_timeout_s"):
        assert name in names


def test_every_setting_is_a_flag_of_the_same_name(capsys: pytest.CaptureFixture[str]) -> None:
    """One name per setting: the flag is ``--`` + the field name with dashes, and its dest is the field."""
    parser = build_parser()
    serve = next(a for a in parser._subparsers._actions if a.dest == "command").choices["serve"]  # type: ignore[union-attr]
    dests = {a.dest: a.option_strings for a in serve._actions}
    for name in ServerConfig.field_names():
        assert name in dests, name
        assert flag(name) in dests[name], (name, dests[name])
    # durations carry their unit in the name
    for name in ServerConfig.field_names():
        if "timeout" in name or "interval" in name or "delay" in name:
            assert name.endswith(("_s", "_ms")), name


_BAD_SETTINGS = [
    ("port", -1),
    ("port", 65536),
    ("max_message_bytes", 0),
    ("max_inflight", 0),
    ("max_inflight", -3),
    ("max_inflight", "8"),
    ("max_rows", 0),
    ("max_tokens", 0),
    ("max_batch_size", 0),
    ("max_generate_batch", 0),
    ("max_write_buffer_bytes", 0),
    ("max_queue_rows", 0),
    ("max_generate_queue", -1),
    ("max_connections", 0),
    ("rate_limit_burst", 0),
    ("max_delay_ms", -1.0),
    ("max_delay_ms", 0.0),
    ("max_delay_ms", 60_001.0),
    ("drain_timeout_s", -0.5),
    ("slow_consumer_timeout_s", -1.0),
    ("auth_timeout_s", -1.0),
    ("inline_max_flops", -1),
    ("ping_interval_s", 0.0),
    ("ping_timeout_s", -1.0),
    ("idle_timeout_s", 0.0),
    ("rate_limit_per_s", 0.0),
    ("max_inflight_bytes", 0),
    ("max_queue_bytes", 0),
    ("loop", "trio"),
    ("seed", -1),
    # sized a per-slot array and a free-slot list up front: 10**9 never became ready (killed at 40 s)
    ("max_generate_batch", 10**9),
    ("max_generate_batch", 4097),
    ("seed", 2**63),
    # a load that never returns held its slot (and start-up) forever: the timeout is a finite positive number
    ("model_load_timeout_s", 0.0),
    ("model_load_timeout_s", -1.0),
    ("model_load_timeout_s", math.inf),
    ("model_load_timeout_s", 86_401.0),
    ("model_load_timeout_s", "600"),
    ("model_load_timeout_s", None),
    ("max_npz_bytes", 0),
    ("max_npz_bytes", None),
    # a worker that hangs while starting was waited for forever: the boot timeout is finite and positive, or off
    ("worker_boot_timeout_s", 0.0),
    ("worker_boot_timeout_s", -1.0),
    ("worker_boot_timeout_s", math.inf),
    ("worker_boot_timeout_s", 172_801.0),
    ("worker_boot_timeout_s", "600"),
    # the compiling child's limits were environment variables ($WSSERVE_GUIDE_COMPILE_*), 0 turning one off
    ("guide_compile_memory_bytes", 0),
    ("guide_compile_memory_bytes", (64 << 20) - 1),
    ("guide_compile_memory_bytes", (64 << 30) + 1),
    ("guide_compile_memory_bytes", None),
    ("guide_compile_cpu_s", 0),
    ("guide_compile_cpu_s", 3601),
    ("guide_compile_cpu_s", 2.5),
    ("guide_compile_cpu_s", True),
    ("guide_compile_timeout_s", 0.0),
    ("guide_compile_timeout_s", math.inf),
    ("guide_compile_timeout_s", math.nan),
    ("guide_compile_timeout_s", 3600.5),
    ("guide_compile_timeout_s", "15"),
    # the response cache's size: bytes in 0..1 TiB (0: no cache)
    ("response_cache_bytes", -1),
    ("response_cache_bytes", (1 << 40) + 1),
    ("response_cache_bytes", None),
    ("response_cache_bytes", 1.5),
]


@pytest.mark.parametrize("name, value", _BAD_SETTINGS, ids=[f"{n}={v!r}" for n, v in _BAD_SETTINGS])
def test_validate_names_the_setting(name: str, value: object) -> None:
    cfg = ServerConfig(**{name: value})
    with pytest.raises(ValueError, match=flag(name)):
        cfg.validate()


@pytest.mark.parametrize(
    "name, value",
    [("max_queue_rows", None), ("max_connections", None), ("ping_interval_s", None), ("idle_timeout_s", None),
     ("rate_limit_per_s", None), ("max_delay_ms", 2.5), ("max_delay_ms", None), ("drain_timeout_s", 0.0),
     ("port", 0), ("port", 65535), ("max_generate_batch", 4096), ("model_load_timeout_s", 0.001),
     ("model_load_timeout_s", 86_400), ("worker_boot_timeout_s", None), ("worker_boot_timeout_s", 0.001),
     ("worker_boot_timeout_s", 172_800), ("guide_compile_memory_bytes", 64 << 20), ("guide_compile_memory_bytes", 64 << 30),
     ("guide_compile_cpu_s", 1), ("guide_compile_cpu_s", 3600), ("guide_compile_timeout_s", 0.1),
     ("guide_compile_timeout_s", 3600), ("response_cache_bytes", 0), ("response_cache_bytes", 1 << 40)],
)
def test_validate_accepts_edges_and_none(name: str, value: object) -> None:
    ServerConfig(**{name: value}).validate()


_COUNT_LIMITS = ("max_message_bytes", "max_inflight", "max_inflight_bytes", "max_rows", "max_explain_rows", "max_tokens",
                 "max_batch_size", "max_generate_batch", "max_write_buffer_bytes", "max_npz_bytes",
                 "max_sequence_state_bytes", "max_sequence_state_total_bytes", "max_reschedules", "max_queue_rows",
                 "max_queue_bytes", "max_generate_queue", "max_connections", "rate_limit_burst", "explain_row_cost")


@pytest.mark.parametrize("name", _COUNT_LIMITS)
def test_validate_refuses_a_count_past_2_53(name: str) -> None:
    # --max-message-bytes 99999999999999999999999999 was accepted, then the server died with a
    # traceback (orjson: "Integer exceeds 64-bit range") encoding the hello that announces it.
    with pytest.raises(ValueError, match=flag(name)):
        ServerConfig(**{name: 2**64}).validate()
    with pytest.raises(ValueError, match=flag(name)):
        ServerConfig(**{name: 2**53 + 1}).validate()


@pytest.mark.parametrize("name", ["max_message_bytes", "max_inflight", "max_rows", "max_tokens", "max_queue_rows"])
def test_validate_accepts_a_count_of_2_53(name: str) -> None:
    ServerConfig(**{name: 2**53}).validate()


@pytest.mark.parametrize("name", ["max_message_bytes", "max_rows", "max_queue_rows", "rate_limit_burst"])
def test_a_count_past_2_53_exits_2_naming_the_flag(name: str, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import wsserve.server

    monkeypatch.setattr(wsserve.server, "run", lambda config: pytest.fail(f"{flag(name)} 1e26 was accepted"))
    err = _cli_error(["serve", flag(name), "99999999999999999999999999"], capsys)
    assert flag(name) in err and "2**53" in err


@pytest.mark.parametrize("name", ["max_delay_ms", "drain_timeout_s", "ping_interval_s", "model_load_timeout_s",
                                  "worker_boot_timeout_s"])
def test_validate_refuses_nan(name: str) -> None:
    with pytest.raises(ValueError, match=flag(name)):
        ServerConfig(**{name: math.nan}).validate()


def test_validate_needs_a_model() -> None:
    with pytest.raises(ValueError, match="model"):
        ServerConfig(models=()).validate()


def test_validate_tls_pairs_and_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    with pytest.raises(ValueError, match="certfile"):
        ServerConfig(certfile=cert).validate()
    with pytest.raises(ValueError, match="keyfile"):
        ServerConfig(keyfile=key).validate()
    with pytest.raises(ValueError, match="certfile: no such file"):
        ServerConfig(certfile=cert, keyfile=key).validate()
    cert.write_text("x")
    with pytest.raises(ValueError, match="keyfile: no such file"):
        ServerConfig(certfile=cert, keyfile=key).validate()
    key.write_text("x")
    with pytest.raises(ValueError, match="--certfile .* and --keyfile .* are not a usable PEM"):
        ServerConfig(certfile=cert, keyfile=key).validate()


def test_validate_loads_the_tls_pair(tmp_path: Path) -> None:
    """A certificate and key that are files but not a PEM pair fail validation naming both flags
    (they failed after training, as \"cannot listen on ...: [SSL] PEM lib\"); a good pair passes, and
    so does a passphrase-protected key, which the server asks for as before (validation never asks)."""
    from cryptography.hazmat.primitives import serialization

    from tests.test_hardening import make_self_signed

    cert, key = make_self_signed(tmp_path)
    ServerConfig(certfile=cert, keyfile=key).validate()
    with pytest.raises(ValueError, match="--certfile .* and --keyfile .* are not a usable PEM"):
        ServerConfig(certfile=key, keyfile=cert).validate()
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.BestAvailableEncryption(b"secret")))
    ServerConfig(certfile=cert, keyfile=locked).validate()


def test_a_bad_tls_pair_exits_2_before_training(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    err = _cli_error(["serve", "--certfile", str(cert), "--keyfile", str(cert)], capsys)
    assert "--certfile" in err and "--keyfile" in err and "not a usable PEM" in err


def test_validate_cache_dir_must_be_a_directory(tmp_path: Path) -> None:
    """A --cache-dir that is a file (or under one) failed after training as \"cannot listen on
    127.0.0.1:0: Not a directory\"; now validation names the flag.  With --no-cache it is unused."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (afile, afile / "sub"):
        with pytest.raises(ValueError, match=f"--cache-dir {bad}: {afile} is not a directory"):
            ServerConfig(cache_dir=bad).validate()
    ServerConfig(cache_dir=afile, cache=False).validate()
    ServerConfig(cache_dir=tmp_path / "new" / "cache").validate()  # made on first use


def test_key_rate_limit_is_refused_with_workers() -> None:
    """Each worker process has its own per-key bucket: with --workers 2 a key's connections made
    twice the rate (measured: 6 of 36 predicts accepted against 3 with one process, burst 3).
    The pair is refused naming both flags; each alone is fine."""
    keyed = {"api_key": frozenset({"k"}), "key_rate_limit_per_s": 5.0}
    ServerConfig(**keyed).validate()
    ServerConfig(workers=2, api_key=frozenset({"k"})).validate()
    with pytest.raises(ValueError, match="--key-rate-limit-per-s is not available with --workers 2"):
        ServerConfig(workers=2, **keyed).validate()
    args = build_parser().parse_args(["serve", "--workers", "3", "--api-key", "k", "--key-rate-limit", "5"])
    with pytest.raises(ValueError, match="--workers 3"):
        config_from_args(args)


def test_worker_boot_timeout_must_outlast_the_load_timeout_under_workers() -> None:
    """A worker's start waits for its model loads: a boot timeout not above the load timeout would
    kill a worker whose load the load timeout still allows, so under --workers the pair is refused
    naming both flags and their values; one process has no supervisor, and off is always fine."""
    assert ServerConfig().worker_boot_timeout_s == 1800.0 > ServerConfig().model_load_timeout_s
    ServerConfig(workers=2).validate()
    ServerConfig(workers=2, worker_boot_timeout_s=None, model_load_timeout_s=86_400).validate()
    ServerConfig(workers=1, worker_boot_timeout_s=60).validate()
    ServerConfig(workers=2, worker_boot_timeout_s=4, model_load_timeout_s=1).validate()
    for boot, load in ((600, 600), (60, 600), (1800, 3600)):
        with pytest.raises(ValueError, match=f"--worker-boot-timeout-s {boot} must be longer than "
                                             f"--model-load-timeout-s {load}"):
            ServerConfig(workers=2, worker_boot_timeout_s=boot, model_load_timeout_s=load).validate()
    args = build_parser().parse_args(["serve", "--workers", "2", "--worker-boot-timeout-s", "60"])
    with pytest.raises(ValueError, match="--worker-boot-timeout-s 60 must be longer than --model-load-timeout-s 600"):
        config_from_args(args)


def test_validate_transport() -> None:
    assert ServerConfig().transport == "websockets"
    ServerConfig(transport="picows").validate()
    with pytest.raises(ValueError, match="--transport must be websockets or picows, got 'trio'"):
        ServerConfig(transport="trio").validate()
    with pytest.raises(ValueError, match="--compression is not available with --transport picows"):
        ServerConfig(transport="picows", compression=True).validate()
    ServerConfig(transport="websockets", compression=True).validate()


def test_picows_transport_without_picows_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "picows" else real(name, *a))
    with pytest.raises(ValueError, match=r"--transport picows needs the picows package: pip install 'wsserve\[fast\]'"):
        ServerConfig(transport="picows").validate()
    ServerConfig().validate()  # the default transport does not need it


def test_loop_uvloop_without_uvloop_installed_is_refused_at_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """It was refused only when the loop started: after training, and under --workers by every
    worker dying while the supervisor said only "worker 0 exited with status 1 while starting"."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))
    with pytest.raises(ValueError, match="--loop uvloop needs the uvloop package"):
        ServerConfig(loop="uvloop").validate()
    ServerConfig(loop="auto").validate()  # auto falls back to asyncio
    ServerConfig(loop="asyncio").validate()


# --------------------------------------------------------------------------- CLI errors


@pytest.mark.parametrize(
    "argv, words",
    [
        (["serve", "--port", "70000"], ["--port", "70000"]),
        (["serve", "--port", "-1"], ["--port"]),
        (["serve", "--port", "http"], ["--port", "http"]),
        (["serve", "--max-inflight", "0"], ["--max-inflight", "0"]),
        (["serve", "--max-batch-size", "-4"], ["--max-batch-size"]),
        (["serve", "--max-rows", "1.5"], ["--max-rows", "1.5"]),
        (["serve", "--models", "linear,nope"], ["--models", "nope"]),
        (["serve", "--models", ","], ["--models"]),
        (["serve", "--max-delay-ms", "-1"], ["--max-delay-ms"]),
        (["serve", "--max-delay-ms", "nan"], ["--max-delay-ms"]),
        (["serve", "--drain-timeout-s", "soon"], ["--drain-timeout-s"]),
        (["serve", "--drain-timeout", "soon"], ["--drain-timeout"]),
        (["serve", "--model-load-timeout-s", "0"], ["--model-load-timeout-s", "(0, 86400]"]),
        (["serve", "--model-load-timeout", "inf"], ["--model-load-timeout", "(0, 86400]", "inf"]),
        (["serve", "--model-load-timeout", "nan"], ["--model-load-timeout", "(0, 86400]"]),
        (["serve", "--model-load-timeout", "soon"], ["--model-load-timeout", "'soon'"]),
        (["serve", "--worker-boot-timeout-s", "-1"], ["--worker-boot-timeout-s", "(0, 172800]", "-1"]),
        (["serve", "--worker-boot-timeout-s", "inf"], ["--worker-boot-timeout-s", "(0, 172800]", "inf"]),
        (["serve", "--worker-boot-timeout-s", "nan"], ["--worker-boot-timeout-s", "(0, 172800]"]),
        (["serve", "--worker-boot-timeout-s", "172801"], ["--worker-boot-timeout-s", "(0, 172800]"]),
        (["serve", "--worker-boot-timeout-s", "soon"], ["--worker-boot-timeout-s", "'soon'"]),
        (["serve", "--workers", "2", "--worker-boot-timeout-s", "600"],
         ["--worker-boot-timeout-s 600", "--model-load-timeout-s 600"]),
        (["serve", "--guide-compile-memory-bytes", "1000"], ["--guide-compile-memory-bytes", "64 MiB..64 GiB", "1000"]),
        # (not a number of the flag's kind: "expected a number, got '2.5'" said 2.5 was no number)
        (["serve", "--guide-compile-memory-bytes", "1G"],
         ["--guide-compile-memory-bytes", "integer number of bytes", "64 MiB..64 GiB", "'1G'"]),
        (["serve", "--guide-compile-cpu-s", "0"], ["--guide-compile-cpu-s", "[1, 3600]", "0"]),
        (["serve", "--guide-compile-cpu-s", "2.5"], ["--guide-compile-cpu-s", "an integer number of seconds in [1, 3600]",
                                                     "'2.5'"]),
        (["serve", "--guide-compile-timeout-s", "nan"], ["--guide-compile-timeout-s", "[0.1, 3600]", "nan"]),
        (["serve", "--guide-compile-timeout-s", "off"], ["--guide-compile-timeout-s", "[0.1, 3600]", "'off'"]),
        (["serve", "--response-cache-bytes", "-5"], ["--response-cache-bytes", "0..1099511627776", "-5"]),
        (["serve", "--response-cache-bytes", "1M"], ["--response-cache-bytes", "'1M'"]),
        (["serve", "--loop", "trio"], ["--loop", "trio"]),
        (["serve", "--transport", "trio"], ["--transport", "trio"]),
        (["serve", "--transport", "picows", "--compression"], ["--compression", "--transport picows"]),
        (["serve", "--log-level", "loud"], ["--log-level"]),
        # a negative seed reached numpy in training: a traceback after the flags were accepted
        (["serve", "--seed", "-1"], ["--seed", "0..9223372036854775807"]),
        (["serve", "--seed", str(2**63)], ["--seed"]),
        (["serve", "--no-such-flag"], ["--no-such-flag"]),
        (["serve", "--api-key-file", "/nonexistent/keys.txt"], ["--api-key-file"]),
        # An empty key (say --api-key "$KEY" with $KEY unset) was dropped and the server ran open.
        (["serve", "--api-key", ""], ["--api-key", "non-empty"]),
        (["serve", "--api-key", "k1", "--api-key", ""], ["--api-key", "non-empty"]),
        (["serve", "--admin-key", ""], ["--admin-key", "non-empty"]),
        (["serve", "--api-key", "k1", "--metrics-key", ""], ["--metrics-key", "non-empty"]),
        (["serve", "--api-key", "two words"], ["--api-key", "visible ASCII"]),
        # An origin that is not written as browsers send it never matched: every page was refused, silently.
        (["serve", "--allow-origin", "https://app.example/"], ["--allow-origin", "https://app.example/", "no path"]),
        (["serve", "--allow-origin", "https://app.example/ui"], ["--allow-origin", "no path"]),
        (["serve", "--allow-origin", "HTTPS://App.example"], ["--allow-origin", "lower case"]),
        (["serve", "--allow-origin", "app.example"], ["--allow-origin", "scheme://host"]),
        (["serve", "--allow-origin", "https://app.example:443"], ["--allow-origin", "default port"]),
        (["serve", "--allow-origin", "http://app.example:80"], ["--allow-origin", "default port"]),
        ([], ["COMMAND"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(argv, capsys)
    for word in words:
        assert word in err


def test_certfile_without_keyfile_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    err = _cli_error(["serve", "--certfile", str(cert)], capsys)
    assert "certfile" in err and "keyfile" in err
    err = _cli_error(["serve", "--keyfile", str(cert)], capsys)
    assert "certfile" in err and "keyfile" in err


def test_missing_certfile_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _cli_error(["serve", "--certfile", str(tmp_path / "nope.pem"), "--keyfile", str(tmp_path / "k.pem")], capsys)
    assert "certfile" in err and "nope.pem" in err


def test_certfile_error_names_the_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    err = _cli_error(["serve", "--certfile", str(cert)], capsys)
    assert "--certfile" in err and "--keyfile" in err


@pytest.mark.parametrize("flag_name", ["--api-key-file", "--admin-key-file"])
def test_a_key_file_that_is_not_utf8_exits_2_naming_the_flag(
    flag_name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.bin"
    keys.write_bytes(b"\xff\xfe\xfa key\n")
    err = _cli_error(["serve", flag_name, str(keys)], capsys)
    assert flag_name in err and "keys.bin" in err and "not UTF-8" in err


@pytest.mark.parametrize("field", ["api_key", "admin_key"])
@pytest.mark.parametrize("key", ["", " ", "k\n", "s3cret ", "kl\u00e9", "tab\tkey"])
def test_validate_refuses_keys_a_bearer_header_cannot_carry_without_showing_them(field: str, key: str) -> None:
    # ServerConfig(api_key=frozenset({""})) made "Authorization: Bearer " (no token) a valid key.
    with pytest.raises(ValueError, match=flag(field)) as err:
        ServerConfig(**{field: frozenset({"good-key", key})}).validate()
    assert "s3cret" not in str(err.value)  # key material is never echoed
    with pytest.raises(ValueError, match="--metrics-key"):
        ServerConfig(api_key=frozenset({"good-key"}), metrics_key=key).validate()


def test_empty_api_key_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# no keys here\n\n")
    err = _cli_error(["serve", "--api-key-file", str(keys)], capsys)
    assert "--api-key-file" in err and "no keys" in err


def test_a_cache_dir_variable_under_a_file_is_refused_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # WSSERVE_CACHE_DIR=/etc/passwd passed the checks; the server then exited 1 with
    # "Not a directory: /etc/passwd/repository/seed-0", naming neither the variable nor the problem.
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (afile, afile / "sub"):
        monkeypatch.setenv("WSSERVE_CACHE_DIR", str(bad))
        with pytest.raises(ValueError, match=rf"\$WSSERVE_CACHE_DIR {bad}: {afile} is not a directory"):
            _config()
        assert _config("--no-cache").cache is False  # not used: not checked
        assert _config("--cache-dir", str(tmp_path / "c")).cache_dir == tmp_path / "c"  # the flag wins
    monkeypatch.setenv("WSSERVE_CACHE_DIR", str(tmp_path / "new" / "cache"))  # made on first use
    assert _config().cache_dir is None


@pytest.mark.parametrize("var", ["WSSERVE_API_KEYS", "WSSERVE_ADMIN_KEYS"])
@pytest.mark.parametrize("value", [",,,", " ", " , "])
def test_a_keys_variable_that_holds_no_keys_is_refused(var: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # WSSERVE_API_KEYS=",,," started a server without authentication: the operator meant keys.
    # (main() exits 2 with this message: ValueError from config_from_args, as test_empty_api_key_file_exits_2.)
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=rf"\${var} is set but holds no keys"):
        _config()


def test_an_empty_keys_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSSERVE_API_KEYS", "")  # what `environment: [WSSERVE_API_KEYS=]` gives
    assert _config().api_key == frozenset()


def test_python_m_wsserve_reports_a_bad_port() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "wsserve", "serve", "--port", "70000"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "--port" in proc.stderr and "70000" in proc.stderr
    assert "ws://" not in proc.stdout  # it never started


# --------------------------------------------------------------------------- help and version


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "serve" in out and "usage: wsserve" in out


def test_serve_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("--host", "--port", "--max-batch-size", "--max-delay-ms", "--max-queue-rows", "--max-inflight",
                 "--max-message-bytes", "--max-rows", "--drain-timeout-s", "--log-level", "--models"):
        assert name in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"wsserve {__version__}"


# --------------------------------------------------------------------------- flags -> config


def _config(*argv: str) -> ServerConfig:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_cli_defaults_are_the_config_defaults() -> None:
    assert _config() == ServerConfig()


def test_flags_map_to_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSSERVE_API_KEYS", "env1, env2,")
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# comment\nfile1\n\nfile2\n")
    from tests.test_hardening import make_self_signed

    cert, key = make_self_signed(tmp_path)
    cfg = _config(
        "--host", "0.0.0.0", "--port", "0", "--models", "linear, mlp", "--seed", "7",
        "--cache-dir", str(tmp_path), "--no-cache",
        "--max-batch-size", "64", "--max-delay-ms", "2.5", "--max-queue-rows", "1000",
        "--max-generate-batch", "8", "--max-generate-queue", "off",
        "--max-message-bytes", "4096", "--max-inflight", "3", "--max-rows", "100", "--max-tokens", "50",
        "--max-connections", "10", "--max-write-buffer-bytes", "65536",
        "--drain-timeout-s", "1.5", "--slow-consumer-timeout-s", "2", "--ping-interval-s", "0", "--ping-timeout-s", "5",
        "--idle-timeout-s", "30", "--auth-timeout-s", "3", "--handshake-timeout-s", "4", "--close-timeout-s", "6",
        "--model-load-timeout-s", "45", "--worker-boot-timeout-s", "90", "--max-npz-bytes", "1048576", "--api-key", "k1", "--api-key", "k2", "--api-key-file", str(key_file), "--metrics-key", "mk",
        "--allow-origin", "https://a.example", "--allow-origin", "https://b.example", "--require-origin",
        "--certfile", str(cert), "--keyfile", str(key), "--compression",
        "--rate-limit-per-s", "20", "--rate-limit-burst", "40", "--key-rate-limit-per-s", "100",
        "--max-inflight-bytes", "1000", "--max-queue-bytes", "2000", "--loop", "asyncio",
        "--guide-compile-memory-bytes", str(256 << 20), "--guide-compile-cpu-s", "3", "--guide-compile-timeout-s", "4.5",
    )
    assert cfg == ServerConfig(
        host="0.0.0.0", port=0, models=("linear", "mlp"), seed=7, cache_dir=tmp_path, cache=False,
        max_batch_size=64, max_delay_ms=2.5, max_queue_rows=1000,
        max_generate_batch=8, max_generate_queue=None,
        max_message_bytes=4096, max_inflight=3, max_rows=100, max_tokens=50,
        max_connections=10, max_write_buffer_bytes=65536,
        drain_timeout_s=1.5, slow_consumer_timeout_s=2.0, ping_interval_s=None, ping_timeout_s=5.0,
        idle_timeout_s=30.0, auth_timeout_s=3.0, handshake_timeout_s=4.0, close_timeout_s=6.0,
        model_load_timeout_s=45.0, worker_boot_timeout_s=90.0, max_npz_bytes=1 << 20, api_key=frozenset({"k1", "k2", "env1", "env2", "file1", "file2"}), metrics_key="mk",
        allow_origin=("https://a.example", "https://b.example"), require_origin=True,
        certfile=cert, keyfile=key, compression=True,
        rate_limit_per_s=20.0, rate_limit_burst=40, key_rate_limit_per_s=100.0,
        max_inflight_bytes=1000, max_queue_bytes=2000, loop="asyncio",
        guide_compile_memory_bytes=256 << 20, guide_compile_cpu_s=3, guide_compile_timeout_s=4.5,
    )


def test_older_flag_spellings_are_aliases() -> None:
    assert _config("--drain-timeout", "2", "--ping-interval", "3", "--rate-limit", "4", "--rate-burst", "5",
                   "--model-load-timeout", "6.5", "--worker-boot-timeout-s", "7.5") == ServerConfig(
        drain_timeout_s=2.0, ping_interval_s=3.0, rate_limit_per_s=4.0, rate_limit_burst=5, model_load_timeout_s=6.5,
        worker_boot_timeout_s=7.5,
    )


@pytest.mark.parametrize(
    "argv, field, value",
    [
        (["--max-queue-rows", "0"], "max_queue_rows", None),
        (["--max-queue-rows", "none"], "max_queue_rows", None),
        (["--max-connections", "0"], "max_connections", None),
        (["--ping-timeout-s", "off"], "ping_timeout_s", None),
        (["--rate-limit-per-s", "0"], "rate_limit_per_s", None),
        (["--max-delay-ms", "0"], "max_delay_ms", None),
        (["--max-delay-ms", "off"], "max_delay_ms", None),
        (["--worker-boot-timeout-s", "off"], "worker_boot_timeout_s", None),
        (["--worker-boot-timeout-s", "0"], "worker_boot_timeout_s", None),
        (["--models", "charlm"], "models", ("charlm",)),
    ],
)
def test_zero_or_off_disables_optional_limits(argv: list[str], field: str, value: object) -> None:
    assert getattr(_config(*argv), field) == value


def _serve_actions() -> list:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    return [a for a in serve._actions if a.dest != "help"]


def test_serve_help_states_every_numeric_default() -> None:
    """``wsserve serve --help`` is where README's table sends a user for "every flag": each flag
    with a numeric default says what it is (--ping-interval-s, which nginx's timeouts must
    outlast, and --max-message-bytes, which nginx's client_max_body_size must match, did not)."""
    missing = [a.option_strings[0] for a in _serve_actions()
               if isinstance(a.default, int | float) and not isinstance(a.default, bool) and "default" not in a.help]
    assert missing == []


def test_serve_help_offers_off_only_where_it_is_accepted() -> None:
    """A flag whose help (or group title) says ``off`` disables it accepts ``off``; one that
    does not accept it is not under a title that says so (``--drain-timeout-s off`` is an error)."""
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    wrong = []
    for group in serve._action_groups:
        for a in group._group_actions:
            if a.dest == "help" or a.type is None or isinstance(a.default, bool):
                continue
            says_off = "off" in (a.help or "") or "off disables" in (group.title or "")
            try:
                a.type("off")
                accepts = True
            except Exception:  # noqa: BLE001 - argparse's ArgumentTypeError or ValueError
                accepts = False
            if says_off and not accepts:
                wrong.append(a.option_strings[0])
    assert wrong == []
