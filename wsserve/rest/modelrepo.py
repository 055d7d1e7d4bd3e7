"""Triton's model repository extension, sans-I/O: one implementation for both transports.

The HTTP routes (``POST /v2/repository/index``, ``.../models/{name}/load`` and ``/unload``,
:mod:`wsserve.rest.api`) and the gRPC RPCs (``RepositoryIndex``, ``RepositoryModelLoad``,
``RepositoryModelUnload``, :mod:`wsserve.oipgrpc.service`) only read their request and write
their answer; what they answer is decided here:

- :func:`index_rows`: every model version and its state, as Triton's index names them;
- :func:`check_admin`: who may load and unload (the WebSocket's admin rule);
- :func:`admin_params`: the version and config a load/unload's ``parameters`` name (Triton's other
  parameters refused by name);
- :func:`check_repository_name`: a ``repository_name`` (gRPC) must be empty;
- :func:`admin_hook`: the server's admin hook the operation is handed to.

Nothing here awaits or reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..admission import check_bearer
from ..auth import KeyRegistry
from ..config import ServerConfig
from ..errors import BadRequest, Forbidden
from ..protocol import MAX_CONFIG_PARAM_CHARS, MAX_VERSION_LENGTH

__all__ = ["AdminHook", "MAX_VERSION_INT", "OIP_STATES", "admin_hook", "admin_keys_on", "admin_params",
           "check_admin", "check_repository_name", "failed_load", "index_rows", "version_key"]

#: The largest integer version a load/unload may name (the WebSocket's bound).
MAX_VERSION_INT = (1 << 63) - 1
#: Version states as Triton's repository index names them (any other: ``UNAVAILABLE``).
OIP_STATES: Mapping[str, str] = {"ready": "READY", "loading": "LOADING", "unloading": "UNLOADING",
                                 "failed": "UNAVAILABLE"}
#: ``admin(op, model, version, done[, config])``: the server's admin hook (see ConnectionContext.admin);
#: ``done`` gets the model's versions and states afterwards, or the ``WsserveError``; ``config``: a
#: load request's model configuration in JSON (Triton's ``config`` parameter), or None.
AdminHook = Callable[..., None]


def version_key(version: str) -> tuple[int, str]:
    """Numbered versions in numeric order (as the pool orders them), others before them by name."""
    return (int(version), "") if version.isdigit() else (-1, version)


def index_rows(models: Any, unloaded: Iterable[str], ready_only: bool) -> list[dict[str, str]]:
    """The repository index: one ``{"name", "version", "state", "reason"}`` per version of every
    model ``models`` (the pool: ``names``, ``status(name)``) knows, by name then version; states
    ``READY``, ``LOADING``, ``UNLOADING``, ``UNAVAILABLE`` (a failed version, with its reason); a
    model an admin ``unloaded`` is one row ``UNAVAILABLE`` with no version and the reason
    ``unloaded``.  ``ready_only``: the ready versions only."""
    rows: list[dict[str, str]] = []
    for name in sorted(set(models.names) | set(unloaded)):
        status = models.status(name)
        if not status:
            if not ready_only:
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"})
            continue
        for version in sorted(status, key=version_key):
            st = status[version]
            if ready_only and st.state != "ready":
                continue
            rows.append({"name": name, "version": version, "state": OIP_STATES.get(st.state, "UNAVAILABLE"),
                         "reason": st.reason or ""})
    return rows


def admin_keys_on(config: ServerConfig) -> bool:
    """True when admin operations need a key (``--api-key`` or ``--admin-key``); otherwise the
    client's address decides and its ``authorization`` is not looked at (a transport then reads
    no header for it, nor refuses a repeated one)."""
    return bool(config.api_key or config.admin_key)


def check_admin(config: ServerConfig, keys: KeyRegistry, op: str, *, address: str, authorization: str | None,
                local: bool, now: float) -> None:
    """The WebSocket admin rule for ``op`` (``load``, ``unload``): with keys configured
    (``--api-key`` or ``--admin-key``), ``authorization`` (the ``Bearer <key>`` value) must carry
    an admin key; without keys, the client must be ``local`` (the transport's judgement: loopback,
    not forwarded by a proxy, see :func:`~wsserve.admission.local_admin`).

    Raises ``Unauthorized`` (no valid key; a wrong one counts against ``address``), ``RateLimited``
    (``address`` failed too often) or ``Forbidden`` (another key, or not local)."""
    refusal = f"{op} needs the admin key (--admin-key), or loopback when no keys are configured"
    if admin_keys_on(config):
        key = check_bearer(keys, address, authorization, now)
        if not keys.is_admin(key):
            raise Forbidden(refusal)
    elif not local:
        raise Forbidden(refusal)  # not loopback, forwarded by a proxy, or a page of another name (DNS rebinding)


def admin_params(op: str, params: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(version, config)`` of a load/unload's ``parameters``: ``version`` (a positive integer,
    or a string of at most ``MAX_VERSION_LENGTH`` characters; None when absent: every version)
    and, for a load, ``config`` (Triton's: a JSON model configuration served instead of the
    model's config file, at most :data:`MAX_CONFIG_PARAM_CHARS` characters; None when absent).
    Triton's ``file:...`` overrides (model files in the request) are refused by name;
    ``unload_dependents`` is a boolean that changes nothing (an ensemble stops being ready with
    its step models either way).  Raises :class:`~wsserve.errors.BadRequest`."""
    unknown = sorted(k for k in params if k not in ("version", "unload_dependents", "config"))
    if unknown:
        raise BadRequest(f"parameter {unknown[0][:64]!r} is not supported (only 'version' and 'config'; model files "
                         "load from the repository)")
    if type(params.get("unload_dependents", False)) is not bool:
        raise BadRequest("parameter 'unload_dependents' must be a boolean")
    config = params.get("config")
    if config is not None:
        if op != "load":
            raise BadRequest(f"parameter 'config' is for load only, not {op}")
        if type(config) is not str or not 0 < len(config) <= MAX_CONFIG_PARAM_CHARS:
            raise BadRequest(f"parameter 'config' must be a model configuration in JSON (a string of 1 to "
                             f"{MAX_CONFIG_PARAM_CHARS} characters)")
    version = params.get("version")
    if version is None:
        return None, config
    if type(version) is int and 1 <= version <= MAX_VERSION_INT:
        return str(version), config
    if type(version) is str and 0 < len(version) <= MAX_VERSION_LENGTH:
        return version, config
    raise BadRequest(f"parameter 'version' must be a positive integer or a string of at most {MAX_VERSION_LENGTH} "
                     "characters")


def check_repository_name(name: str) -> None:
    """A request's ``repository_name`` (gRPC's; Triton's HTTP path may name one too): empty, for
    the server's repositories, which wsserve serves as one set of model names (a model's name
    says which repository it comes from).  Raises :class:`~wsserve.errors.BadRequest` naming it."""
    if name:
        raise BadRequest(f"unknown repository_name {name[:64]!r}: wsserve serves its model repositories as one "
                         "(each model name once); leave repository_name empty")


def admin_hook(admin: AdminHook | None, op: str) -> AdminHook:
    """The server's admin hook to run ``op`` with (``hook(op, name, version, done)``: ``done`` gets
    the result, now or later), checked before the request's parameters are.  As Triton's, a load
    that leaves a version it loaded ``failed`` answers an error (:func:`failed_load`), not the
    versions.  Raises :class:`~wsserve.errors.BadRequest` when the server serves no model
    repository (``admin`` None)."""
    if admin is None:
        raise BadRequest(f"{op}: this server serves no model repository")

    def hook(op: str, name: str, version: str | None, done: Callable[[Any], None], config: str | None = None) -> None:
        admin(op, name, version, lambda result: done(failed_load(op, name, version, result) or result), config)

    return hook


def failed_load(op: str, name: str, version: str | None, result: Any) -> BadRequest | None:
    """For a ``load`` whose ``result`` (the admin hook's: ``{"model", "versions": [{"version",
    "state", "reason"?}]}``) shows the loaded ``version`` (None: any version) ``failed``: the
    error Triton answers (its message names each failed version and why; the versions that did
    load stay served).  None otherwise (another op, an error result, nothing failed)."""
    if op != "load" or type(result) is not dict:
        return None
    failed = [v for v in result.get("versions", ()) if v.get("state") == "failed"
              and (version is None or v.get("version") == version)]
    if not failed:
        return None
    why = "; ".join(f"version {v['version']}: {v.get('reason', 'failed')}" for v in failed)
    return BadRequest(f"load failed for model {name!r}: {why}")
