"""Triton's system shared memory extension: client-made POSIX shared memory regions as tensor data.

One :class:`SystemSharedMemory` per server (the HTTP routes ``/v2/systemsharedmemory/...`` and
the gRPC RPCs ``SystemSharedMemoryStatus``/``Register``/``Unregister`` share it), holding the
registered regions by name.  A region is ``(key, offset, byte_size)``: ``byte_size`` bytes at
``offset`` of the POSIX shared memory object ``key`` (``/name``: the file ``/dev/shm/name``, as
``shm_open`` names it).  An inference input with the parameters ``shared_memory_region``,
``shared_memory_byte_size`` (and optionally ``shared_memory_offset``, within the region) takes
its bytes from there (:meth:`SystemSharedMemory.read`, a copy made before the request is
queued: the client may reuse the region once it has the answer); an output with them is written
there (:meth:`SystemSharedMemory.write`) and answered without data.

Hardening (docs/PROTOCOL.md, "System shared memory extension"):

- who may register, unregister, read the status (a region's key names a shared memory object on
  the server's machine) and use a region is the repository extension's admin rule (the callers
  check it: :func:`~wsserve.rest.modelrepo.check_admin`);
- at most :data:`MAX_REGIONS` regions, each at most :data:`MAX_REGION_BYTES`; the bytes one
  request's inputs take from them are bounded by the caller
  (:class:`~wsserve.rest.oip.ShmInputs`: ``max_message_bytes``, as a body), and an output's place
  is checked against its region before the model runs (:meth:`SystemSharedMemory.check`);
- a key is ``/`` (optional) then 1 to 255 bytes without ``/``, NUL or ``..``; a region name
  is 1 to 255 bytes without ``/``, NUL or ``..``;
- the file is opened without following a symbolic link, must be a regular file owned by the
  server's own user (another user's shared memory is never read or written for a client) and
  hold ``offset + byte_size`` bytes;
- a registered region keeps its file open (a file the client unlinks stays valid until
  unregistered), but is read and written with ``pread``/``pwrite``, not through a memory
  mapping: a client that truncates the file while it is registered would make an access to a
  mapping past the file's new end kill the server (SIGBUS); a read past it is short here and
  refused, naming the region, and a write first checks the file's size;
- an OS error reading or writing a region (``ENOSPC``: a sparse object larger than what is left
  of ``/dev/shm``) refuses the request naming the tensor and the region (400), as a truncation.

Not thread-safe: the server's loop only.  :meth:`SystemSharedMemory.close` unregisters all
(the server's stop).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadRequest, InvalidInput
from ..jsontypes import shown

__all__ = ["MAX_NAME_BYTES", "MAX_REGIONS", "MAX_REGION_BYTES", "SHM_DIR", "ShmRef", "SystemSharedMemory",
           "check_key", "check_name", "shm_ref"]

#: Regions registered at once.
MAX_REGIONS = 64
#: The largest ``byte_size`` (and ``offset + byte_size``) of one region: 4 GiB.
MAX_REGION_BYTES = 1 << 32
#: The longest region name and key (UTF-8 bytes; a key's leading ``/`` not counted).
MAX_NAME_BYTES = 255
#: Where POSIX shared memory objects live (Linux's tmpfs).
SHM_DIR = Path("/dev/shm")

#: The inference tensor parameters naming a region.
REGION, OFFSET, BYTE_SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"


def _check_text(value: Any, what: str) -> str:
    if type(value) is not str or not value:
        raise BadRequest(f"{what} must be a non-empty string")
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_NAME_BYTES:
        raise BadRequest(f"{what} has {len(raw)} bytes; at most {MAX_NAME_BYTES}")
    if "/" in value or "\x00" in value or ".." in value:
        raise BadRequest(f"{what} {value[:64]!r} may not hold '/', '..' or NUL")
    return value


def check_name(name: Any) -> str:
    """A region name: 1 to :data:`MAX_NAME_BYTES` bytes, no ``/``, ``..`` or NUL.  Raises
    :class:`~wsserve.errors.BadRequest`."""
    return _check_text(name, "the region name")


def check_key(key: Any) -> str:
    """A POSIX shared memory key: an optional leading ``/`` then 1 to :data:`MAX_NAME_BYTES`
    bytes without ``/``, ``..`` or NUL; returned without its ``/`` (the file's name under
    :data:`SHM_DIR`).  Raises :class:`~wsserve.errors.BadRequest`."""
    if type(key) is not str:
        raise BadRequest("'key' must be a string (a POSIX shared memory name, e.g. '/my_region')")
    return _check_text(key[1:] if key.startswith("/") else key, "'key'")


def _size(value: Any, what: str, least: int) -> int:
    if type(value) is not int or not least <= value <= MAX_REGION_BYTES:
        raise BadRequest(f"{what} must be an integer in [{least}, {MAX_REGION_BYTES}], got {shown(value)}")
    return value


@dataclass(frozen=True, slots=True)
class ShmRef:
    """A tensor's place in a region: ``size`` bytes at ``offset`` within region ``region``."""

    region: str
    offset: int
    size: int


def shm_ref(params: Mapping[str, Any], what: str) -> ShmRef | None:
    """The :class:`ShmRef` a tensor's ``parameters`` name (None: no ``shared_memory_region``);
    ``shared_memory_byte_size`` is required with it and ``shared_memory_offset`` optional (0),
    neither without it.  ``what`` names the tensor in the error.  Raises
    :class:`~wsserve.errors.BadRequest`."""
    region = params.get(REGION)
    if region is None:
        if BYTE_SIZE in params or OFFSET in params:
            raise BadRequest(f"{what}: '{BYTE_SIZE}' and '{OFFSET}' need '{REGION}'")
        return None
    if type(region) is not str or not region or len(region) > 4 * MAX_NAME_BYTES:
        raise BadRequest(f"{what}: '{REGION}' must be a region name")
    if BYTE_SIZE not in params:
        raise BadRequest(f"{what}: '{REGION}' needs '{BYTE_SIZE}'")
    size = _size(params[BYTE_SIZE], f"{what}: '{BYTE_SIZE}'", 0)
    offset = _size(params.get(OFFSET, 0), f"{what}: '{OFFSET}'", 0)
    return ShmRef(region, offset, size)


class _Region:
    """One registered region: its status and its file, held open."""

    __slots__ = ("name", "key", "offset", "byte_size", "fd")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, fd: int) -> None:
        self.name, self.key, self.offset, self.byte_size, self.fd = name, key, offset, byte_size, fd

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def fits(self, ref: ShmRef, size: int, what: str) -> None:
        """``size`` bytes at ``ref.offset`` fit this region; else :class:`~wsserve.errors.InvalidInput`
        naming ``what`` and the region."""
        if ref.offset + size > self.byte_size:
            raise InvalidInput(f"{what}: {size} bytes at offset {ref.offset} do not fit shared memory region "
                               f"{self.name!r} ({self.byte_size} bytes)")

    def span(self, ref: ShmRef, size: int, what: str) -> int:
        """The file offset of ``size`` bytes at ``ref.offset`` of this region; refused (naming
        ``what`` and the region) when they do not fit the region or the file now."""
        self.fits(ref, size, what)
        start = self.offset + ref.offset
        try:
            size_now = os.fstat(self.fd).st_size
        except OSError as exc:
            raise _os_error(exc, what, self, "read") from None
        if size_now < start + size:
            raise InvalidInput(f"{what}: shared memory region {self.name!r} no longer holds its bytes (its file "
                               "was truncated); unregister it")
        return start


class SystemSharedMemory:
    """The registered system shared memory regions of one server (see the module docstring).

    ``directory``: where keys are files (:data:`SHM_DIR`); ``max_regions``, ``max_region_bytes``:
    the bounds (:data:`MAX_REGIONS`, :data:`MAX_REGION_BYTES`)."""

    def __init__(self, *, directory: Path = SHM_DIR, max_regions: int = MAX_REGIONS,
                 max_region_bytes: int = MAX_REGION_BYTES) -> None:
        self.directory = directory
        self.max_regions = max_regions
        self.max_region_bytes = max_region_bytes
        self._regions: dict[str, _Region] = {}

    def __len__(self) -> int:
        return len(self._regions)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every region's ``{"name", "key", "offset", "byte_size"}`` by name, or region ``name``'s
        alone (:class:`~wsserve.errors.BadRequest` when it is not registered)."""
        if name:
            return [self._region(name).status()]
        return [self._regions[n].status() for n in sorted(self._regions)]

    def register(self, name: Any, key: Any, offset: Any, byte_size: Any) -> None:
        """Register region ``name``: ``byte_size`` bytes at ``offset`` of the file of ``key``.
        Raises :class:`~wsserve.errors.BadRequest` naming what is wrong (a name already
        registered, the bound on regions, a bad key, a file that is missing, not a regular file,
        another user's, or too small)."""
        name = check_name(name)
        file = check_key(key)
        offset = _size(offset, "'offset'", 0)
        byte_size = _size(byte_size, "'byte_size'", 1)
        if offset + byte_size > self.max_region_bytes:
            raise BadRequest(f"'offset' + 'byte_size' is {offset + byte_size}; a region may span at most "
                             f"{self.max_region_bytes} bytes")
        if name in self._regions:
            raise BadRequest(f"shared memory region {name!r} is already registered; unregister it first")
        if len(self._regions) >= self.max_regions:
            raise BadRequest(f"{len(self._regions)} shared memory regions are registered; at most {self.max_regions}")
        try:
            fd = os.open(self.directory / file, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise BadRequest(f"cannot open shared memory key {key!r}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadRequest(f"shared memory key {key!r} is not a shared memory object")
            if st.st_uid != os.geteuid():
                raise BadRequest(f"shared memory key {key!r} belongs to another user; the server only maps its own "
                                 "user's shared memory")
            if st.st_size < offset + byte_size:
                raise BadRequest(f"shared memory key {key!r} holds {st.st_size} bytes; 'offset' + 'byte_size' is "
                                 f"{offset + byte_size}")
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = _Region(name, key, offset, byte_size, fd)

    def unregister(self, name: str | None = None) -> None:
        """Unregister region ``name`` (nothing when it is not registered, as Triton answers), or
        every region (None or empty)."""
        if not name:
            self.close()
            return
        region = self._regions.pop(name, None)
        if region is not None:
            os.close(region.fd)

    def close(self) -> None:
        """Unregister every region (idempotent)."""
        regions, self._regions = self._regions, {}
        for region in regions.values():
            os.close(region.fd)

    def _region(self, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise BadRequest(f"shared memory region {name[:256]!r} is not registered")
        return region

    def check(self, ref: ShmRef, what: str) -> None:
        """``ref`` names a registered region and its ``ref.size`` bytes at ``ref.offset`` fit it (an
        output's place, checked before the model runs, as Triton checks it).  Raises
        :class:`~wsserve.errors.BadRequest` (no such region) or :class:`~wsserve.errors.InvalidInput`
        (past the region), naming ``what``."""
        self._region(ref.region).fits(ref, ref.size, what)

    def read(self, ref: ShmRef, what: str) -> bytearray:
        """A copy of the ``ref.size`` bytes ``ref`` names (``what``: the tensor, in errors).  Raises
        :class:`~wsserve.errors.BadRequest` (no such region) or :class:`~wsserve.errors.InvalidInput`
        (out of the region, or of its file now)."""
        region = self._region(ref.region)
        start = region.span(ref, ref.size, what)
        data = bytearray(ref.size)
        view, got = memoryview(data), 0
        try:
            while got < ref.size:  # a read returns at most ~2 GiB (Linux's limit per call): go on from there
                done = os.preadv(region.fd, [view[got:]], start + got)
                if done == 0:
                    break
                got += done
        except OSError as exc:
            raise _os_error(exc, what, region, "read") from None
        if got != ref.size:  # truncated since the size check
            raise InvalidInput(f"{what}: shared memory region {region.name!r} no longer holds its bytes (its file was "
                               "truncated); unregister it")
        return data

    def write(self, ref: ShmRef, data: bytes | memoryview, what: str) -> None:
        """Write ``data`` at ``ref`` (it must fit ``ref.size``: the output's bytes, the parameters'
        ``shared_memory_byte_size``, and the region).  Raises as :meth:`read`."""
        self.write_all([(ref, data, what)])

    def write_all(self, writes: list[tuple[ShmRef, bytes | memoryview, str]]) -> None:
        """:meth:`write` each ``(ref, data, what)``, all or none: every one is checked before any
        is written, so a request refused for one output leaves every region as it was."""
        placed = [(self._place(ref, data, what), data, what) for ref, data, what in writes]
        for (region, start), data, what in placed:
            view = memoryview(data)
            try:
                while view:
                    done = os.pwrite(region.fd, view, start)
                    view, start = view[done:], start + done
            except OSError as exc:  # e.g. ENOSPC: a sparse object larger than what /dev/shm has left
                raise _os_error(exc, what, region, "written") from None

    def _place(self, ref: ShmRef, data: bytes | memoryview, what: str) -> tuple[_Region, int]:
        """The region and file offset ``data`` goes to at ``ref``; raises as :meth:`read`."""
        if len(data) > ref.size:
            raise InvalidInput(f"{what} has {len(data)} bytes; its '{BYTE_SIZE}' in shared memory region "
                               f"{ref.region!r} is {ref.size}")
        region = self._region(ref.region)
        return region, region.span(ref, len(data), what)


def _os_error(exc: OSError, what: str, region: _Region, done: str) -> InvalidInput:
    """An OS error reading or writing ``region`` for tensor ``what``, as its error (400)."""
    return InvalidInput(f"{what}: shared memory region {region.name!r} cannot be {done}: {exc.strerror}")
