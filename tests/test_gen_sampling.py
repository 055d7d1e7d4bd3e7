"""Vectorized sampling: greedy, temperature (Gumbel-max), top-k, per-row independence."""

from __future__ import annotations

import numpy as np

from wsserve.generation import sample
from wsserve.generation.sampling import NOISE_BLOCK, gumbel_block, new_generator

V = 12


def _logits(b: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, (b, V))


def test_all_greedy_is_argmax() -> None:
    z = _logits(9)
    got = sample(z, np.zeros(9), np.zeros(9, np.int64), None)
    assert got.tolist() == z.argmax(axis=1).tolist()


def test_greedy_rows_ignore_sampled_neighbours() -> None:
    z = _logits(6)
    temp = np.array([0, 1.0, 0, 2.0, 0, 0.5])
    noise = np.zeros((6, V))
    rng = np.random.default_rng(1)
    noise[temp > 0] = rng.gumbel(size=(3, V))
    got = sample(z, temp, np.zeros(6, np.int64), noise)
    assert got[temp == 0].tolist() == z[temp == 0].argmax(axis=1).tolist()


def test_top_k_one_is_greedy_and_top_k_bounds_the_support() -> None:
    z = np.tile(_logits(1), (4000, 1))
    rng = np.random.default_rng(2)
    noise = rng.gumbel(size=z.shape)
    temp = np.full(len(z), 3.0)  # hot: without top-k every token would appear
    top1 = sample(z, temp, np.ones(len(z), np.int64), noise)
    assert set(top1.tolist()) == {int(z[0].argmax())}
    top3 = sample(z, temp, np.full(len(z), 3, np.int64), noise)
    assert set(top3.tolist()) == set(np.argsort(z[0])[-3:].tolist())
    free = sample(z, temp, np.zeros(len(z), np.int64), noise)
    assert len(set(free.tolist())) == V


def test_sampling_follows_softmax_of_logits_over_temperature() -> None:
    n, t = 40_000, 0.7
    row = _logits(1, seed=4)[0]
    z = np.tile(row, (n, 1))
    noise = np.random.default_rng(5).gumbel(size=z.shape)
    got = sample(z, np.full(n, t), np.zeros(n, np.int64), noise)
    freq = np.bincount(got, minlength=V) / n
    p = np.exp(row / t - (row / t).max())
    p /= p.sum()
    # 40k draws: standard error <= 0.0025 per token; allow 5 sigma.
    assert np.abs(freq - p).max() < 0.0125, (freq, p)


def test_each_row_is_independent_of_the_rest_of_the_batch() -> None:
    b = 33
    z = _logits(b, seed=6)
    rng = np.random.default_rng(7)
    temp = rng.choice([0.0, 0.5, 1.0, 2.0], b)
    top_k = rng.choice([0, 1, 5, V, V + 3], b).astype(np.int64)
    noise = np.where(temp[:, None] > 0, rng.gumbel(size=(b, V)), 0.0)
    full = sample(z, temp, top_k, noise)
    for i in range(b):
        alone = sample(z[i:i + 1], temp[i:i + 1], top_k[i:i + 1], noise[i:i + 1])
        assert alone[0] == full[i]


def test_tiny_temperature_is_clamped_not_overflowing() -> None:
    z = _logits(50, seed=8)
    noise = np.random.default_rng(9).gumbel(size=z.shape)
    got = sample(z, np.full(50, 1e-300), np.zeros(50, np.int64), noise)
    assert got.tolist() == z.argmax(axis=1).tolist()


def test_gumbel_blocks_are_standard_gumbel() -> None:
    g = new_generator(0)
    draws = np.concatenate([gumbel_block(g, V) for _ in range(200)]).ravel()
    # mean = Euler-Mascheroni constant, variance = pi^2 / 6 (38k draws)
    assert abs(draws.mean() - 0.5772) < 0.03 and abs(draws.var() - np.pi**2 / 6) < 0.06


def test_generators_are_seeded_modulo_2_64_and_blocks_continue_the_stream() -> None:
    a = gumbel_block(new_generator(-1), V)
    b = gumbel_block(new_generator(2**64 - 1), V)
    assert a.shape == (NOISE_BLOCK, V) and np.array_equal(a, b)
    g = new_generator(11)
    two = np.concatenate([gumbel_block(g, V), gumbel_block(g, V)])
    assert np.array_equal(two, -np.log(-np.log(new_generator(11).random((2 * NOISE_BLOCK, V)))))
    assert not np.array_equal(gumbel_block(new_generator(None), V), gumbel_block(new_generator(None), V))
