"""Tests for wsserve.trainer: registry, order, caching, corrupt-cache recovery."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from wsserve import modelstore, trainer
from wsserve.models.linear import LinearModel, linear_config, train_linear
from wsserve.models.mlp import MLPConfig, MLPModel, mlp_config, train_mlp
from wsserve.trainer import TRAINERS, CachedTrainer, train_default_models

SMALL = MLPConfig(n_train=1500, n_heldout=300, hidden=(32, 16), epochs=2, batch_size=100)


class Counting:
    """Wraps a train function and counts calls (the 'did it retrain?' flag)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *, seed: int) -> Any:
        self.calls += 1
        return self.fn(seed=seed)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Counting]:
    """Replace the registry's trainers with counting ones (mlp made small for speed)."""
    lin = Counting(train_linear)
    mlp = Counting(lambda *, seed: train_mlp(seed=seed, config=SMALL))
    monkeypatch.setitem(TRAINERS, "linear",
                        CachedTrainer(lin, linear_config, LinearModel.from_arrays))
    monkeypatch.setitem(TRAINERS, "mlp",
                        CachedTrainer(mlp, lambda seed: mlp_config(seed, SMALL),
                                      MLPModel.from_arrays))
    return {"linear": lin, "mlp": mlp}


def _same_weights(a: Any, b: Any) -> bool:
    (wa, _), (wb, _) = a.to_arrays(), b.to_arrays()
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_public_api_and_registry_order() -> None:
    assert set(trainer.__all__) == {"CachedTrainer", "TRAINERS", "train_default_models", "prepare_builtin_repository"}
    assert list(TRAINERS) == ["linear", "mlp", "charlm"]
    assert all(isinstance(t, CachedTrainer) for t in TRAINERS.values())


def _without_flag(info: Any) -> dict[str, Any]:
    return {k: v for k, v in info.metrics.items() if k != "loaded_from_cache"}


def test_defaults_train_and_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real default registry, end to end, once."""
    with caplog.at_level(logging.INFO, logger="wsserve.trainer"):
        models = train_default_models(names=["linear", "mlp"], cache_dir=tmp_path)
    assert list(models) == ["linear", "mlp"]
    assert isinstance(models["linear"], LinearModel) and isinstance(models["mlp"], MLPModel)
    assert models["mlp"].info.metrics["heldout_accuracy"] > 0.85
    lines = [r.getMessage() for r in caplog.records if r.name == "wsserve.trainer"]
    assert any(line.startswith("trained linear v1 in ") and "held-out mse" in line
               for line in lines), lines
    assert any(line.startswith("trained mlp v1 in ") and "held-out acc 0.9" in line
               and "chance 0.100" in line for line in lines), lines
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["linear", "mlp"]


def test_order_is_registry_order(tmp_path: Path, counted: dict[str, Counting]) -> None:
    models = train_default_models(names=["mlp", "linear", "mlp"], cache_dir=tmp_path)
    assert list(models) == ["linear", "mlp"]
    assert list(train_default_models(names=["mlp"], cache_dir=tmp_path)) == ["mlp"]


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'linaer'.*known: linear, mlp"):
        train_default_models(names=["linear", "linaer"], cache_dir=tmp_path)


def test_cache_hit_does_not_retrain(tmp_path: Path, counted: dict[str, Counting],
                                    caplog: pytest.LogCaptureFixture) -> None:
    first = train_default_models(cache_dir=tmp_path, names=["linear", "mlp"])
    assert counted["linear"].calls == 1 and counted["mlp"].calls == 1
    with caplog.at_level(logging.INFO, logger="wsserve.trainer"):
        second = train_default_models(cache_dir=tmp_path, names=["linear", "mlp"])
    assert counted["linear"].calls == 1 and counted["mlp"].calls == 1
    for name in ("linear", "mlp"):
        assert _same_weights(first[name], second[name])
        # metrics incl. the original train time come from the cache
        assert _without_flag(first[name].info) == _without_flag(second[name].info)
        assert first[name].info.metrics["loaded_from_cache"] is False
        assert second[name].info.metrics["loaded_from_cache"] is True
    assert any(r.getMessage().startswith("loaded mlp v1 from cache in ") for r in caplog.records)
    x = np.random.default_rng(0).standard_normal((5, 32))
    assert np.array_equal(first["mlp"].predict(x), second["mlp"].predict(x))


def test_seed_is_part_of_the_key(tmp_path: Path, counted: dict[str, Counting]) -> None:
    a = train_default_models(seed=0, cache_dir=tmp_path, names=["linear"])
    b = train_default_models(seed=1, cache_dir=tmp_path, names=["linear"])
    assert counted["linear"].calls == 2
    assert a["linear"].weight != b["linear"].weight
    assert len(list(tmp_path.iterdir())) == 2


def test_cache_false_always_trains_and_writes_nothing(
    tmp_path: Path, counted: dict[str, Counting]
) -> None:
    train_default_models(cache_dir=tmp_path / "c", names=["linear", "mlp"])
    before = sorted((tmp_path / "c").iterdir())
    again = train_default_models(cache_dir=tmp_path / "c", names=["linear", "mlp"],
                                 cache=False)
    assert counted["linear"].calls == 2 and counted["mlp"].calls == 2
    assert again["mlp"].info.metrics["loaded_from_cache"] is False
    assert sorted((tmp_path / "c").iterdir()) == before
    train_default_models(cache_dir=tmp_path / "d", cache=False, names=["linear"])
    assert not (tmp_path / "d").exists()
    assert isinstance(again["mlp"], MLPModel)


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupt_cache_is_retrained_and_rewritten(
    tmp_path: Path, counted: dict[str, Counting], caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    first = train_default_models(cache_dir=tmp_path, names=["mlp"])
    path = modelstore.model_path(tmp_path, "mlp", mlp_config(0, SMALL))
    data = path.read_bytes()
    path.write_bytes(b"\x00garbage" if damage == "garbage" else data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="wsserve.trainer"):
        second = train_default_models(cache_dir=tmp_path, names=["mlp"])
    assert counted["mlp"].calls == 2
    assert _same_weights(first["mlp"], second["mlp"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w for w in warnings), warnings
    # the file was rewritten: a third start is a cache hit again
    train_default_models(cache_dir=tmp_path, names=["mlp"])
    assert counted["mlp"].calls == 2


def test_cache_file_with_bad_contents_is_retrained(
    tmp_path: Path, counted: dict[str, Counting], caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed file whose arrays the model rejects (e.g. NaN weights)."""
    config = linear_config(0)
    modelstore.save(tmp_path, "linear", config,
                    {"weight": np.array([np.nan]), "bias": np.zeros(1)}, {"metrics": {}})
    with caplog.at_level(logging.WARNING, logger="wsserve.trainer"):
        models = train_default_models(cache_dir=tmp_path, names=["linear"])
    assert counted["linear"].calls == 1
    assert np.isfinite(models["linear"].weight)
    path = modelstore.model_path(tmp_path, "linear", config)
    assert any(str(path) in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


def test_unwritable_cache_dir_is_a_warning(
    tmp_path: Path, counted: dict[str, Counting], caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with caplog.at_level(logging.WARNING, logger="wsserve.trainer"):
        models = train_default_models(cache_dir=not_a_dir, names=["linear"])
    assert isinstance(models["linear"], LinearModel)
    assert any("could not cache linear" in r.getMessage() for r in caplog.records)


def test_default_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    counted: dict[str, Counting]) -> None:
    monkeypatch.setenv("WSSERVE_CACHE_DIR", str(tmp_path / "env"))
    train_default_models(names=["linear"])
    assert [p.name.split("-")[0] for p in (tmp_path / "env").iterdir()] == ["linear"]


def test_trainers_run_with_one_blas_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, list[int]]] = []

    def train(*, seed: int) -> LinearModel:
        seen.append((seed, [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]))
        return train_linear(seed=seed)

    monkeypatch.setitem(TRAINERS, "linear", CachedTrainer(train, linear_config, LinearModel.from_arrays))
    for _ in range(2):
        models = train_default_models(seed=4, cache_dir=tmp_path, names=["linear"], cache=False)
    assert list(models) == ["linear"] and len(seen) == 2
    assert all(seed == 4 for seed, _ in seen)
    assert all(threads and set(threads) == {1} for _, threads in seen), seen
