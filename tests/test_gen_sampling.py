"""Vectorized sampling: greedy, temperature (Gumbel-max), top-k, per-row independence."""

from __future__ import annotations

import numpy as np
import pytest

from wsserve.generation import sample
from wsserve.generation.sampling import (
    FLOAT32_NOISE_MAX_VOCAB,
    NOISE_BLOCK,
    NOISE_BLOCK_VALUES,
    SampledRows,
    SplitMixSeed,
    gumbel_block,
    gumbel_blocks,
    gumbel_from_bits,
    min_p_rows,
    new_generator,
    noise_block_rows,
    nucleus_rows,
    sample_rows,
)

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


def test_nucleus_keeps_the_fewest_likeliest_tokens_reaching_top_p() -> None:
    probs = np.array([0.05, 0.5, 0.2, 0.25])  # ranked: 1 (0.5), 3 (0.25), 2 (0.2), 0 (0.05)
    for top_p, kept in [(0.1, {1}), (0.5, {1}), (0.51, {1, 3}), (0.75, {1, 3}), (0.76, {1, 3, 2}),
                        (0.96, {0, 1, 2, 3}), (1e-9, {1})]:
        z = np.log(probs)[None, :]
        nucleus_rows(z, np.array([0]), np.array([top_p]))
        z = z[0]
        assert set(np.flatnonzero(np.isfinite(z)).tolist()) == kept, top_p
        assert np.array_equal(z[list(kept)], np.log(probs)[list(kept)])  # kept entries untouched


def test_nucleus_orders_ties_by_token_id_and_counts_masked_tokens_as_zero() -> None:
    z = np.array([[9.0] * 5, [0.0, 1.0, 1.0, -np.inf, 1.0]])  # row 1: three equal likeliest; token 3 masked
    nucleus_rows(z, np.array([1]), np.array([0.5]))  # each tied token holds ~0.31: two are needed, the lowest ids
    assert np.flatnonzero(np.isfinite(z[1])).tolist() == [1, 2]
    assert z[0].tolist() == [9.0] * 5  # rows not named are untouched


def test_top_p_bounds_the_support_of_sampling() -> None:
    n = 4000
    row = np.log(np.array([0.4, 0.3, 0.2, 0.06, 0.04]))
    z = np.tile(row, (n, 1))
    noise = np.random.default_rng(12).gumbel(size=z.shape)
    temp = np.ones(n)
    got = sample(z, temp, np.zeros(n, np.int64), noise, top_p=np.full(n, 0.85))
    assert set(got.tolist()) == {0, 1, 2}
    freq = np.bincount(got, minlength=5)[:3] / n  # renormalised over the nucleus: 4/9, 3/9, 2/9
    assert np.abs(freq - np.array([4, 3, 2]) / 9).max() < 0.04, freq
    off = sample(z, temp, np.zeros(n, np.int64), noise, top_p=np.ones(n))
    assert set(off.tolist()) == {0, 1, 2, 3, 4}
    greedy = sample(z, np.zeros(n), np.zeros(n, np.int64), None, top_p=np.full(n, 0.1))
    assert set(greedy.tolist()) == {0}


def test_min_p_keeps_tokens_at_least_min_p_times_as_likely_as_the_likeliest() -> None:
    probs = np.array([0.5, 0.3, 0.1, 0.05, 0.05])
    for min_p, kept in [(0.09, {0, 1, 2, 3, 4}), (0.19, {0, 1, 2}), (0.59, {0, 1}), (0.61, {0}), (1.0, {0})]:
        z = np.log(probs)[None, :]
        min_p_rows(z, np.array([0]), np.log(np.array([min_p])))
        assert set(np.flatnonzero(np.isfinite(z[0])).tolist()) == kept, min_p
    n = 4000
    z = np.tile(np.log(probs), (n, 1))
    noise = np.random.default_rng(14).gumbel(size=z.shape)
    got = sample(z, np.ones(n), np.zeros(n, np.int64), noise, min_p=np.full(n, 0.19))
    assert set(got.tolist()) == {0, 1, 2}
    hot = sample(z, np.full(n, 2.0), np.zeros(n, np.int64), noise, min_p=np.full(n, 0.19))  # after the temperature:
    assert set(hot.tolist()) == {0, 1, 2, 3, 4}  # at T=2 the ratios are square roots, all above 0.19


def test_top_p_and_min_p_rows_are_independent_of_the_rest_of_the_batch() -> None:
    b, v = 37, 61  # rows that do not start on a vector boundary
    rng = np.random.default_rng(13)
    z = rng.normal(0, 3, (b, v))
    temp = rng.choice([0.0, 0.3, 1.0, 2.5], b)
    top_k = rng.choice([0, 3, 20], b).astype(np.int64)
    top_p = rng.choice([1.0, 0.5, 0.9, 0.99], b)
    min_p = rng.choice([0.0, 0.05, 0.3], b)
    noise = np.where(temp[:, None] > 0, rng.gumbel(size=(b, v)), 0.0)
    full = sample(z, temp, top_k, noise, top_p=top_p, min_p=min_p)
    for i in range(b):
        alone = sample(z[i:i + 1], temp[i:i + 1], top_k[i:i + 1], noise[i:i + 1], top_p=top_p[i:i + 1],
                       min_p=min_p[i:i + 1])
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


def _words(seed: int, n: int) -> np.ndarray:
    """The first ``n`` 32-bit words of seed ``seed``'s generator, low half of each draw first."""
    raw = new_generator(seed).bit_generator.random_raw((n + 1) // 2)
    return np.stack([raw & 0xFFFF_FFFF, raw >> 32], axis=1).ravel()[:n].astype(np.uint32)


def test_generators_are_seeded_modulo_2_64_and_blocks_continue_the_stream() -> None:
    a = gumbel_block(new_generator(-1), V)
    b = gumbel_block(new_generator(2**64 - 1), V)
    assert a.shape == (NOISE_BLOCK, V) and a.dtype == np.float64 and np.array_equal(a, b)
    g = new_generator(11)
    two = np.concatenate([gumbel_block(g, V), gumbel_block(g, V)])
    expected = gumbel_from_bits(_words(11, 2 * NOISE_BLOCK * V)).reshape(2 * NOISE_BLOCK, V)
    assert expected.dtype == np.float32 and np.array_equal(two, expected)
    assert not np.array_equal(gumbel_block(new_generator(None), V), gumbel_block(new_generator(None), V))


@pytest.mark.parametrize("v", [V, 97, FLOAT32_NOISE_MAX_VOCAB, FLOAT32_NOISE_MAX_VOCAB + 1])
def test_blocks_of_many_requests_equal_each_request_alone(v: int) -> None:
    """Blocks drawn together (one call for the requests whose refill is due) are bitwise each
    request's own blocks, in order - whatever else is drawn with them."""
    together = gumbel_blocks([new_generator(s) for s in range(5)], v)
    alone = np.concatenate([gumbel_block(new_generator(s), v) for s in range(5)])
    assert together.shape == (5 * noise_block_rows(v), v) and np.isfinite(together).all()
    assert together.dtype == (np.float32 if v <= FLOAT32_NOISE_MAX_VOCAB else np.float64)
    assert np.array_equal(together, alone)
    gens = [new_generator(s) for s in (7, 8)]
    gumbel_blocks(gens, v)
    second = gumbel_blocks([gens[1]], v)  # request 8's second block, drawn without request 7
    g8 = new_generator(8)
    assert np.array_equal(second, (gumbel_block(g8, v), gumbel_block(g8, v))[1])


def test_float32_noise_is_gumbel_within_1e_7_at_every_level() -> None:
    """All 2**23 values the float32 noise takes (one per 23-bit word prefix, equally likely):
    finite, increasing, within [-2.82, 16.64], their distribution function within 1.4e-7 of
    the standard Gumbel's, and the odds of a token with logit d against one with logit 0
    within 1e-7 of the exact ``1 / (1 + e**-d)`` (computed over every pair of levels)."""
    n = 2**23
    levels = gumbel_from_bits(np.arange(n, dtype=np.uint32) << np.uint32(9)).astype(np.float64)
    assert np.isfinite(levels).all() and (np.diff(levels) > 0).all()
    assert -2.82 < levels[0] < -2.81 and 16.63 < levels[-1] < 16.64
    cdf = np.exp(-np.exp(-levels))  # the Gumbel distribution function at each level
    i = np.arange(n)
    assert max(np.abs((i + 1) / n - cdf).max(), np.abs(i / n - cdf).max()) < 1.4e-7
    for d in (0.0, 1.0, 5.0):
        wins = np.searchsorted(levels, d + levels, side="right").sum() / n / n
        assert abs(wins - 1 / (1 + np.exp(-d))) < 1e-7, d


# Chi-square critical values at p = 1e-4 (scipy.stats.chi2.isf(1e-4, df)).
_CHI2_1E4 = {4: 23.5127, 11: 37.3670}


@pytest.mark.parametrize("top_k", [0, 5])
def test_seeded_sampler_draws_from_softmax_over_temperature_with_top_k(top_k: int) -> None:
    """The sampler as the scheduler runs it (one request's generator, its noise blocks in
    order, ``sample_rows``): 60k draws with a fixed seed pass a chi-square test against
    ``softmax(logits / T)`` restricted to the top k, and never leave the top k."""
    n, t = 60_000, 0.7
    row = _logits(1, seed=4)[0] * 0.6
    g = new_generator(2024)
    noise = np.concatenate([gumbel_block(g, V) for _ in range(n // NOISE_BLOCK)])  # [n, V]
    spec = SampledRows(rows=None, scale=np.full((n, 1), t),
                       top_k_rows=np.arange(n) if top_k else None,
                       top_k=np.full(n, top_k) if top_k else None)
    got = sample_rows(np.tile(row, (n, 1)), spec, noise)
    counts = np.bincount(got, minlength=V)
    p = np.exp(row / t - (row / t).max())
    if top_k:
        outside = np.argsort(row)[:-top_k]
        p[outside] = 0.0
        assert counts[outside].sum() == 0
    p /= p.sum()
    support = p > 0
    chi2 = (((counts - n * p)[support]) ** 2 / (n * p[support])).sum()
    assert chi2 < _CHI2_1E4[int(support.sum()) - 1], (chi2, counts, n * p)


def test_split_mix_seed_gives_the_splitmix64_sequence() -> None:
    """The words behind each seeded request's PCG64: splitmix64 from the seed (reference values
    of splitmix64 from 0), as uint64 or as uint32 halves, low half first."""
    words = SplitMixSeed(0).generate_state(2, np.uint64)
    assert words.dtype == np.uint64 and words.tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]
    halves = SplitMixSeed(0).generate_state(3)
    assert halves.dtype == np.uint32 and halves.tolist() == [0x7B1DCDAF, 0xE220A839, 0xA1B965F4]
    assert SplitMixSeed(2**64 - 1).generate_state(4, np.uint64).tolist() != words.tolist()
    with pytest.raises(ValueError, match="seed"):
        SplitMixSeed(2**64)
    with pytest.raises(ValueError, match="dtype"):
        SplitMixSeed(1).generate_state(2, np.int64)
    a, b = new_generator(5).random(4), new_generator(5).random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, new_generator(6).random(4))


@pytest.mark.parametrize("v", [FLOAT32_NOISE_MAX_VOCAB + 1, 20_000, 50_257, 70_000])
def test_big_vocabularies_get_smaller_blocks_of_the_same_noise(v: int) -> None:
    """Above FLOAT32_NOISE_MAX_VOCAB a block holds at most NOISE_BLOCK_VALUES values (at least one
    row), so the running set's buffer (a block per slot) stays bounded, and the rows are the
    request's float64 uniforms in order, whatever the block size."""
    nb = noise_block_rows(v)
    assert 1 <= nb <= NOISE_BLOCK and (nb == 1 or nb * v <= NOISE_BLOCK_VALUES)
    assert noise_block_rows(FLOAT32_NOISE_MAX_VOCAB) == NOISE_BLOCK
    rows = 2 * NOISE_BLOCK
    g = new_generator(7)
    blocks = np.concatenate([gumbel_blocks([g], v) for _ in range(-(-rows // nb))])[:rows]
    u = new_generator(7).random((rows, v))
    np.testing.assert_array_equal(blocks, -np.log(-np.log(u)))
