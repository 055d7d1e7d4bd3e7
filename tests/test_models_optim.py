"""The shared optimiser (wsserve.models.optim.Adam): the paper's update, pinned bits, contracts."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
import pytest

from wsserve.models import optim
from wsserve.models.optim import Adam


def test_public_api() -> None:
    assert set(optim.__all__) == {"Adam", "ArrayTree"}


def test_matches_the_paper_written_out_in_float64() -> None:
    """Kingma & Ba: m_hat / (sqrt(v_hat) + eps_hat) with eps_hat = eps / sqrt(1 - beta2**t)."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal((4, 3))
    ref = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    b1, b2, eps = 0.8, 0.95, 1e-3  # a large eps so its placement is visible
    opt = Adam([p], beta1=b1, beta2=b2, eps=eps)
    for t, lr in enumerate((0.1, 0.05, 0.2, 0.01, 0.3), start=1):
        g = rng.standard_normal(p.shape)
        opt.step([g], lr)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        ref = ref - lr * m_hat / (np.sqrt(v_hat) + eps / np.sqrt(1 - b2**t))
        assert opt.t == t
        np.testing.assert_allclose(p, ref, rtol=1e-12, atol=1e-14)


def test_float32_steps_are_pinned_bit_for_bit() -> None:
    """Element-wise only (no BLAS), so these bits hold on any machine.

    The hash was computed with ``wsserve.models.mlp._Adam`` before it moved here
    (commit f988082); a change means the update arithmetic changed, which also
    changes every trained model: bump the models' ALGORITHM strings with it.
    """
    rng = np.random.default_rng(2024)
    params = [(rng.standard_normal((7, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)),
              (rng.standard_normal((5, 3)).astype(np.float32), np.zeros(3, np.float32))]
    opt = Adam(params, beta1=0.9, beta2=0.99, eps=1e-8)
    for t, lr in enumerate((1e-2, 3e-3, 5e-2, 1e-3)):
        grads = [(rng.standard_normal(w.shape).astype(np.float32) * (t + 1),
                  rng.standard_normal(b.shape).astype(np.float32)) for w, b in params]
        opt.step(grads, lr)
    assert all(a.dtype == np.float32 for pair in params for a in pair)
    digest = hashlib.sha256(b"".join(a.tobytes() for pair in params for a in pair)).hexdigest()
    assert digest == "6a118dcd4b8bee168ccc2d312a20499e93550bb9c4fe561ba439029f7fb2c1a1"


def test_minimises_an_ill_conditioned_quadratic() -> None:
    scales = np.array([1e-2, 1.0, 1e2])
    x = np.array([3.0, -2.0, 1.0])
    opt = Adam(x)  # a bare array is a tree too
    for _ in range(2000):
        opt.step(scales * x, 0.05)  # grad of 0.5 * sum(scales * x**2)
    assert np.abs(x).max() < 0.05  # Adam's per-coordinate scaling ignores the conditioning


class _Pair(NamedTuple):
    w: np.ndarray
    b: np.ndarray


def test_updates_the_given_arrays_in_place_for_any_nesting() -> None:
    w, b, c = np.ones((2, 2)), np.ones(2), np.ones(3, np.float32)
    tree = [_Pair(w, b), (c,)]
    opt = Adam(tree)
    opt.step([_Pair(np.ones((2, 2)), -np.ones(2)), (np.zeros(3, np.float32),)], 0.1)
    assert tree[0].w is w and tree[1][0] is c
    # first step moves every non-zero-gradient coordinate by ~lr against its sign
    np.testing.assert_allclose(w, 0.9, rtol=1e-6)
    np.testing.assert_allclose(b, 1.1, rtol=1e-6)
    assert np.array_equal(c, np.ones(3, np.float32))


def test_rejects_mismatched_gradients_without_stepping() -> None:
    p = [np.zeros(3), np.zeros((2, 2))]
    opt = Adam(p)
    with pytest.raises(ValueError, match="1 gradient arrays for 2 parameters"):
        opt.step([np.ones(3)], 0.1)
    with pytest.raises(ValueError, match=r"gradient 1 has shape \(4,\), parameter \(2, 2\)"):
        opt.step([np.ones(3), np.ones(4)], 0.1)
    with pytest.raises(TypeError, match="grads must be numpy arrays"):
        opt.step([np.ones(3), {"w": np.ones((2, 2))}], 0.1)  # type: ignore[list-item]
    assert opt.t == 0 and not p[0].any()


@pytest.mark.parametrize(
    ("params", "kwargs", "match"),
    [
        ([np.zeros(2, np.int64)], {}, "writable float array"),
        ([np.broadcast_to(np.zeros(1), (3,))], {}, "writable float array"),
        ([np.zeros(2)], {"beta1": 1.0}, r"beta1 must be in \[0, 1\)"),
        ([np.zeros(2)], {"beta2": -0.1}, r"beta2 must be in \[0, 1\)"),
        ([np.zeros(2)], {"eps": float("nan")}, "eps must be finite"),
    ],
)
def test_rejects_bad_construction(params: list[np.ndarray], kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Adam(params, **kwargs)
