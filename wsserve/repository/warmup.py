"""Triton's ``model_warmup`` (config.pbtxt): the requests a version runs before it serves.

Each :class:`WarmupSample` is one ``ModelWarmup``: a ``batch_size`` (rows), its ``inputs`` (name
-> data type, per-row ``dims`` and where the values come from: ``zero_data``, ``random_data`` or
``input_data_file``, a file of raw little-endian values in row-major order in the model
directory's ``warmup/`` folder, Triton's place) and a ``count`` of executions (0 counts as 1, as
Triton reads it).  :func:`parse_warmup` reads them from the config message (pure, at scan time);
:func:`warmup_batches` builds each sample's batch against the loaded model's input specs (reading
its files, bounded in bytes) when the version loads, one sample at a time (64 samples of up to
:data:`~wsserve.shapes.MAX_VALUES` values per input held at once would be gigabytes).  A version whose warm-up fails does not
serve: its load fails naming the sample, as Triton's does.

Bounds: at most :data:`MAX_WARMUP_SAMPLES` samples, :data:`MAX_WARMUP_COUNT` executions each,
:data:`~wsserve.shapes.MAX_VALUES` values per input of a sample (rows included).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import BYTES, DTYPES
from ..shapes import MAX_VALUES, VARIABLE, fits
from .errors import ConfigError, ModelLoadError

__all__ = ["MAX_STRING_FILE_BYTES", "MAX_WARMUP_COUNT", "MAX_WARMUP_SAMPLES", "WARMUP_DIR", "WarmupInput", "WarmupSample", "parse_warmup",
           "warmup_batches"]

#: Samples a config may list, at most.
MAX_WARMUP_SAMPLES = 64
#: Executions of one sample, at most.
MAX_WARMUP_COUNT = 1000
#: A ``TYPE_STRING`` sample's data file, at most (bytes).
MAX_STRING_FILE_BYTES = 64 * 1024 * 1024
#: The folder of the model directory that holds the samples' ``input_data_file`` files (Triton's).
WARMUP_DIR = "warmup"


@dataclass(frozen=True, slots=True)
class WarmupInput:
    """One input of a sample: ``dtype`` (a key of :data:`~wsserve.dtypes.DTYPES`), per-row ``dims``
    and ``source``: ``"zero"``, ``"random"`` or the name of a file in ``warmup/``."""

    dtype: str
    dims: tuple[int, ...]
    source: str


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """One ``ModelWarmup``: ``name`` (for messages), ``batch_size`` rows, ``inputs`` by name, run ``count`` times."""

    name: str
    batch_size: int
    inputs: Mapping[str, WarmupInput]
    count: int


def parse_warmup(path: Path, samples: Sequence[Any], triton_types: Mapping[str, str], batching: bool,
                 max_batch_size: int) -> tuple[WarmupSample, ...]:
    """The ``model_warmup`` messages of the config at ``path`` as samples.  ``triton_types``:
    Triton ``TYPE_*`` name -> wsserve dtype (the types served).  Raises :class:`ConfigError`
    naming the sample and field for a bad one: no name, a batch size of 0 or past
    ``max_batch_size`` (or other than 1 without a batch dimension), no inputs, a type not served,
    dims that are not positive, too many values, a data file name that is not a plain file name."""
    if len(samples) > MAX_WARMUP_SAMPLES:
        raise ConfigError(path, "model_warmup", f"lists {len(samples)} samples; at most {MAX_WARMUP_SAMPLES}")
    out = []
    for i, sample in enumerate(samples):
        key = f"model_warmup[{i}]"
        if not sample.name:
            raise ConfigError(path, f"{key}.name", "is required (it names the sample in messages)")
        key = f"model_warmup[{i}] ({sample.name[:64]!r})"
        rows = sample.batch_size
        most = (max_batch_size or MAX_VALUES) if batching else 1
        if not 1 <= rows <= most:
            raise ConfigError(path, f"{key}.batch_size", f"must be 1 to {most}" + ("" if batching else
                              " (the model has no batch dimension)") + f", got {rows}")
        if sample.count > MAX_WARMUP_COUNT:
            raise ConfigError(path, f"{key}.count", f"must be at most {MAX_WARMUP_COUNT}, got {sample.count}")
        if not sample.inputs:
            raise ConfigError(path, f"{key}.inputs", "is required (every input of the model, with its data)")
        inputs = {}
        for name, spec in sorted(sample.inputs.items()):
            ikey = f"{key}.inputs[{name[:64]!r}]"
            type_name = spec.DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number.get(spec.data_type)
            dtype = triton_types.get(type_name.name if type_name is not None else "")
            if dtype is None:
                raise ConfigError(path, f"{ikey}.data_type", f"{type_name.name if type_name else spec.data_type} is "
                                  f"not served (served: {', '.join(triton_types)})")
            dims = tuple(int(d) for d in spec.dims)
            if len(dims) > 8 or any(d < 1 for d in dims):
                raise ConfigError(path, f"{ikey}.dims", f"must be 0 to 8 sizes of at least 1, got {list(dims)}")
            if rows * math.prod(dims) > MAX_VALUES:
                raise ConfigError(path, f"{ikey}.dims", f"with batch_size {rows} hold more than {MAX_VALUES} values")
            which = spec.WhichOneof("input_data_type")
            if which == "input_data_file":
                source = spec.input_data_file
                if not source or os.path.basename(source) != source or source in (".", "..") or "\0" in source:
                    raise ConfigError(path, f"{ikey}.input_data_file", f"must be a file name in the model's "
                                      f"{WARMUP_DIR}/ folder, got {source[:128]!r}")
            elif which in ("zero_data", "random_data") and getattr(spec, which):
                source = "zero" if which == "zero_data" else "random"
            else:
                raise ConfigError(path, ikey, "needs its data: zero_data: true, random_data: true or input_data_file")
            inputs[name] = WarmupInput(dtype, dims, source)
        out.append(WarmupSample(sample.name, rows, inputs, max(1, sample.count)))
    return tuple(out)


def warmup_batches(samples: Sequence[WarmupSample], specs: Sequence[Any], model_dir: Path,
                   where: Path) -> Iterator[tuple[WarmupSample, dict[str, np.ndarray]]]:
    """Each sample's batch (input name -> ``(batch_size, *dims)`` array) for a model whose inputs
    are ``specs`` (name, per-row ``shape``, ``dtype``), built as it is iterated to (one sample's
    arrays at a time: drop each before taking the next).  Raises :class:`ModelLoadError` naming
    ``where`` (the model file) and the sample when its inputs are not the model's (an ``optional``
    one, config.pbtxt's, may be left out: the batch then has none), a type or dims
    do not match, or a data file is missing, unreadable or not exactly the values' bytes."""
    by_name = {s.name: s for s in specs}
    rng = np.random.default_rng(0)
    for sample in samples:
        label = f"model_warmup sample {sample.name!r}"
        missing = sorted(n for n, s in by_name.items() if n not in sample.inputs and not getattr(s, "optional", False))
        if missing or not set(sample.inputs) <= set(by_name):  # an optional input may be left out
            takes = [n + (" (optional)" if getattr(by_name[n], "optional", False) else "") for n in sorted(by_name)]
            raise ModelLoadError(where, f"{label} gives inputs {sorted(sample.inputs)}"
                                        + (f" (missing {missing[0]!r})" if missing else "")
                                        + f"; the model takes {takes}")
        arrays = {}
        for name, inp in sample.inputs.items():
            spec = by_name[name]
            if inp.dtype != spec.dtype:
                raise ModelLoadError(where, f"{label}: input {name!r} is {inp.dtype}; the model takes {spec.dtype}")
            if not fits(inp.dims, spec.shape):
                shown = [d if d != VARIABLE else -1 for d in spec.shape]
                raise ModelLoadError(where, f"{label}: input {name!r} has dims {list(inp.dims)}; the model takes "
                                            f"{shown}")
            shape = (sample.batch_size, *inp.dims)
            if inp.dtype == BYTES:
                array = _strings(inp.source, model_dir, inp.dims, shape, rng, where, f"{label}: input {name!r}")
                arrays[name] = array
                continue
            dtype = DTYPES[inp.dtype]
            if inp.source == "zero":
                array = np.zeros(shape, dtype=dtype)
            elif inp.source == "random":
                array = _random(rng, shape, dtype)
            else:
                array = _from_file(model_dir / WARMUP_DIR / inp.source, inp.dims, shape, dtype, where, label, name)
            arrays[name] = array
        yield sample, arrays
        del arrays, array  # (this generator's frame would hold them while the next sample is built)


def _strings(source: str, model_dir: Path, dims: tuple[int, ...], shape: tuple[int, ...], rng: np.random.Generator,
             where: Path, label: str) -> np.ndarray:
    """A ``TYPE_STRING`` input's batch (an object array of ``bytes``): empty strings (``zero_data``),
    strings of 1 to 8 digits (``random_data``), or one row's elements from a file, each a 4-byte
    little-endian length then its bytes (Triton's form), at most :data:`MAX_STRING_FILE_BYTES`."""
    count = math.prod(dims)
    if source == "zero":
        row = [b""] * count
    elif source == "random":
        row = [bytes(rng.integers(48, 58, int(rng.integers(1, 9))).astype(np.uint8)) for _ in range(count)]
    else:
        path = model_dir / WARMUP_DIR / source
        data = _read_file(path, MAX_STRING_FILE_BYTES + 1, where, label)
        if len(data) > MAX_STRING_FILE_BYTES:
            raise ModelLoadError(where, f"{label}: {path} holds more than {MAX_STRING_FILE_BYTES} bytes")
        row, at = [], 0
        for i in range(count):
            if at + 4 > len(data) or at + 4 + int.from_bytes(data[at:at + 4], "little") > len(data):
                raise ModelLoadError(where, f"{label}: {path} ends inside element {i} of {count} (each a 4-byte "
                                            "little-endian length, then its bytes)")
            n = int.from_bytes(data[at:at + 4], "little")
            row.append(data[at + 4:at + 4 + n])
            at += 4 + n
        if at != len(data):
            raise ModelLoadError(where, f"{label}: {path} holds {len(data) - at} bytes past its {count} elements")
    out = np.empty(shape, dtype=object)
    out[...] = np.array(row + [None], dtype=object)[:-1].reshape(dims)  # (the None keeps bytes elements whole)
    return out


def _read_file(path: Path, most: int, where: Path, label: str) -> bytes:
    """At most ``most`` bytes of the regular file ``path`` (opened without blocking: a FIFO with no
    writer, or a device such as a terminal, would hold the load up).  Raises :class:`ModelLoadError`
    naming ``where``, ``label`` and ``path`` when it cannot be read or is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ModelLoadError(where, f"{label}: {path} cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelLoadError(where, f"{label}: {path} is not a regular file")
        try:
            return f.read(most)
        except OSError as exc:
            raise ModelLoadError(where, f"{label}: {path} cannot be read ({exc.strerror or exc})") from None


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Values in [0, 1) for floats, 0..9 for integers, either for bools (seeded: the same each load)."""
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 10, shape).astype(dtype)


def _from_file(path: Path, dims: tuple[int, ...], shape: tuple[int, ...], dtype: np.dtype, where: Path, label: str,
               name: str) -> np.ndarray:
    """One row's values from ``path`` (raw, little-endian, row-major), repeated for every row (Triton
    duplicates a sample's data to its batch size)."""
    want = math.prod(dims) * dtype.itemsize
    data = _read_file(path, want + 1, where, f"{label}: input {name!r}")
    if len(data) != want:
        raise ModelLoadError(where, f"{label}: input {name!r}: {path} holds {len(data) if len(data) <= want else 'more than ' + str(want)} "
                                    f"bytes; {list(dims)} {dtype.name} values are {want}")
    row = np.frombuffer(data, dtype=dtype).reshape(dims)
    if dtype.kind == "f" and not np.isfinite(row).all():
        raise ModelLoadError(where, f"{label}: input {name!r}: {path} holds a value that is not finite")
    return np.broadcast_to(row, shape).copy()
