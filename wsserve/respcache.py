"""Triton's response cache, sans-I/O: :class:`ResponseCache`, an LRU of whole predict outputs.

A request's key is a 32-byte BLAKE2b digest of its model, version, the version's
*scope* (one per loaded worker, so a version reloaded under the same number never
shares entries with its predecessor) and its inputs in a canonical form: each
tensor's name, dtype, shape and raw bytes, in name order (a lone array is tagged
apart from named tensors; a list of checked JSON rows is hashed as the ``float64``
array the worker makes of it).  Every field is length-prefixed, so no two
different requests hash the same bytes.

The cache is bounded in bytes (``max_bytes``): an entry costs its key, its
outputs as Python holds them (each array's header and data, and for named outputs
the dict and the names: ``sys.getsizeof`` of each) and :data:`ENTRY_OVERHEAD_BYTES`
(the key object, the LRU's and the scope's slots, the entry record); an entry over
:data:`MAX_ENTRY_FRACTION` of the budget is not stored; storing evicts the
least recently used entries until the new one fits.  Stored outputs are
read-only copies (a hit hands the same arrays to every request).

A :class:`CacheScope` is opened per served model version
(:meth:`ResponseCache.open_scope`) and closed when the version is unloaded or
replaced (:meth:`ResponseCache.close_scope`): its entries are dropped at once,
and nothing is stored in it afterwards (a request still computing on the old
weights cannot leave stale outputs behind).

Event-loop thread only (no locks): the predict worker looks up in ``submit``
and stores after handing a request its rows.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CacheScope", "CacheStatistics", "ENTRY_OVERHEAD_BYTES", "MAX_ENTRY_FRACTION", "ResponseCache",
           "request_key"]

#: Bytes one entry costs beyond its key and its outputs (the key object, the LRU's and its scope's slots).
ENTRY_OVERHEAD_BYTES = 512

#: An entry larger than this fraction of ``max_bytes`` is not stored (it would evict too much).
MAX_ENTRY_FRACTION = 0.25

_KEY_DIGEST_BYTES = 32


class CacheScope:
    """One served model version's part of the cache (see the module docstring).  ``closed``: its
    version is gone; lookups miss and stores are refused."""

    __slots__ = ("id", "model", "version", "keys", "closed")

    def __init__(self, scope_id: int, model: str, version: str) -> None:
        self.id = scope_id
        self.model = model
        self.version = version
        self.keys: set[bytes] = set()
        self.closed = False


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A snapshot: ``entries`` held, their ``bytes``, the budget ``max_bytes``, and the entries
    ``evicted`` (for room) and ``refused`` (too large) so far."""

    entries: int
    bytes: int
    max_bytes: int
    evicted: int
    refused: int


class _Entry:
    __slots__ = ("scope", "outputs", "nbytes")

    def __init__(self, scope: CacheScope, outputs: Any, nbytes: int) -> None:
        self.scope = scope
        self.outputs = outputs
        self.nbytes = nbytes


def _field(h: Any, data: bytes | np.ndarray) -> None:
    """``data`` (bytes, or a 1-D ``uint8`` array: its buffer) after its length."""
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _hash_array(h: Any, name: str, a: np.ndarray) -> bool:
    """Add one tensor to ``h``; False when it cannot be hashed (an object array of other than str/bytes)."""
    _field(h, name.encode())
    _field(h, a.dtype.str.encode())
    _field(h, np.asarray(a.shape, dtype=np.int64).tobytes())
    if a.dtype.kind != "O":
        _field(h, np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # its memory, not a copy (when contiguous)
        return True
    h.update(a.size.to_bytes(8, "little"))
    for v in a.flat:  # BYTES tensors: each element, typed and length-prefixed
        if isinstance(v, bytes):
            h.update(b"b")
            _field(h, v)
        elif isinstance(v, str):
            h.update(b"s")
            _field(h, v.encode())
        else:
            return False
    return True


def request_key(scope: CacheScope, inputs: Any) -> bytes | None:
    """The key of a request with ``inputs`` (an array, ``{name: array}``, or a list of checked
    JSON rows) to ``scope``'s version; None when its inputs cannot be keyed (then it is not cached)."""
    h = hashlib.blake2b(digest_size=_KEY_DIGEST_BYTES, person=b"wsserve-respc1")
    _field(h, scope.model.encode())
    _field(h, scope.version.encode())
    h.update(scope.id.to_bytes(8, "little"))
    if type(inputs) is list:
        inputs = np.array(inputs, dtype=np.float64)
    if isinstance(inputs, dict):
        h.update(b"D" + len(inputs).to_bytes(8, "little"))
        for name in sorted(inputs):
            if not _hash_array(h, name, np.asarray(inputs[name])):
                return None
    elif isinstance(inputs, np.ndarray):
        h.update(b"A")
        if not _hash_array(h, "", inputs):
            return None
    else:
        return None
    return h.digest()


def _frozen_copy(outputs: Any) -> tuple[Any, int] | None:
    """Read-only copies of ``outputs`` (an array or ``{name: array}`` of numbers) and the bytes
    they hold (``sys.getsizeof``: each array's header and data; a dict's table and its names);
    None for anything else."""
    arrays = outputs.items() if isinstance(outputs, dict) else (("", outputs),)
    out: dict[str, np.ndarray] = {}
    total = 0
    for name, a in arrays:
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiub":
            return None
        c = np.array(a, copy=True)
        c.setflags(write=False)
        out[name] = c
        total += sys.getsizeof(c)  # the copy owns its data: header + nbytes
    if not isinstance(outputs, dict):
        return out[""], total
    return out, total + sys.getsizeof(out) + sum(sys.getsizeof(name) for name in out)


class ResponseCache:
    """An LRU of predict outputs bounded in bytes (see the module docstring)."""

    def __init__(self, *, max_bytes: int, max_entry_fraction: float = MAX_ENTRY_FRACTION) -> None:
        """``max_bytes`` >= 1: the budget.  Raises ``ValueError`` for a bad budget or fraction."""
        if type(max_bytes) is not int or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        if not 0 < max_entry_fraction <= 1:
            raise ValueError(f"max_entry_fraction must be in (0, 1], got {max_entry_fraction!r}")
        self.max_bytes = max_bytes
        self.max_entry_bytes = int(max_bytes * max_entry_fraction)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._evicted = 0
        self._refused = 0
        self._ids = itertools.count(1)

    # -- scopes

    def open_scope(self, model: str, version: str) -> CacheScope:
        """A new scope for a version starting to serve (never one a previous load of it had)."""
        return CacheScope(next(self._ids), model, version)

    def close_scope(self, scope: CacheScope) -> int:
        """Drop ``scope``'s entries and refuse stores in it from now on; returns the entries dropped.
        Idempotent."""
        scope.closed = True
        dropped = 0
        for key in scope.keys:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry.nbytes
                dropped += 1
        scope.keys = set()
        return dropped

    # -- entries

    def get(self, key: bytes) -> Any | None:
        """The outputs stored under ``key`` (read-only arrays; now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None or entry.scope.closed:
            return None
        self._entries.move_to_end(key)
        return entry.outputs

    def put(self, scope: CacheScope, key: bytes, outputs: Any) -> bool:
        """Store a copy of ``outputs`` under ``key`` in ``scope``, evicting the least recently used
        entries for room.  False (nothing stored) when the scope is closed, the outputs are not
        numeric arrays, or the entry is over the size limit of one entry."""
        if scope.closed:
            return False
        copied = _frozen_copy(outputs)
        if copied is None:
            return False
        outputs, data_bytes = copied
        nbytes = len(key) + data_bytes + ENTRY_OVERHEAD_BYTES
        if nbytes > self.max_entry_bytes:
            self._refused += 1
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
            old.scope.keys.discard(key)
        while self._bytes + nbytes > self.max_bytes:
            victim_key, victim = self._entries.popitem(last=False)
            victim.scope.keys.discard(victim_key)
            self._bytes -= victim.nbytes
            self._evicted += 1
        self._entries[key] = _Entry(scope, outputs, nbytes)
        scope.keys.add(key)
        self._bytes += nbytes
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(len(self._entries), self._bytes, self.max_bytes, self._evicted, self._refused)
