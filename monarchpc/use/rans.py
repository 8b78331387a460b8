"""Interleaved rANS entropy coder over R lanes, vectorized with numpy (no model knowledge).

The coder turns symbols with integer frequencies into 32-bit words and back. Frequencies
of every symbol are positive integers summing to M = 2^``scale_bits``; a symbol s of
frequency f_s and cumulative start c_s = f_0 + ... + f_{s-1} costs log2(M / f_s) bits
(plus the coder's rounding, below 2^-11 of a bit per symbol here).

Layout (rans64 of F. Giesen's ryg_rans, with R states side by side):

* each lane holds a state x in [L, 2^63), L = 2^31, as uint64; it starts at L;
* a symbol is coded as x <- (x // f) * M + x mod f + c, after writing the low 32 bits of x
  (x >>= 32) when x >= (L / M) * 2^32 * f, so x stays below 2^63;
* decoding inverts it: slot = x mod M gives the symbol (c_s <= slot < c_s + f_s), then
  x <- f * (x // M) + slot - c_s, reading a word when x < L.

The symbols form a grid (S, R) in *decoding* order: step s codes one symbol in each active
lane r. All lanes share one word stream: the words of step s are stored in increasing lane
order, steps in increasing order, so the decoder knows after each step which lanes read a
word and where (it reads at most one word per lane and step). rANS is last-in first-out:
:func:`encode` walks the grid backwards. The output is the R final states (8 bytes each:
the only per-lane cost) and the words; :class:`Decoder` ends with every state back at L
and every word read, which :meth:`Decoder.finish` checks.

All arithmetic is exact integer arithmetic (uint64), identical on every machine; only the
frequency tables (the model's side, :func:`quantize`) depend on floating point.
"""

from __future__ import annotations

import numpy as np

STATE_LOW = 1 << 31
"""L: the lower bound of a normalized state."""
WORD_BITS = 32
WORD_MASK = np.uint64((1 << WORD_BITS) - 1)
SCALE_BITS = 20
"""Default log2 of the frequency total M: 2^20 leaves room for 511-value image channels
(every value at least 1/M) and keeps the coder's rounding (M / L = 2^-11) negligible."""
MAX_SCALE_BITS = 24


class StreamError(ValueError):
    """A coded stream that cannot be decoded (truncated, corrupt, or decoded with other
    frequency tables than it was encoded with)."""


def quantize(probs: np.ndarray, scale_bits: int = SCALE_BITS) -> np.ndarray:
    """Integer frequencies (N, V) int64 of probabilities ``probs`` (N, V) float64, linear space.

    Every row sums to exactly M = 2^scale_bits and every symbol gets at least 1:
    f = floor(p (M - V)) + 1, and the rounding remainder (0 <= r < V) goes to the row's
    most frequent symbol (the first on ties). Rows are normalized first; NaN or negative
    entries count as 0 and an all-zero row becomes uniform. Deterministic: equal inputs
    give equal outputs (element-wise float64 operations and one row sum).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"expected probabilities (N, V), got shape {p.shape}")
    n, v = p.shape
    total = 1 << scale_bits
    if v > total // 2:
        raise ValueError(f"{v} symbols need scale_bits above {scale_bits}")
    p = np.where(np.isfinite(p) & (p > 0), p, 0.0)
    s = p.sum(1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / v)
    freq = np.floor(p * float(total - v)).astype(np.int64) + 1
    freq = np.minimum(freq, total - v + 1)  # p <= 1 + rounding: keep the sum bounded
    rest = total - freq.sum(1)
    freq[np.arange(n), freq.argmax(1)] += rest
    return freq


def cumulative(freq: np.ndarray) -> np.ndarray:
    """Cumulative starts (N, V + 1) int64 of frequencies (N, V): row [0, f_0, f_0 + f_1, ...]."""
    out = np.zeros((freq.shape[0], freq.shape[1] + 1), dtype=np.int64)
    np.cumsum(freq, axis=1, out=out[:, 1:])
    return out


def encode(start: np.ndarray, freq: np.ndarray, scale_bits: int = SCALE_BITS
           ) -> tuple[np.ndarray, np.ndarray]:
    """Code the grid of symbols given by their ``start`` and ``freq`` (S, R) ints, in
    decoding order (step s, lane r); ``freq`` 0 marks an empty slot (nothing coded).

    Returns the final states (R,) uint64 and the words (W,) uint32 in reading order.
    """
    start = np.asarray(start, dtype=np.uint64)
    freq = np.asarray(freq, dtype=np.uint64)
    if start.shape != freq.shape or start.ndim != 2:
        raise ValueError(f"start and freq must be (S, R), got {start.shape}, {freq.shape}")
    if not 1 <= scale_bits <= MAX_SCALE_BITS:
        raise ValueError(f"scale_bits must lie in [1, {MAX_SCALE_BITS}]")
    steps, lanes = freq.shape
    sb = np.uint64(scale_bits)
    bound = np.uint64((STATE_LOW >> scale_bits) << WORD_BITS)
    x = np.full(lanes, STATE_LOW, dtype=np.uint64)
    chunks: list[np.ndarray] = []
    one = np.uint64(1)
    for s in range(steps - 1, -1, -1):
        f = freq[s]
        active = f > 0
        emit = active & (x >= bound * f)
        if emit.any():
            chunks.append((x[emit] & WORD_MASK).astype(np.uint32))
            x = np.where(emit, x >> np.uint64(WORD_BITS), x)
        fa = np.where(active, f, one)
        q = x // fa
        x = np.where(active, (q << sb) + (x - q * fa) + start[s], x)
    words = np.concatenate(chunks[::-1]) if chunks else np.zeros(0, dtype=np.uint32)
    return x, words


class Decoder:
    """Decodes a stream of :func:`encode` one step (all lanes) at a time."""

    def __init__(self, states: np.ndarray, words: np.ndarray, scale_bits: int = SCALE_BITS):
        self.x = np.asarray(states, dtype=np.uint64).copy()
        if (self.x < STATE_LOW).any() or (self.x >> np.uint64(63)).any():
            raise StreamError("a lane's state is out of range: the stream is corrupt")
        self.words = np.asarray(words, dtype=np.uint32).astype(np.uint64)
        self.pos = 0
        self.scale_bits = scale_bits
        self.mask = np.uint64((1 << scale_bits) - 1)

    def decode(self, cum: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Symbols (R,) int64 of one step from cumulative tables ``cum`` (R, V + 1) int64
        (rows of :func:`cumulative`); lanes where ``active`` (R,) is False decode nothing
        and give 0."""
        lanes = len(self.x)
        if cum.shape[0] != lanes:
            raise ValueError(f"expected {lanes} table rows, got {cum.shape[0]}")
        every = active is None or bool(np.all(active))  # the common case: fewer operations
        slot = (self.x & self.mask).astype(np.int64)
        sym = (cum[:, 1:-1] <= slot[:, None]).sum(1)  # c_s <= slot < c_{s+1}
        if not every:
            sym = np.where(active, sym, 0)
        rows = np.arange(lanes)
        c = cum[rows, sym]
        f = cum[rows, sym + 1] - c
        x = f.astype(np.uint64) * (self.x >> np.uint64(self.scale_bits)) \
            + (slot - c).astype(np.uint64)
        if every:
            need = x < STATE_LOW
        else:
            x = np.where(active, x, self.x)
            need = active & (x < STATE_LOW)
        n = int(need.sum())
        if n:
            if self.pos + n > len(self.words):
                raise StreamError("the stream ended early: it is truncated or was coded with "
                                  "other frequency tables")
            x[need] = (x[need] << np.uint64(WORD_BITS)) | self.words[self.pos:self.pos + n]
            self.pos += n
        self.x = x
        return sym

    def finish(self) -> None:
        """Check that the stream was decoded exactly: every state back at L, every word read."""
        if self.pos != len(self.words) or (self.x != STATE_LOW).any():
            raise StreamError("the stream did not decode to its end state: it is corrupt or "
                              "was coded with other frequency tables")


def encode_symbols(symbols: np.ndarray, cums: np.ndarray, scale_bits: int = SCALE_BITS
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Convenience for tests: code ``symbols`` (S, R) with per-slot tables ``cums``
    (S, R, V + 1); symbols < 0 mark empty slots."""
    sym = np.asarray(symbols)
    valid = sym >= 0
    s = np.where(valid, sym, 0)
    c = np.take_along_axis(cums, s[..., None], -1)[..., 0]
    f = np.take_along_axis(cums, s[..., None] + 1, -1)[..., 0] - c
    return encode(np.where(valid, c, 0), np.where(valid, f, 0), scale_bits)
