"""Tests for the ``linear`` default model against the closed-form fit."""

from __future__ import annotations

import numpy as np
import pytest

from wsserve.models import linear
from wsserve.models.base import PredictiveModel
from wsserve.models.linear import LinearConfig, LinearModel, linear_config, train_linear


def _original_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The original design's data, written out independently of the module."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (100, 1))
    y = 3 * x + rng.uniform(0, 1, (100, 1))
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_matches_closed_form_least_squares(seed: int) -> None:
    model = train_linear(seed=seed)
    x, y = _original_data(seed)
    (w, b), *_ = np.linalg.lstsq(np.hstack([x, np.ones_like(x)]), y, rcond=None)
    assert abs(model.weight - w[0]) < 1e-3
    assert abs(model.bias - b[0]) < 1e-3
    m = model.info.metrics
    assert m["converged"] is True
    assert m["max_abs_diff_vs_lstsq"] < 1e-3
    assert m["lstsq_weight"] == pytest.approx(w[0], abs=1e-12)
    assert m["lstsq_bias"] == pytest.approx(b[0], abs=1e-12)
    # the reported train MSE is the MSE of the returned weights on that data
    assert m["train_mse"] == pytest.approx(float(np.mean((x * model.weight + model.bias - y) ** 2)))


def test_fit_is_about_3x_plus_half() -> None:
    m = train_linear(seed=0).info.metrics
    assert 2.5 < m["weight"] < 3.5
    assert 0.2 < m["bias"] < 0.8
    # noise is U(0,1), variance 1/12: a good fit has MSE near it on fresh data
    assert 0.06 < m["heldout_mse"] < 0.11
    assert m["epochs"] > 10 and m["train_time_s"] >= 0
    assert m["n_train"] == 100 and m["n_heldout"] == 1000


def test_info() -> None:
    model = train_linear()
    assert isinstance(model, PredictiveModel)
    info = model.info
    assert (info.name, info.version, info.task) == ("linear", "1", "regression")
    assert info.input_shape == (1,) and info.output_shape == (1,)
    assert info.parameters == 2
    j = info.to_json()
    assert j["input_shape"] == [1] and j["metrics"]["weight"] == model.weight


def test_deterministic_per_seed() -> None:
    a, b, c = train_linear(seed=3), train_linear(seed=3), train_linear(seed=4)
    assert (a.weight, a.bias) == (b.weight, b.bias)
    assert (a.weight, a.bias) != (c.weight, c.bias)


def test_predict_shape_values_and_purity() -> None:
    model = train_linear()
    x = np.linspace(-5, 5, 101).reshape(-1, 1)
    out = model.predict(x)
    assert out.shape == (101, 1) and out.dtype == np.float64
    np.testing.assert_allclose(out, x * model.weight + model.bias, rtol=0, atol=1e-15)
    for i in range(0, 101, 10):
        assert np.array_equal(model.predict(x[i : i + 1]), out[i : i + 1])
    with pytest.raises(ValueError, match=r"\[n, 1\]"):
        model.predict(np.ones((3, 2)))
    with pytest.raises(ValueError):
        model.predict(np.ones(3))


def test_mean_gradient_matches_finite_differences() -> None:
    x, y = _original_data(0)
    w, b, h = 1.3, -0.2, 1e-6
    _, dw, db = linear.mse_and_grad(w, b, x, y)
    f = lambda w_, b_: linear.mse_and_grad(w_, b_, x, y)[0]  # noqa: E731
    assert dw == pytest.approx((f(w + h, b) - f(w - h, b)) / (2 * h), rel=1e-6)
    assert db == pytest.approx((f(w, b + h) - f(w, b - h)) / (2 * h), rel=1e-6)


def test_not_converging_raises() -> None:
    with pytest.raises(RuntimeError, match="did not converge"):
        train_linear(config=LinearConfig(max_epochs=3))


def test_arrays_round_trip() -> None:
    model = train_linear(seed=2)
    arrays, meta = model.to_arrays()
    back = LinearModel.from_arrays(arrays, meta)
    assert (back.weight, back.bias) == (model.weight, model.bias)
    assert back.info == model.info
    with pytest.raises(ValueError):
        LinearModel.from_arrays({"weight": np.array([np.nan]), "bias": np.zeros(1)}, meta)
    with pytest.raises(KeyError):
        LinearModel.from_arrays({"weight": np.ones(1)}, meta)


def test_public_api() -> None:
    assert set(linear.__all__) == {
        "LinearConfig", "LinearModel", "train_linear", "linear_config", "make_linear_data",
        "mse_and_grad",
    }


def test_config_is_full_and_seeded() -> None:
    c = linear_config(5)
    assert c["seed"] == 5 and c["version"] == "1" and "algorithm" in c
    assert c["learning_rate"] == LinearConfig().learning_rate
    assert linear_config(5, LinearConfig(learning_rate=0.1))["learning_rate"] == 0.1
