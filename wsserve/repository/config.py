"""``config.toml`` of one repository model: strict parsing into a frozen :class:`ModelConfig`.

Every key is optional (a missing file means all defaults), but a key that is
present must be known, of the right type and within bounds; anything else
raises :class:`~.errors.ConfigError` naming the file, the key and the
problem.  Keys (bounds inclusive)::

    backend          "onnx" | "npz" | "python"   which model file to use when a version holds several
    task             "regression" | "classification" | "generation" | "embedding" | "other"
    input_shape      [d1, ...]   1..8 positive dims, each <= 4194304, product <= 4194304
    output_shape     same bounds
    input_dtype      "float32" | "float64" | "int32" | "int64" | "bool" | "float16" | "int8" | "int16"
                     | "uint8" | "uint16" | "uint32" | "uint64" (wsserve.dtypes.DTYPES)
    output_dtype     same
    [[inputs]]       named inputs, in order: name = "...", shape = [...], dtype = "..." (shape/dtype optional
    [[outputs]]      for ONNX, where the graph has them); at most 64 each; not together with input_shape/input_dtype
    max_batch_size   0..65536: rows per batch; 0 = the model has no batch dimension (run one row at a time, each alone)
    max_delay_ms     0..60000 (number): batching window
    instances        1..64: model instances (ONNX sessions / Model objects) the pool may run
    flops_per_row    1..10**15: cost estimate used to run cheap batches inline (default: backend's estimate)
    version_policy   "all" (default) | "latest" (= latest 1) | { latest = N } (1..1000) | { specific = [v, ...] }
    model_load_timeout_s  (0, 86400] (number): this model's load timeout (default: --model-load-timeout-s)
    max_queue_requests    1..1000000: requests that may wait in the model's queue (Triton's max_queue_size)
    default_timeout_ms    (0, 2**31-1] (number): the queue deadline of a request that sets none
    allow_timeout_override  true (default) | false: whether a request's timeout_ms may shorten it
    response_cache   false (default) | true: answer repeated plain predicts from the server's response cache
                     (Triton's response_cache { enable: true }; needs --response-cache-bytes)
    guide_compile_memory_bytes  67108864..68719476736: a generative model's guided-pattern compiling child's
                     address space (default: --guide-compile-memory-bytes)
    guide_compile_cpu_s  1..3600: its CPU seconds (default: --guide-compile-cpu-s)
    guide_compile_timeout_s  [0.1, 3600] (number): its wall-clock seconds (default: --guide-compile-timeout-s)
    [onnx]           intra_op_num_threads = 1..64 (default 1)

Names (model inputs/outputs) are 1..128 printable ASCII characters without
spaces or quotes.  Sans-I/O apart from :func:`load_config`, which reads at most
:data:`MAX_CONFIG_BYTES`.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import (
    GUIDE_COMPILE_LIMITS,
    MAX_DELAY_MS,
    check_guide_compile_limit,
    check_model_load_timeout,
)
from .errors import ConfigError
from .tensors import DTYPES, MAX_DIM, MAX_DIMS, MAX_ROW_ELEMENTS

__all__ = [
    "Backend",
    "BACKENDS",
    "TASKS",
    "MAX_CONFIG_BYTES",
    "MAX_BATCH_SIZE",
    "MAX_VERSION",
    "MAX_QUEUE_REQUESTS",
    "MAX_DEFAULT_TIMEOUT_MS",
    "TensorConfig",
    "VersionPolicy",
    "ModelConfig",
    "parse_config",
    "config_text",
    "load_config",
]

Backend = Literal["onnx", "npz", "python"]
BACKENDS: tuple[str, ...] = ("onnx", "npz", "python")
TASKS: tuple[str, ...] = ("regression", "classification", "generation", "embedding", "other")

MAX_CONFIG_BYTES = 64 * 1024
MAX_BATCH_SIZE = 65536
MAX_INSTANCES = 64
MAX_THREADS = 64
MAX_FLOPS_PER_ROW = 10**15
MAX_TENSORS = 64
MAX_POLICY_VERSIONS = 1000
#: Version numbers are at most 15 decimal digits.
MAX_VERSION = 10**15 - 1
#: ``max_queue_requests`` at most (a model's queue holds no more requests than this).
MAX_QUEUE_REQUESTS = 1_000_000
#: ``default_timeout_ms`` at most: the WebSocket's ``timeout_ms`` bound (2**31 - 1 ms, ~24.8 days).
MAX_DEFAULT_TIMEOUT_MS = (1 << 31) - 1

_NAME_RE = re.compile(r"^[!#-&(-~]{1,128}$")  # printable ASCII, no space, '"' or "'"

_TOP_KEYS = frozenset(
    {
        "backend", "task", "input_shape", "output_shape", "input_dtype", "output_dtype", "inputs", "outputs",
        "max_batch_size", "max_delay_ms", "instances", "flops_per_row", "version_policy", "onnx",
        "model_load_timeout_s", "max_queue_requests", "default_timeout_ms", "allow_timeout_override",
        "response_cache", *GUIDE_COMPILE_LIMITS,
    }
)
_TENSOR_KEYS = frozenset({"name", "shape", "dtype"})
_ONNX_KEYS = frozenset({"intra_op_num_threads"})


@dataclass(frozen=True, slots=True)
class TensorConfig:
    """What config.toml (or config.pbtxt) says about one input/output; ``None`` = not said (take it from the model).

    ``name`` is ``None`` for the ``input_shape``/``input_dtype`` shorthand, which
    means "the model's only input".
    """

    name: str | None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    #: config.pbtxt's ``dims`` as written (per row; ``-1``: variable), which the ONNX backend compares
    #: with the graph's shape by Triton's rule (:mod:`.tritondims`) at load; ``None`` from config.toml.
    triton_dims: tuple[int, ...] | None = None
    #: config.pbtxt's ``reshape { shape }``: the per-row shape the model itself takes or gives where it
    #: differs from ``dims`` (the wire's); ``None`` without one (:func:`.pbtxt.check_reshape`).
    model_dims: tuple[int, ...] | None = None
    #: config.pbtxt's ``optional: true`` on an input: a request may leave it out.
    optional: bool = False
    #: config.pbtxt's ``allow_ragged_batch: true`` on an input: requests of other shapes there share a
    #: batch (:mod:`.ragged`).
    ragged: bool = False


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions to serve (Triton's policies). ``all``; ``latest``: the ``count`` highest; ``specific``."""

    kind: Literal["all", "latest", "specific"] = "all"
    count: int = 0
    versions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A parsed config.toml (or a Triton config.pbtxt mapped onto it, see :mod:`.pbtxt`). ``None``
    fields were not given (the server's/backend's default applies)."""

    path: Path | None = None
    backend: Backend | None = None
    task: str | None = None
    inputs: tuple[TensorConfig, ...] | None = None
    outputs: tuple[TensorConfig, ...] | None = None
    max_batch_size: int | None = None
    max_delay_ms: float | None = None
    instances: int = 1
    flops_per_row: int | None = None
    version_policy: VersionPolicy = VersionPolicy()
    onnx_intra_op_threads: int = 1
    model_load_timeout_s: float | None = None  # None: the server's --model-load-timeout-s
    #: A predictive model's queue policy (Triton's ``dynamic_batching.default_queue_policy``): at most
    #: this many requests wait (None: only the server's row and byte bounds); a request without a
    #: deadline is queued with ``default_timeout_ms`` (None: none), and one with a longer deadline
    #: too unless ``allow_timeout_override`` (:func:`wsserve.batching.queue_deadline`).
    max_queue_requests: int | None = None
    default_timeout_ms: float | None = None
    allow_timeout_override: bool = True
    #: What a request past that queue timeout meets (Triton's ``timeout_action``; config.pbtxt only):
    #: ``"REJECT"`` (it ends, ``deadline_exceeded``) or ``"DELAY"`` (it waits on behind its level's
    #: requests whose queue timeout has not passed: :class:`wsserve.batching.QueuePolicy`).
    timeout_action: str = "REJECT"
    #: A config.pbtxt's ``dynamic_batching.priority_levels`` and ``default_priority_level`` (Triton's:
    #: level 1 first, a request's priority 0 the default level; levels 0: one level, priorities unused);
    #: ``None``: not a config.pbtxt, wsserve's two classes (``priority`` 1 high, 0 normal).
    #: :class:`wsserve.batching.PriorityLevels` maps a request's priority onto them.
    priority_levels: int | None = None
    default_priority_level: int = 0
    #: config.pbtxt's ``dynamic_batching.priority_queue_policy``: ``(level, QueuePolicy)`` pairs
    #: (:class:`wsserve.batching.QueuePolicy`), levels increasing in 1..:attr:`priority_levels`; a level
    #: not listed has the default queue policy (the three fields above).
    priority_queue_policies: tuple[tuple[int, Any], ...] = ()
    #: Its plain predicts are answered from the server's response cache when their inputs repeat
    #: (config.toml's ``response_cache``, config.pbtxt's ``response_cache { enable: true }``).
    response_cache: bool = False
    #: A generative model's guided-pattern compile limits (None: the server's flag of the same name)
    guide_compile_memory_bytes: int | None = None
    guide_compile_cpu_s: int | None = None
    guide_compile_timeout_s: float | None = None
    #: The model file in a version directory when not the backend's usual one (config.pbtxt's
    #: ``default_model_filename``); ``None``: ``model.onnx`` / ``model.npz`` / ``model.py``.
    model_file: str | None = None
    #: What the config file says that wsserve accepts but does not honour (config.pbtxt's hints,
    #: KIND_GPU run on CPU): one warning in the log when the config is read.
    warnings: tuple[str, ...] = ()
    #: Triton's auto-complete of ``max_batch_size`` (config.pbtxt leaves it 0 and does not list both
    #: inputs and outputs): the ONNX backend batches (as if ``max_batch_size`` were not given) when every
    #: graph input and output has a dynamic first dimension, else runs the graph whole once per row
    #: (``max_batch_size = 0``). :attr:`batching` is then the graph's, known once it is loaded.
    autofill_batching: bool = False
    #: A config.pbtxt with ``backend: "python"``: its configuration as the JSON string Triton gives the
    #: model (a Triton Python backend model.py, served by :mod:`.triton_backend`); ``None`` otherwise.
    triton_model_config: str | None = None
    #: config.pbtxt's ``model_transaction_policy { decoupled: true }`` (a Triton Python model only):
    #: any number of responses per request (:mod:`wsserve.decoupled`).
    decoupled: bool = False
    #: config.pbtxt's ``sequence_batching { iterative_sequence: true }`` (a Triton Python model only):
    #: its ``execute`` may reschedule a request (``set_release_flags``, :mod:`wsserve.reschedule`).
    iterative_sequence: bool = False
    #: config.pbtxt's ``sequence_batching`` (a Triton Python or an ONNX model): a stateful model, its
    #: requests scheduled by sequence (:class:`wsserve.sequences.SequenceConfig`); None otherwise.
    sequence: Any = None
    #: Triton's ``model_warmup`` (config.pbtxt): the batches a version runs before it serves
    #: (:class:`~.warmup.WarmupSample`); empty: the backend's own warm-up (a batch of zeros).
    warmup: tuple[Any, ...] = ()
    #: A Triton ensemble's steps (config.pbtxt's ``platform: "ensemble"``,
    #: :class:`~.ensemble_config.EnsembleConfig`); ``None`` for any other model.
    ensemble: Any = None
    #: config.pbtxt's ``batch_input`` (:class:`.ragged.BatchInput`) and ``batch_output``
    #: (:class:`.ragged.BatchOutput`): inputs the server computes per batch, outputs it scatters.
    batch_inputs: tuple[Any, ...] = ()
    batch_outputs: tuple[Any, ...] = ()

    @property
    def source(self) -> str:
        """The config file's name for messages: ``config.toml`` or ``config.pbtxt``."""
        return self.path.name if self.path is not None and self.path.name else "config.toml"

    @property
    def triton(self) -> bool:
        """A Triton model configuration (config.pbtxt, or a load request's JSON config): its
        ``max_batch_size`` is what Triton's configuration extension answers (config.toml's is only
        the rows of one execution).  Such a config always has :attr:`priority_levels`."""
        return self.priority_levels is not None

    @property
    def batching(self) -> bool:
        """False when ``max_batch_size = 0``: the model has no batch dimension."""
        return self.max_batch_size != 0


# --------------------------------------------------------------------------- helpers

def _tname(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _int(path: Path, key: str, value: Any, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise ConfigError(path, key, f"must be an integer in [{lo}, {hi}], got {_tname(value)}")
    if not lo <= value <= hi:
        raise ConfigError(path, key, f"must be in [{lo}, {hi}], got {value}")
    return value


def _choice(path: Path, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if type(value) is not str or value not in choices:
        shown = repr(value) if type(value) is str else _tname(value)
        raise ConfigError(path, key, f"must be one of {', '.join(choices)}; got {shown}")
    return value


def _shape(path: Path, key: str, value: Any) -> tuple[int, ...]:
    if type(value) is not list:
        raise ConfigError(path, key, f"must be an array of positive integers, got {_tname(value)}")
    if not value:
        raise ConfigError(path, key, "must not be empty (a row needs at least one dimension)")
    if len(value) > MAX_DIMS:
        raise ConfigError(path, key, f"has {len(value)} dimensions; at most {MAX_DIMS}")
    for d in value:
        if type(d) is not int:
            raise ConfigError(path, key, f"dimensions must be integers, got {_tname(d)}")
        if not 0 < d <= MAX_DIM:
            raise ConfigError(path, key, f"dimension {d} is out of range [1, {MAX_DIM}]")
    if math.prod(value) > MAX_ROW_ELEMENTS:
        raise ConfigError(path, key, f"shape {value} has {math.prod(value)} values per row; at most {MAX_ROW_ELEMENTS}")
    return tuple(value)


def _tensors(path: Path, key: str, value: Any) -> tuple[TensorConfig, ...]:
    if type(value) is not list or not all(type(t) is dict for t in value):
        raise ConfigError(path, key, f"must be an array of tables ([[{key}]]), got {_tname(value)}")
    if not value:
        raise ConfigError(path, key, "must not be empty")
    if len(value) > MAX_TENSORS:
        raise ConfigError(path, key, f"has {len(value)} entries; at most {MAX_TENSORS}")
    out: list[TensorConfig] = []
    for i, table in enumerate(value):
        where = f"{key}[{i}]"
        unknown = sorted(set(table) - _TENSOR_KEYS)
        if unknown:
            raise ConfigError(path, f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_TENSOR_KEYS))})")
        name = table.get("name")
        if name is None:
            raise ConfigError(path, f"{where}.name", "is required")
        if type(name) is not str or not _NAME_RE.match(name):
            raise ConfigError(path, f"{where}.name", f"must be 1-128 printable characters without spaces or quotes, got {name!r}")
        if any(t.name == name for t in out):
            raise ConfigError(path, f"{where}.name", f"duplicate name {name!r}")
        shape = _shape(path, f"{where}.shape", table["shape"]) if "shape" in table else None
        dtype = _choice(path, f"{where}.dtype", table["dtype"], tuple(DTYPES)) if "dtype" in table else None
        out.append(TensorConfig(name, shape, dtype))
    return tuple(out)


def _policy(path: Path, value: Any) -> VersionPolicy:
    key = "version_policy"
    if type(value) is str:
        if value == "all":
            return VersionPolicy("all")
        if value == "latest":
            return VersionPolicy("latest", count=1)
        raise ConfigError(path, key, f"must be \"all\", \"latest\", {{ latest = N }} or {{ specific = [...] }}; got {value!r}")
    if type(value) is not dict or len(value) != 1:
        raise ConfigError(path, key, "must be \"all\", \"latest\", or a table with exactly one of 'latest', 'specific'")
    (kind, arg), = value.items()
    if kind == "latest":
        return VersionPolicy("latest", count=_int(path, f"{key}.latest", arg, 1, MAX_POLICY_VERSIONS))
    if kind == "specific":
        if type(arg) is not list or not arg:
            raise ConfigError(path, f"{key}.specific", "must be a non-empty array of version numbers")
        if len(arg) > MAX_POLICY_VERSIONS:
            raise ConfigError(path, f"{key}.specific", f"lists {len(arg)} versions; at most {MAX_POLICY_VERSIONS}")
        versions = tuple(_int(path, f"{key}.specific", v, 1, MAX_VERSION) for v in arg)
        return VersionPolicy("specific", versions=tuple(sorted(set(versions))))
    raise ConfigError(path, f"{key}.{kind}", "unknown policy (known: latest, specific; or the string \"all\")")


def _check_integers(path: Path, doc: dict[str, Any]) -> None:
    """Refuse an integer outside TOML's 64-bit range (TOML: one that cannot be represented losslessly
    is an error), naming its key: tomllib gives Python ints of any size, which overflow a float
    (``math.isfinite``) or cannot be shown in a message (a hexadecimal one of 16000 bits)."""
    stack: list[tuple[str, Any]] = [(k, v) for k, v in doc.items()]
    while stack:
        key, value = stack.pop()
        if type(value) is int and not -(1 << 63) <= value < 1 << 63:
            shown = f"{str(value)[:10]}... ({len(str(value))} digits)" if value.bit_length() < 14000 else \
                f"an integer of {value.bit_length()} bits"
            raise ConfigError(path, key, f"{shown}; TOML integers are 64-bit")
        if type(value) is dict:
            stack.extend((f"{key}.{k}", v) for k, v in value.items())
        elif type(value) is list:  # a table in an array is named by its index (inputs[0].shape), as elsewhere
            stack.extend((f"{key}[{i}]" if type(v) is dict else key, v) for i, v in enumerate(value))


# --------------------------------------------------------------------------- public

def config_text(text: str | bytes, path: Path) -> str:
    """A config file's contents as text (config.toml's and config.pbtxt's rule): at most
    :data:`MAX_CONFIG_BYTES` bytes (characters, for ``str``) of UTF-8.  Raises :class:`ConfigError`
    naming ``path`` for text that is too long or not UTF-8."""
    if isinstance(text, bytes):
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(path, None, f"is {len(text)} bytes; at most {MAX_CONFIG_BYTES}")
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(path, None, f"is not UTF-8 ({exc})") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(path, None, f"is {len(text)} characters; at most {MAX_CONFIG_BYTES}")
    return text


def parse_config(text: str | bytes, path: Path | str = "config.toml") -> ModelConfig:
    """Parse config.toml contents. ``path`` is only used in messages and stored in the result.

    Raises :class:`ConfigError` (naming ``path``, the key and the problem) for
    invalid UTF-8/TOML (nesting too deep for the parser, or a leading byte order mark, included), unknown keys, wrong types, out-of-range values, or
    contradictory keys (``input_shape`` together with ``[[inputs]]``).
    """
    path = Path(path)
    text = config_text(text, path)
    if text.startswith("\ufeff"):  # tomllib's own message would be "Invalid statement (at line 1, column 1)"
        raise ConfigError(path, None, "starts with a byte order mark (BOM), which TOML does not allow: save it as UTF-8 without one")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"is not valid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses per nested array/table: "a = [[[[...]]]]" would escape
        raise ConfigError(path, None, "is not valid TOML (arrays or tables nested too deeply)") from None
    except ValueError:  # int() of a decimal integer past Python's 4300 digits (sys.get_int_max_str_digits)
        raise ConfigError(path, None, "is not valid TOML (an integer of more than 4300 digits; TOML integers "
                                      "are 64-bit)") from None
    _check_integers(path, doc)

    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ConfigError(path, unknown[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")

    def io(side: str) -> tuple[TensorConfig, ...] | None:
        shape_key, dtype_key, list_key = f"{side}_shape", f"{side}_dtype", f"{side}s"
        if list_key in doc:
            for k in (shape_key, dtype_key):
                if k in doc:
                    raise ConfigError(path, k, f"cannot be used together with [[{list_key}]] (give shape/dtype per {side})")
            return _tensors(path, list_key, doc[list_key])
        shape = _shape(path, shape_key, doc[shape_key]) if shape_key in doc else None
        dtype = _choice(path, dtype_key, doc[dtype_key], tuple(DTYPES)) if dtype_key in doc else None
        if shape is None and dtype is None:
            return None
        return (TensorConfig(None, shape, dtype),)

    max_delay = doc.get("max_delay_ms")
    if max_delay is not None:
        if type(max_delay) not in (int, float) or not math.isfinite(max_delay) or not 0 <= max_delay <= MAX_DELAY_MS:
            raise ConfigError(path, "max_delay_ms", f"must be a number in [0, {MAX_DELAY_MS}], got {max_delay!r}")
        max_delay = float(max_delay)

    load_timeout = doc.get("model_load_timeout_s")
    if load_timeout is not None:
        try:
            load_timeout = check_model_load_timeout(load_timeout, "it")
        except ValueError as exc:
            raise ConfigError(path, "model_load_timeout_s", str(exc).removeprefix("it ")) from None

    default_timeout = doc.get("default_timeout_ms")
    if default_timeout is not None:
        if type(default_timeout) not in (int, float) or not math.isfinite(default_timeout) \
                or not 0 < default_timeout <= MAX_DEFAULT_TIMEOUT_MS:
            raise ConfigError(path, "default_timeout_ms",
                              f"must be a number in (0, {MAX_DEFAULT_TIMEOUT_MS}], got {default_timeout!r}")
        default_timeout = float(default_timeout)
    override = doc.get("allow_timeout_override", True)
    if type(override) is not bool:
        raise ConfigError(path, "allow_timeout_override", f"must be true or false, got {_tname(override)}")
    response_cache = doc.get("response_cache", False)
    if type(response_cache) is not bool:
        raise ConfigError(path, "response_cache", f"must be true or false, got {_tname(response_cache)}")
    compile_limits: dict[str, int | float] = {}
    for key in GUIDE_COMPILE_LIMITS:
        if key in doc:
            try:
                compile_limits[key] = check_guide_compile_limit(key, doc[key], "it")
            except ValueError as exc:
                raise ConfigError(path, key, str(exc).removeprefix("it ")) from None

    onnx = doc.get("onnx", {})
    if type(onnx) is not dict:
        raise ConfigError(path, "onnx", f"must be a table ([onnx]), got {_tname(onnx)}")
    unknown = sorted(set(onnx) - _ONNX_KEYS)
    if unknown:
        raise ConfigError(path, f"onnx.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_ONNX_KEYS))})")

    def opt_int(key: str, lo: int, hi: int) -> int | None:
        return _int(path, key, doc[key], lo, hi) if key in doc else None

    return ModelConfig(
        path=path,
        backend=_choice(path, "backend", doc["backend"], BACKENDS) if "backend" in doc else None,  # type: ignore[arg-type]
        task=_choice(path, "task", doc["task"], TASKS) if "task" in doc else None,
        inputs=io("input"),
        outputs=io("output"),
        max_batch_size=opt_int("max_batch_size", 0, MAX_BATCH_SIZE),
        max_delay_ms=max_delay,
        instances=opt_int("instances", 1, MAX_INSTANCES) or 1,
        flops_per_row=opt_int("flops_per_row", 1, MAX_FLOPS_PER_ROW),
        version_policy=_policy(path, doc["version_policy"]) if "version_policy" in doc else VersionPolicy(),
        onnx_intra_op_threads=(
            _int(path, "onnx.intra_op_num_threads", onnx["intra_op_num_threads"], 1, MAX_THREADS)
            if "intra_op_num_threads" in onnx else 1
        ),
        model_load_timeout_s=load_timeout,
        max_queue_requests=opt_int("max_queue_requests", 1, MAX_QUEUE_REQUESTS),
        default_timeout_ms=default_timeout,
        allow_timeout_override=override,
        response_cache=response_cache,
        **compile_limits,  # type: ignore[arg-type]
    )


def read_config_bytes(path: Path | str) -> bytes:
    """At most ``MAX_CONFIG_BYTES + 1`` bytes of the regular file ``path``.

    Opened without blocking, so a FIFO (or a device) named ``config.toml`` is refused at once
    instead of holding the scan that reads it.  Raises ``FileNotFoundError`` when it is missing,
    ``OSError`` when it cannot be read or is not a regular file (``EINVAL``, "not a regular file")."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)


def load_config(path: Path | str) -> ModelConfig:
    """Read and parse a config.toml; a missing file gives ``ModelConfig(path=path)`` (all defaults).

    Raises :class:`ConfigError` for an unreadable, oversized or invalid file.
    """
    path = Path(path)
    try:
        data = read_config_bytes(path)
    except FileNotFoundError:
        return ModelConfig(path=path)
    except OSError as exc:
        raise ConfigError(path, None, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, None, f"is larger than {MAX_CONFIG_BYTES} bytes")
    return parse_config(data, path)
