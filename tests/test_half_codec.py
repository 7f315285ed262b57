"""The 16-bit codecs of mpiopt.kernels.half and .half_numba: numba's words against numpy's casts, bit for bit.

fp16 (every float16 value, every midpoint between neighbours and the doubles either side of it,
random bit patterns of float64 and float32 including NaN, inf, subnormals and overflow), bf16 against
:func:`mpiopt.compressors.bf16.bf16_bits`, the hardware rounding against the bit kernels, the finite
check against np.isfinite, and the fused decode-and-update against decode, scale and apply_step.
"""

import numpy as np
import pytest

from mpiopt.compressors.bf16 import BF16Codec, bf16_bits
from mpiopt.kernels import half, half_numba
from mpiopt.kernels.numpy import apply_step

pytestmark = pytest.mark.skipif(not half_numba.AVAILABLE, reason="numba is not installed")
RNG = np.random.default_rng(5)
ORDERS = ([0, 1, 2], [2, 0, 1])


def doubles() -> np.ndarray:
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    ladder = np.sort(every[np.isfinite(every)])
    mids = (ladder[1:] + ladder[:-1]) / 2  # ties: nearest even decides
    return np.concatenate([every, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
                           RNG.integers(0, 2 ** 64, 100_000, dtype=np.uint64).view(np.float64),
                           RNG.standard_normal(100_000) * np.exp2(RNG.integers(-30, 20, 100_000)),
                           [65504, 65519.99, 65520, 65536, 1e300, -np.inf, np.nan, 2.0 ** -25, 2.0 ** -26]])


def singles() -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        narrowed = doubles().astype(np.float32)
    return np.concatenate([narrowed,
                           RNG.integers(0, 2 ** 32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32)])


def all_words(rows: int = 3) -> np.ndarray:
    """(rows, 65536) words: every word in the first row, shuffles of them in the others."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    return np.stack([every] + [RNG.permutation(every) for _ in range(rows - 1)])


def same_or_both_nan(a: np.ndarray, b: np.ndarray, fmt: str = "fp16") -> bool:
    """Equal words, except that a NaN may carry another payload (it stops the run either way)."""
    mask = np.uint16(half.FORMATS[fmt])
    nan_a = ((a & mask) == mask) & ((a & ~mask & np.uint16(0x7FFF)) != 0)
    nan_b = ((b & mask) == mask) & ((b & ~mask & np.uint16(0x7FFF)) != 0)
    return bool(np.array_equal(nan_a, nan_b) and np.array_equal(a[~nan_a], b[~nan_b]))


@pytest.mark.parametrize("values", [doubles, singles], ids=["float64", "float32"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 16])
def test_fp16_encode_is_numpys_cast_of_v_over_n(values, n):
    v = values()
    got, want = np.empty(v.size, np.uint16), np.empty(v.size, np.uint16)
    half_numba.NumbaCodec(v.size, 1).encode(v, n, got)
    with np.errstate(over="ignore", invalid="ignore"):
        half.CastCodec(np, v.size, 1).encode(v, n, want)
    assert np.array_equal(got, want)


def test_hardware_and_bit_kernels_round_alike():
    if not half_numba.hardware_half():
        pytest.skip("no one-instruction float32 -> float16 rounding on this CPU")
    v = singles()
    hw, bits = np.empty(v.size, np.uint16), np.empty(v.size, np.uint16)
    half_numba._encode_hw(v, np.float32(0.25), hw)
    half_numba._encode(v, 4, False, True, bits)
    assert same_or_both_nan(hw, bits)
    half_numba._round(v, half_numba.FP16_HW, hw)
    half_numba._round(v, half_numba.FP16_BITS, bits)
    assert same_or_both_nan(hw, bits)
    words = all_words(1)[0]
    by_hw, by_bits = np.empty(words.size, np.float32), np.empty(words.size, np.float32)
    half_numba._decode(words, half_numba.FP16_HW, by_hw)
    half_numba._decode(words, half_numba.FP16_BITS, by_bits)
    nan = np.isnan(by_bits)
    assert np.array_equal(np.isnan(by_hw), nan) and np.array_equal(by_hw[~nan].view(np.uint32),
                                                                   by_bits[~nan].view(np.uint32))


@pytest.mark.parametrize("order", ORDERS)
def test_fp16_reduce_is_the_float32_sum_in_order_rounded_once(order):
    rows = all_words()
    got, want = np.empty(rows.shape[1], np.uint16), np.empty(rows.shape[1], np.uint16)
    half_numba.NumbaCodec(rows.size, rows.shape[1]).reduce(rows, order, got)
    with np.errstate(over="ignore", invalid="ignore"):
        half.CastCodec(np, rows.size, rows.shape[1]).reduce(rows, order, want)
    assert same_or_both_nan(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fp16_decode_gives_every_words_value(dtype):
    words = all_words(1)[0]
    got, want = np.empty(words.size, dtype), np.empty(words.size, dtype)
    half_numba.NumbaCodec(words.size, 1).decode(words, got)
    half.CastCodec(np, words.size, 1).decode(words, want)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan) and np.array_equal(got[~nan], want[~nan])
    assert np.array_equal(np.signbit(got[~nan]), np.signbit(want[~nan]))  # -0.0 stays -0.0


@pytest.mark.parametrize("order", ORDERS)
def test_bf16_codec_matches_the_numpy_one(order):
    v = singles()
    got, want = np.empty(v.size, np.uint16), np.empty(v.size, np.uint16)
    with np.errstate(over="ignore", invalid="ignore"):
        half_numba.NumbaCodec(v.size, 1, "bf16").encode(v, 3, got)
        bf16_bits(v, want, np.empty(v.size, np.uint32))
    assert np.array_equal(got, want)
    rows = all_words()
    numba_codec = half_numba.NumbaCodec(rows.size, rows.shape[1], "bf16")
    numpy_codec = BF16Codec(np, rows.size, 3, rows.shape[1])
    with np.errstate(over="ignore", invalid="ignore"):
        numba_codec.reduce(rows, order, got[:rows.shape[1]])
        numpy_codec.reduce(rows, order, want[:rows.shape[1]])
    assert same_or_both_nan(got[:rows.shape[1]], want[:rows.shape[1]], "bf16")
    out_numba, out_numpy = np.empty(rows.shape[1]), np.empty(rows.shape[1])
    numba_codec.decode(rows[0], out_numba)
    numpy_codec.decode(rows[0], out_numpy)
    assert np.array_equal(out_numba, out_numpy, equal_nan=True)


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_finite_reads_the_exponent_field(fmt):
    codec = half_numba.NumbaCodec(10, 10, fmt)
    values = np.empty(1 << 16)
    codec.decode(all_words(1)[0], values)
    finite_words = all_words(1)[0][np.isfinite(values)]
    assert codec.finite(finite_words)
    for word in all_words(1)[0][~np.isfinite(values)][::97]:
        assert not codec.finite(np.concatenate([finite_words[:500], [word], finite_words[500:1000]]))


@pytest.mark.parametrize("fmt,scale", [("fp16", 1.0), ("bf16", 1.0 / 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decode_update_is_decode_scale_then_apply_step(fmt, scale, dtype):
    words = all_words(1)[0]
    codec = half_numba.NumbaCodec(words.size, 1, fmt)
    mean = np.empty(words.size, dtype)
    codec.decode(words, mean)
    words = words[np.isfinite(mean)]
    mean = mean[np.isfinite(mean)]
    if scale != 1.0:
        mean *= scale
    x = RNG.standard_normal(words.size).astype(dtype)
    want = x.copy()
    apply_step(want, 0.1, mean)
    codec.decode_update(words, scale, 0.1, x)
    assert x.tobytes() == want.tobytes()
