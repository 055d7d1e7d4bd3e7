"""Token generation with continuous (iteration-level) batching.

- :class:`GenerationParams` - one request's parameters (validated, frozen).
- :class:`Scheduler` - sans-I/O continuous batching (``add_request``, ``schedule``,
  ``update_from_output``, ``finish_requests``, ``take_events``).
- :class:`GenerationEngine` - the asyncio driver (``submit``, ``cancel``,
  ``statistics``, ``close``) streaming into a :class:`TokenSink`.
- :func:`sample`, :class:`StopMatcher`, :class:`TokenLogprobs` - the pure pieces.
- :class:`TokenModelAdapter` - the interface every generative model implements, checked.
"""

from .engine import (
    GenerationEngine,
    StepObserver,
    TokenSink,
    run_step,
    run_step_logprobs,
)
from .logprobs import TokenLogprobs
from .model import TokenModelAdapter
from .params import MIN_TEMPERATURE, GenerationParams
from .sampling import sample
from .scheduler import (
    Batch,
    Scheduler,
    SchedulerStatistics,
    SeqState,
    Sequence,
    TokenModel,
)
from .stops import StopMatcher

__all__ = [
    "MIN_TEMPERATURE",
    "Batch",
    "StepObserver",
    "GenerationEngine",
    "GenerationParams",
    "Scheduler",
    "SchedulerStatistics",
    "SeqState",
    "Sequence",
    "StopMatcher",
    "TokenModel",
    "TokenModelAdapter",
    "TokenLogprobs",
    "TokenSink",
    "run_step",
    "run_step_logprobs",
    "sample",
]
