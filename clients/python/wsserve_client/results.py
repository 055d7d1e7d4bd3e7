"""Values returned by the client: frozen dataclasses built from server frames.

``timing`` fields are the server's ``timing`` objects as read-only mappings (milliseconds and
counts as the server sends them, e.g. ``queue_ms``, ``compute_ms``, ``batch_size`` for predict;
``ttft_ms``, ``total_ms`` for generate); servers may add keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Limits",
    "ServerHello",
    "PredictResult",
    "Chunk",
    "StreamSummary",
    "Response",
    "ResponsesSummary",
    "TopLogprob",
    "TokenLogprob",
    "GenerationResult",
    "Completion",
    "ModelInfo",
    "VersionStatus",
    "ModelStatus",
    "ClientStats",
]

Outputs = Any  # list[list[float]], or a numpy.ndarray when as_numpy=True


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's limits from ``hello``; ``None`` where the server did not say."""

    max_message_bytes: int | None = None
    max_inflight: int | None = None
    max_rows: int | None = None
    max_tokens: int | None = None
    #: Longest header of a binary tensor frame the server reads (its id included).
    max_binary_header_bytes: int | None = None
    #: The largest ``logprobs`` a generate may ask for (absent from a server without logprobs).
    max_logprobs: int | None = None
    #: The most ``stop_token_ids`` a generate may name (absent from a server without vLLM's stop
    #: controls: it ignores ``stop_token_ids``, ``min_tokens`` and ``include_stop_str_in_output``).
    max_stop_token_ids: int | None = None
    #: The most strings a generate's ``guided_choice`` may hold, and the characters of each
    #: (absent from a server without vLLM's guided choice).
    max_guided_choices: int | None = None
    max_guided_choice_chars: int | None = None
    #: The most characters of a generate's ``guided_regex`` or ``guided_json`` (absent from a
    #: server without vLLM's structured outputs).
    max_guided_pattern_chars: int | None = None


@dataclass(frozen=True, slots=True)
class ServerHello:
    """The ``hello`` frame of the current connection."""

    server: str
    version: str
    protocol: int
    limits: Limits
    models: tuple[str, ...]
    #: The dtypes the server takes in a binary tensor frame (``hello`` ``binary_dtypes``, those this
    #: client knows); empty from an older server, which takes float32, float64, int32, int64 and bool.
    binary_dtypes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PredictResult:
    """Answer to one ``predict``: ``outputs[i]`` answers input row ``i``.

    With ``explain=True``: ``attributions[i]`` holds input row ``i``'s per-feature
    attributions of its explained output, and ``explanation`` says how (method,
    baseline, target, steps); both None otherwise.  ``parameters``: the model's response
    parameters (a Triton Python model's ``InferenceResponse(parameters=)``), None without any.
    """

    outputs: Outputs
    model: str
    version: str
    timing: Mapping[str, Any]
    request_id: int | str
    attributions: Outputs | None = None
    explanation: Mapping[str, Any] | None = None
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed slice of a predict: rows ``offset .. offset+len(outputs)-1`` (with
    ``explain=True`` also their ``attributions``; None otherwise)."""

    seq: int
    offset: int
    outputs: Outputs
    attributions: Outputs | None = None


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """The ``done`` frame ending a streamed predict; ``version``: the model version that
    computed it (``None`` from a server that does not say); ``explanation``: how the chunks'
    attributions were computed (``explain=True``; None otherwise)."""

    reason: str
    rows: int
    timing: Mapping[str, Any]
    request_id: int | str
    version: str | None = None
    explanation: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """One response of a decoupled model (a ``response`` frame): ``seq`` 0, 1, ...; its
    ``outputs`` (rows, or ``{name: rows}``); ``final``: the model sent it with its FINAL flag;
    ``parameters``: the model's parameters of this response (None without any)."""

    seq: int
    outputs: Outputs
    final: bool = False
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ResponsesSummary:
    """The ``done`` frame ending a predict to a decoupled model: ``responses`` frames were sent."""

    reason: str
    responses: int
    timing: Mapping[str, Any]
    request_id: int | str
    version: str | None = None


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One of the likeliest tokens at a generation step: its token ``id`` (of the model's
    vocabulary), ``text`` and ``logprob`` (natural log of its probability; ``None`` when the
    model's logits were not finite)."""

    id: int
    text: str
    logprob: float | None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log-probability, from a ``token`` frame of a generate with ``logprobs``.

    ``text`` is the token's text as streamed; ``logprob`` the natural log of the probability the
    model gave it (``<= 0``; ``None`` when the model's logits were not finite), by the model's
    own distribution (before penalties, ``logit_bias``, temperature and truncation); ``top``
    the ``k`` likeliest tokens of that step (``logprobs=k``), likeliest first, ties by lowest id
    (empty for ``k = 0``). The chosen token may or may not be among them.
    """

    text: str
    logprob: float | None
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """The ``done`` frame ending a generation, plus the text streamed before it.

    ``reason`` is ``"length"``, ``"stop"`` or ``"cancelled"``; ``tokens`` is the server's
    count; ``text`` is the concatenation of the tokens this client received; ``version`` the
    model version that generated it, ``prompt_tokens`` the token ids the model was given for
    the prompt and ``completion_tokens`` the tokens generated as vLLM counts them (a stop token
    whose text is not sent included: OpenAI's ``usage.completion_tokens``; each ``None`` from a
    server that does not say). ``logprobs``: one
    :class:`TokenLogprob` per token received, in order, when the generate asked for ``logprobs``
    (``None`` otherwise).
    """

    reason: str
    tokens: int
    timing: Mapping[str, Any]
    text: str
    request_id: int | str
    version: str | None = None
    prompt_tokens: int | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """Result of :meth:`Client.complete`: the whole generated text and how it ended;
    ``logprobs`` as for :class:`GenerationResult` (``None`` unless asked for)."""

    text: str
    reason: str
    tokens: int
    timing: Mapping[str, Any]
    version: str | None = None
    prompt_tokens: int | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One version of a model: ``state`` is ``"loading"``, ``"ready"``, ``"unloading"`` or
    ``"failed"`` (then ``reason`` says why)."""

    version: str
    state: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One entry of the ``models`` reply; ``raw`` holds every field the server sent.

    ``version`` is the default version (the highest ready one; ``None`` when no version is
    ready); ``versions`` every version the server knows of, with its state.
    """

    name: str
    version: str | None
    task: str
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    parameters: int | None
    metrics: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False)
    versions: tuple[VersionStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """The answer to :meth:`Client.load`, :meth:`Client.unload` and :meth:`Client.reload`:
    the model's versions and their states once the operation was done."""

    model: str
    versions: tuple[VersionStatus, ...]

    def states(self) -> dict[str, str]:
        """``{version: state}``."""
        return {v.version: v.state for v in self.versions}


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of one client's counters (see :meth:`Client.stats`).

    ``inflight``: predict+generate calls sent and not yet ended by a terminal frame (this
    includes calls the caller has left whose ``cancel`` is still being answered).
    ``waiting``: calls waiting for an inflight slot. ``capacity``: the current inflight cap
    (``None`` = unlimited). ``connects``: successful connections so far. ``requests_sent``:
    request frames sent. ``cancels_sent``: ``cancel`` frames sent. ``server_cancelled``:
    terminal frames whose code/reason was ``cancelled``. ``connected``: whether a socket is open.
    """

    inflight: int
    waiting: int
    capacity: int | None
    connects: int
    requests_sent: int
    cancels_sent: int
    server_cancelled: int
    connected: bool
