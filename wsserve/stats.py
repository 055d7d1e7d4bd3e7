"""One shape for every model worker's statistics (the predict queue and the generation engine).

:class:`WorkerStatistics` is a frozen snapshot; ``/metrics`` and tests read it
the same way for both kinds of worker (no probing of fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["WorkerStatistics"]


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """A snapshot of one model worker.

    - ``queued``: requests waiting (predict: with rows not yet in a batch;
      generate: waiting for a slot); ``queued_rows``/``queued_bytes``: their
      input rows and bytes (predict; 0 for generate).
    - ``running``: requests being computed (generate: sequences holding a slot;
      predict: requests in the batch being computed).
    - ``oldest_age_s``: how long the oldest waiting request has waited.
    - ``batches``: batches (predict) or steps (generate) computed, all time;
      ``computed``: rows (predict) or tokens (generate) computed, all time;
      ``executor_batches``: those that ran off the event loop.
    - ``last_batch_size``: rows or sequences in the latest batch or step.
    - ``isolated_batches``: predict batches of several requests (generate: steps of several
      sequences) that failed and whose requests were computed again one at a time (so only
      the failing ones failed).
    """

    kind: Literal["predict", "generate"]
    queued: int
    queued_rows: int
    queued_bytes: int
    running: int
    oldest_age_s: float
    batches: int
    computed: int
    executor_batches: int
    last_batch_size: int
    isolated_batches: int = 0
