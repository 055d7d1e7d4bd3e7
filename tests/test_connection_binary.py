"""Binary tensor frames in the connection core: the same admission, ids and capacity as JSON (fake clock)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.test_connection import FakeIO, P, Setup, codes
from wsserve.connection import Connection
from wsserve.pool import ModelEntry, list_rows_bytes
from wsserve.repository import TensorSpec
from wsserve.tensorframe import encode, read_tensors, split, view_tensors


class BinaryIO(FakeIO):
    """Records binary frames as their header plus ``"_arrays"``."""

    def send_binary(self, frame: bytes) -> None:
        assert self.closed is None, "a frame after the close frame"
        header, payload = split(frame)
        header["_arrays"] = view_tensors(payload, read_tensors(header, len(payload), max_rows=1 << 20, key="outputs"))
        self.frames.append(header)


def setup(**config: Any) -> tuple[Setup, Connection, BinaryIO]:
    s = Setup(**config)
    entry = s.models.entries["linear"]
    entry.input_specs = (TensorSpec("input", (1,), "float64"),)
    entry.prepare_binary = lambda tensors: ModelEntry.prepare_binary(entry, tensors)  # the pool's own code
    io = BinaryIO()
    conn = Connection(s.ctx, io, address="10.0.0.1", key=None, now=s.clock.now)
    conn.open()
    io.take()
    return s, conn, io


def B(rid: Any, x: np.ndarray, **fields: Any) -> bytes:
    return encode({"type": "predict", "id": rid, "model": "linear", **fields}, x, key="inputs")


def test_a_binary_predict_joins_the_same_worker_as_json_and_answers_json_by_default() -> None:
    s, conn, io = setup()
    conn.receive(B("b", np.array([[1.0], [2.0]], np.float32)), True, s.clock.now)
    s.send(conn, P("j"))
    assert len(s.models.predict.submitted) == 2 and s.shared.inflight == 2
    job = s.models.predict.submitted[0][0]
    assert job.inputs.dtype == np.float64 and job.n == 2 and conn.inflight_bytes == 16 + list_rows_bytes(1, 1)
    s.models.predict.finish(0)
    s.models.predict.finish(1)
    frames = io.take()
    assert [(f["type"], f["id"]) for f in frames] == [("result", "b"), ("result", "j")]
    assert frames[0]["outputs"] == [[2.0], [4.0]] and conn.inflight_bytes == 0


def test_binary_outputs_answer_result_and_chunks_as_binary_frames_and_done_as_json() -> None:
    s, conn, io = setup()
    conn.receive(B(1, np.array([[1.0]]), binary_outputs=True), True, s.clock.now)
    s.send(conn, P(2, inputs=[[1.0], [2.0], [3.0]], stream=True, chunk_rows=2, binary_outputs=True))
    s.models.predict.finish(0)
    s.models.predict.finish(1)
    r, c0, c1, done = io.take()
    assert r["type"] == "result" and r["id"] == 1 and r["shape"] == [1, 1] and r["_arrays"][0].tolist() == [[2.0]]
    assert r["version"] == "1" and r["model"] == "linear" and "timing" in r
    assert (c0["type"], c0["seq"], c0["offset"], c0["shape"]) == ("chunk", 0, 0, [2, 1])
    assert (c1["seq"], c1["offset"], c1["_arrays"][0].tolist()) == (1, 2, [[6.0]])
    assert done["type"] == "done" and "_arrays" not in done and done["rows"] == 3


def test_ids_are_shared_with_json_requests() -> None:
    s, conn, io = setup()
    s.send(conn, P("x"))
    conn.receive(B("x", np.array([[1.0]])), True, s.clock.now)
    (dup,) = io.take()
    assert dup["code"] == "duplicate_id" and dup["id"] == "x" and len(conn.inflight) == 1


def test_bad_binary_frames_touch_no_other_request() -> None:
    s, conn, io = setup()
    s.send(conn, P("keep"))
    conn.receive(B("nan", np.array([[np.nan]])), True, s.clock.now)
    conn.receive(B("wide", np.zeros((1, 2))), True, s.clock.now)
    conn.receive(B("cut", np.zeros((1, 1)))[:-1], True, s.clock.now)
    conn.receive(b"\x00\x00", True, s.clock.now)
    frames = io.take()
    assert codes(frames) == ["invalid_input", "invalid_input", "invalid_input", "bad_request"]
    assert [f["id"] for f in frames] == ["nan", "wide", "cut", None]
    assert "the model takes [n, 1]" in frames[1]["message"]
    assert list(conn.inflight) == ["keep"] and io.closed is None
    s.models.predict.finish()
    assert [f["id"] for f in io.take()] == ["keep"]
    assert s.metrics.requests[("linear", "predict", "invalid_input")] == 2
    # "cut" and the 2-byte frame fail before the model is read: still counted as predicts
    assert s.metrics.requests[("", "predict", "invalid_input")] == 1
    assert s.metrics.requests[("", "predict", "bad_request")] == 1


def test_inflight_limits_count_binary_requests() -> None:
    s, conn, io = setup(max_inflight=1)
    conn.receive(B(1, np.array([[1.0]])), True, s.clock.now)
    conn.receive(B(2, np.array([[1.0]])), True, s.clock.now)
    (over,) = io.take()
    assert over["code"] == "overloaded" and over["id"] == 2


EXPLANATION = {"method": "linear-exact", "baseline": "zeros", "target": "argmax", "steps": 0}


def explained(s: Setup, refusal: str | None = None) -> None:
    """The fake linear entry as the pool describes a model that can (or, with ``refusal``, cannot) be explained."""
    entry = s.models.entries["linear"]
    entry.explain_refusal = refusal  # type: ignore[attr-defined]
    entry.explanation = None if refusal else EXPLANATION  # type: ignore[attr-defined]
    entry.attribution_names = ("output", "output_attributions")  # type: ignore[attr-defined]


def deliver(s: Setup, i: int, start: int, stop: int) -> None:
    """Hand job ``i`` rows ``start:stop`` as the worker does for an explain request: outputs 2x, attributions x + 0.5."""
    sink = s.models.predict.submitted[i][0]
    x = np.asarray(sink.inputs, dtype=np.float64)[start:stop]
    sink.on_rows(start, x * 2.0, stop - start, 0.001, 0.002, x + 0.5)


def test_explain_with_binary_outputs_answers_named_output_and_attributions_tensors() -> None:
    s, conn, io = setup()
    explained(s)
    conn.receive(B("b", np.array([[1.0], [2.0]]), binary_outputs=True, explain=True), True, s.clock.now)
    s.send(conn, P("j", inputs=[[3.0]], explain=True, binary_outputs=True))  # a JSON predict may ask too
    deliver(s, 0, 0, 1)  # a request split over two batches
    deliver(s, 0, 1, 2)
    deliver(s, 1, 0, 1)
    b, j = io.take()
    assert (b["type"], b["id"], b["model"], b["version"]) == ("result", "b", "linear", "1")
    assert b["explanation"] == EXPLANATION and "timing" in b and "dtype" not in b
    assert b["outputs"] == [{"name": "output", "dtype": "float64", "shape": [2, 1]},
                            {"name": "output_attributions", "dtype": "float64", "shape": [2, 1]}]
    out, attributions = b["_arrays"]
    assert out.tolist() == [[2.0], [4.0]] and attributions.tolist() == [[1.5], [2.5]]
    assert j["id"] == "j" and [a.tolist() for a in j["_arrays"]] == [[[6.0]], [[3.5]]]
    assert conn.inflight == {} and conn.inflight_bytes == 0


def test_explain_on_a_binary_request_answered_in_json_carries_attributions() -> None:
    s, conn, io = setup()
    explained(s)
    conn.receive(B("b", np.array([[1.0], [2.0]]), explain=True), True, s.clock.now)
    deliver(s, 0, 0, 2)
    (r,) = io.take()
    assert r["type"] == "result" and r["outputs"] == [[2.0], [4.0]] and r["attributions"] == [[1.5], [2.5]]
    assert r["explanation"] == EXPLANATION


def test_streamed_explain_with_binary_outputs_sends_named_chunks_then_a_json_done() -> None:
    s, conn, io = setup()
    explained(s)
    x = np.arange(5, dtype=np.float64).reshape(5, 1)
    conn.receive(B("s", x, stream=True, chunk_rows=2, binary_outputs=True, explain=True), True, s.clock.now)
    deliver(s, 0, 0, 3)
    deliver(s, 0, 3, 5)
    *chunks, done = io.take()
    assert [(c["type"], c["seq"], c["offset"]) for c in chunks] == [("chunk", 0, 0), ("chunk", 1, 2), ("chunk", 2, 4)]
    assert all([t["name"] for t in c["outputs"]] == ["output", "output_attributions"] for c in chunks)
    assert np.concatenate([c["_arrays"][0] for c in chunks]).tolist() == (x * 2).tolist()
    assert np.concatenate([c["_arrays"][1] for c in chunks]).tolist() == (x + 0.5).tolist()
    assert "explanation" not in chunks[0]  # as a JSON chunk: done says how they were computed
    assert done["type"] == "done" and done["rows"] == 5 and done["explanation"] == EXPLANATION


def test_explain_refusals_are_the_same_for_binary_requests() -> None:
    s, conn, io = setup(max_explain_rows=2)
    explained(s, refusal="model 'linear' cannot be explained: no gradient")
    conn.receive(B("b", np.array([[1.0]]), binary_outputs=True, explain=True), True, s.clock.now)
    s.send(conn, P("j", explain=True, binary_outputs=True))
    explained(s)
    conn.receive(B("big", np.zeros((3, 1)), binary_outputs=True, explain=True), True, s.clock.now)
    conn.receive(B("t", np.zeros((1, 1)), explain="yes"), True, s.clock.now)
    b, j, big, t = io.take()
    assert (b["code"], b["id"], b["message"]) == ("bad_request", "b", "model 'linear' cannot be explained: no gradient")
    assert (j["code"], j["id"], j["message"]) == ("bad_request", "j", b["message"])
    assert (big["code"], big["id"]) == ("invalid_input", "big")
    assert big["message"] == "'inputs' has 3 rows; explain takes at most 2 rows per request (max_explain_rows)"
    assert (t["code"], t["message"]) == ("bad_request", "field 'explain' must be a boolean, got string")
    assert s.models.predict.submitted == [] and conn.inflight == {}
