"""The numba kernel gives the numpy kernel's integers and decoded floats, bit for bit.

Skipped (with the reason) where numba is not installed; the numpy kernel is the reference.
"""

import numpy as np
import pytest

from mpiopt.compressors.alpha import adaptive_alpha, block_constants
from mpiopt.kernels import numpy as npk

nbk = pytest.importorskip("mpiopt.kernels.numba")
if not nbk.AVAILABLE:
    pytest.skip("numba is not installed (pip install numba); the numpy kernel is used instead",
                allow_module_level=True)

INT_DTYPES = (np.int8, np.int16, np.int32, np.int64)


def gradient(d, dtype, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(d)).astype(dtype)


def both(d, seed=7, worker=3, n=4, rounding="random"):
    return npk.Quantizer(d, seed, worker, n, rounding), nbk.Quantizer(d, seed, worker, n, rounding)


def ref_alpha(alpha):
    """The numpy kernel multiplies in double only when alpha is a numpy float64 or an array (NumPy 2
    promotes float32 * Python float to float32); the contract is the double product."""
    return np.float64(alpha) if np.ndim(alpha) == 0 else alpha


@pytest.mark.parametrize("step", [0, 1, 12345, 2 ** 64 - 1])
def test_noise_matches(step):
    a, b = both(1000)
    np.testing.assert_array_equal(a.noise(step), b.noise(step))


@pytest.mark.parametrize("vdtype", [np.float32, np.float64])
@pytest.mark.parametrize("rounding", ["random", "deterministic"])
@pytest.mark.parametrize("alpha", [0.3, 2.5, 40.0, 3e3, 1e12])
@pytest.mark.parametrize("out_dtype", INT_DTYPES)
def test_integers_and_clipping_match(vdtype, rounding, alpha, out_dtype):
    d = 4099  # not a multiple of any vector width
    v = gradient(d, vdtype, seed=1)
    a, b = both(d, rounding=rounding)
    qa, qb = np.empty(d, dtype=out_dtype), np.empty(d, dtype=out_dtype)
    for step in (0, 5):
        ca = a.encode(v, ref_alpha(alpha), qa, step=step)
        cb = b.encode(v, alpha, qb, step=step)
        np.testing.assert_array_equal(qa, qb)
        assert ca == cb
        assert a.max_abs == b.max_abs
        assert a.finite and b.finite
        np.testing.assert_array_equal(a.rounded, b.rounded)
        np.testing.assert_array_equal(a.sent, b.sent)


@pytest.mark.parametrize("bound", [1, 3, 100, 2 ** 20])
def test_explicit_bound(bound):
    d = 1000
    v = gradient(d, np.float64, scale=50.0)
    a, b = both(d)
    qa, qb = np.empty(d, dtype=np.int32), np.empty(d, dtype=np.int32)
    assert a.encode(v, 1.0, qa, step=3, bound=bound) == b.encode(v, 1.0, qb, step=3, bound=bound)
    np.testing.assert_array_equal(qa, qb)


@pytest.mark.parametrize("rounding", ["random", "deterministic"])
def test_block_alpha_matches(rounding):
    d = 3001
    v = gradient(d, np.float32, seed=2)
    alpha = np.repeat([0.5, 7.0, 300.0], [1000, 1000, 1001])
    a, b = both(d, rounding=rounding)
    qa, qb = np.empty(d, dtype=np.int16), np.empty(d, dtype=np.int16)
    assert a.encode(v, alpha, qa, step=9) == b.encode(v, alpha, qb, step=9)
    np.testing.assert_array_equal(qa, qb)
    oa, ob = np.empty(d), np.empty(d)
    np.testing.assert_array_equal(a.decode_local(alpha, oa), b.decode_local(alpha, ob))
    for out_dtype in (np.float32, np.float64):
        da, db = np.empty(d, dtype=out_dtype), np.empty(d, dtype=out_dtype)
        npk.Quantizer.decode(qa, alpha, 3, da)
        nbk.Quantizer(qb.size, 0, 0).decode(qb, alpha, 3, db)
        np.testing.assert_array_equal(da, db)


def test_non_finite_inputs_are_zeroed_and_reported():
    d = 500
    v = gradient(d, np.float64, scale=3.0)
    v[[3, 100, 499]] = [np.nan, np.inf, -np.inf]
    a, b = both(d)
    qa, qb = np.empty(d, dtype=np.int8), np.empty(d, dtype=np.int8)
    assert a.encode(v, 2.0, qa, step=1) == b.encode(v, 2.0, qb, step=1)
    np.testing.assert_array_equal(qa, qb)
    assert not a.finite and not b.finite
    assert a.max_abs == b.max_abs
    assert qb[3] == qb[100] == qb[499] == 0


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_overflowing_product_is_non_finite():
    v = np.array([1e300, -1e300, 1.0])
    a, b = both(3)
    qa, qb = np.empty(3, dtype=np.int64), np.empty(3, dtype=np.int64)
    assert a.encode(v, 1e10, qa, step=0) == b.encode(v, 1e10, qb, step=0)
    np.testing.assert_array_equal(qa, qb)
    assert not b.finite


def test_huge_values_keep_exact_max():
    v = np.array([3e19, -1.0, 5e18])  # beyond int64 and beyond the fast pass's saturation
    a, b = both(3)
    qa, qb = np.empty(3, dtype=np.int64), np.empty(3, dtype=np.int64)
    assert a.encode(v, 1.0, qa, step=0) == b.encode(v, 1.0, qb, step=0)
    assert a.max_abs == b.max_abs == 3e19
    np.testing.assert_array_equal(qa, qb)


@pytest.mark.parametrize("n", [1, 3, 4, 12])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("int_dtype", INT_DTYPES)
def test_decode_matches(n, out_dtype, int_dtype):
    d = 2049
    s = np.random.default_rng(n).integers(-120, 120, d).astype(int_dtype)
    alpha = 0.37
    da, db = np.empty(d, dtype=out_dtype), np.empty(d, dtype=out_dtype)
    npk.Quantizer.decode(s, alpha, n, da)
    nbk.Quantizer(s.size, 0, 0).decode(s, alpha, n, db)
    np.testing.assert_array_equal(da, db)


def test_decode_local_after_clipping_matches():
    d = 1000
    v = gradient(d, np.float64, scale=10.0)
    a, b = both(d, n=4)
    qa, qb = np.empty(d, dtype=np.int8), np.empty(d, dtype=np.int8)
    ca = a.encode(v, 20.0, qa, step=2)
    assert ca > 0 and ca == b.encode(v, 20.0, qb, step=2)
    oa, ob = np.empty(d), np.empty(d)
    np.testing.assert_array_equal(a.decode_local(20.0, oa), b.decode_local(20.0, ob))


def test_round_then_pack_into_two_dtypes():
    """The int compressor's auto wire dtype packs the same rounded values again, wider, after a
    speculative narrow pack; no new noise is drawn."""
    d = 777
    v = gradient(d, np.float32, scale=30.0)
    a, b = both(d, n=4)
    a.round(v, np.float64(1.5), 4)
    b.round(v, 1.5, 4)
    for dt in (np.int8, np.int16):
        qa, qb = np.empty(d, dtype=dt), np.empty(d, dtype=dt)
        assert a.pack(qa) == b.pack(qb)
        np.testing.assert_array_equal(qa, qb)
        np.testing.assert_array_equal(a.sent, b.sent)


def test_workers_and_steps_draw_different_noise():
    b0 = nbk.Quantizer(100, 1, 0)
    b1 = nbk.Quantizer(100, 1, 1)
    assert not np.array_equal(b0.noise(0).copy(), b1.noise(0))
    assert not np.array_equal(b0.noise(0).copy(), b0.noise(1))


def test_wrong_shapes_are_refused():
    b = nbk.Quantizer(10, 0, 0)
    with pytest.raises(ValueError, match="shape"):
        b.round(np.zeros(11), 1.0, 0)
    with pytest.raises(ValueError, match="alpha"):
        b.round(np.zeros(10), np.ones(3), 0)


@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("n", [3, 4])
def test_decode_update_is_decode_then_numpy_update(x_dtype, block, n):
    """IntSGD's x -= lr * S / (n alpha) fused in one pass gives the bits of decode + ``x -= lr * mean``."""
    d = 3001
    rng = np.random.default_rng(5)
    s = rng.integers(-100, 100, d).astype(np.int8)
    alpha = np.repeat([0.3, 7.0, 0.011], [1000, 1000, 1001]) if block else 0.37
    lr = 0.123
    x_ref = rng.standard_normal(d).astype(x_dtype)
    x_fused = x_ref.copy()
    mean = np.empty(d, dtype=x_dtype)
    npk.Quantizer.decode(s, alpha, n, mean)
    x_ref -= lr * mean
    nbk.Quantizer(d, 0, 0).decode_update(s, alpha, n, lr, x_fused)
    np.testing.assert_array_equal(x_fused, x_ref)
    x_numpy = x_ref.copy()
    x_numba = x_ref.copy()
    npk.Quantizer(d, 0, 0).decode_update(s, alpha, n, lr, x_numpy)  # both kernels' method
    nbk.Quantizer(d, 0, 0).decode_update(s, alpha, n, lr, x_numba)
    np.testing.assert_array_equal(x_numba, x_numpy)


@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("int_dtype", [np.int8, np.int16])
def test_decode_by_product_keeps_numpy_bits_over_every_sum(x_dtype, int_dtype):
    """The decode multiplies by 1 / (n alpha) only when that gives the division's bits for every
    possible sum; over the whole int8/int16 range and many alphas the result is numpy's."""
    info = np.iinfo(int_dtype)
    s = np.arange(info.min, info.max + 1).astype(int_dtype)
    s = np.tile(s, max(1, (1 << 20) // s.size + 1))  # long enough for the int16 check to be taken
    rng = np.random.default_rng(11)
    for alpha in [0.7, 3.0, 1e-3, 12345.678, *rng.uniform(0.01, 10, 4)]:
        for n in (3, 4):
            ref, got = np.empty(s.size, dtype=x_dtype), np.empty(s.size, dtype=x_dtype)
            npk.Quantizer.decode(s, alpha, n, ref)
            nbk.Quantizer(s.size, 0, 0).decode(s, alpha, n, got)
            np.testing.assert_array_equal(got, ref)
            x_ref = np.ones(s.size, dtype=x_dtype)
            x_got = x_ref.copy()
            x_ref -= 0.1 * ref
            nbk.Quantizer(s.size, 0, 0).decode_update(s, alpha, n, 0.1, x_got)
            np.testing.assert_array_equal(x_got, x_ref)


@pytest.mark.parametrize("scale", [0.5, 5.0, 30.0, 300.0])
def test_round_into_the_wire_buffer(scale):
    """round(into=wire) writes the int8 values straight into the wire buffer (no copy in pack); after
    the buffer is summed in place, packing wider, ``sent``, ``rounded`` and ``decode_local`` still
    give numpy's values (recomputed from v), and a stale buffer is never taken for fresh values."""
    d = 2001
    v = scale * np.random.default_rng(3).standard_normal(d)
    a, b = both(d)
    wire = np.zeros(d + 3, dtype=np.int8)
    ref = np.zeros(d, dtype=np.int8)
    a.round(v, 1.0, 5)
    b.round(v, 1.0, 5, into=wire[:d])
    assert a.pack(ref) == b.pack(wire[:d])
    np.testing.assert_array_equal(wire[:d], ref)
    assert a.max_abs == b.max_abs
    wire[:d] = wire[:d] // 2 + 1  # what the in-place Allreduce does to the buffer
    for dt in (np.int8, np.int16, np.int32):
        ra, rb = np.empty(d, dt), np.empty(d, dt)
        assert a.pack(ra) == b.pack(rb)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(a.sent, b.sent)
    np.testing.assert_array_equal(a.rounded, b.rounded)
    oa, ob = np.empty(d), np.empty(d)
    np.testing.assert_array_equal(a.decode_local(1.0, oa), b.decode_local(1.0, ob))
    a.round(v, 1.0, 6)
    b.round(v, 1.0, 6, into=wire[:d])
    b.pack(wire[:d])
    wire[:d] = 0
    ra = np.empty(d, np.int8)
    a.pack(ra)
    b.pack(wire[:d])  # a second pack into the changed buffer recomputes
    np.testing.assert_array_equal(wire[:d], ra)


def test_into_must_be_an_int8_buffer_of_the_right_size():
    b = nbk.Quantizer(10, 0, 0)
    with pytest.raises(ValueError, match="into"):
        b.round(np.zeros(10), 1.0, 0, into=np.zeros(10, dtype=np.int16))


@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
def test_step_squares_are_numpys_and_remember_x(x_dtype):
    """Adaptive alpha's (x^k - x^{k-1})^2 in one pass: numpy's subtract-then-square bits, x_prev <- x."""
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(5001) * 10.0 ** rng.integers(-8, 8, 5001)).astype(x_dtype)
    prev = rng.standard_normal(5001)
    prev_np, prev_nb = prev.copy(), prev.copy()
    sq_np, sq_nb = np.empty(5001), np.empty(5001)
    npk.Quantizer.step_squares(x, prev_np, sq_np)
    nbk.Quantizer.step_squares(x, prev_nb, sq_nb)
    np.testing.assert_array_equal(sq_nb, sq_np)
    np.testing.assert_array_equal(sq_np, (x.astype(np.float64) - prev) ** 2)
    np.testing.assert_array_equal(prev_nb, x)
    np.testing.assert_array_equal(prev_np, x)


@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
def test_step_squares_sum_has_numpys_pairwise_bits_at_every_length(x_dtype):
    """The one-pass ||x - x_prev||^2 of adaptive alpha adds in numpy's pairwise order, so alpha -- and
    every iterate -- is the same with either kernel (lengths around the 8-unroll and 128-block edges)."""
    rng = np.random.default_rng(9)
    sizes = list(range(0, 300)) + [1023, 1024, 1025, 4097, 100_003, (1 << 17) + 1, (1 << 20) + 7]
    for n in sizes:
        x = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)).astype(x_dtype)
        prev = rng.standard_normal(n)
        prev_np, prev_nb = prev.copy(), prev.copy()
        ref = npk.Quantizer(n, 0, 0).step_squares_sum(x, prev_np)
        got = nbk.Quantizer(n, 0, 0).step_squares_sum(x, prev_nb)  # scratch path below 2^17, one pass above
        assert got == ref, n
        assert ref == float(((x.astype(np.float64) - prev) ** 2).sum())
        np.testing.assert_array_equal(prev_nb, x)


@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
def test_decode_update_move_is_the_update_then_the_next_steps_squared_move(x_dtype):
    """IntSGD's update that also sums its move gives decode_update's x, leaves x_prev = the old x, and
    returns what step_squares_sum (numpy's pairwise sum) gives at the next step, at every length around
    the sum's 8-unroll and 128-block edges, by product and by division."""
    rng = np.random.default_rng(12)
    sizes = list(range(1, 300)) + [1023, 4097, 100_003, (1 << 17) + 1]
    for n in sizes:
        for int_dtype, alpha in ((np.int8, 0.37), (np.int16, 0.37), (np.int8, 0.25)):  # by product and by division
            s = rng.integers(-100, 100, n).astype(int_dtype)
            x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)).astype(x_dtype)
            ref, got, prev = x.copy(), x.copy(), rng.standard_normal(n)
            q = nbk.Quantizer(n, 0, 0, 4)
            q.decode_update(s, alpha, 4, 0.123, ref)
            moved = q.decode_update_move(s, alpha, 4, 0.123, got, prev)
            np.testing.assert_array_equal(got, ref)
            np.testing.assert_array_equal(prev, x)
            assert moved == npk.Quantizer(n, 0, 0).step_squares_sum(ref, x.astype(np.float64)), (n, int_dtype)


@pytest.mark.parametrize("h_dtype", [np.float32, np.float64])
def test_shift_update_move_is_the_shift_update_then_the_next_steps_squared_move(h_dtype):
    """IntDIANA's shift update that also sums x's move gives shift_update's h_i, h and x, leaves
    x_prev = the old x and returns numpy's ||x_new - x_old||^2 (int8 and exact int32 integers, by
    product and by division)."""
    rng = np.random.default_rng(13)
    for n in list(range(1, 140)) + [1023, 4097, 100_003]:
        for int_dtype, alpha in ((np.int8, 0.37), (np.int16, 37.0), (np.int8, 0.25)):
            v = rng.standard_normal(n)
            qa, qb = nbk.Quantizer(n, 0, 0, 4), nbk.Quantizer(n, 0, 0, 4)
            sa, sb = np.empty(n, int_dtype), np.empty(n, int_dtype)
            qa.encode(v, alpha, sa, step=3)
            qb.encode(v, alpha, sb, step=3)
            start = [rng.standard_normal(n).astype(h_dtype) for _ in range(3)]
            ref, got, prev = [a.copy() for a in start], [a.copy() for a in start], np.empty(n)
            qa.shift_update(sa, alpha, 4, *ref, 0.1)
            moved = qb.shift_update_move(sb, alpha, 4, *got, 0.1, prev)
            for r, g in zip(ref, got):
                np.testing.assert_array_equal(g, r)
            np.testing.assert_array_equal(prev, start[2])
            assert moved == npk.Quantizer(n, 0, 0).step_squares_sum(ref[2], start[2].astype(np.float64)), n


def test_the_move_updates_take_one_block_in_the_plain_layout():
    assert nbk.Quantizer(10, 0, 0).tracks_move
    for q in (nbk.Quantizer(10, 0, 0, blocks=[0, 5]), nbk.Quantizer(10, 0, 0, layout=[(0, 5, 5), (5, 0, 5)])):
        assert not q.tracks_move
        with pytest.raises(ValueError, match="one alpha for one block"):
            q.decode_update_move(np.zeros(10, np.int8), 1.0, 2, 0.1, np.zeros(10), np.zeros(10))
        with pytest.raises(ValueError, match="one alpha for one block"):
            q.shift_update_move(np.zeros(10, np.int8), 1.0, 2, np.zeros(10), np.zeros(10), np.zeros(10), 0.1,
                                np.zeros(10))


@pytest.mark.parametrize("rounding", ["random", "deterministic"])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
def test_block_values_are_the_spread_alpha(rounding, out_dtype):
    """alpha given as one value per block (``blocks``) gives every integer and decoded bit of the same
    alpha spread to each coordinate, in the fast (int8) and the exact (wide) path."""
    rng = np.random.default_rng(21)
    d = 3001
    starts = [0, 1, 9, 137, 1000, 2999]
    sizes = np.diff(starts + [d])
    v = gradient(d, np.float64, seed=2)
    for scale in (1.0, 1e4):  # |Int| <= 127, then beyond (the exact path)
        values = scale * rng.uniform(0.5, 40.0, len(starts))
        spread = np.repeat(values, sizes)
        plain, blocked = nbk.Quantizer(d, 7, 3, 4, rounding), nbk.Quantizer(d, 7, 3, 4, rounding, blocks=starts)
        qa, qb = np.empty(d, np.int32), np.empty(d, np.int32)
        assert plain.encode(v, spread, qa, step=5) == blocked.encode(v, values, qb, step=5)
        np.testing.assert_array_equal(qa, qb)
        la, lb = np.empty(d), np.empty(d)
        np.testing.assert_array_equal(plain.decode_local(spread, la), blocked.decode_local(values, lb))
        ma, mb = np.empty(d, out_dtype), np.empty(d, out_dtype)
        np.testing.assert_array_equal(plain.decode(qa, spread, 3, ma), blocked.decode(qb, values, 3, mb))
        xa, xb = np.ones(d, out_dtype), np.ones(d, out_dtype)
        np.testing.assert_array_equal(plain.decode_update(qa, spread, 3, 0.1, xa),
                                      blocked.decode_update(qb, values, 3, 0.1, xb))


def shuffled_runs(rng, starts, d):
    """(position, coordinate, count) runs placing the blocks [starts[i], starts[i+1]) in a random order."""
    ends = starts[1:] + [d]
    order = rng.permutation(len(starts))
    runs, pos = [], 0
    for i in order:
        runs.append((pos, starts[i], ends[i] - starts[i]))
        pos += ends[i] - starts[i]
    return runs


def place(values, runs):
    """values (coordinate order) at the positions of ``runs``."""
    out = np.empty_like(values)
    for p, c, n in runs:
        out[p:p + n] = values[c:c + n]
    return out


@pytest.mark.parametrize("blocks", [False, True])
@pytest.mark.parametrize("vdtype", [np.float32, np.float64])
def test_a_layout_moves_each_coordinates_integers_and_means(blocks, vdtype):
    """With ``layout`` the arrays hold coordinates in another order (a DDP bucket): each coordinate's
    integer, decoded mean and block maximum are those of the plain layout, moved to its position;
    set_layout follows a new order."""
    rng = np.random.default_rng(22)
    d = 4099
    starts = [0, 3, 130, 1111, 2048, 4000]
    runs = shuffled_runs(rng, starts, d)
    v = gradient(d, vdtype, seed=3)
    alpha = rng.uniform(1.0, 60.0, len(starts)) if blocks else 17.0
    for scale in (1.0, 1e3):
        plain = nbk.Quantizer(d, 1, 2, 4, blocks=starts)
        moved = nbk.Quantizer(d, 1, 2, 4, blocks=starts, layout=runs)
        assert not moved.identity and plain.identity
        qa, qb = np.empty(d, np.int16), np.empty(d, np.int16)
        plain.encode(v * scale, alpha, qa, step=9)
        moved.encode(place(v, runs) * scale, alpha, qb, step=9)
        np.testing.assert_array_equal(place(qa, runs), qb)
        ma, mb = np.empty(d, np.float32), np.empty(d, np.float32)
        np.testing.assert_array_equal(place(plain.decode(qa, alpha, 4, ma), runs), moved.decode(qb, alpha, 4, mb))
    peaks_a, peaks_b = np.empty(len(starts)), np.empty(len(starts))
    np.testing.assert_array_equal(plain.block_max_abs(v, peaks_a), moved.block_max_abs(place(v, runs), peaks_b))
    np.testing.assert_array_equal(peaks_a, np.maximum.reduceat(np.abs(v.astype(np.float64)), starts))
    other = shuffled_runs(rng, starts, d)
    moved.set_layout(other)
    q8a, q8b = np.empty(d, np.int8), np.empty(d, np.int8)
    plain.encode(v, 1.0, q8a, step=4)
    moved.encode(place(v, other), 1.0, q8b, step=4)
    np.testing.assert_array_equal(place(q8a, other), q8b)


def test_block_step_squares_have_reduceats_bits():
    """The fused per-block ||x - x_prev||^2 equals numpy's add.reduceat of the squares (first square
    plus a pairwise sum of the rest) for blocks of 1 to thousands of coordinates, and x_prev <- x."""
    rng = np.random.default_rng(23)
    for trial in range(40):
        d = int(rng.integers(2, 6000))
        nb = int(rng.integers(1, min(d, 12) + 1))
        starts = [0] + np.sort(rng.choice(np.arange(1, d), nb - 1, replace=False)).tolist()
        x = (rng.standard_normal(d) * 10.0 ** rng.integers(-6, 6, d)).astype(np.float32 if trial % 2 else np.float64)
        prev = rng.standard_normal(d)
        ref = np.add.reduceat((x.astype(np.float64) - prev) ** 2, starts)
        q = nbk.Quantizer(d, 0, 0, blocks=starts)
        got = np.empty(nb)
        q.block_adaptive_alpha(x, prev, np.zeros(nb), False, 0.9, 0.1, 2, block_constants(np.ones(nb), 1e-8), got,
                               np.empty(nb))
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(prev, x)


def test_block_adaptive_alpha_has_the_int_compressors_bits():
    """One pass of squares, r update and alpha gives what numpy's add.reduceat of the squares, its
    in-place r update and adaptive_alpha give: same alpha, r and x_prev bits, with one lr or one per block, for
    moving blocks and still ones (where only the eps term is left)."""
    rng = np.random.default_rng(29)
    for trial in range(40):
        d = int(rng.integers(3, 5000))
        nb = int(rng.integers(2, min(d, 10) + 1))
        starts = [0] + np.sort(rng.choice(np.arange(1, d), nb - 1, replace=False)).tolist()
        sizes = np.diff(np.append(starts, d)).astype(np.float64)
        constants = block_constants(sizes, 10.0 ** -rng.integers(4, 10))
        x = (rng.standard_normal(d) * 10.0 ** rng.integers(-6, 3, d)).astype(np.float32 if trial % 2 else np.float64)
        prev, r = rng.standard_normal(d), rng.uniform(0, 2, nb)
        still = rng.random(nb) < 0.5  # blocks that did not move: alpha is decided by the eps term there
        for b in np.flatnonzero(still):
            lo, hi = starts[b], starts[b] + int(sizes[b])
            prev[lo:hi] = x[lo:hi]
        r[still] = 0.0
        prev_ref, r_ref = prev.copy(), r.copy()
        lr = float(rng.uniform(1e-4, 1)) if trial % 3 else rng.uniform(1e-4, 1, nb)
        have_r, beta, n = bool(trial % 4), float(rng.uniform(0, 0.99)), int(rng.integers(1, 64))
        q = nbk.Quantizer(d, 0, 0, blocks=starts)
        got = q.block_adaptive_alpha(x, prev, r, have_r, beta, lr, n, constants, np.empty(nb), np.empty(nb))
        sq = np.add.reduceat((x.astype(np.float64) - prev_ref) ** 2, starts)
        prev_ref[...] = x
        if have_r:
            r_ref *= beta
            r_ref += (1.0 - beta) * sq
        else:
            r_ref[...] = sq
        ref = adaptive_alpha(lr, r_ref, sizes, n, 0.0, constants=constants)
        assert got.tobytes() == ref.tobytes() and r.tobytes() == r_ref.tobytes()
        np.testing.assert_array_equal(prev, prev_ref)
    with pytest.raises(ValueError, match="one per block"):
        q.block_adaptive_alpha(x, prev, r, True, 0.9, np.ones(nb + 1), 2, constants, np.empty(nb), np.empty(nb))


def test_block_max_abs_flags_non_finite_blocks():
    v = np.array([1.0, -3.0, np.nan, 2.0, np.inf, -1.0, 5.0, -7.5])
    got = nbk.Quantizer(8, 0, 0, blocks=[0, 2, 4, 6]).block_max_abs(v, np.empty(4))
    assert got[0] == 3.0 and np.isnan(got[1]) and np.isinf(got[2]) and got[3] == 7.5


@pytest.mark.parametrize("runs, why", [
    ([(0, 0, 5)], "tile"),                         # 5 of 6
    ([(0, 0, 3), (2, 3, 3)], "tile"),              # positions overlap
    ([(0, 0, 3), (3, 2, 3)], "tile"),              # coordinates overlap
])
def test_a_layout_must_tile_both_ranges(runs, why):
    with pytest.raises(ValueError, match=why):
        nbk.Quantizer(6, 0, 0, layout=runs)
    with pytest.raises(ValueError, match="ascend"):
        nbk.Quantizer(6, 0, 0, blocks=[0, 4, 4])


def test_short_sums_decode_by_division_without_the_check():
    """Below _MULTIPLY_FROM values the decode divides (numpy's bits by construction) without checking
    the product over the int8 range, whose cost a short vector's divisions do not repay; from there
    an alpha whose product is exact (a power of two) multiplies."""
    x = np.empty(nbk._MULTIPLY_FROM)
    assert not nbk._may_multiply(np.zeros(nbk._MULTIPLY_FROM - 1, np.int8), 4.0, x)
    assert nbk._may_multiply(np.zeros(nbk._MULTIPLY_FROM, np.int8), 4.0, x)
