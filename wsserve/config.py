"""Server settings: one keyword-only, frozen config object.

The CLI (:mod:`wsserve.cli`) only parses flags into a :class:`ServerConfig`;
:func:`wsserve.server.run` takes one.  **One name per setting**: the flag is
``--`` plus the field name with dashes (``max_inflight_bytes`` is
``--max-inflight-bytes``), and the same name is used by every layer below
(workers, engine, metrics).  Durations carry their unit in the name (``_s``,
``_ms``); ``None`` turns an optional limit or timer off.
:meth:`ServerConfig.validate` raises ``ValueError`` naming the offending flag.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType

from .tracing import check_endpoint

__all__ = ["ServerConfig", "DEFAULT_MODELS", "LOG_FORMATS", "MAX_DELAY_MS", "MAX_GENERATE_BATCH", "MAX_SEED", "TRANSPORTS", "flag",
           "DEFAULT_MODEL_LOAD_TIMEOUT_S", "MAX_MODEL_LOAD_TIMEOUT_S", "check_model_load_timeout",
           "DEFAULT_WORKER_BOOT_TIMEOUT_S", "MAX_WORKER_BOOT_TIMEOUT_S", "GUIDE_COMPILE_LIMITS", "check_guide_compile_limit",
           "MAX_RESPONSE_CACHE_BYTES"]

DEFAULT_MODELS: tuple[str, ...] = ("linear", "mlp", "charlm")
#: WebSocket implementations the server can run on (``transport``); the first is the default.
TRANSPORTS: tuple[str, ...] = ("websockets", "picows")
#: The longest batching window, in ms: --max-delay-ms and config.toml's max_delay_ms alike.
MAX_DELAY_MS = 60_000
#: --model-load-timeout-s's default: the time one load (``Model()`` or the model file's reading, and the
#: warm-up) may take before its version is ``failed`` and its thread abandoned.  Ten minutes: far above
#: what a CPU needs to read and warm up a model of a few GiB (seconds to a minute), room for a model.py
#: that fetches or compiles something, and short enough that a load that hangs is reported (and its
#: load slot freed) within a deploy's patience.
DEFAULT_MODEL_LOAD_TIMEOUT_S = 600.0
#: The longest load timeout (--model-load-timeout-s, config.toml's model_load_timeout_s): a day.
MAX_MODEL_LOAD_TIMEOUT_S = 86_400.0
#: --worker-boot-timeout-s's default: the time a ``--workers`` worker may take from its start to its ready
#: message before the supervisor stops it (SIGTERM, then SIGKILL) and counts a boot failure.  Thirty minutes,
#: three default load timeouts: a worker's start is mostly its initial loads (4 at a time, each bounded by
#: --model-load-timeout-s), so a slow legitimate start, or one whose hung load the load timeout fails, ends
#: well within it; what it catches is a worker stuck where no load timeout reaches (its event loop blocked,
#: e.g. a backend deadlocked holding the GIL, or a filesystem read that never returns on the loop).
DEFAULT_WORKER_BOOT_TIMEOUT_S = 1800.0
#: The longest boot timeout: two days, above the longest load timeout (it must exceed the load timeout).
MAX_WORKER_BOOT_TIMEOUT_S = 2 * 86_400.0
#: The most sequences a generative model steps together (--max-generate-batch): each slot holds a
#: noise block allocated up front (up to 512 KiB a slot: 16 rows of the vocabulary, or 65,536 values).
MAX_GENERATE_BATCH = 4096
#: The largest response cache (--response-cache-bytes): 1 TiB, far above any host's memory for it.
MAX_RESPONSE_CACHE_BYTES = 1 << 40
#: Training seeds are 0..MAX_SEED (numpy's SeedSequence takes non-negative integers; as ``wsserve train``).
MAX_SEED = 2**63 - 1
#: The largest count or size limit (2**53, the largest integer a JSON number holds exactly in every
#: implementation, and the largest ``hello`` limit clients trust): a larger one is refused, not
#: announced in ``hello`` (where orjson could not even encode one past 2**64).
MAX_COUNT = 2**53

#: ``--inline-max-flops``'s default: predict batches of at most this many multiply-adds run on the
#: loop thread, costlier ones in the model's thread. 20,000,000 is a full 256-row mlp batch (~0.5 ms
#: here). The thread's round trip (40-75 µs, a wake-up on each side, the GIL handed back and forth)
#: costs more than numpy computing beside the loop gains: against 200,000 (2 mlp rows), a closed-loop
#: mlp load at 64 connections runs ~1.2x faster, and a big streamed request ~1.3x faster with lower
#: latency for a connection beside it (benchmarks/bench_inline.py). Models of unknown cost (no
#: flops_per_row) count 10^9 a row: always in the thread.
INLINE_MAX_FLOPS = 20_000_000

#: The limits of one child process compiling a ``guided_regex`` / ``guided_json`` pattern
#: (:mod:`wsserve.generation.guide_sandbox`): per setting, ``(default, lowest, highest, kind)``;
#: the same names are flags (``--guide-compile-memory-bytes``), config.toml keys (a model's own)
#: and ``hello`` limits.  ``guide_compile_memory_bytes``: its address space (``RLIMIT_AS``), 1 GiB
#: (Python, numpy and outlines-core start in ~30 MB of it; below 64 MiB nothing compiles);
#: ``guide_compile_cpu_s``: its CPU time (``RLIMIT_CPU``), 10 s; ``guide_compile_timeout_s``: the
#: wall-clock time after which the server kills it, 15 s (above the CPU limit, so on an idle
#: machine the CPU limit decides: a refusal that does not depend on load).  None can be turned
#: off: the child is what keeps a hostile pattern from taking the server's memory and cores.
GUIDE_COMPILE_LIMITS: Mapping[str, tuple[float, float, float, type]] = MappingProxyType({
    "guide_compile_memory_bytes": (1 << 30, 64 << 20, 64 << 30, int),
    "guide_compile_cpu_s": (10, 1, 3600, int),
    "guide_compile_timeout_s": (15.0, 0.1, 3600.0, float),
})


class _EncryptedKey(Exception):
    pass


#: ``--log-format`` values: ``text`` (one line per record) or ``json`` (one JSON object per line).
LOG_FORMATS = ("text", "json")


def _installed(module: str) -> bool:
    """True if ``module`` (dotted) can be imported; its parents are imported to tell."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _ask_no_password() -> bytes:
    raise _EncryptedKey


def _check_tls_files(certfile: Path, keyfile: Path) -> None:
    """Raise ``ValueError`` naming both flags unless the files load as a PEM certificate chain and
    its private key (as the server loads them), so a bad pair fails at start-up, before training,
    and not as a listening error.  A passphrase-protected key is left to the server (which asks)."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            str(certfile), str(keyfile), password=_ask_no_password)
    except _EncryptedKey:
        return
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{flag('certfile')} {certfile} and {flag('keyfile')} {keyfile} are not a usable PEM "
                         f"certificate and private key: {exc.strerror or exc}") from None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def proxy_networks(trusted: Iterable[str]) -> tuple[Network, ...]:
    """The networks of ``--trusted-proxy`` values (an address, or a network such as ``10.0.0.0/8``).
    Raises ``ValueError`` naming the flag and the value for one that is neither."""
    networks = []
    for value in trusted:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{flag('trusted_proxy')} {value!r} is not an IP address or network "
                             "(e.g. 127.0.0.1, 10.0.0.0/8)") from None
    return tuple(networks)


def flag(name: str) -> str:
    """The command-line flag of a config field: ``max_inflight`` -> ``--max-inflight``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerConfig:
    """Everything the server needs to start.  See ``wsserve serve --help``."""

    host: str = "127.0.0.1"
    port: int = 8765
    loop: str = "auto"  # auto | asyncio | uvloop
    workers: int = 1  # server processes sharing the port (a supervisor starts them when > 1)
    grpc_port: int | None = None  # the Open Inference Protocol over gRPC on this port (0: a free one); None: off

    # Models
    models: tuple[str, ...] = DEFAULT_MODELS  # the default (built-in) models to serve; () for none
    model_repository: tuple[Path, ...] = ()  # the operator's model repositories
    reload: bool = False  # watch model_repository and apply changes
    seed: int = 0
    cache_dir: Path | None = None  # None: $WSSERVE_CACHE_DIR or ~/.cache/wsserve
    cache: bool = True  # read and write trained weights in cache_dir
    model_load_timeout_s: float = DEFAULT_MODEL_LOAD_TIMEOUT_S  # one load (Model() + warm-up), then failed

    # Limits (per connection)
    max_message_bytes: int = 1 << 20  # a message, an HTTP body, a request's inputs in shared memory
    max_inflight: int = 256
    max_inflight_bytes: int = 32 << 20  # input bytes (float64) of a connection's unfinished requests
    max_rows: int = 65536
    max_explain_rows: int = 256  # rows of one "explain": true predict (each costs ~1.5 ms on the mlp)
    max_tokens: int = 100_000
    # Limits (per model)
    max_batch_size: int = 256  # rows per predict batch
    explain_row_cost: int = 32  # batch and queue units one row to explain counts (a plain row: 1)
    max_queue_rows: int | None = 1 << 20  # queued predict rows per model
    max_queue_bytes: int | None = 64 << 20  # queued predict input bytes (float64) per model
    max_sequence_state_bytes: int = 16 << 20  # implicit state kept per sequence of a stateful ONNX model
    max_sequence_state_total_bytes: int = 1 << 30  # implicit state kept by all sequences of all models
    max_reschedules: int = 65536  # times one request of a Triton Python model may be rescheduled (iterative_sequence)
    max_generate_batch: int = 256  # sequences stepped together
    max_generate_queue: int | None = 4096  # generations waiting for a slot
    # Limits (server)
    max_connections: int | None = None
    max_write_buffer_bytes: int = 8 << 20  # per connection, then the slow-consumer policy
    max_npz_bytes: int = 1 << 32  # arrays of one repository model.npz (repository.npz.MAX_NPZ_BYTES)
    #: Triton's response cache (per process): its size; 0 = no cache.  Models opt in (response_cache).
    response_cache_bytes: int = 0

    # Timeouts
    max_delay_ms: float | None = None  # batching window; None: greedy
    drain_timeout_s: float = 10.0
    slow_consumer_timeout_s: float = 10.0  # time a connection may stay over its write buffer
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    idle_timeout_s: float | None = None
    auth_timeout_s: float = 5.0  # time a connection may stay unauthenticated (with api_key)
    handshake_timeout_s: float = 10.0  # time to send a whole HTTP request (408 after it)
    close_timeout_s: float = 10.0  # time the client has to answer our close frame
    worker_boot_timeout_s: float | None = DEFAULT_WORKER_BOOT_TIMEOUT_S  # --workers: start -> ready; None: no limit

    # Logging
    log_format: str = "text"  # text | json (one JSON object per line)
    access_log: bool = False  # one line per HTTP request answered, on the logger wsserve.access
    otlp_traces_endpoint: str | None = None  # OTLP/HTTP collector URL for request spans (wsserve[otel]); None: off

    # Transport
    transport: str = "websockets"  # websockets | picows (the optional extra wsserve[fast])
    compression: bool = False
    certfile: Path | None = None
    keyfile: Path | None = None

    # Security
    api_key: frozenset[str] = field(default_factory=frozenset)  # the accepted API keys (none: no auth)
    admin_key: frozenset[str] = field(default_factory=frozenset)  # keys that may load/unload/reload models
    metrics_key: str | None = None  # also accepted on GET /metrics (with api_key)
    allow_origin: tuple[str, ...] | None = None  # browser origins; None: the server's own only; ("*",): any
    require_origin: bool = False  # refuse handshakes without an Origin header
    trusted_proxy: tuple[str, ...] = ()  # reverse proxies (addresses or networks) whose X-Forwarded-For names the client
    rate_limit_per_s: float | None = None  # predict/generate per second per connection
    rate_limit_burst: int | None = None  # default: max(1, rate)
    key_rate_limit_per_s: float | None = None  # predict/generate per second per API key

    # Compute
    inline_max_flops: int = INLINE_MAX_FLOPS
    # Structured outputs: each pattern compiles in a child process with these limits (GUIDE_COMPILE_LIMITS)
    guide_compile_memory_bytes: int = int(GUIDE_COMPILE_LIMITS["guide_compile_memory_bytes"][0])
    guide_compile_cpu_s: int = int(GUIDE_COMPILE_LIMITS["guide_compile_cpu_s"][0])
    guide_compile_timeout_s: float = GUIDE_COMPILE_LIMITS["guide_compile_timeout_s"][0]

    def validate(self, *, in_process_models: bool = False) -> ServerConfig:
        """Return self if every setting is in range, else raise ``ValueError`` naming its flag.

        ``in_process_models``: the server also serves objects given in the program
        (``Server(config, models=...)``), so no default model and no repository is fine."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{flag('port')} must be 0..65535, got {self.port}")
        if self.grpc_port is not None:
            if type(self.grpc_port) is not int or not 0 <= self.grpc_port <= 65535:
                raise ValueError(f"{flag('grpc_port')} must be 0..65535, got {self.grpc_port!r}")
            if self.grpc_port and self.grpc_port == self.port:
                raise ValueError(f"{flag('grpc_port')} {self.grpc_port} is also {flag('port')}: gRPC needs a port of "
                                 "its own")
            if importlib.util.find_spec("grpc") is None or importlib.util.find_spec("tritonclient.grpc") is None:
                raise ValueError(f"{flag('grpc_port')} needs grpcio and tritonclient[grpc] (its generated "
                                 "service stubs): pip install 'wsserve[grpc]'")
        if type(self.workers) is not int or not 1 <= self.workers <= 64:
            raise ValueError(f"{flag('workers')} must be an integer in 1..64, got {self.workers!r}")
        if type(self.seed) is not int or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"{flag('seed')} must be an integer in 0..{MAX_SEED}, got {self.seed!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"{flag('log_format')} must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if type(self.access_log) is not bool:
            raise ValueError(f"{flag('access_log')} must be a boolean, got {self.access_log!r}")
        if self.otlp_traces_endpoint is not None:
            check_endpoint(self.otlp_traces_endpoint, flag("otlp_traces_endpoint"))
            if not all(map(_installed, ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"))):
                raise ValueError(f"{flag('otlp_traces_endpoint')} needs opentelemetry-sdk and "
                                 "opentelemetry-exporter-otlp-proto-http: pip install 'wsserve[otel]'")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ValueError(f"{flag('loop')} must be auto, asyncio or uvloop, got {self.loop!r}")
        if self.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError(f"{flag('loop')} uvloop needs the uvloop package (pip install uvloop); "
                             f"{flag('loop')} auto uses it when installed")
        positive = (
            "max_message_bytes", "max_inflight", "max_inflight_bytes", "max_rows", "max_explain_rows", "max_tokens",
            "max_batch_size", "max_generate_batch", "max_write_buffer_bytes", "max_npz_bytes",
            "max_sequence_state_bytes", "max_sequence_state_total_bytes", "max_reschedules",
        )
        for name in positive:
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= MAX_COUNT:
                raise ValueError(f"{flag(name)} must be a positive integer up to 2**53, got {value!r}")
        if self.max_generate_batch > MAX_GENERATE_BATCH:
            raise ValueError(f"{flag('max_generate_batch')} must be at most {MAX_GENERATE_BATCH}, "
                             f"got {self.max_generate_batch!r}")
        if type(self.response_cache_bytes) is not int or not 0 <= self.response_cache_bytes <= MAX_RESPONSE_CACHE_BYTES:
            raise ValueError(f"{flag('response_cache_bytes')} must be an integer in 0..{MAX_RESPONSE_CACHE_BYTES} "
                             f"(0: no response cache), got {self.response_cache_bytes!r}")
        if type(self.explain_row_cost) is not int or not 2 <= self.explain_row_cost <= MAX_COUNT:
            raise ValueError(f"{flag('explain_row_cost')} must be an integer in 2..2**53, got {self.explain_row_cost!r}")
        for name in ("max_queue_rows", "max_queue_bytes", "max_generate_queue", "max_connections", "rate_limit_burst"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 1 <= value <= MAX_COUNT):
                raise ValueError(f"{flag(name)} must be a positive integer up to 2**53 or off, got {value!r}")
        for name in ("drain_timeout_s", "slow_consumer_timeout_s", "auth_timeout_s", "handshake_timeout_s",
                     "close_timeout_s", "inline_max_flops"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag(name)} must be a number >= 0, got {value!r}")
        for name in ("max_delay_ms", "ping_interval_s", "ping_timeout_s", "idle_timeout_s", "rate_limit_per_s",
                     "key_rate_limit_per_s"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{flag(name)} must be a number > 0 or off, got {value!r}")
        check_model_load_timeout(self.model_load_timeout_s, flag("model_load_timeout_s"))
        self._check_worker_boot_timeout()
        for name in GUIDE_COMPILE_LIMITS:
            check_guide_compile_limit(name, getattr(self, name), flag(name))
        if self.max_delay_ms is not None and self.max_delay_ms > MAX_DELAY_MS:
            raise ValueError(f"{flag('max_delay_ms')} must be at most {MAX_DELAY_MS} (a minute), got {self.max_delay_ms!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"{flag('transport')} must be {' or '.join(TRANSPORTS)}, got {self.transport!r}")
        if self.transport == "picows":
            if importlib.util.find_spec("picows") is None:
                raise ValueError(f"{flag('transport')} picows needs the picows package: pip install 'wsserve[fast]'")
            if self.compression:
                raise ValueError(
                    f"{flag('compression')} is not available with {flag('transport')} picows "
                    "(picows has no permessage-deflate); use the websockets transport for compression"
                )
        if in_process_models and self.workers > 1:
            raise ValueError(f"{flag('workers')} {self.workers}: worker processes serve the built-in models and "
                             "repositories only; in-process model objects need workers=1 (or put them in a repository)")
        if not self.models and not self.model_repository and not in_process_models:
            raise ValueError(f"{flag('models')} none needs {flag('model_repository')}: nothing would be served")
        for repo in self.model_repository:
            if not Path(repo).is_dir():
                raise ValueError(f"{flag('model_repository')}: no such directory: {repo}")
        if self.cache and self.cache_dir is not None:
            existing = next((p for p in (Path(self.cache_dir), *Path(self.cache_dir).parents) if p.exists()), None)
            if existing is not None and not existing.is_dir():
                raise ValueError(f"{flag('cache_dir')} {self.cache_dir}: {existing} is not a directory")
        if self.reload and not self.model_repository:
            raise ValueError(f"{flag('reload')} needs {flag('model_repository')}")
        for name in ("api_key", "admin_key", "metrics_key"):
            value = getattr(self, name)
            for key in () if value is None else (value,) if isinstance(value, str) else value:
                _check_key(name, key)
        for origin in self.allow_origin or ():
            _check_origin(origin)
        proxy_networks(self.trusted_proxy)
        if self.key_rate_limit_per_s is not None and not self.api_key:
            raise ValueError(f"{flag('key_rate_limit_per_s')} needs {flag('api_key')}")
        if self.key_rate_limit_per_s is not None and self.workers > 1:
            raise ValueError(f"{flag('key_rate_limit_per_s')} is not available with {flag('workers')} {self.workers}: "
                             "each worker process keeps its own count, so a key's connections on different workers "
                             f"would get up to {self.workers} times the rate; use {flag('workers')} 1 or limit keys "
                             "in a proxy in front")
        if self.metrics_key is not None and not self.api_key:
            raise ValueError(f"{flag('metrics_key')} needs {flag('api_key')} (without keys /metrics is open)")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError(f"{flag('certfile')} and {flag('keyfile')} must be given together")
        for name in ("certfile", "keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{flag(name)}: no such file: {path}")
        if self.certfile is not None and self.keyfile is not None:
            _check_tls_files(Path(self.certfile), Path(self.keyfile))
        return self

    def _check_worker_boot_timeout(self) -> None:
        """Raise ``ValueError`` naming the flag unless ``worker_boot_timeout_s`` is off (None) or a number of
        seconds in (0, :data:`MAX_WORKER_BOOT_TIMEOUT_S`]; under ``--workers`` it must also be longer than
        ``model_load_timeout_s`` (a worker's start waits for its loads: a shorter one would kill a worker
        whose load the load timeout still allows)."""
        value = self.worker_boot_timeout_s
        if value is None:
            return
        if type(value) not in (int, float) or not math.isfinite(value) or not 0 < value <= MAX_WORKER_BOOT_TIMEOUT_S:
            raise ValueError(f"{flag('worker_boot_timeout_s')} must be a number of seconds in "
                             f"(0, {MAX_WORKER_BOOT_TIMEOUT_S:g}] or off, got {value!r}")
        if self.workers > 1 and value <= self.model_load_timeout_s:
            raise ValueError(f"{flag('worker_boot_timeout_s')} {value:g} must be longer than "
                             f"{flag('model_load_timeout_s')} {self.model_load_timeout_s:g}: a worker's start waits "
                             "for its model loads, so a worker would be killed while a load it allows still runs; "
                             f"raise {flag('worker_boot_timeout_s')} (or turn it off)")

    def url(self, port: int) -> str:
        """The server's WebSocket URL on ``port``: ``ws://`` (``wss://`` with TLS), the host
        in brackets when it is an IPv6 address (``ws://[::1]:8765``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.certfile else 'ws'}://{host}:{port}"

    @property
    def secrets(self) -> frozenset[str]:
        """Every credential configured (API, admin and metrics keys): what logs mask."""
        return self.api_key | self.admin_key | ({self.metrics_key} if self.metrics_key else frozenset())

    def rate_burst(self, rate: float) -> float:
        """Bucket size for ``rate``: ``rate_limit_burst`` or one second's worth."""
        return float(self.rate_limit_burst) if self.rate_limit_burst else max(1.0, rate)

    def public_limits(self) -> dict[str, int | float]:
        """The limits announced in ``hello`` (the guide-compile ones are the server's; a repository
        model's config.toml may set its own)."""
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_inflight": self.max_inflight,
            "max_rows": self.max_rows,
            "max_tokens": self.max_tokens,
            "max_inflight_bytes": self.max_inflight_bytes,
            "max_explain_rows": self.max_explain_rows,
            "guide_compile_memory_bytes": self.guide_compile_memory_bytes,
            "guide_compile_cpu_s": self.guide_compile_cpu_s,
            "guide_compile_timeout_s": self.guide_compile_timeout_s,
        }

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def check_model_load_timeout(value: object, where: str) -> float:
    """``value`` as a load timeout in seconds: a number in (0, :data:`MAX_MODEL_LOAD_TIMEOUT_S`].
    Raises ``ValueError`` starting with ``where`` (a flag, or a config.toml key) otherwise."""
    if type(value) not in (int, float) or not math.isfinite(value) \
            or not 0 < value <= MAX_MODEL_LOAD_TIMEOUT_S:  # type: ignore[operator]
        raise ValueError(f"{where} must be a number of seconds in (0, {MAX_MODEL_LOAD_TIMEOUT_S:g}], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_guide_compile_limit(name: str, value: object, where: str) -> int | float:
    """``value`` as the guide-compile limit ``name`` (a key of :data:`GUIDE_COMPILE_LIMITS`): an
    integer (``_bytes``, ``_cpu_s``) or a finite number (``_timeout_s``) within its bounds.
    Raises ``ValueError`` starting with ``where`` (a flag, or a config.toml key) otherwise."""
    _, low, high, kind = GUIDE_COMPILE_LIMITS[name]
    unit = "bytes" if name.endswith("_bytes") else "seconds"
    if kind is int:
        if type(value) is not int or not low <= value <= high:
            shown = " (64 MiB..64 GiB)" if unit == "bytes" else ""
            raise ValueError(f"{where} must be an integer number of {unit} in [{int(low)}, {int(high)}]{shown}, "
                             f"got {value!r}")
        return value
    if type(value) not in (int, float) or not math.isfinite(value) \
            or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"{where} must be a number of {unit} in [{low:g}, {high:g}], got {value!r}")
    return float(value)  # type: ignore[arg-type]


#: An origin as browsers send it (RFC 6454 §6.2): lower-case scheme and host, an optional port, no path.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(:[0-9]{1,5})?")


def _check_origin(origin: object) -> None:
    """Raise ``ValueError`` unless ``origin`` is ``*`` or could equal a browser's ``Origin`` header
    (compared exactly: an entry written otherwise would silently never match)."""
    if origin == "*":
        return
    if type(origin) is not str or not _ORIGIN.fullmatch(origin):
        raise ValueError(f"{flag('allow_origin')} {origin!r} is not an origin as browsers send it: "
                         "scheme://host[:port] in lower case, with no path (no trailing '/'), "
                         "e.g. https://app.example.com")
    if origin.endswith(":443") and origin.startswith("https://") or origin.endswith(":80") and origin.startswith("http://"):
        raise ValueError(f"{flag('allow_origin')} {origin!r}: browsers leave the default port out of their Origin; "
                         f"write {origin.rpartition(':')[0]}")


def _check_key(name: str, key: object) -> None:
    """Raise ``ValueError`` unless ``key`` can be sent as ``Authorization: Bearer <key>``: one or
    more visible ASCII characters.  An empty key would be accepted from ``Bearer `` with nothing
    after it, and one with spaces or other characters could not be sent in a header (it is
    trimmed and read as Latin-1).  The message never shows the key."""
    if type(key) is not str or not key:
        raise ValueError(f"{flag(name)}: a key must be a non-empty string (an empty value would turn "
                         "authentication off or accept an empty token)")
    if not all("!" <= c <= "~" for c in key):
        raise ValueError(f"{flag(name)}: a key of {len(key)} characters holds a space, a control or a "
                         "non-ASCII character; keys are sent as 'Authorization: Bearer <key>': use visible "
                         "ASCII only")
