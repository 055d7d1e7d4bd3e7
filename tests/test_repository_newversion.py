"""repository.newversion.add_version: the next number, filled in a hidden directory, moved in with one rename."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from wsserve.models.linear import LinearModel
from wsserve.repository import scan
from wsserve.repository.newversion import add_version, existing_versions
from wsserve.repository.npz import encode_npz, read_npz, write_npz_bytes


def _fill_linear(directory: Path) -> str:
    write_npz_bytes(directory, encode_npz("linear", *LinearModel(3.0, 0.5).to_arrays()))
    return "filled"


def test_next_number_and_the_result_of_fill(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    first = add_version(model_dir, _fill_linear)
    assert (first.version, first.path, first.result) == (1, model_dir / "1", "filled")
    (model_dir / "5").mkdir()
    second = add_version(model_dir, _fill_linear)
    assert second.version == 6 and existing_versions(model_dir) == [1, 5, 6]
    assert read_npz(second.path / "model.npz").architecture == "linear"
    assert not [p for p in os.listdir(model_dir) if p.startswith(".")]
    assert os.stat(second.path).st_mode & 0o755 == 0o755  # readable by a server running as another user


def test_while_filling_the_repository_shows_no_new_version(tmp_path: Path) -> None:
    add_version(tmp_path / "m", _fill_linear)
    seen: list[tuple[int, ...]] = []

    def fill(directory: Path) -> None:
        _fill_linear(directory)
        model = scan(tmp_path).model("m")
        assert model is not None
        seen.append(tuple(v.version for v in model.versions))

    add_version(tmp_path / "m", fill)
    assert seen == [(1,)]
    model = scan(tmp_path).model("m")
    assert model is not None and tuple(v.version for v in model.versions) == (1, 2)


def test_a_failing_fill_leaves_nothing(tmp_path: Path) -> None:
    def fill(directory: Path) -> None:
        (directory / "model.npz").write_bytes(np.zeros(3).tobytes())
        raise ValueError("measured figures do not fit")

    with pytest.raises(ValueError, match="measured figures"):
        add_version(tmp_path / "m", fill)
    assert os.listdir(tmp_path / "m") == []
