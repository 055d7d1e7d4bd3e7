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


def test_a_symlink_loop_named_like_a_version_is_no_version(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    add_version(model_dir, _fill_linear)
    (model_dir / "5").symlink_to(model_dir / "5")
    assert existing_versions(model_dir) == [1]
    assert add_version(model_dir, _fill_linear).version == 2


def test_numbers_follow_the_servers_rules(tmp_path: Path) -> None:
    """The next number is counted over the versions a server serves: a symlinked version directory
    (served) used to be skipped, so a new version numbered below it and was not the newest; '0'
    (never served) counted; a highest at MAX_VERSION gave a number no server reads."""
    from wsserve.repository.config import MAX_VERSION

    model_dir = tmp_path / "m"
    add_version(model_dir, _fill_linear)
    elsewhere = tmp_path / "kept" / "v9"
    add_version(tmp_path / "kept", _fill_linear)
    os.rename(tmp_path / "kept" / "1", elsewhere)
    (model_dir / "9").symlink_to(elsewhere, target_is_directory=True)
    (model_dir / "0").mkdir()
    assert existing_versions(model_dir) == [1, 9]
    model = scan(tmp_path).model("m")
    assert model is not None and tuple(v.version for v in model.versions) == (1, 9)  # what a server sees
    assert add_version(model_dir, _fill_linear).version == 10
    (model_dir / str(MAX_VERSION)).mkdir()
    (model_dir / str(MAX_VERSION + 1)).mkdir()  # too large: a server ignores it, and so does the count
    with pytest.raises(OSError, match=f"no version number left under .*: the highest a server reads is {MAX_VERSION}"):
        add_version(model_dir, _fill_linear)
    assert not [p for p in os.listdir(model_dir) if p.startswith(".")]
