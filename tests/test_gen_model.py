"""TokenModelAdapter.initial_context: the prompt's last k ids, left-padded, every id checked;
encode_prompt: the same context and how many ids encode() gave (the prompt's token count)."""

from __future__ import annotations

import numpy as np
import pytest

from wsserve.errors import Internal
from wsserve.generation.model import TokenModelAdapter
from wsserve.models.base import ModelInfo


class Listed:
    """encode() returns whatever ``ids`` says (a list, like a repository model's)."""

    task = "generation"
    vocabulary = ("a", "b", "c", "d")
    context_len = 3
    info = ModelInfo(name="listed", version="1", task="generation", input_shape=(3,), output_shape=(4,),
                     parameters=0)

    def __init__(self) -> None:
        self.ids: list[int] = []

    def encode(self, prompt: str) -> list[int]:
        return self.ids

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        return np.zeros((len(contexts), 4))


@pytest.mark.parametrize(("ids", "expected"), [
    ([], [4, 4, 4]),
    ([2], [4, 4, 2]),
    ([0, 1, 2], [0, 1, 2]),
    ([3, 3, 0, 1, 2], [0, 1, 2]),
])
def test_context_is_the_last_ids_left_padded(ids: list[int], expected: list[int]) -> None:
    model = Listed()
    adapter = TokenModelAdapter(model, name="listed")
    model.ids = ids
    ctx = adapter.initial_context("prompt")
    assert ctx.dtype == np.int64 and ctx.tolist() == expected


@pytest.mark.parametrize("ids", [[], [2], [0, 1, 2], [3, 3, 0, 1, 2]])
def test_encode_prompt_counts_every_id_encode_gave(ids: list[int]) -> None:
    model = Listed()
    adapter = TokenModelAdapter(model, name="listed")
    model.ids = ids
    ctx, n = adapter.encode_prompt("prompt")
    assert n == len(ids) and ctx.tolist() == adapter.initial_context("prompt").tolist()


class Recording(Listed):
    """Listed, recording the text encode() is given; one id per character."""

    prompt_chars = 5

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def encode(self, prompt: str) -> list[int]:
        self.seen.append(prompt)
        return [0] * len(prompt)


def test_encode_prompt_encodes_the_prompt_s_tail_once_and_counts_its_ids() -> None:
    model = Recording()
    adapter = TokenModelAdapter(model, name="recording")
    model.seen.clear()
    ctx, n = adapter.encode_prompt("abcdefgh")
    assert model.seen == ["defgh"] and n == 5 and ctx.tolist() == [0, 0, 0]


@pytest.mark.parametrize("ids", [[4], [-1], [0, 9], [7, 0, 1, 2], [0, -3, 1, 2, 3]])
def test_an_id_outside_the_vocabulary_anywhere_is_refused(ids: list[int]) -> None:
    model = Listed()
    adapter = TokenModelAdapter(model, name="listed")
    model.ids = ids
    with pytest.raises(Internal, match=r"token ids in \[0, 4\)"):
        adapter.initial_context("prompt")


def test_a_vocabulary_entry_that_is_not_valid_unicode_is_refused_at_load() -> None:
    """A lone surrogate (e.g. a byte-level token decoded with ``surrogateescape``) cannot be sent in
    a JSON frame: refused when the model loads, naming the entry, not mid-stream as ``internal``."""
    model = Listed()
    model.vocabulary = ("a", "b", "\udce9", "d")  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"vocabulary entry 2 .*not valid Unicode"):
        TokenModelAdapter(model, name="listed")


class Costed(Listed):
    def __init__(self, flops: object) -> None:
        super().__init__()
        self._flops = flops

    def flops_per_row(self) -> object:
        return self._flops


def test_a_token_s_cost_is_config_s_then_the_model_s_then_unknown() -> None:
    """Unknown (no ``flops_per_row``) is costly, as for a predictive model.py: the engine then
    computes every step off the event loop."""
    from wsserve.generation.model import UNKNOWN_FLOPS_PER_TOKEN

    assert TokenModelAdapter(Listed(), name="m").flops_per_row() == UNKNOWN_FLOPS_PER_TOKEN
    assert TokenModelAdapter(Costed(300), name="m").flops_per_row() == 300
    assert TokenModelAdapter(Costed(300), name="m", flops_per_token=7).flops_per_row() == 7


@pytest.mark.parametrize("flops", [0, -1, 2.5, "9", True])
def test_a_flops_per_row_that_is_no_positive_integer_is_refused_at_load(flops: object) -> None:
    with pytest.raises(ValueError, match=r"generative model 'm': flops_per_row must be a positive integer"):
        TokenModelAdapter(Costed(flops), name="m")


@pytest.mark.parametrize(("flops", "inline"), [(None, 0), (1_000, 64), (1_000_000, 20)])
def test_the_engine_runs_a_step_inline_only_when_the_model_says_it_is_cheap(flops: int | None, inline: int) -> None:
    from wsserve.generation import GenerationEngine

    model = TokenModelAdapter(Listed() if flops is None else Costed(flops), name="m")
    engine = GenerationEngine(model, name="m", inline_max_flops=20_000_000)
    assert engine._inline_max_batch == inline
    assert GenerationEngine(model, name="m")._inline_max_batch == 64  # without the budget: sequences only
