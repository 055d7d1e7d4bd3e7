"""Request rescheduling (Triton's ``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE``), sans-I/O.

A Triton Python model whose config.pbtxt has ``sequence_batching { iterative_sequence: true }``
may, in ``execute``, call ``request.set_release_flags(TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)``:
once ``execute`` returns, the request goes back to the model's queue (ahead of requests that have
not run yet, as Triton's sequence batcher keeps its in-flight iterative sequences ahead) and a
later ``execute`` gets it again.  :func:`after_execute` is the one decision the worker
(:class:`wsserve.decoupled.DecoupledWorker`, or :class:`wsserve.worker.PredictWorker` for a model
that is not decoupled and puts ``None`` at the request's place) takes when an ``execute``
returned; it touches no clock, no queue and no thread.

Rules (Triton's, and wsserve's bound):

- without ``iterative_sequence`` a reschedule is refused for that request with Triton's message
  (:func:`not_iterative`; Triton's ``INVALID_ARG``: ``invalid_input`` on the wire);
- a request that ended meanwhile (its client cancelled or left, its deadline, the model unloaded)
  is released: it already has its one terminal frame;
- a request whose FINAL flag was sent is released, not rescheduled: that FINAL is its terminal
  frame (whether or not the loop delivered it yet: a model thread's FINAL racing the execute's
  return ends the request the same way either way, as its client sees it in Triton);
- a request may be rescheduled at most ``max_reschedules`` times (default :data:`MAX_RESCHEDULES`),
  then it ends with an error naming the bound: a model that always reschedules cannot hold a
  request forever.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["MAX_RESCHEDULES", "RELEASE_ALL", "RELEASE_RESCHEDULE", "Decision", "after_execute", "not_iterative"]

#: The most times one request may be rescheduled (the server option ``max_reschedules``' default).
MAX_RESCHEDULES = 65536
#: Triton's ``TRITONSERVER_RequestReleaseFlag`` values (``pb_utils`` exports them under those names).
RELEASE_ALL = 1
RELEASE_RESCHEDULE = 2

#: ``"release"``: the request is done with this worker (it ended, or goes on streaming from the
#: model's threads until its FINAL, or its FINAL was sent); ``"requeue"``: give it to a later execute;
#: ``"fail"``: end it (``internal``, past ``max_reschedules``) with the error message returned
#: alongside; ``"refuse"``: end it as Triton refuses a reschedule without ``iterative_sequence`` (``INVALID_ARG``: ``invalid_input``), with that message.
Decision = Literal["release", "requeue", "fail", "refuse"]


def not_iterative(model: str) -> str:
    """The error of a request a model asked to reschedule without ``iterative_sequence``: Triton's
    message (core's ``InferenceRequest`` release callback), then which model and why."""
    return ("Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the model is not configured "
            f"to handle such a flag (model {model!r}: config.pbtxt has no sequence_batching "
            "{ iterative_sequence: true })")


def after_execute(model: str, flags: int, *, iterative: bool, ended: bool, final_sent: bool, reschedules: int,
                  max_reschedules: int = MAX_RESCHEDULES) -> tuple[Decision, str | None]:
    """What becomes of a request whose ``execute`` returned with release ``flags``: ``(decision,
    message)``, the message (naming ``model``) set for ``"fail"`` and ``"refuse"`` only.  ``iterative``: the model
    has ``iterative_sequence: true``; ``ended``: the request already ended (cancel, deadline,
    unload, an error); ``final_sent``: the model sent its FINAL flag; ``reschedules``: times it was
    rescheduled before this one."""
    if not flags & RELEASE_RESCHEDULE or ended or final_sent:
        return "release", None
    if not iterative:
        return "refuse", not_iterative(model)
    if reschedules >= max_reschedules:
        return "fail", (f"model {model!r} rescheduled a request {reschedules} times: at most "
                        f"{max_reschedules} (max_reschedules); the request is ended")
    return "requeue", None
