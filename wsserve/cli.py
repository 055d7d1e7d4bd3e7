"""Command line: a thin adapter from flags to :class:`~wsserve.config.ServerConfig`.

``wsserve serve`` runs the server; ``wsserve loadtest`` runs the load-test
tool; ``wsserve train`` trains on Dask (:mod:`wsserve.distributed.cli`); ``wsserve compress`` writes an
int8 or pruned version of a repository model (:mod:`wsserve.compression.cli`).  Bad flags exit with status 2
and a message naming the flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._version import __version__
from .argtypes import bounded_int
from .config import (
    DEFAULT_MODELS,
    GUIDE_COMPILE_LIMITS,
    LOG_FORMATS,
    MAX_RESPONSE_CACHE_BYTES,
    MAX_SEED,
    MAX_WORKER_BOOT_TIMEOUT_S,
    TRANSPORTS,
    ServerConfig,
    check_guide_compile_limit,
    check_model_load_timeout,
    flag,
)
from .logs import configure_logging

__all__ = ["main", "build_parser", "config_from_args"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _optional_int(text: str) -> int | None:
    """A positive integer, or 0 / 'none' for no limit."""
    if text.lower() in ("none", "0", "off"):
        return None
    return _positive_int(text)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _off_or_number(text: str) -> float | None:
    """A number > 0, or off/none/0 for "no limit" (None)."""
    if text.lower() in ("none", "off", "0"):
        return None
    value = _non_negative(text)
    return value


def _load_timeout(text: str) -> float:
    """Seconds in (0, MAX_MODEL_LOAD_TIMEOUT_S]: finite, so "inf" or "nan" is refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    try:
        return check_model_load_timeout(value, "the load timeout")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _boot_timeout(text: str) -> float | None:
    """Seconds in (0, MAX_WORKER_BOOT_TIMEOUT_S], or off/none/0 for no limit (None)."""
    if text.lower() in ("none", "off", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds or off, got {text!r}") from None
    if not 0 < value <= MAX_WORKER_BOOT_TIMEOUT_S:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, {MAX_WORKER_BOOT_TIMEOUT_S:g}] or off, "
                                         f"got {text}")
    return value


def _guide_compile_limit(name: str):  # noqa: ANN202 - an argparse type
    """The argparse type of the guide-compile limit ``name`` (its bounds: :data:`GUIDE_COMPILE_LIMITS`)."""
    def parse(text: str) -> int | float:
        try:
            value: int | float | str = int(text) if GUIDE_COMPILE_LIMITS[name][3] is int else float(text)
        except ValueError:  # not a number of its kind ('2.5' for an integer): the same message, its range
            value = text
        try:
            return check_guide_compile_limit(name, value, "it")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("it ")) from None
    return parse


def _models(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in DEFAULT_MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(DEFAULT_MODELS)}"
        )
    return names


def _add_serve(sub: argparse._SubParsersAction) -> None:
    """One flag per :class:`ServerConfig` field, spelled ``--`` + the field name with dashes
    (its ``dest`` is the field name).  Older spellings stay accepted as aliases."""
    p = sub.add_parser("serve", help="train the default models and serve them", description="Serve models over WebSockets.")
    d = ServerConfig()

    def opt(name: str, *aliases: str, **kwargs: object) -> None:
        p_or_group = kwargs.pop("group", p)
        p_or_group.add_argument(flag(name), *aliases, dest=name, **kwargs)  # type: ignore[attr-defined]

    opt("host", default=d.host, help="interface to bind (default %(default)s)")
    opt("port", type=_port, default=d.port, help="port; 0 picks a free one (default %(default)s)")
    opt("grpc_port", type=_port, default=d.grpc_port,
        help="also serve the Open Inference Protocol over gRPC (KServe v2 / Triton's GRPCInferenceService) on "
             "this port; 0 picks a free one, logged; with --workers every worker serves it on that one port "
             "(not served unless given; pip install 'wsserve[grpc]')")
    opt("loop", choices=("auto", "asyncio", "uvloop"), default=d.loop, help="event loop (default: uvloop if installed)")
    opt("transport", choices=TRANSPORTS, default=d.transport,
        help="WebSocket implementation: websockets (default) or picows (faster; pip install 'wsserve[fast]'; no --compression)")
    opt("workers", type=int, default=d.workers,
        help="server processes sharing the port, under a supervisor that trains once and restarts dead workers (default 1)")
    opt("models", type=_models, default=d.models,
        help="comma-separated default models to serve (default all; none = only the repository)")
    opt("model_repository", action="append", type=Path, default=None,
        help="serve the models of this directory (repeatable); also $WSSERVE_MODEL_REPOSITORY")
    opt("reload", action="store_true", help="watch the model repository and load/unload what changes")
    opt("seed", type=bounded_int(0, MAX_SEED), default=d.seed, help="training seed, 0..2**63-1 (default %(default)s)")
    opt("cache_dir", type=Path, default=None, help="trained-weights cache (default $WSSERVE_CACHE_DIR or ~/.cache/wsserve)")
    opt("cache", action=argparse.BooleanOptionalAction, default=d.cache,
        help="read and write trained weights in the cache (--no-cache: always train)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log level (default %(default)s)")
    opt("log_format", choices=LOG_FORMATS, default=d.log_format,
        help="log records as text lines (default) or as one JSON object per line (time, level, logger, message, and an "
             "access record's fields)")
    opt("access_log", action="store_true",
        help="log every HTTP request once answered (client, request line, status, bytes, milliseconds) on the logger "
             "wsserve.access at info level (default off)")
    opt("otlp_traces_endpoint", metavar="URL", default=d.otlp_traces_endpoint,
        help="send one OpenTelemetry span per request (HTTP, gRPC and WebSocket predict/generate) to this "
             "OTLP/HTTP collector, e.g. http://localhost:4318/v1/traces (a URL without a path gets /v1/traces); "
             "W3C traceparent from clients is the parent; service name wsserve or $OTEL_SERVICE_NAME "
             "(default off; pip install 'wsserve[otel]')")
    g = p.add_argument_group("batching")
    opt("max_batch_size", group=g, type=_positive_int, default=d.max_batch_size, help="rows per predict batch (default %(default)s)")
    opt("max_delay_ms", group=g, type=_off_or_number, default=d.max_delay_ms,
        help="batching window in ms; off (default) = greedy")
    opt("max_queue_rows", group=g, type=_optional_int, default=d.max_queue_rows, help="queued rows per model before 'overloaded' (default %(default)s); off = unbounded")
    opt("max_queue_bytes", group=g, type=_optional_int, default=d.max_queue_bytes,
        help="queued input bytes (as float64) per model before 'overloaded' (default 64 MiB); off = unbounded")
    opt("max_sequence_state_bytes", group=g, type=_positive_int, default=d.max_sequence_state_bytes,
        help="implicit state (config.pbtxt sequence_batching.state) kept per sequence of a stateful ONNX model; "
             "a request whose state output would take more ends with invalid_input and aborts its sequence "
             "(default 16 MiB)")
    opt("max_sequence_state_total_bytes", group=g, type=_positive_int, default=d.max_sequence_state_total_bytes,
        help="implicit state kept by all sequences of all stateful ONNX models together (per worker process); "
             "a request whose state would take it past this ends with overloaded, its sequence keeping its "
             "previous state (default 1 GiB)")
    opt("max_reschedules", group=g, type=_positive_int, default=d.max_reschedules,
        help="times one request of a Triton Python model (sequence_batching iterative_sequence) may be "
             "rescheduled (set_release_flags); past it the request ends with an error naming the bound "
             "(default %(default)s)")
    opt("response_cache_bytes", group=g, type=bounded_int(0, MAX_RESPONSE_CACHE_BYTES), default=d.response_cache_bytes,
        help="size in bytes of the response cache (Triton's --cache-config local,size=N): plain predicts of models "
             "whose config enables response_cache are answered from it when their inputs repeat; per worker "
             "process; 0 (default) = no cache")
    opt("max_generate_batch", group=g, type=_positive_int, default=d.max_generate_batch, help="sequences stepped together (default %(default)s)")
    opt("max_generate_queue", group=g, type=_optional_int, default=d.max_generate_queue, help="generations waiting for a slot before 'overloaded' (default %(default)s); off = unbounded")
    opt("inline_max_flops", group=g, type=_positive_int, default=d.inline_max_flops,
        help="predict batches cheaper than this many multiply-adds run on the event loop, others in a thread (default %(default)s)")
    g = p.add_argument_group("structured outputs (each guided_regex / guided_json pattern compiles in a child process "
                             "with these limits; a model's config.toml may set its own)")
    opt("guide_compile_memory_bytes", group=g, type=_guide_compile_limit("guide_compile_memory_bytes"),
        default=d.guide_compile_memory_bytes,
        help="address space (RLIMIT_AS) of a compiling child, 64 MiB..64 GiB (default 1 GiB)")
    opt("guide_compile_cpu_s", group=g, type=_guide_compile_limit("guide_compile_cpu_s"), default=d.guide_compile_cpu_s,
        help="CPU seconds (RLIMIT_CPU) of a compiling child, 1..3600 (default %(default)s)")
    opt("guide_compile_timeout_s", group=g, type=_guide_compile_limit("guide_compile_timeout_s"),
        default=d.guide_compile_timeout_s,
        help="wall-clock seconds after which a compiling child is killed, 0.1..3600 (default %(default)g)")
    g = p.add_argument_group("limits")
    opt("max_message_bytes", group=g, type=_positive_int, default=d.max_message_bytes, help="largest accepted message, and HTTP request body (default 1 MiB); a bigger message closes with 1009, "
             "a bigger body gets 413; also the bytes one request's inputs may take from shared memory regions")
    opt("max_inflight", group=g, type=_positive_int, default=d.max_inflight, help="unfinished requests per connection (default %(default)s)")
    opt("max_inflight_bytes", group=g, type=_positive_int, default=d.max_inflight_bytes,
        help="input bytes (as float64) of a connection's unfinished requests (default 32 MiB)")
    opt("max_rows", group=g, type=_positive_int, default=d.max_rows, help="rows per predict (default %(default)s)")
    opt("max_explain_rows", group=g, type=_positive_int, default=d.max_explain_rows,
        help='rows per "explain": true predict (default %(default)s; each row costs about 1.5 ms on mlp)')
    opt("explain_row_cost", group=g, type=_positive_int, default=d.explain_row_cost,
        help="batch and queue units one row to explain counts against --max-batch-size and --max-queue-rows "
             "(a plain row: 1; default %(default)s, so a batch of 256 holds at most 8)")
    opt("max_tokens", group=g, type=_positive_int, default=d.max_tokens, help="max_tokens limit per generate (default %(default)s)")
    opt("max_connections", group=g, type=_optional_int, default=d.max_connections, help="open connections before 503 (default unlimited); with --grpc-port, also the gRPC "
             "connections, counted on their own")
    opt("max_npz_bytes", group=g, type=_positive_int, default=d.max_npz_bytes,
        help="bytes of arrays one model.npz of a model repository may hold, checked before they are read "
             "(default 4 GiB)")
    opt("max_write_buffer_bytes", group=g, type=_positive_int, default=d.max_write_buffer_bytes,
        help="unsent bytes per connection before the slow-consumer policy (default 8 MiB)")
    g = p.add_argument_group("timeouts (seconds)")
    opt("drain_timeout_s", "--drain-timeout", group=g, type=_non_negative, default=d.drain_timeout_s,
        help="time to finish work on shutdown (default %(default)s)")
    opt("slow_consumer_timeout_s", "--slow-consumer-timeout", group=g, type=_non_negative, default=d.slow_consumer_timeout_s,
        help="time over the write buffer before closing (default %(default)s)")
    opt("ping_interval_s", "--ping-interval", group=g, type=_off_or_number, default=d.ping_interval_s, help="keepalive ping period (default %(default)s); off disables")
    opt("ping_timeout_s", "--ping-timeout", group=g, type=_off_or_number, default=d.ping_timeout_s, help="keepalive pong timeout (default %(default)s); off disables")
    opt("idle_timeout_s", "--idle-timeout", group=g, type=_off_or_number, default=d.idle_timeout_s,
        help="close connections idle this long (default off; gRPC ones too)")
    opt("auth_timeout_s", "--auth-timeout", group=g, type=_non_negative, default=d.auth_timeout_s,
        help="with API keys: close connections not authenticated by then (default %(default)s)")
    opt("model_load_timeout_s", "--model-load-timeout", group=g, type=_load_timeout, default=d.model_load_timeout_s,
        help="time one model version may take to load and warm up before it is failed and its thread abandoned "
             "(default %(default)g; config.toml's model_load_timeout_s overrides it per model)")
    opt("worker_boot_timeout_s", group=g, type=_boot_timeout, default=d.worker_boot_timeout_s,
        help="with --workers: time a worker may take from its start to ready (models loaded, listening); past it "
             "the supervisor stops it (SIGTERM, SIGKILL 5 s later) and counts a boot failure (5 in a row stop the "
             "server, exit 1); must exceed --model-load-timeout-s (default %(default)g; off disables)")
    opt("handshake_timeout_s", group=g, type=_non_negative, default=d.handshake_timeout_s,
        help="time a client has to send a whole HTTP request, or to complete a gRPC connection's "
             "HTTP/2 handshake (default %(default)s)")
    opt("close_timeout_s", group=g, type=_non_negative, default=d.close_timeout_s,
        help="time a client has to answer the server's close frame (default %(default)s)")
    g = p.add_argument_group("security")
    opt("api_key", group=g, action="append", default=[], help="accepted API key (repeatable); also $WSSERVE_API_KEYS (comma-separated)")
    g.add_argument("--api-key-file", type=Path, help="file with one API key per line")
    opt("admin_key", group=g, action="append", default=[],
        help="key allowed to load/unload/reload models (repeatable); also $WSSERVE_ADMIN_KEYS")
    g.add_argument("--admin-key-file", type=Path, help="file with one admin key per line")
    opt("metrics_key", group=g, default=None, help="with API keys: a key accepted on GET /metrics only (for a Prometheus scraper)")
    opt("allow_origin", group=g, action="append", default=None,
        help="allowed browser Origin (exact match, repeatable; '*' = any); default: only the server's own origin")
    opt("require_origin", group=g, action="store_true", help="refuse handshakes without an Origin header")
    opt("trusted_proxy", group=g, action="append", default=None,
        help="a reverse proxy in front (address or network, repeatable, e.g. 127.0.0.1 behind nginx on the "
             "same host): the client of its requests is the last X-Forwarded-For hop it added (or X-Real-IP), "
             "for the failed-authentication limit and logs (a forwarded request never counts as "
             "loopback for the admin rule)")
    opt("certfile", group=g, type=Path, help="TLS certificate (PEM); serves wss://")
    opt("keyfile", group=g, type=Path, help="TLS private key (PEM)")
    opt("compression", group=g, action="store_true", help="enable permessage-deflate (off by default: CPU cost and CRIME-style risks)")
    opt("rate_limit_per_s", "--rate-limit", group=g, type=_off_or_number, default=None,
        help="requests per second per connection (token bucket); default off")
    opt("rate_limit_burst", "--rate-burst", group=g, type=_optional_int, default=None, help="token-bucket burst (default: one second's worth)")
    opt("key_rate_limit_per_s", "--key-rate-limit", group=g, type=_off_or_number, default=None,
        help="requests per second per API key, over all its connections")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsserve", description="Async streaming inference server over WebSockets.")
    parser.add_argument("--version", action="version", version=f"wsserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_serve(sub)
    try:
        from .loadtest import add_arguments as add_loadtest
    except ImportError:  # pragma: no cover - optional piece missing
        add_loadtest = None
    if add_loadtest is not None:
        lt = sub.add_parser("loadtest", help="load-test a server speaking the wsserve protocol")
        add_loadtest(lt)
    from .distributed.cli import add_train_arguments

    add_train_arguments(sub.add_parser("train", help="train a model data-parallel on Dask into a model repository"))
    from .compression.cli import add_compress_arguments

    add_compress_arguments(sub.add_parser(
        "compress", help="write an int8 or pruned version of a repository model, with its measured figures",
        description="Write a compressed version of MODEL next to its source in a model repository."))
    return parser


def _keys(given: list[str], env_name: str, file: Path | None, flag_name: str) -> frozenset[str]:
    """Keys from the flag (repeatable), the environment variable (comma-separated) and a file (one per
    line, UTF-8).  Raises ``ValueError`` naming ``flag_name`` if the file cannot be read, is not UTF-8
    or holds no keys, and naming ``env_name`` if the variable is set, not empty, and holds no keys
    (``" , "``: a server meant to need keys must not start open)."""
    keys = list(given)  # an empty --api-key "" is refused by ServerConfig.validate, never dropped
    env = os.environ.get(env_name, "")
    from_env = [k.strip() for k in env.split(",") if k.strip()]
    if env and not from_env:  # "" is unset (as compose files leave it); " ,," meant keys and holds none
        raise ValueError(f"${env_name} is set but holds no keys (got {env!r}); unset it or give comma-separated keys")
    keys += from_env
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise ValueError(f"{flag_name}: cannot read {file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{flag_name}: {file} is not UTF-8 text (byte {exc.start})") from None
        found = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not found:
            raise ValueError(f"{flag_name}: {file} holds no keys")
        keys += found
    return frozenset(keys)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build and validate the config; raises ``ValueError`` naming the bad flag (or environment
    variable: a ``$WSSERVE_CACHE_DIR`` under a file, when the cache is on and ``--cache-dir`` is not given)."""
    values = {name: getattr(args, name) for name in ServerConfig.field_names() if hasattr(args, name)}
    values["api_key"] = _keys(args.api_key, "WSSERVE_API_KEYS", args.api_key_file, "--api-key-file")
    values["admin_key"] = _keys(args.admin_key, "WSSERVE_ADMIN_KEYS", args.admin_key_file, "--admin-key-file")
    values["allow_origin"] = tuple(args.allow_origin) if args.allow_origin else None
    values["trusted_proxy"] = tuple(args.trusted_proxy or ())
    repos = list(args.model_repository or [])
    env_repo = os.environ.get("WSSERVE_MODEL_REPOSITORY", "")
    if env_repo and not repos:
        repos = [Path(env_repo)]
    values["model_repository"] = tuple(repos)
    config = ServerConfig(**values).validate()  # checks --cache-dir
    env_cache = os.environ.get("WSSERVE_CACHE_DIR", "")
    if config.cache and config.cache_dir is None and env_cache:  # the cache the server will use, as modelstore reads it
        cache = Path(env_cache).expanduser()
        existing = next((p for p in (cache, *cache.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ValueError(f"$WSSERVE_CACHE_DIR {cache}: {existing} is not a directory")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "loadtest":
        from .loadtest import run as run_loadtest

        return run_loadtest(args)
    if args.command == "train":
        from .distributed.cli import run_train

        return run_train(args)
    if args.command == "compress":
        from .compression.cli import run_compress

        return run_compress(args)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(args.log_level,
                      secrets=config.secrets,
                      fmt=config.log_format)
    if config.workers > 1:
        from .supervisor import run_supervisor as run
    else:
        from .server import run

    from .server import ListenError

    try:
        code = run(config)
    except ListenError as exc:
        print(f"wsserve: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file: the weights cache, the built-in repository... (not the port)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"wsserve: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    if config.workers <= 1:  # this process is the server's: model code that never returned does not hold it
        from .server import exit_past_stuck_threads

        exit_past_stuck_threads(code)
    return code
