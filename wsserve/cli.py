"""Command line: a thin adapter from flags to :class:`~wsserve.config.ServerConfig`.

``wsserve serve`` runs the server; ``wsserve loadtest`` runs the load-test
tool; ``wsserve train`` trains on Dask (:mod:`wsserve.distributed.cli`).  Bad flags exit with status 2 and a message naming the flag.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from . import __version__
from .config import DEFAULT_MODELS, ServerConfig
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


def _optional_seconds(text: str) -> float | None:
    if text.lower() in ("none", "off", "0"):
        return None
    value = _non_negative(text)
    return value


def _models(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in DEFAULT_MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(DEFAULT_MODELS)}"
        )
    return names


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="train the default models and serve them", description="Serve models over WebSockets.")
    d = ServerConfig()
    p.add_argument("--host", default=d.host, help="interface to bind (default %(default)s)")
    p.add_argument("--port", type=_port, default=d.port, help="port; 0 picks a free one (default %(default)s)")
    p.add_argument("--models", type=_models, default=d.models, help="comma-separated models to serve (default all)")
    p.add_argument("--seed", type=int, default=d.seed, help="training seed (default %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None, help="trained-weights cache (default $WSSERVE_CACHE_DIR or ~/.cache/wsserve)")
    p.add_argument("--no-cache", action="store_true", help="always train, never read or write the cache")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="event loop (default: uvloop if installed)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log level (default %(default)s)")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch-size", type=_positive_int, default=d.max_batch_size, help="rows per predict batch (default %(default)s)")
    g.add_argument("--max-delay-ms", type=_non_negative, default=d.max_delay_ms, help="batching window in ms; 0 = greedy (default)")
    g.add_argument("--max-queue-rows", type=_optional_int, default=d.max_queue_rows, help="queued rows per model before 'overloaded'; 0 = unbounded")
    g.add_argument("--max-queue-bytes", type=_optional_int, default=d.max_queue_bytes, help="queued input bytes (as float64) per model before 'overloaded' (default 64 MiB); 0 = unbounded")
    g.add_argument("--max-generate-batch", type=_positive_int, default=d.max_generate_batch, help="sequences stepped together (default %(default)s)")
    g.add_argument("--max-generate-queue", type=_optional_int, default=d.max_generate_queue, help="generations waiting for a slot before 'overloaded'")
    g = p.add_argument_group("limits")
    g.add_argument("--max-message-bytes", type=_positive_int, default=d.max_message_bytes, help="largest accepted message; bigger closes with 1009")
    g.add_argument("--max-inflight", type=_positive_int, default=d.max_inflight, help="unfinished requests per connection (default %(default)s)")
    g.add_argument("--max-inflight-bytes", type=_positive_int, default=d.max_inflight_bytes, help="input bytes (as float64) of a connection's unfinished requests (default 32 MiB)")
    g.add_argument("--max-rows", type=_positive_int, default=d.max_rows, help="rows per predict (default %(default)s)")
    g.add_argument("--max-tokens", type=_positive_int, default=d.max_tokens, help="max_tokens limit per generate (default %(default)s)")
    g.add_argument("--max-connections", type=_optional_int, default=d.max_connections, help="open connections before 503 (default unlimited)")
    g.add_argument("--max-write-buffer-bytes", type=_positive_int, default=d.max_write_buffer_bytes, help="unsent bytes per connection before the slow-consumer policy")
    g = p.add_argument_group("timeouts")
    g.add_argument("--drain-timeout", type=_non_negative, default=d.drain_timeout, help="seconds to finish work on shutdown (default %(default)s)")
    g.add_argument("--slow-consumer-timeout", type=_non_negative, default=d.slow_consumer_timeout, help="seconds over the write buffer before closing (default %(default)s)")
    g.add_argument("--ping-interval", type=_optional_seconds, default=d.ping_interval, help="keepalive ping period in s; 0 = off")
    g.add_argument("--ping-timeout", type=_optional_seconds, default=d.ping_timeout, help="keepalive pong timeout in s; 0 = off")
    g = p.add_argument_group("security")
    g.add_argument("--api-key", action="append", default=[], help="accepted API key (repeatable); also $WSSERVE_API_KEYS (comma-separated)")
    g.add_argument("--api-key-file", type=Path, help="file with one API key per line")
    g.add_argument("--allow-origin", action="append", default=None, help="allowed browser Origin (exact match, repeatable; '*' = any); default: only the server's own origin")
    g.add_argument("--require-origin", action="store_true", help="with --allow-origin: refuse handshakes without an Origin header")
    g.add_argument("--certfile", type=Path, help="TLS certificate (PEM); serves wss://")
    g.add_argument("--keyfile", type=Path, help="TLS private key (PEM)")
    g.add_argument("--compression", action="store_true", help="enable permessage-deflate (off by default: CPU cost and CRIME-style risks)")
    g.add_argument("--rate-limit", type=_non_negative, default=None, help="requests per second per connection (token bucket); default off")
    g.add_argument("--rate-burst", type=_optional_int, default=None, help="token-bucket burst (default: one second's worth)")
    g.add_argument("--key-rate-limit", type=_non_negative, default=None, help="requests per second per API key, over all its connections")
    g.add_argument("--idle-timeout", type=_optional_seconds, default=None, help="close connections idle this many seconds (default never)")
    g.add_argument("--auth-timeout", type=_non_negative, default=d.auth_timeout, help="with API keys: close connections not authenticated within this many seconds (default %(default)s)")
    g.add_argument("--metrics-key", default=None, help="with API keys: a key accepted on GET /metrics only (for a Prometheus scraper)")


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
    return parser


def _api_keys(args: argparse.Namespace) -> frozenset[str]:
    keys = [k for k in args.api_key if k]
    env = os.environ.get("WSSERVE_API_KEYS", "")
    keys += [k.strip() for k in env.split(",") if k.strip()]
    if args.api_key_file is not None:
        try:
            text = args.api_key_file.read_text()
        except OSError as exc:
            raise ValueError(f"--api-key-file: cannot read {args.api_key_file}: {exc.strerror}") from None
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not keys:
            raise ValueError(f"--api-key-file: {args.api_key_file} holds no keys")
    return frozenset(keys)


def _flag_names(message: str) -> str:
    """Rewrite config setting names in ``message`` as the flags a user typed."""
    renames = {
        "rate_limit_per_s": "rate-limit", "rate_limit_burst": "rate-burst", "allowed_origins": "allow-origin",
        "key_rate_limit_per_s": "key-rate-limit", "api_keys": "api-key",
    }
    for name in sorted(ServerConfig.field_names(), key=len, reverse=True):
        flag = "--" + renames.get(name, name.replace("_", "-"))
        message = re.sub(rf"(?<![\w-]){name}(?!\w)", flag, message)
    return message


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build and validate the config; raises ``ValueError`` naming the bad flag."""
    try:
        return _build_config(args)
    except ValueError as exc:
        raise ValueError(_flag_names(str(exc))) from None


def _build_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        models=args.models,
        seed=args.seed,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        max_message_bytes=args.max_message_bytes,
        max_inflight=args.max_inflight,
        max_inflight_bytes=args.max_inflight_bytes,
        max_rows=args.max_rows,
        max_tokens=args.max_tokens,
        max_batch_size=args.max_batch_size,
        max_queue_rows=args.max_queue_rows,
        max_queue_bytes=args.max_queue_bytes,
        max_generate_batch=args.max_generate_batch,
        max_generate_queue=args.max_generate_queue,
        max_connections=args.max_connections,
        max_write_buffer_bytes=args.max_write_buffer_bytes,
        max_delay_ms=args.max_delay_ms,
        drain_timeout=args.drain_timeout,
        slow_consumer_timeout=args.slow_consumer_timeout,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        compression=args.compression,
        certfile=args.certfile,
        keyfile=args.keyfile,
        api_keys=_api_keys(args),
        allowed_origins=tuple(args.allow_origin) if args.allow_origin else None,
        allow_no_origin=not args.require_origin,
        rate_limit_per_s=args.rate_limit or None,
        rate_limit_burst=args.rate_burst,
        key_rate_limit_per_s=args.key_rate_limit or None,
        idle_timeout=args.idle_timeout,
        auth_timeout=args.auth_timeout,
        metrics_key=args.metrics_key,
    ).validate()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "loadtest":
        from .loadtest import run as run_loadtest

        return run_loadtest(args)
    if args.command == "train":
        from .distributed.cli import run_train

        return run_train(args)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(args.log_level, secrets=config.api_keys | ({config.metrics_key} if config.metrics_key else set()))
    from .server import run

    try:
        return run(config, loop=args.loop)
    except OSError as exc:
        print(f"wsserve: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
