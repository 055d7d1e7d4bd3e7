"""In-flight requests of a connection: one job per ``predict`` or ``generate``.

A job is the sink its worker calls back (:class:`~wsserve.pool.PredictSink`
for predict, the generation engine's sink for generate).  Every way a job can
end goes through :meth:`Job._terminal`, which sends at most one terminal
frame: that is where the protocol's *exactly one terminal frame per id*
invariant lives.  After it, ``finished`` is true and every callback is a no-op.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .errors import Cancelled, DeadlineExceeded, WsserveError
from .protocol import Generate, Predict, encode_error

if TYPE_CHECKING:
    from .batching import WorkItem
    from .pool import ModelEntry
    from .session import Session

__all__ = ["Job", "PredictJob", "GenerateJob"]

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class Job:
    """Base of in-flight requests.  Subclasses stop their work in ``_stop_work``."""

    __slots__ = ("session", "key", "id", "model", "version", "kind", "received_at", "finished", "timer", "nbytes")

    def __init__(self, session: Session, key: Any, rid: Any, entry: ModelEntry, kind: str, received_at: float) -> None:
        self.session = session
        self.key = key
        self.id = rid
        self.model = entry.name
        self.version = entry.version
        self.kind = kind
        self.received_at = received_at
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        self.nbytes = 0  # input bytes held while unfinished (the connection's max_inflight_bytes)

    # -- ending

    def _terminal(self, frame: bytes | None, code: str) -> bool:
        """Send the terminal frame (None: the socket is gone) exactly once."""
        if self.finished:
            return False
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.session.job_finished(self, frame, code)
        return True

    def fail(self, exc: WsserveError) -> None:
        """End with an ``error`` frame and stop any remaining work."""
        if self._terminal(encode_error(exc, self.id), exc.code):
            self._stop_work()

    def cancel(self) -> None:
        """The client sent ``cancel``: end as the protocol says for this kind."""
        self.fail(Cancelled("cancelled by the client"))

    def expire(self) -> None:
        """The request's ``timeout_ms`` passed (queued or running)."""
        self.fail(DeadlineExceeded("deadline passed"))

    def abandon(self, code: str = "cancelled") -> None:
        """The connection is gone: stop work, send nothing."""
        if self._terminal(None, code):
            self._stop_work()

    def _stop_work(self) -> None:
        raise NotImplementedError


class PredictJob(Job):
    """A ``predict`` (plain, streamed or seed-form) in flight."""

    __slots__ = (
        "rows", "n", "stream", "chunk_rows", "seed_form", "item", "worker", "_parts", "_delivered",
        "_seq", "_pending", "_pending_rows", "_queue_s", "_compute_s", "_batch_max",
    )

    def __init__(
        self, session: Session, key: Any, req: Predict, entry: ModelEntry, rows: np.ndarray, received_at: float
    ) -> None:
        super().__init__(session, key, req.id, entry, "predict", received_at)
        self.rows = rows
        self.n = rows.shape[0]
        self.nbytes = rows.nbytes
        self.stream = req.stream
        self.chunk_rows = req.chunk_rows
        self.seed_form = req.seed_form
        self.worker = entry.worker
        self.item: WorkItem | None = None
        self._parts: list[np.ndarray] = []
        self._delivered = 0
        self._seq = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._queue_s = -1.0
        self._compute_s = 0.0
        self._batch_max = 0

    def _stop_work(self) -> None:
        if self.item is not None:
            self.worker.cancel(self.item)

    # -- PredictSink

    def on_error(self, exc: WsserveError) -> None:
        self.fail(exc)

    def on_rows(self, start: int, outputs: np.ndarray, batch_rows: int, queue_s: float, compute_s: float) -> None:
        if self.finished:
            return
        if self._queue_s < 0:
            self._queue_s = queue_s
            self.session.server.metrics.queued(self.model, queue_s)
        self._compute_s += compute_s
        if batch_rows > self._batch_max:
            self._batch_max = batch_rows
        self._delivered += outputs.shape[0]
        last = self._delivered >= self.n
        if self.stream:
            self._stream_rows(start, outputs, last)
        elif last:
            full = outputs if not self._parts else np.concatenate([*self._parts, outputs])
            self._result(full)
        else:
            self._parts.append(outputs)

    def _timing(self) -> dict[str, float | int]:
        return {
            "queue_ms": _ms(max(0.0, self._queue_s)),
            "compute_ms": _ms(self._compute_s),
            "batch_size": self._batch_max,
        }

    def _result(self, outputs: np.ndarray) -> None:
        if self.seed_form is not None:
            col = outputs[:, 0]
            value: Any = float(col[0]) if self.seed_form == "scalar" else col
            frame = orjson.dumps({"y_pred": value}, option=_NUMPY)
        else:
            frame = orjson.dumps(
                {
                    "type": "result",
                    "id": self.id,
                    "model": self.model,
                    "version": self.version,
                    "outputs": outputs,
                    "timing": self._timing(),
                },
                option=_NUMPY,
            )
        self._terminal(frame, "ok")

    def _stream_rows(self, start: int, outputs: np.ndarray, last: bool) -> None:
        size = self.chunk_rows
        if size is None:  # one chunk per computed slice
            self._send_chunk(start, outputs)
        else:
            self._pending.append(outputs)
            self._pending_rows += outputs.shape[0]
            if self._pending_rows >= size or last:
                block = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
                offset = self._delivered - self._pending_rows
                cut = 0
                while self._pending_rows - cut >= size:
                    self._send_chunk(offset + cut, block[cut : cut + size])
                    cut += size
                rest = block[cut:]
                self._pending = [rest] if rest.shape[0] else []
                self._pending_rows = rest.shape[0]
                if last and self._pending_rows:
                    self._send_chunk(offset + cut, rest)
                    self._pending, self._pending_rows = [], 0
        if last:
            frame = orjson.dumps(
                {"type": "done", "id": self.id, "reason": "complete", "rows": self.n, "timing": self._timing()}
            )
            self._terminal(frame, "ok")

    def _send_chunk(self, offset: int, outputs: np.ndarray) -> None:
        frame = orjson.dumps(
            {"type": "chunk", "id": self.id, "seq": self._seq, "offset": offset, "outputs": np.ascontiguousarray(outputs)},
            option=_NUMPY,
        )
        self._seq += 1
        self.session.send(frame)


class GenerateJob(Job):
    """A ``generate`` in flight; the generation engine's sink."""

    __slots__ = ("engine", "handle", "_id_prefix", "tokens")

    def __init__(self, session: Session, key: Any, req: Generate, entry: ModelEntry, received_at: float) -> None:
        super().__init__(session, key, req.id, entry, "generate", received_at)
        self.engine = entry.worker
        self.handle: Any = None
        # Token frames are the hottest frames: build them by concatenation.
        self._id_prefix = b'{"type":"token","id":' + orjson.dumps(req.id) + b',"seq":'
        self.tokens = 0

    def _stop_work(self) -> None:
        if self.handle is not None:
            self.engine.cancel(self.handle)

    def cancel(self) -> None:
        """Cancel ends a generation with ``done`` reason ``cancelled``.

        The engine answers ``cancel(handle)`` with ``on_done("cancelled", ...)``
        carrying its own timing; if it has nothing to cancel, end here."""
        if self.finished:
            return
        if self.handle is not None:
            self.engine.cancel(self.handle)
        if not self.finished:
            elapsed = _ms(monotonic() - self.received_at)
            self.finish("cancelled", self.tokens, {"ttft_ms": None, "total_ms": elapsed})

    # -- engine sink

    def on_token(self, seq: int, text: str) -> None:
        if self.finished:
            return
        self.tokens = seq + 1
        self.session.send(self._id_prefix + str(seq).encode() + b',"text":' + orjson.dumps(text) + b"}")

    def on_done(self, reason: str, tokens: int, timing: dict[str, Any]) -> None:
        self.finish(reason, tokens, timing)

    def on_error(self, exc: WsserveError) -> None:
        self.fail(exc)

    def finish(self, reason: str, tokens: int, timing: dict[str, Any]) -> None:
        frame = orjson.dumps(
            {"type": "done", "id": self.id, "reason": reason, "tokens": tokens, "timing": timing}
        )
        if self._terminal(frame, "ok" if reason != "cancelled" else "cancelled"):
            self.session.server.metrics.add_tokens(self.model, tokens)
