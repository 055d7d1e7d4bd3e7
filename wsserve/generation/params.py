"""What one generation asks for: :class:`GenerationParams` (a frozen, validated value)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import BadRequest

__all__ = ["MIN_TEMPERATURE", "GenerationParams"]

#: Positive temperatures below this behave as this (avoids overflow of logits / T).
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationParams:
    """One ``generate`` request, wire defaults applied.

    - ``prompt``: conditioning text; characters outside the model's vocabulary
      are normalised by the model (see :func:`wsserve.models.charlm.normalize_text`).
    - ``max_tokens`` >= 1: tokens to generate at most (reason ``length``).
    - ``temperature`` >= 0: 0 is greedy (argmax); otherwise softmax(logits / T)
      sampling, with T clamped below at :data:`MIN_TEMPERATURE`.
    - ``top_k`` >= 0: sample only among the k most likely tokens (ties at the
      k-th value are kept); 0 turns it off.  Ignored when greedy.
    - ``seed``: per-request random generator seed (any int, taken modulo 2**64);
      ``None`` draws a fresh one.  Same seed, same prompt, same params -> same
      text, whatever else is batched with it.
    - ``stop``: non-empty strings; generation ends with reason ``stop`` when one
      is produced, and the stop string is not streamed.
    - ``priority``: 0 normal, 1 high (admitted to the batch first).
    - ``deadline``: absolute ``time.monotonic()`` seconds, or ``None``; past it the
      request ends with ``deadline_exceeded`` whether queued or running.

    Raises :class:`~wsserve.errors.BadRequest` naming the bad field.
    """

    prompt: str
    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    priority: int = 0
    deadline: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise BadRequest(f"prompt must be a string, got {type(self.prompt).__name__}")
        if type(self.max_tokens) is not int or self.max_tokens < 1:
            raise BadRequest(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        t = self.temperature
        if type(t) not in (int, float) or not math.isfinite(t) or t < 0:
            raise BadRequest(f"temperature must be a finite number >= 0, got {t!r}")
        if type(self.top_k) is not int or self.top_k < 0:
            raise BadRequest(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if self.seed is not None and type(self.seed) is not int:
            raise BadRequest(f"seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise BadRequest(f"stop must be a tuple of non-empty strings, got {self.stop!r}")
        if self.priority not in (0, 1) or type(self.priority) is not int:
            raise BadRequest(f"priority must be 0 or 1, got {self.priority!r}")
        d = self.deadline
        if d is not None and (type(d) not in (int, float) or math.isnan(d)):
            raise BadRequest(f"deadline must be monotonic seconds or None, got {d!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
