"""The rANS coder alone: exact round trips, frequency tables, size against the ideal."""

from __future__ import annotations

import numpy as np
import pytest

from monarchpc.use import rans


def tables(probs: np.ndarray, scale_bits: int = rans.SCALE_BITS) -> np.ndarray:
    """(S, R, V) probabilities -> (S, R, V + 1) cumulative frequencies."""
    s, r, v = probs.shape
    return rans.cumulative(rans.quantize(probs.reshape(-1, v), scale_bits)).reshape(s, r, v + 1)


def round_trip(symbols: np.ndarray, cums: np.ndarray, scale_bits: int = rans.SCALE_BITS
               ) -> tuple[np.ndarray, int]:
    """Decoded symbols (S, R) (0 in empty slots) and the coded size in bits."""
    states, words = rans.encode_symbols(symbols, cums, scale_bits)
    dec = rans.Decoder(states, words, scale_bits)
    out = np.stack([dec.decode(cums[s], symbols[s] >= 0) for s in range(len(symbols))]) \
        if len(symbols) else symbols
    dec.finish()
    return out, 32 * len(words) + 64 * len(states)


def test_quantize_sums_to_the_total_with_every_value_at_least_one() -> None:
    rng = np.random.default_rng(0)
    probs = np.concatenate([
        rng.dirichlet(np.full(511, 0.05), size=50),  # peaked over many values
        np.eye(511)[:3],  # one certain value
        np.zeros((1, 511)),  # nothing: uniform
        np.full((1, 511), np.nan),  # broken: uniform
        np.full((1, 511), 1e-300),  # tiny but valid
    ])
    for bits in (16, rans.SCALE_BITS, rans.MAX_SCALE_BITS):
        freq = rans.quantize(probs, bits)
        assert freq.dtype == np.int64 and (freq >= 1).all()
        assert (freq.sum(1) == 1 << bits).all()
        assert np.array_equal(freq, rans.quantize(probs.copy(), bits))  # deterministic
    freq = rans.quantize(probs)
    assert freq[50, 0] == (1 << rans.SCALE_BITS) - 510  # a certain value gets all the rest
    for row in freq[53:56]:  # uniform up to the remainder (< V) given to the first value
        assert row.min() == row[1:].max() and row[0] - row[1] < 511


def test_quantize_refuses_more_values_than_the_total_holds() -> None:
    with pytest.raises(ValueError, match="scale_bits"):
        rans.quantize(np.ones((1, 40000)), 16)


@pytest.mark.parametrize("vocab,lanes", [(2, 1), (27, 1), (27, 7), (511, 16)])
def test_round_trip_of_random_symbols(vocab: int, lanes: int) -> None:
    rng = np.random.default_rng(vocab * 100 + lanes)
    steps = 300
    probs = rng.dirichlet(np.full(vocab, 0.3), size=(steps, lanes))
    cums = tables(probs)
    symbols = (rng.random((steps, lanes, 1)) < probs.cumsum(-1)).argmax(-1)  # drawn from p
    symbols[rng.random((steps, lanes)) < 0.1] = -1  # empty slots
    out, _ = round_trip(symbols, cums)
    assert np.array_equal(out, np.where(symbols >= 0, symbols, 0))


def test_round_trip_of_improbable_symbols_and_certain_ones() -> None:
    """Every symbol the least likely (frequency 1), then long runs of a near-certain one."""
    steps, lanes, vocab = 200, 3, 27
    probs = np.full((steps, lanes, vocab), 1e-12)
    probs[..., 5] = 1.0
    cums = tables(probs)
    worst = np.zeros((steps, lanes), dtype=np.int64)  # symbol 0: frequency 1
    out, bits = round_trip(worst, cums)
    assert np.array_equal(out, worst)
    assert bits >= steps * lanes * rans.SCALE_BITS  # each costs log2(M) bits
    best = np.full((steps, lanes), 5)
    out, bits = round_trip(best, cums)
    assert np.array_equal(out, best) and bits == 64 * lanes  # nothing but the final states


def test_empty_grid_and_empty_lanes() -> None:
    cums = tables(np.full((0, 4, 3), 1 / 3))
    out, bits = round_trip(np.zeros((0, 4), dtype=np.int64), cums)
    assert out.shape == (0, 4) and bits == 64 * 4
    symbols = np.full((10, 4), -1)
    symbols[:, 2] = 1
    out, _ = round_trip(symbols, tables(np.full((10, 4, 3), 1 / 3)))
    assert np.array_equal(out[:, 2], np.ones(10)) and not out[:, [0, 1, 3]].any()


def test_size_is_the_ideal_code_length_plus_the_states() -> None:
    rng = np.random.default_rng(1)
    steps, lanes, vocab = 4000, 4, 27
    probs = rng.dirichlet(np.full(vocab, 0.2), size=(steps, lanes))
    symbols = (rng.random((steps, lanes, 1)) < probs.cumsum(-1)).argmax(-1)
    cums = tables(probs)
    freq = np.take_along_axis(np.diff(cums, axis=-1), symbols[..., None], -1)[..., 0]
    quantized = -np.log2(freq / 2.0**rans.SCALE_BITS).sum()
    out, bits = round_trip(symbols, cums)
    assert np.array_equal(out, symbols)
    # a final state holds 31..63 bits of the message, so the stream beats the ideal by up to
    # that much; the coder's rounding costs below 2^-11 bits per symbol
    assert quantized - 32 * lanes <= bits - 64 * lanes <= quantized * (1 + 1e-3)


def test_a_truncated_or_foreign_stream_is_detected() -> None:
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(27), size=(500, 2))
    cums = tables(probs)
    symbols = rng.integers(0, 27, size=(500, 2))
    states, words = rans.encode_symbols(symbols, cums)
    dec = rans.Decoder(states, words[: len(words) // 2])
    with pytest.raises(rans.StreamError):
        for s in range(500):
            dec.decode(cums[s])
        dec.finish()
    other = tables(rng.dirichlet(np.ones(27), size=(500, 2)))  # other frequency tables
    dec = rans.Decoder(states, words)
    with pytest.raises(rans.StreamError):
        for s in range(500):
            dec.decode(other[s])
        dec.finish()
    with pytest.raises(rans.StreamError):
        rans.Decoder(np.array([5], dtype=np.uint64), words)
