"""Server settings: one keyword-only, frozen config object.

The CLI (:mod:`wsserve.cli`) only parses flags into a :class:`ServerConfig`;
:func:`wsserve.server.serve` takes one.  Limits carry their unit in the name;
``None`` turns an optional limit off.  :meth:`ServerConfig.validate` raises
``ValueError`` naming the offending setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = ["ServerConfig", "DEFAULT_MODELS"]

DEFAULT_MODELS: tuple[str, ...] = ("linear", "mlp", "charlm")


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerConfig:
    """Everything the server needs to start.  See ``wsserve serve --help``."""

    host: str = "127.0.0.1"
    port: int = 8765

    # Models
    models: tuple[str, ...] = DEFAULT_MODELS
    seed: int = 0
    cache_dir: Path | None = None  # None: $WSSERVE_CACHE_DIR or ~/.cache/wsserve
    use_cache: bool = True

    # Limits (per connection)
    max_message_bytes: int = 1 << 20
    max_inflight: int = 256
    max_inflight_bytes: int = 32 << 20  # input bytes (float64) of a connection's unfinished requests
    max_rows: int = 65536
    max_tokens: int = 100_000
    # Limits (per model)
    max_batch_size: int = 256  # rows per predict batch
    max_queue_rows: int | None = 1 << 20  # queued predict rows per model
    max_queue_bytes: int | None = 64 << 20  # queued predict input bytes (float64) per model
    max_generate_batch: int = 256  # sequences stepped together
    max_generate_queue: int | None = 4096  # generations waiting for a slot
    # Limits (server)
    max_connections: int | None = None
    max_write_buffer_bytes: int = 8 << 20  # per connection, then slow-consumer policy

    # Timeouts
    max_delay_ms: float = 0.0  # batching window; 0 = greedy
    drain_timeout: float = 10.0  # seconds
    slow_consumer_timeout: float = 10.0  # seconds a connection may stay over its write buffer
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    idle_timeout: float | None = None
    auth_timeout: float = 5.0  # seconds a connection may stay unauthenticated (with api_keys)

    # Transport
    compression: bool = False
    certfile: Path | None = None
    keyfile: Path | None = None

    # Security
    api_keys: frozenset[str] = field(default_factory=frozenset)
    metrics_key: str | None = None  # also accepted on GET /metrics (with api_keys)
    allowed_origins: tuple[str, ...] | None = None  # None: the server's own origin only; ("*",): any
    allow_no_origin: bool = True
    rate_limit_per_s: float | None = None  # predict/generate per second per connection
    rate_limit_burst: int | None = None  # default: max(1, rate)
    key_rate_limit_per_s: float | None = None  # predict/generate per second per API key

    # Compute
    inline_max_flops: int = 200_000  # batches cheaper than this run on the loop thread

    def validate(self) -> "ServerConfig":
        """Return self if every setting is in range, else raise ``ValueError``."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        positive = (
            "max_message_bytes", "max_inflight", "max_inflight_bytes", "max_rows", "max_tokens",
            "max_batch_size", "max_generate_batch", "max_write_buffer_bytes",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_queue_rows", "max_queue_bytes", "max_generate_queue", "max_connections", "rate_limit_burst"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        for name in ("max_delay_ms", "drain_timeout", "slow_consumer_timeout", "inline_max_flops", "auth_timeout"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("ping_interval", "ping_timeout", "idle_timeout", "rate_limit_per_s", "key_rate_limit_per_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:  # also refuses NaN
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        if not self.models:
            raise ValueError("at least one model must be served")
        if self.key_rate_limit_per_s is not None and not self.api_keys:
            raise ValueError("key_rate_limit_per_s needs api_keys")
        if self.metrics_key is not None and not self.api_keys:
            raise ValueError("metrics_key needs api_keys (without keys /metrics is open)")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile must be given together")
        for name in ("certfile", "keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self

    def rate_burst(self, rate: float) -> float:
        """Bucket size for ``rate``: ``rate_limit_burst`` or one second's worth."""
        return float(self.rate_limit_burst) if self.rate_limit_burst else max(1.0, rate)

    def public_limits(self) -> dict[str, int]:
        """The limits announced in ``hello``."""
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_inflight": self.max_inflight,
            "max_rows": self.max_rows,
            "max_tokens": self.max_tokens,
            "max_inflight_bytes": self.max_inflight_bytes,
        }

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
