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
