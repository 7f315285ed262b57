"""The numba quantizer kernel (optional dependency ``numba``): ``mpiopt.kernels.numpy``'s contract, fused.

``Quantizer`` here has the numpy Quantizer's interface (``round``, ``pack``, ``encode``, ``decode``,
``decode_local``, ``decode_update``, ``step_squares``, ``step_squares_sum``, ``noise``, and
``max_abs``, ``finite``, ``rounded``, ``sent``) and gives the same integers, bit for bit, for the
same (seed, worker, step, coordinate): the SplitMix64 noise, the double product alpha * v (never
contracted into an FMA: numba compiles without fast-math), the addition of u and the floor (or
rint) are the formula of ``mpiopt.kernels.numpy``'s docstring, done per coordinate in one compiled,
vectorized loop that never materializes the noise. The compressors use this kernel by default when
numba is installed (see :mod:`mpiopt.kernels`). It also takes alpha as one value per block
(``blocks``) and arrays in another order than the coordinates' (``layout``): see :class:`Quantizer`.

Where the numpy kernel makes about twenty passes over 8-byte temporaries, one ``round`` here is one
pass that reads v and writes Int(alpha v) as int8 (saturated at +-127) while it takes max |Int|;
only when that max exceeds 127 (or v has non-finite values) does a second pass store the exact
values in a wider scratch (int32, float64 beyond it), and a round after such a one starts with that
pass (a run whose integers stay beyond int8, as fill's int16 floor, pays one pass, not two). ``pack``
then casts (or clips and casts) that scratch into the wire buffer, and ``decode`` is one pass (a
product with 1 / (n alpha) instead of the division when, checked over every possible int8 sum, that
gives the division's bits -- nearly always for a float32 ``out``).
``decode_update`` applies IntSGD's x -= eta S / (n alpha) in one pass, bit for bit what ``decode``
into a mean of x's dtype and ``x -= eta * mean`` give. ``rounded`` and ``sent`` (float64 views the
numpy kernel keeps all the time) are made on demand, from the exact scratch, so reading them gives
what numpy gives; they are read-only here (QSGD's in-place edit of ``rounded`` needs the numpy kernel).

Inputs may be float32 or float64; they are widened to double first, as the contract says (the numpy
kernel does the same when alpha is a ``numpy.float64`` or an array; with a Python float and a float32
array, NumPy 2's promotion rules multiply in float32 there).

``AVAILABLE`` is False (and ``Quantizer`` raises ImportError) when numba is not installed; callers
fall back to ``mpiopt.kernels.numpy``.
"""

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from mpiopt.kernels.numpy import GOLDEN, MASK, MUL1, MUL2, ROUNDINGS, float_below, int_bound, worker_key

try:
    import numba as _nb
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic
except ImportError:  # pragma: no cover - exercised where numba is absent
    _nb = None

AVAILABLE = _nb is not None

_SCRATCH_SUM_MAX = 1 << 17
"""Up to this length (1 MiB of float64 squares) ``step_squares_sum`` squares into a scratch, then sums."""
_SPEC_MAX = 127
"""The fast pass stores Int(alpha v) as int8, exact while max |Int| <= 127."""
_INT32_MAX = float(np.iinfo(np.int32).max)

if AVAILABLE:
    _G = np.uint64(GOLDEN)
    _M1 = np.uint64(MUL1)
    _M2 = np.uint64(MUL2)
    _S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))
    _UNIT = 2.0 ** -53
    _ABS = np.int64(0x7FFFFFFFFFFFFFFF)
    _jit = _nb.njit(nogil=True, cache=True, error_model="numpy")

    @_jit
    def _unit(z):
        """u of the counter z = key + (j + 1) G: (mix64(z) >> 11) * 2**-53."""
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        z = z ^ (z >> _S31)
        return np.float64(np.int64(z >> _S11)) * _UNIT

    @_jit
    def _u(key, j):
        return _unit(key + np.uint64(j + 1) * _G)

    @_jit
    def _stream_key(worker_part, step):
        """key(seed, worker, step) = mix64(worker_key + step + G), in uint64 arithmetic (wrapping)."""
        z = worker_part + step + _G
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        return z ^ (z >> _S31)

    @_jit
    def _noise(key, out):
        z = key
        for j in range(out.shape[0]):
            z += _G
            out[j] = _unit(z)

    @_intrinsic
    def _bits(typingctx, x):
        """The IEEE bits of a double as an int64 (for |t| >= 0 they order like the values, and
        inf < NaN: so one integer max over the masked bits gives max |t| and flags non-finite t)."""
        if x != _types.float64:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], _ir.IntType(64))

        return _types.int64(_types.float64), codegen

    @_intrinsic
    def _from_bits(typingctx, b):
        """The double whose IEEE bits are the int64 ``b`` (the inverse of _bits)."""
        if b != _types.int64:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], _ir.DoubleType())

        return _types.float64(_types.int64), codegen

    @_jit
    def _int_of(x, a, z, random):
        """Int(a x) of the coordinate whose counter is z = key + (j + 1) G: floor(a x + u_j) or rint(a x),
        the product in double (no FMA). The loops below step z by G (an induction variable: (j + 1) G
        kept a 64-bit vector multiply per 16 coordinates beside the hash's eight, on the ports that bound
        this loop); ``key`` may be shifted by c * G to make coordinate c + j's counter j (see _shifted)."""
        t = np.float64(x) * a
        if random:
            return np.floor(t + _unit(z))
        return np.rint(t)

    # Every kernel below takes ``segs``, rows (position, coordinate, count, block): positions
    # p..p+count-1 of the arrays hold coordinates c..c+count-1 (their noise counters), whose alpha is
    # alphas[block], or avec[coordinate] when ``avec`` is not empty. Each row is handed to a loop
    # over views of the arrays (contiguous, from 0), which LLVM vectorizes as it would a whole array.

    @_jit
    def _shifted(key, c):
        """The key whose j-th noise is coordinate c + j's: u's counter term (j + 1) G is linear in j."""
        return key + np.uint64(c) * _G

    @_jit
    def _coord_view(avec, c, n):
        return avec[c:c + n] if avec.shape[0] > 0 else avec

    @_jit
    def _round_fast_run(v, a, avec, key, random, out, mx):
        coord = avec.shape[0] > 0
        z = key
        for i in range(v.shape[0]):
            z += _G
            t = _int_of(v[i], avec[i] if coord else a, z, random)
            mx = max(mx, _bits(t) & _ABS)
            out[i] = np.int64(min(max(t, -127.0), 127.0))
        return mx

    @_jit
    def _round_fast(v, segs, alphas, avec, key, random, out):
        """Int(alpha v) clamped to +-127 into int8 ``out``; returns max |Int| (exact; inf or NaN
        when some coordinate is not finite, whose ``out`` is then garbage)."""
        mx = np.int64(0)
        for s in range(segs.shape[0]):
            p, c, n = segs[s, 0], segs[s, 1], segs[s, 2]
            mx = _round_fast_run(v[p:p + n], alphas[segs[s, 3]], _coord_view(avec, c, n), _shifted(key, c), random,
                                 out[p:p + n], mx)
        return _from_bits(mx)

    @_jit
    def _round_fast_at(v, segs, alphas, avec, worker_part, step, random, out):
        """``_round_fast`` with the noise key of ``step``, computed here (in Python it costs more
        than the rounding of a short vector)."""
        return _round_fast(v, segs, alphas, avec, _stream_key(worker_part, np.uint64(step)), random, out)

    @_jit
    def _round_exact_run(v, a, avec, key, random, out, mx, bad, limit):
        coord = avec.shape[0] > 0
        z = key
        for i in range(v.shape[0]):  # branch-free (selects, an integer max of the bits), so it vectorizes
            z += _G
            t = _int_of(v[i], avec[i] if coord else a, z, random)
            ok = np.abs(t) < np.inf
            bad += not ok
            t = t if ok else 0.0
            mx = max(mx, _bits(t) & _ABS)
            out[i] = min(max(t, -limit), limit)
        return mx, bad

    @_jit
    def _round_exact(v, segs, alphas, avec, key, random, out, limit):
        """Int(alpha v) (non-finite -> 0) into ``out`` (int32 or float64), clamped to +-``limit`` (exact
        where the max is within it); returns (max |Int| as a double, number of non-finite coordinates)."""
        mx = np.int64(0)
        bad = 0
        for s in range(segs.shape[0]):
            p, c, n = segs[s, 0], segs[s, 1], segs[s, 2]
            mx, bad = _round_exact_run(v[p:p + n], alphas[segs[s, 3]], _coord_view(avec, c, n), _shifted(key, c),
                                       random, out[p:p + n], mx, bad, limit)
        return _from_bits(mx), bad

    @_jit
    def _clip_cast(src, bound, fb, out):
        """out = clip(src, -fb, fb) (any integer out dtype), fb the largest double <= the bound;
        returns the number of |src| > bound (as doubles: numpy's comparison)."""
        clipped = 0
        b = np.float64(bound)
        for j in range(src.shape[0]):
            s = np.float64(src[j])
            clipped += abs(s) > b
            out[j] = min(max(s, -fb), fb)
        return clipped

    @_jit
    def _divide_clipped_run(src, b, a, avec, out):
        coord = avec.shape[0] > 0
        for i in range(src.shape[0]):
            out[i] = min(max(np.float64(src[i]), -b), b) / (avec[i] if coord else a)

    @_jit
    def _divide_clipped(src, bound, segs, alphas, avec, out):
        """out = clip(src, +-bound) / alpha (the numpy kernel's ``sent / alpha``)."""
        b = np.float64(bound)
        for s in range(segs.shape[0]):
            p, c, n = segs[s, 0], segs[s, 1], segs[s, 2]
            _divide_clipped_run(src[p:p + n], b, alphas[segs[s, 3]], _coord_view(avec, c, n), out[p:p + n])

    @_jit
    def product_is_decode(lo, hi, one, a, c, inv_n, r, sample):
        """Whether, for every integer S in [lo, hi] (lo > hi: none checked, False), S * r rounded to
        sample's dtype equals the decoded mean rounded to it (S / c with one alpha, else (S / a) * inv_n
        in double): then a decode may multiply, several times faster than dividing, and still write the
        decode's bits. Checked exhaustively, so only for the small ranges of int8/int16 sums."""
        if lo > hi:
            return False
        for s in range(lo, hi + 1):
            t = np.float64(s)
            exact = t / c if one else (t / a) * inv_n
            if sample.dtype.type(t * r) != sample.dtype.type(exact):
                return False
        return True

    @_jit
    def _decode_run(s, a, avec, one, c, r, mul, inv_n, out):
        """out = S / (n alpha) in out's dtype: with one alpha (``one``) S / c (c = n alpha; S * r when
        ``mul``), one rounding; else numpy's two steps S / alpha_j, then * (1 / n), each rounded."""
        if one and mul:
            for i in range(s.shape[0]):
                out[i] = np.float64(s[i]) * r
        elif one:
            for i in range(s.shape[0]):
                out[i] = np.float64(s[i]) / c
        else:
            coord = avec.shape[0] > 0
            for i in range(s.shape[0]):
                out[i] = np.float64(s[i]) / (avec[i] if coord else a)
                out[i] = out[i] * inv_n

    @_jit
    def _decode(s, segs, alphas, avec, one, c, r, mul, inv_n, out):
        for k in range(segs.shape[0]):
            p, ctr, n = segs[k, 0], segs[k, 1], segs[k, 2]
            _decode_run(s[p:p + n], alphas[segs[k, 3]], _coord_view(avec, ctr, n), one, c, r, mul, inv_n,
                        out[p:p + n])

    @_jit
    def _decode_update_run(s, a, avec, one, c, r, mul, inv_n, lr, x):
        """x -= lr * m with m the mean of _decode_run rounded to x's dtype: numpy's ``decode`` into a
        mean of x's dtype followed by ``x -= lr * mean`` (lr has x's dtype), in one pass."""
        if one and mul:
            for i in range(s.shape[0]):
                m = x.dtype.type(np.float64(s[i]) * r)
                x[i] = x[i] - lr * m
        elif one:
            for i in range(s.shape[0]):
                m = x.dtype.type(np.float64(s[i]) / c)
                x[i] = x[i] - lr * m
        else:
            coord = avec.shape[0] > 0
            for i in range(s.shape[0]):
                m = x.dtype.type(np.float64(s[i]) / (avec[i] if coord else a))
                m = m * inv_n
                x[i] = x[i] - lr * m

    @_jit
    def _decode_update(s, segs, alphas, avec, one, c, r, mul, inv_n, lr, x):
        for k in range(segs.shape[0]):
            p, ctr, n = segs[k, 0], segs[k, 1], segs[k, 2]
            _decode_update_run(s[p:p + n], alphas[segs[k, 3]], _coord_view(avec, ctr, n), one, c, r, mul, inv_n,
                               lr, x[p:p + n])

    @_jit
    def _step_squares(x, x_prev, out):
        """out = (x - x_prev)^2 (in double, as numpy's subtract then multiply) and x_prev = x, one pass."""
        for j in range(x.shape[0]):
            t = np.float64(x[j]) - x_prev[j]
            out[j] = t * t
            x_prev[j] = x[j]

    @_jit
    def leaf_sum(sq, n):
        """sq[0] + ... + sq[n - 1] for n <= 128 in numpy's order for such a block of its pairwise sum:
        8 interleaved partial sums (a plain loop below 8)."""
        if n < 8:
            res = -0.0
            for j in range(n):
                res += sq[j]
            return res
        r0, r1, r2, r3, r4, r5, r6, r7 = sq[0], sq[1], sq[2], sq[3], sq[4], sq[5], sq[6], sq[7]
        i = 8
        end8 = n - n % 8
        while i < end8:
            r0 += sq[i]
            r1 += sq[i + 1]
            r2 += sq[i + 2]
            r3 += sq[i + 3]
            r4 += sq[i + 4]
            r5 += sq[i + 5]
            r6 += sq[i + 6]
            r7 += sq[i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += sq[i]
            i += 1
        return res

    @_jit
    def pairwise_start(walk, lo, n):
        """Begin numpy's pairwise sum of [lo, lo + n) (its ``add.reduce`` of a contiguous float64 array):
        returns the walk's (top, depth) for :func:`pairwise_next`. ``walk`` is an int64 (128, 3) scratch."""
        walk[0, 0], walk[0, 1], walk[0, 2] = lo, n, 0
        return 0, 0

    @_jit
    def pairwise_next(walk, sums, top, depth):
        """The next block of numpy's pairwise sum: returns (top, depth, lo, n), and the caller stores the
        block's :func:`leaf_sum` at ``sums[depth]`` and goes on with depth + 1; n = -1 when the walk is
        over, the total in ``sums[0]``. Ranges of at most 128 are blocks; a longer one is split in halves
        at a multiple of 8 and their sums added (left + right) once both are done. A stack, not
        recursion: numba's cache cannot reload a recursive function of many arguments. 128 entries of
        ``walk`` and ``sums`` hold any length (each halving adds two)."""
        while top >= 0:
            lo, n, joined = walk[top, 0], walk[top, 1], walk[top, 2]
            top -= 1
            if joined:
                depth -= 1
                sums[depth - 1] = sums[depth - 1] + sums[depth]
            elif n <= 128:
                return top, depth, lo, n
            else:
                half = n // 2
                half -= half % 8
                walk[top + 1, 0], walk[top + 1, 1], walk[top + 1, 2] = lo, n, 1
                walk[top + 2, 0], walk[top + 2, 1], walk[top + 2, 2] = lo + half, n - half, 0
                walk[top + 3, 0], walk[top + 3, 1], walk[top + 3, 2] = lo, half, 0
                top += 3
        return top, depth, 0, -1

    @_jit
    def pairwise_scratch():
        """The walk's stack, its partial sums and a block's values, for :func:`pairwise_next`."""
        return np.empty((128, 3), np.int64), np.empty(128), np.empty(128)

    @_jit
    def _pairwise_step_squares(x, x_prev, lo, n, walk, sums, sq):
        """sum of (x_j - x_prev_j)^2 (in double, as numpy's subtract then multiply) over j in
        [lo, lo + n) in numpy's pairwise order, so the sum has numpy's bits; x_prev_j = x_j on the way."""
        top, depth = pairwise_start(walk, lo, n)
        while True:
            top, depth, b, m = pairwise_next(walk, sums, top, depth)
            if m < 0:
                return sums[0]
            base, count = np.uint64(b), np.uint64(m)
            for j in range(count):
                t = np.float64(x[base + j]) - x_prev[base + j]
                x_prev[base + j] = x[base + j]
                sq[j] = t * t
            sums[depth] = leaf_sum(sq, m)
            depth += 1

    @_jit
    def _decode_update_move(s, mul, c, r, lr, x, x_prev):
        """_decode_update_run's x -= lr * m with one alpha over the whole of x (the plain layout), and
        x_prev = x as it was; returns the sum of the squared moves (x_new - x_old)^2 in double, in numpy's
        pairwise order: what ``step_squares_sum(x, x_prev)`` gives at the next step, without its pass.
        Each block of the walk is moved, squared and summed while it is in L1."""
        walk, sums, sq = pairwise_scratch()
        top, depth = pairwise_start(walk, 0, x.shape[0])
        while True:
            top, depth, b, m = pairwise_next(walk, sums, top, depth)
            if m < 0:
                return 0.0 + sums[0]  # 0.0 +: numpy's sum of none is +0.0
            base, count = np.uint64(b), np.uint64(m)
            if mul:
                for j in range(count):
                    old = x[base + j]
                    new = old - lr * x.dtype.type(np.float64(s[base + j]) * r)
                    x_prev[base + j] = old
                    x[base + j] = new
                    t = np.float64(new) - np.float64(old)
                    sq[j] = t * t
            else:
                for j in range(count):
                    old = x[base + j]
                    new = old - lr * x.dtype.type(np.float64(s[base + j]) / c)
                    x_prev[base + j] = old
                    x[base + j] = new
                    t = np.float64(new) - np.float64(old)
                    sq[j] = t * t
            sums[depth] = leaf_sum(sq, m)
            depth += 1

    @_jit
    def _block_step_squares(x, x_prev, starts, ends, out):
        """out[b] = sum of (x_j - x_prev_j)^2 over block b = [starts[b], ends[b]) with the bits of
        numpy's ``add.reduceat`` of those squares (a segment's first square plus the pairwise sum of
        the rest), and x_prev = x: the fused form of step_squares then reduceat."""
        walk, sums, sq = pairwise_scratch()
        for b in range(starts.shape[0]):
            lo, n = starts[b], ends[b] - starts[b]
            first = _pairwise_step_squares(x, x_prev, lo, 1, walk, sums, sq)
            out[b] = first + _pairwise_step_squares(x, x_prev, lo + 1, n - 1, walk, sums, sq) if n > 1 else first

    @_jit
    def _block_adaptive_alpha(x, x_prev, starts, ends, sq, r, have_r, beta, keep, two_n, lr, lrs, sqrt_sizes,
                              eps_share, out):
        """_block_step_squares into ``sq``, then r = beta r + keep sq (r = sq when not ``have_r``) and
        out = lr (sqrt(d_l) / sqrt(2 n r + lr^2 eps_share)) per block (lr = lrs[b] when ``lrs`` is not
        empty), each operation rounded as numpy's array operations of the int compressor round it."""
        _block_step_squares(x, x_prev, starts, ends, sq)
        per_block = lrs.shape[0] > 0
        for b in range(starts.shape[0]):
            if have_r:
                r[b] = r[b] * beta + keep * sq[b]
            else:
                r[b] = sq[b]
            step = lrs[b] if per_block else lr
            out[b] = (sqrt_sizes[b] / np.sqrt(r[b] * two_n + (step * step) * eps_share[b])) * step

    @_jit
    def _block_max_abs(v, segs, out):
        """out[block] = max |v| over each block's coordinates (NaN or inf when one is not finite)."""
        out[:] = 0.0
        for k in range(segs.shape[0]):
            p, n, b = segs[k, 0], segs[k, 2], segs[k, 3]
            row = v[p:p + n]
            mx = _bits(out[b])
            for i in range(n):  # an integer max of |v|'s bits (see _bits), so it vectorizes
                mx = max(mx, _bits(np.float64(row[i])) & _ABS)
            out[b] = _from_bits(mx)

    @_jit
    def _materialize(src, bound, out):
        b = np.float64(bound)
        for j in range(src.shape[0]):
            out[j] = min(max(np.float64(src[j]), -b), b)

_EMPTY = np.empty(0)
_EMPTIES = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): _EMPTY}


def _empty_like(a: np.ndarray) -> np.ndarray:
    """An empty array of ``a``'s dtype: what a kernel takes for a vector it does not read (one
    specialization for both cases)."""
    return _EMPTIES[a.dtype]


_INF = float("inf")
_MULTIPLY_FROM = 4096
"""Values from which a decode checks whether it may multiply: the check of the 256 int8 values at each
new alpha (about 1.2 us) costs what a shorter vector's divisions do."""


def _may_multiply(sum_int: np.ndarray, c: float, out: np.ndarray) -> bool:
    """Whether decoding ``sum_int`` / c into ``out``'s dtype may use the product with 1 / c (checked
    over every value of an int8 sum of at least _MULTIPLY_FROM values, or of an int16 sum when the
    vector is long enough to pay the 65536 checks); the bits are numpy's either way."""
    if sum_int.size < _MULTIPLY_FROM:
        return False
    if sum_int.dtype == np.int8:
        lo, hi = -128, 127
    elif sum_int.dtype == np.int16 and sum_int.size >= 1 << 20:
        lo, hi = -32768, 32767
    else:
        return False
    if not (c != 0 and math.isfinite(c) and math.isfinite(1.0 / c)):
        return False
    memo = (c, lo, out.dtype.char)
    if memo not in _MULTIPLY_OK:
        if len(_MULTIPLY_OK) > 64:
            _MULTIPLY_OK.clear()
        sample = np.empty(1, out.dtype)
        _MULTIPLY_OK[memo] = bool(product_is_decode(lo, hi, True, c, c, 1.0, 1.0 / c, sample))
    return _MULTIPLY_OK[memo]


_MULTIPLY_OK: dict = {}


def _one_alpha_decoding(sum_int: np.ndarray, alpha: float, n: int, out: np.ndarray) -> Tuple[float, float, bool]:
    """(c, r, mul) of ``Quantizer.decoding`` for one alpha: c = n alpha, r = 1 / c where the product
    may replace the division (``mul``), else 0."""
    c = n * float(alpha)
    mul = _may_multiply(sum_int, c, out)
    return c, 1.0 / c if mul else 0.0, mul


def _feedback_args(h: np.ndarray, delta: Optional[np.ndarray], error: Optional[np.ndarray]):
    """(delta, error, fed) as the shift kernels take them: empty arrays of h's dtype without the feedback."""
    if error is None:
        return _empty_like(h), _empty_like(h), False
    return delta, error, True
"""(c, range, dtype) -> whether the product gives the quotient's bits (a constant alpha repeats c)."""


def _check() -> None:
    if not AVAILABLE:
        raise ImportError("mpiopt.kernels.numba needs numba (pip install numba); use mpiopt.kernels.numpy instead")


Runs = Sequence[Tuple[int, int, int]]
"""A layout: (position in the arrays, first coordinate, count) runs that tile both [0, size) ranges."""


def segments(size: int, starts: Optional[Sequence[int]] = None, runs: Optional[Runs] = None) -> np.ndarray:
    """The kernels' (position, coordinate, count, block) rows: each run of the layout ``runs``
    (default: positions are coordinates) cut where an alpha block (first coordinates ``starts``,
    default one block) begins. Raises ValueError unless the runs tile [0, size) as positions and as
    coordinates, and the blocks start at 0 and ascend strictly below ``size``."""
    bounds = np.asarray([0] if starts is None else starts, dtype=np.int64)
    if (bounds.ndim != 1 or not bounds.size or bounds[0] != 0 or (np.diff(bounds) <= 0).any()
            or (size and bounds[-1] >= size)):
        raise ValueError(f"block starts must ascend strictly from 0 below {size}, got {bounds.tolist()}")
    runs = [(0, 0, size)] if runs is None else [(int(p), int(c), int(n)) for p, c, n in runs if n]
    for what, key in (("positions", 0), ("coordinates", 1)):
        covered = 0
        for run in sorted(runs, key=lambda r: r[key]):
            if run[key] != covered or run[2] < 0:
                raise ValueError(f"the layout's runs must tile the {size} {what} once each, got {runs}")
            covered += run[2]
        if covered != size:
            raise ValueError(f"the layout's runs must tile the {size} {what} once each, got {runs}")
    ends = np.append(bounds[1:], size)
    rows = []
    for pos, coord, count in runs:
        block = int(np.searchsorted(bounds, coord, side="right")) - 1
        while count:
            take = min(count, int(ends[block]) - coord)
            rows.append((pos, coord, take, block))
            pos, coord, count, block = pos + take, coord + take, count - take, block + 1
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


class Quantizer:
    """The numpy :class:`mpiopt.kernels.numpy.Quantizer`'s interface and integers, compiled with numba.

    ``round`` keeps Int(alpha v) in an exact scratch (int8 while max |Int| <= 127, else int32 or
    float64), so v may change after it, as with the numpy kernel.

    Two things the numpy kernel does not take: ``blocks`` (the first coordinate of each alpha block,
    IntSGD's Alg. 2), after which alpha may be given as one value per block (no per-coordinate
    vector is spread); and ``layout`` (:data:`Runs`, changed with :meth:`set_layout`): the arrays
    handed in and out (v, the integers, the decoded means) hold coordinate c at another position,
    e.g. a DDP bucket's buffer, whose parameters are in another order than the optimizer's. The
    integers of each coordinate are those of the plain layout; ``x`` of the step-squares methods
    stays in coordinate order.
    """

    takes_blocks = True
    """alpha may be one value per block of ``blocks`` (see above)."""
    fuses_shift = True
    """``shift_delta`` and ``shift_update`` do a DIANA step's passes around the exchange."""

    def __init__(self, size: int, seed: int, worker: int, n_ranks: int = 1, rounding: str = "random",
                 blocks: Optional[Sequence[int]] = None, layout: Optional[Runs] = None):
        _check()
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.size, self.seed, self.worker, self.n_ranks, self.rounding = size, seed, worker, n_ranks, rounding
        self._worker_key = np.uint64(worker_key(seed, worker))
        self._starts = np.asarray([0] if blocks is None else blocks, dtype=np.int64)
        self._ends = np.append(self._starts[1:], size)
        self.n_blocks = len(self._starts)
        self.set_layout(layout)
        self._one = np.empty(1)
        self._pending_one = np.empty(1)
        self._inverses: dict = {}
        self._checked_into: Optional[np.ndarray] = None
        self._checked_x: Optional[np.ndarray] = None
        self._squares: Optional[np.ndarray] = None
        self._spec = np.zeros(size, dtype=np.int8)
        self._wide: Optional[np.ndarray] = None
        self._went_wide = False
        """The last ``round`` needed more than int8: the next one starts with the exact pass."""
        self._src = self._spec
        self._pending = None
        self._into_fresh = False
        self.noise_buf = np.empty(size)
        self._rounded: Optional[np.ndarray] = None
        self._sent: Optional[np.ndarray] = None
        self._rounded_ok = self._sent_ok = False
        self._sent_bound: float = _INF
        self.max_abs = 0.0
        self.finite = True

    def set_layout(self, layout: Optional[Runs]) -> None:
        """Where the arrays hold each coordinate from now on (None: position = coordinate)."""
        self._segs = segments(self.size, self._starts, layout)
        self._segs_one = self._segs.copy()
        self._segs_one[:, 3] = 0
        self._identity = bool((self._segs[:, 0] == self._segs[:, 1]).all())
        self._tracks_move = self._segs.shape[0] == 1 and self._identity

    @property
    def identity(self) -> bool:
        """Whether every coordinate sits at its own position (the plain layout)."""
        return self._identity

    def _alpha(self, alpha):
        """(segments, per-block alphas, per-coordinate alphas, whether one alpha) for the kernels."""
        if alpha.__class__ is float:
            self._one[0] = alpha
            return self._segs_one, self._one, _EMPTY, True
        if alpha.__class__ is np.ndarray and alpha.ndim == 1 and alpha.dtype == np.float64 and alpha.flags.c_contiguous:
            a = alpha  # block alphas as the int compressor hands them
        elif np.ndim(alpha) == 0:
            self._one[0] = alpha
            return self._segs_one, self._one, _EMPTY, True
        else:
            a = np.ascontiguousarray(alpha, dtype=np.float64)
        if a.shape == (self.n_blocks,):
            return self._segs, a, _EMPTY, False
        if a.shape != (self.size,):
            raise ValueError(f"alpha must be a scalar, an array of {self.size} values or one of {self.n_blocks} "
                             f"block values, got shape {a.shape}")
        return self._segs_one, self._one, a, False

    def noise(self, step: int) -> np.ndarray:
        """This worker's u_j for ``step``, in coordinate order (a view of an internal buffer,
        overwritten by the next call)."""
        _noise(self.stream_key(step), self.noise_buf)
        return self.noise_buf

    def stream_key(self, step: int) -> np.uint64:
        """key(seed, worker, step) of the noise formula (= ``stream_key``; the worker's part cached)."""
        return np.uint64(_stream_key(self._worker_key, np.uint64(step & MASK)))  # numba returns a Python int

    def round(self, v: np.ndarray, alpha: Union[float, np.ndarray], step: int,
              into: Optional[np.ndarray] = None) -> "Quantizer":
        """Int(alpha v), unclipped, into the internal scratch; sets ``max_abs`` and ``finite``.

        (The numpy kernel returns the rounded doubles; here read ``rounded`` when you need them.)

        ``into``: an int8 array of ``size`` values -- the int8 wire buffer -- that the one pass
        writes to instead of the internal scratch, so that ``pack(into)`` right after has nothing to
        copy. The caller may then sum ``into`` in place: whatever needs the values afterwards (a
        second ``pack`` into a wider dtype, ``sent``, ``rounded``, ``decode_local``) recomputes them
        from v, so v (and an alpha array) must stay unchanged until then (the numpy kernel has no such
        condition)."""
        if v.shape != (self.size,):
            raise ValueError(f"v must have shape ({self.size},), got {v.shape}")
        if into is not None and into is not self._checked_into:
            if into.dtype != np.int8 or into.shape != (self.size,) or not into.flags.c_contiguous:
                raise ValueError(f"into must be a contiguous int8 array of shape ({self.size},), got "
                                 f"{into.dtype} {into.shape}")
            self._checked_into = into
        segs, alphas, avec, one = self._alpha(alpha)
        random = self.rounding == "random"
        self._rounded_ok = self._sent_ok = False
        self._sent_bound = _INF
        self._pending = None
        if into is not None or not self._went_wide:
            target = self._spec if into is None else into
            mx = float(_round_fast_at(v, segs, alphas, avec, self._worker_key, step, random, target))
            if mx <= _SPEC_MAX:
                self._src, self.max_abs, self.finite, self._went_wide = target, mx, True, False
                if into is not None:
                    if one:
                        self._pending_one[0] = alphas[0]
                        alphas = self._pending_one
                    self._pending = (v, segs, alphas, avec, self._worker_key, step, random)
                    self._into_fresh = True
                return self
        key = self.stream_key(step)
        # Values beyond int8 (the last round's were too: then the int8 pass is skipped), or non-finite
        # inputs: stored exactly, in int32 unless some exceed it.
        for wide_dtype, limit in ((np.int32, _INT32_MAX), (np.float64, np.inf)):
            if self._wide is None or self._wide.dtype != wide_dtype:
                self._wide = np.empty(self.size, dtype=wide_dtype)
            m, bad = _round_exact(v, segs, alphas, avec, key, random, self._wide, limit)
            if m <= limit:
                break
        self._src, self.max_abs, self.finite = self._wide, float(m), bad == 0
        self._went_wide = self.max_abs > _SPEC_MAX
        return self

    def _exact(self) -> np.ndarray:
        """The exact rounded values (recomputed into the scratch when they were written to ``into``)."""
        if self._pending is not None:
            _round_fast_at(*self._pending, self._spec)
            self._src, self._pending = self._spec, None
        return self._src

    def pack(self, out: np.ndarray, bound: Optional[int] = None) -> int:
        """Cast the rounded values, clipped to ``bound`` (default floor(M / n) of ``out``'s dtype),
        into ``out``; returns the number of clipped coordinates."""
        if bound is None:
            bound = int_bound(out.dtype, self.n_ranks)
        if out.shape != (self.size,):
            raise ValueError(f"out must have shape ({self.size},), got {out.shape}")
        self._sent_ok = False
        if self.max_abs <= bound:
            self._sent_bound = _INF
            if self._pending is not None and self._into_fresh and out is self._src:
                self._into_fresh = False
                return 0  # round(into=out) has just written exactly these values there
            np.copyto(out, self._exact(), casting="unsafe")
            return 0
        self._sent_bound = float_below(bound)
        return int(_clip_cast(self._exact(), bound, self._sent_bound, out))

    def encode(self, v: np.ndarray, alpha: Union[float, np.ndarray], out: np.ndarray, *, step: int,
               bound: Optional[int] = None) -> int:
        """Int(alpha v), clipped, into the integer array ``out``; returns the number clipped."""
        self.round(v, alpha, step)
        return self.pack(out, bound)

    @property
    def rounded(self) -> np.ndarray:
        """Int(alpha v) as doubles, before clipping (made on demand; do not write to it)."""
        if self._rounded is None:
            self._rounded = np.empty(self.size)
        if not self._rounded_ok:
            np.copyto(self._rounded, self._exact(), casting="unsafe")
            self._rounded_ok = True
        return self._rounded

    @property
    def sent(self) -> np.ndarray:
        """The values the last ``pack`` wrote, as doubles (made on demand; do not write to it)."""
        if self._sent is None:
            self._sent = np.empty(self.size)
        if not self._sent_ok:
            _materialize(self._exact(), min(self._sent_bound, 2.0 ** 1023), self._sent)
            self._sent_ok = True
        return self._sent

    def decode_local(self, alpha: Union[float, np.ndarray], out: np.ndarray) -> np.ndarray:
        """This worker's own decoded C(v) = sent / alpha."""
        segs, alphas, avec, _ = self._alpha(alpha)
        _divide_clipped(self._exact(), min(self._sent_bound, 2.0 ** 1023), segs, alphas, avec, out)
        return out

    def decoding(self, sum_int: np.ndarray, alpha, n: int, out: np.ndarray):
        """The kernels' arguments of S / (n alpha) into ``out``'s dtype: (segments, per-block alphas,
        per-coordinate alphas, one alpha, c, r, mul, inv_n), see _decode_run; a fused pass that decodes
        takes them too (:mod:`mpiopt.kernels.move_numba`)."""
        segs, alphas, avec, one = self._alpha(alpha)
        c, r, mul = _one_alpha_decoding(sum_int, alphas[0], n, out) if one else (1.0, 0.0, False)
        inv_n = self._inverses.get((n, out.dtype))
        if inv_n is None:
            inv_n = self._inverses[(n, out.dtype)] = out.dtype.type(1.0 / n)
        return segs, alphas, avec, one, c, r, mul, inv_n

    def decode(self, sum_int: np.ndarray, alpha: Union[float, np.ndarray], n: int, out: np.ndarray) -> np.ndarray:
        """S / (n alpha) into ``out``, bit for bit what the numpy kernel writes."""
        _decode(sum_int, *self.decoding(sum_int, alpha, n, out), out)
        return out

    @staticmethod
    def step_squares(x: np.ndarray, x_prev: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out = (x - x_prev)^2 and x_prev <- x in one pass: the numpy kernel's bits (float64
        ``x_prev`` and ``out``; x float32 or float64)."""
        _step_squares(x, x_prev, out)
        return out

    def step_squares_sum(self, x: np.ndarray, x_prev: np.ndarray) -> float:
        """||x - x_prev||^2 with the bits of ``step_squares`` then numpy's ``sum``, and x_prev <- x.

        Short vectors (in cache) take the vectorized squares into a scratch and numpy's sum; long ones
        one pass that adds in numpy's order without the scratch (memory traffic decides there)."""
        n = x.shape[0]
        if n <= _SCRATCH_SUM_MAX:
            if self._squares is None:
                self._squares = np.empty(n)
            _step_squares(x, x_prev, self._squares)
            return float(self._squares.sum())
        return float(0.0 + _pairwise_step_squares(x, x_prev, 0, n, *pairwise_scratch()))  # 0.0 +: numpy's sum of none is +0.0

    def block_adaptive_alpha(self, x: np.ndarray, x_prev: np.ndarray, r: np.ndarray, have_r: bool, beta: float,
                             lr: Union[float, np.ndarray], n: int, constants: Tuple[np.ndarray, np.ndarray],
                             squares: np.ndarray, out: np.ndarray) -> np.ndarray:
        """IntSGD's Alg. 2 step in one pass (x in coordinate order): each block's ||x - x_prev||^2 into
        ``squares``, with the bits of ``step_squares`` then numpy's ``add.reduceat`` at the block
        starts, and x_prev <- x; the running averages r <- beta r + (1 - beta) squares (r <- squares
        when not ``have_r``); and alpha per block into ``out``, with the bits of
        :func:`mpiopt.compressors.alpha.adaptive_alpha` (``constants``: its block_constants; ``lr``
        one step size or one per block) after numpy's in-place r update."""
        sqrt_sizes, eps_share = constants
        one = isinstance(lr, float) or np.ndim(lr) == 0
        lrs = _EMPTY if one else np.ascontiguousarray(lr, dtype=np.float64)
        if lrs.shape not in ((0,), (self.n_blocks,)):
            raise ValueError(f"lr must be one step size or one per block ({self.n_blocks}), got shape {lrs.shape}")
        _block_adaptive_alpha(x, x_prev, self._starts, self._ends, squares, r, bool(have_r), float(beta),
                              1.0 - beta, 2.0 * n, float(lr) if one else 0.0, lrs, sqrt_sizes, eps_share, out)
        return out

    def block_max_abs(self, v: np.ndarray, out: np.ndarray) -> np.ndarray:
        """max |v| of each block into ``out`` (v in the layout; NaN or inf where a value is not finite)."""
        _block_max_abs(v, self._segs, out)
        return out

    def shift_delta(self, g, h_local: np.ndarray, out: np.ndarray, peak: np.ndarray,
                    error: Optional[np.ndarray] = None) -> np.ndarray:
        """DIANA's Delta = g - h_i into ``out`` and each block's max |Delta| into ``peak``, in one pass
        (:mod:`mpiopt.kernels.shift_numba`); ``g`` an array or L-SVRG's terms (a, b, c), g = (a - b) + c;
        with ``error`` (DIANA's feedback: this rank's carried error e_i) Delta = g - (h_i - e_i).
        Returns ``peak``."""
        from mpiopt.kernels import shift_numba

        ga, gb, gc = g if isinstance(g, tuple) else (g, g, g)
        shift_numba.shift_delta(ga, gb, gc, h_local, self._segs, out, peak, isinstance(g, tuple),
                                _empty_like(h_local) if error is None else error, error is not None)
        return peak

    def shift_update(self, sum_int: np.ndarray, alpha: Union[float, np.ndarray], n: int, h_local: np.ndarray,
                     h: np.ndarray, x: np.ndarray, lr: float, delta: Optional[np.ndarray] = None,
                     error: Optional[np.ndarray] = None) -> None:
        """DIANA's update (shift step 1) after the sum of the last ``round``: h_i += C(Delta_i),
        h += mean, x -= lr (h + mean) with h before its update, in one pass, bit for bit the numpy
        sequence with ``decode`` and ``decode_local`` (:mod:`mpiopt.kernels.shift_numba`); with
        ``error`` (the feedback) also error = ``delta`` - C(delta), as numpy's subtraction gives it."""
        from mpiopt.kernels import shift_numba

        if not (h.dtype == h_local.dtype == x.dtype and h.dtype in (np.float32, np.float64)):
            raise ValueError(f"h_i, h and x must share a float dtype, got {h_local.dtype}, {h.dtype}, {x.dtype}")
        shift_numba.shift_update(sum_int, *self.decoding(sum_int, alpha, n, h), self._exact(),
                                 min(self._sent_bound, 2.0 ** 1023), h_local, h, x, h.dtype.type(lr),
                                 *_feedback_args(h, delta, error))

    def shift_update_move(self, sum_int: np.ndarray, alpha: float, n: int, h_local: np.ndarray, h: np.ndarray,
                          x: np.ndarray, lr: float, x_prev: np.ndarray, delta: Optional[np.ndarray] = None,
                          error: Optional[np.ndarray] = None) -> float:
        """:meth:`shift_update` with one alpha, x_prev <- x before the update, and the squared move
        ||x_new - x_old||^2 returned as :meth:`decode_update_move` returns it (one alpha block, the
        plain layout)."""
        from mpiopt.kernels import shift_numba

        if not (h.dtype == h_local.dtype == x.dtype and h.dtype in (np.float32, np.float64)):
            raise ValueError(f"h_i, h and x must share a float dtype, got {h_local.dtype}, {h.dtype}, {x.dtype}")
        if not self._tracks_move or (alpha.__class__ is not float and np.ndim(alpha) != 0):
            raise ValueError("shift_update_move takes one alpha for one block in the plain layout")
        c, r, mul = _one_alpha_decoding(sum_int, alpha, n, h)
        return float(shift_numba.shift_update_move(sum_int, mul, c, r, float(alpha), self._exact(),
                                                   min(self._sent_bound, 2.0 ** 1023), h_local, h, x, x_prev,
                                                   h.dtype.type(lr), *_feedback_args(h, delta, error)))

    def decode_update(self, sum_int: np.ndarray, alpha: Union[float, np.ndarray], n: int, lr: float,
                      x: np.ndarray) -> np.ndarray:
        """x -= lr * S / (n alpha), in place and in one pass: bit for bit what ``decode`` into a mean
        of x's dtype followed by ``x -= lr * mean`` gives (IntSGD's update, without materializing the mean)."""
        if x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
            raise ValueError(f"x must be a contiguous float32 or float64 array, got {x.dtype}")
        _decode_update(sum_int, *self.decoding(sum_int, alpha, n, x), x.dtype.type(lr), x)
        return x

    @property
    def tracks_move(self) -> bool:
        """Whether :meth:`decode_update_move` applies: one alpha block in the plain layout."""
        return self._tracks_move

    def decode_update_move(self, sum_int: np.ndarray, alpha: float, n: int, lr: float, x: np.ndarray,
                           x_prev: np.ndarray) -> float:
        """:meth:`decode_update` with one alpha, x_prev <- x before the update, and the squared move
        ||x_new - x_old||^2 returned with the bits of :meth:`step_squares_sum` (numpy's pairwise sum of
        numpy's squares): adaptive alpha's next ||x^{k+1} - x^k||^2 from the pass that moves x, so the
        next step needs no pass of its own over x and x_prev (one alpha block, the plain layout)."""
        if x is not self._checked_x:
            if x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
                raise ValueError(f"x must be a contiguous float32 or float64 array, got {x.dtype}")
            self._checked_x = x
        if not self._tracks_move or (alpha.__class__ is not float and np.ndim(alpha) != 0):
            raise ValueError("decode_update_move takes one alpha for one block in the plain layout")
        c, r, mul = _one_alpha_decoding(sum_int, alpha, n, x)
        return float(_decode_update_move(sum_int, mul, c, r, x.dtype.type(lr), x, x_prev))


def warm_up() -> None:
    """Compile (or load from numba's cache) the common specializations, so a timed loop never pays it."""
    if not AVAILABLE:
        return
    for vt in (np.float32, np.float64):
        v = np.linspace(-3, 3, 16).astype(vt)
        for rounding in ROUNDINGS:
            q = Quantizer(16, 0, 0, 2, rounding, blocks=[0, 8])
            for dt in (np.int8, np.int16, np.int32, np.int64):
                buf = np.empty(16, dtype=dt)
                q.encode(v, 10.0, buf, step=0)
                for ot in (np.float32, np.float64):
                    for alpha in (10.0, np.array([10.0, 3.0])):
                        q.decode(buf, alpha, 2, np.empty(16, dtype=ot))
                        q.decode_update(buf, alpha, 2, 0.1, np.zeros(16, dtype=ot))
                    Quantizer(16, 0, 0, 2, rounding).decode_update_move(buf, 10.0, 2, 0.1, np.zeros(16, dtype=ot),
                                                                        np.zeros(16))
        q.block_adaptive_alpha(v, np.zeros(16), np.zeros(2), False, 0.9, 0.1, 2, (np.ones(2), np.ones(2)),
                               np.empty(2), np.empty(2))
        q.block_max_abs(v, np.empty(2))
    from mpiopt.kernels import move_numba, shift_numba  # the fused passes, on float64 as the methods run them

    rows = np.array([[0, 0, 16, 0]])
    for out in (np.empty(16, dtype=np.float32), np.empty(16)):  # the DDP hook's pass: fp32 / fp64 buckets
        for sums in (np.zeros(16, dtype=np.int8), np.zeros(16, dtype=np.int32)):  # int8, or int32 after a redo
            move_numba.settle_rows(rows, sums, np.zeros(16), False, np.ones(1), True, False, 2.0, 0.0, 0.5, np.ones(1),
                                   1.0, np.zeros(16), np.empty(16), out, True, np.empty(1))

    z = np.zeros(16)
    shift_numba.shift_update_decoded(z, z.copy(), z.copy(), z.copy(), z.copy(), 0.1, 0.5)
    g = np.linspace(-3, 3, 16)
    q = Quantizer(16, 0, 0, 2, "random", blocks=[0, 8])
    for terms in (g, (g, g * 0.5, g * 0.25)):
        q.shift_delta(terms, np.zeros(16), np.empty(16), np.empty(2))
    for alpha in (10.0, np.array([10.0, 3.0])):
        for dt, scale in ((np.int8, 1.0), (np.int16, 100.0)):  # int16: the exact pass into int32
            buf = np.empty(16, dtype=dt)
            q.encode(g, alpha * scale, buf, step=0)
            q.shift_update(buf, alpha, 2, np.zeros(16), np.zeros(16), np.zeros(16), 0.1)
    one = Quantizer(16, 0, 0, 2, "random")
    for dt, scale in ((np.int8, 1.0), (np.int16, 100.0)):  # int16: the exact pass into int32
        buf = np.empty(16, dtype=dt)
        one.encode(g, 10.0 * scale, buf, step=0)
        one.shift_update_move(buf, 10.0, 2, np.zeros(16), np.zeros(16), np.zeros(16), 0.1, np.zeros(16))
