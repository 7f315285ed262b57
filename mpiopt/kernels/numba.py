"""The numba quantizer kernel (optional dependency ``numba``): ``mpiopt.kernels.numpy``'s contract, fused.

``Quantizer`` here has the numpy Quantizer's interface (``round``, ``pack``, ``encode``, ``decode``,
``decode_local``, ``decode_update``, ``step_squares``, ``step_squares_sum``, ``noise``, and
``max_abs``, ``finite``, ``rounded``, ``sent``) and gives the same integers, bit for bit, for the
same (seed, worker, step, coordinate): the SplitMix64 noise, the double product alpha * v (never
contracted into an FMA: numba compiles without fast-math), the addition of u and the floor (or
rint) are the formula of ``mpiopt.kernels.numpy``'s docstring, done per coordinate in one compiled,
vectorized loop that never materializes the noise. The compressors use this kernel by default when numba is installed (see
:mod:`mpiopt.kernels`).

Where the numpy kernel makes about twenty passes over 8-byte temporaries, one ``round`` here is one
pass that reads v and writes Int(alpha v) as int8 (saturated at +-127) while it takes max |Int|;
only when that max exceeds 127 (or v has non-finite values) does a second pass store the exact
values in a wider scratch. ``pack`` then casts (or clips and casts) that scratch into the wire
buffer, and ``decode`` is one pass (a product with 1 / (n alpha) instead of the division when, checked
over every possible int8 sum, that gives the division's bits -- nearly always for a float32 ``out``).
``decode_update`` applies IntSGD's x -= eta S / (n alpha) in one pass, bit for bit what ``decode``
into a mean of x's dtype and ``x -= eta * mean`` give. ``rounded`` and ``sent`` (float64 views the numpy kernel keeps
all the time) are made on demand, from the exact scratch, so reading them gives what numpy gives;
they are read-only here (QSGD's in-place edit of ``rounded`` needs the numpy kernel).

Inputs may be float32 or float64; they are widened to double first, as the contract says (the numpy
kernel does the same when alpha is a ``numpy.float64`` or an array; with a Python float and a float32
array, NumPy 2's promotion rules multiply in float32 there).

``AVAILABLE`` is False (and ``Quantizer`` raises ImportError) when numba is not installed; callers
fall back to ``mpiopt.kernels.numpy``.
"""

import math
from typing import Optional, Union

import numpy as np

from mpiopt.kernels.numpy import GOLDEN, MASK, MUL1, MUL2, ROUNDINGS, float_below, int_bound, mix64, worker_key

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

if AVAILABLE:
    _G = np.uint64(GOLDEN)
    _M1 = np.uint64(MUL1)
    _M2 = np.uint64(MUL2)
    _S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))
    _UNIT = 2.0 ** -53
    _ABS = np.int64(0x7FFFFFFFFFFFFFFF)
    _jit = _nb.njit(nogil=True, cache=True, error_model="numpy")

    @_jit
    def _u(key, j):
        z = key + np.uint64(j + 1) * _G
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        z = z ^ (z >> _S31)
        return np.float64(np.int64(z >> _S11)) * _UNIT

    @_jit
    def _noise(key, out):
        for j in range(out.shape[0]):
            out[j] = _u(key, j)

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
    def _round_fast(v, alpha, alpha_vec, key, random, out):
        """Int(alpha v) clamped to +-127 into int8 ``out``; returns max |Int| (exact; inf or NaN
        when some coordinate is not finite, whose ``out`` is then garbage)."""
        mx = np.int64(0)
        n = v.shape[0]
        if alpha_vec.shape[0] == 0:
            if random:
                for j in range(n):
                    t = np.floor(np.float64(v[j]) * alpha + _u(key, j))
                    mx = max(mx, _bits(t) & _ABS)
                    out[j] = np.int64(min(max(t, -127.0), 127.0))
            else:
                for j in range(n):
                    t = np.rint(np.float64(v[j]) * alpha)
                    mx = max(mx, _bits(t) & _ABS)
                    out[j] = np.int64(min(max(t, -127.0), 127.0))
        else:
            if random:
                for j in range(n):
                    t = np.floor(np.float64(v[j]) * alpha_vec[j] + _u(key, j))
                    mx = max(mx, _bits(t) & _ABS)
                    out[j] = np.int64(min(max(t, -127.0), 127.0))
            else:
                for j in range(n):
                    t = np.rint(np.float64(v[j]) * alpha_vec[j])
                    mx = max(mx, _bits(t) & _ABS)
                    out[j] = np.int64(min(max(t, -127.0), 127.0))
        return _from_bits(mx)

    @_jit
    def _round_exact(v, alpha, alpha_vec, key, random, out):
        """Int(alpha v) exactly (non-finite -> 0) into ``out`` (int32 or float64); returns
        (max |Int| as a double, number of non-finite coordinates)."""
        mx = 0.0
        bad = 0
        scalar = alpha_vec.shape[0] == 0
        for j in range(v.shape[0]):
            a = alpha if scalar else alpha_vec[j]
            t = np.float64(v[j]) * a
            if random:
                t = np.floor(t + _u(key, j))
            else:
                t = np.rint(t)
            if not np.abs(t) < np.inf:
                t = 0.0
                bad += 1
            mx = max(mx, abs(t))
            out[j] = t
        return mx, bad

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
    def _divide_clipped(src, bound, alpha, alpha_vec, out):
        """out = clip(src, +-bound) / alpha (the numpy kernel's ``sent / alpha``)."""
        b = np.float64(bound)
        if alpha_vec.shape[0] == 0:
            for j in range(src.shape[0]):
                out[j] = min(max(np.float64(src[j]), -b), b) / alpha
        else:
            for j in range(src.shape[0]):
                out[j] = min(max(np.float64(src[j]), -b), b) / alpha_vec[j]

    @_jit
    def _decode_scalar(s, c, r, mul, out):
        """out = S / c with c = n * alpha, rounded to out's dtype (one double division, as numpy's
        np.divide). With ``mul`` (see _product_is_quotient) the division is the product S * r."""
        if mul:
            for j in range(s.shape[0]):
                out[j] = np.float64(s[j]) * r
        else:
            for j in range(s.shape[0]):
                out[j] = np.float64(s[j]) / c

    @_jit
    def _product_is_quotient(lo, hi, c, r, sample):
        """True when, for every integer s in [lo, hi], S * r rounded to sample's dtype equals S / c
        rounded to it: then a decode may multiply (several times faster than dividing) and still
        write numpy's bits. Checked exhaustively, so only for the small ranges of int8/int16 sums."""
        for s in range(lo, hi + 1):
            if sample.dtype.type(np.float64(s) * r) != sample.dtype.type(np.float64(s) / c):
                return False
        return True

    @_jit
    def _decode_vec(s, alpha_vec, inv_n, out):
        """out = S / alpha_j, stored in out's dtype, then out *= 1/n in out's dtype (numpy's two steps)."""
        for j in range(s.shape[0]):
            out[j] = np.float64(s[j]) / alpha_vec[j]
            out[j] = out[j] * inv_n

    @_jit
    def _decode_update_scalar(s, c, r, mul, lr, x):
        """x -= lr * m with m = S / c rounded to x's dtype: numpy's ``decode`` into a mean of x's
        dtype followed by ``x -= lr * mean`` (lr has x's dtype), in one pass."""
        if mul:
            for j in range(s.shape[0]):
                m = x.dtype.type(np.float64(s[j]) * r)
                x[j] = x[j] - lr * m
        else:
            for j in range(s.shape[0]):
                m = x.dtype.type(np.float64(s[j]) / c)
                x[j] = x[j] - lr * m

    @_jit
    def _decode_update_vec(s, alpha_vec, inv_n, lr, x):
        for j in range(s.shape[0]):
            m = x.dtype.type(np.float64(s[j]) / alpha_vec[j])
            m = m * inv_n
            x[j] = x[j] - lr * m

    @_jit
    def _step_squares(x, x_prev, out):
        """out = (x - x_prev)^2 (in double, as numpy's subtract then multiply) and x_prev = x, one pass."""
        for j in range(x.shape[0]):
            t = np.float64(x[j]) - x_prev[j]
            out[j] = t * t
            x_prev[j] = x[j]

    @_jit
    def _sq(x, x_prev, j):
        """(x_j - x_prev_j)^2 in double, then x_prev_j = x_j."""
        t = np.float64(x[j]) - x_prev[j]
        x_prev[j] = x[j]
        return t * t

    @_jit
    def _pairwise_step_squares(x, x_prev, lo, n):
        """sum of (x_j - x_prev_j)^2 over j in [lo, lo + n), added in numpy's pairwise order (its
        ``add.reduce`` of a contiguous float64 array: blocks of at most 128 in 8 interleaved partial
        sums, halves split at multiples of 8), so the sum has numpy's bits; x_prev_j = x_j on the way."""
        if n < 8:
            res = -0.0
            for j in range(lo, lo + n):
                res += _sq(x, x_prev, j)
            return res
        if n <= 128:
            r0 = _sq(x, x_prev, lo)
            r1 = _sq(x, x_prev, lo + 1)
            r2 = _sq(x, x_prev, lo + 2)
            r3 = _sq(x, x_prev, lo + 3)
            r4 = _sq(x, x_prev, lo + 4)
            r5 = _sq(x, x_prev, lo + 5)
            r6 = _sq(x, x_prev, lo + 6)
            r7 = _sq(x, x_prev, lo + 7)
            i = lo + 8
            end8 = lo + n - n % 8
            while i < end8:
                r0 += _sq(x, x_prev, i)
                r1 += _sq(x, x_prev, i + 1)
                r2 += _sq(x, x_prev, i + 2)
                r3 += _sq(x, x_prev, i + 3)
                r4 += _sq(x, x_prev, i + 4)
                r5 += _sq(x, x_prev, i + 5)
                r6 += _sq(x, x_prev, i + 6)
                r7 += _sq(x, x_prev, i + 7)
                i += 8
            res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
            while i < lo + n:
                res += _sq(x, x_prev, i)
                i += 1
            return res
        half = n // 2
        half -= half % 8
        return _pairwise_step_squares(x, x_prev, lo, half) + _pairwise_step_squares(x, x_prev, lo + half, n - half)

    @_jit
    def _materialize(src, bound, out):
        b = np.float64(bound)
        for j in range(src.shape[0]):
            out[j] = min(max(np.float64(src[j]), -b), b)

_EMPTY = np.empty(0)


def _may_multiply(sum_int: np.ndarray, c: float, out: np.ndarray) -> bool:
    """Whether decoding ``sum_int`` / c into ``out``'s dtype may use the product with 1 / c (checked
    over every value of an int8 sum, or of an int16 sum when the vector is long enough to pay the
    65536 checks); the bits are numpy's either way."""
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
        _MULTIPLY_OK[memo] = bool(_product_is_quotient(lo, hi, c, 1.0 / c, sample))
    return _MULTIPLY_OK[memo]


_MULTIPLY_OK: dict = {}
"""(c, range, dtype) -> whether the product gives the quotient's bits (a constant alpha repeats c)."""


def _check() -> None:
    if not AVAILABLE:
        raise ImportError("mpiopt.kernels.numba needs numba (pip install numba); use mpiopt.kernels.numpy instead")


def _alpha_args(alpha, size: int):
    if np.ndim(alpha) == 0:
        return float(alpha), _EMPTY
    a = np.ascontiguousarray(alpha, dtype=np.float64)
    if a.shape != (size,):
        raise ValueError(f"alpha must be a scalar or an array of {size} values, got shape {a.shape}")
    return 0.0, a


class Quantizer:
    """The numpy :class:`mpiopt.kernels.numpy.Quantizer`'s interface and integers, compiled with numba.

    ``round`` keeps Int(alpha v) in an exact scratch (int8 while max |Int| <= 127, else int32 or
    float64), so v may change after it, as with the numpy kernel.
    """

    def __init__(self, size: int, seed: int, worker: int, n_ranks: int = 1, rounding: str = "random"):
        _check()
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.size, self.seed, self.worker, self.n_ranks, self.rounding = size, seed, worker, n_ranks, rounding
        self._worker_key = worker_key(seed, worker)
        self._checked_into: Optional[np.ndarray] = None
        self._squares: Optional[np.ndarray] = None
        self._spec = np.zeros(size, dtype=np.int8)
        self._wide: Optional[np.ndarray] = None
        self._src = self._spec
        self._pending = None
        self._into_fresh = False
        self.noise_buf = np.empty(size)
        self._rounded: Optional[np.ndarray] = None
        self._sent: Optional[np.ndarray] = None
        self._rounded_ok = self._sent_ok = False
        self._sent_bound: float = float("inf")
        self.max_abs = 0.0
        self.finite = True

    def noise(self, step: int) -> np.ndarray:
        """This worker's u_j for ``step`` (a view of an internal buffer, overwritten by the next call)."""
        _noise(self._key(step), self.noise_buf)
        return self.noise_buf

    def _key(self, step: int) -> np.uint64:
        """key(seed, worker, step) of the noise formula (= ``stream_key``; the worker's part cached)."""
        return np.uint64(mix64(self._worker_key + (step & MASK) + GOLDEN))

    def round(self, v: np.ndarray, alpha: Union[float, np.ndarray], step: int,
              into: Optional[np.ndarray] = None) -> "Quantizer":
        """Int(alpha v), unclipped, into the internal scratch; sets ``max_abs`` and ``finite``.

        (The numpy kernel returns the rounded doubles; here read ``rounded`` when you need them.)

        ``into``: an int8 array of ``size`` values -- the int8 wire buffer -- that the one pass
        writes to instead of the internal scratch, so that ``pack(into)`` right after has nothing to
        copy. The caller may then sum ``into`` in place: whatever needs the values afterwards (a
        second ``pack`` into a wider dtype, ``sent``, ``rounded``, ``decode_local``) recomputes them
        from v, so v must stay unchanged until then (the numpy kernel has no such condition)."""
        if v.shape != (self.size,):
            raise ValueError(f"v must have shape ({self.size},), got {v.shape}")
        if into is not None and into is not self._checked_into:
            if into.dtype != np.int8 or into.shape != (self.size,) or not into.flags.c_contiguous:
                raise ValueError(f"into must be a contiguous int8 array of shape ({self.size},), got "
                                 f"{into.dtype} {into.shape}")
            self._checked_into = into
        a, avec = (float(alpha), _EMPTY) if isinstance(alpha, float) else _alpha_args(alpha, self.size)
        key = self._key(step)
        random = self.rounding == "random"
        target = self._spec if into is None else into
        mx = float(_round_fast(v, a, avec, key, random, target))
        self._rounded_ok = self._sent_ok = False
        self._sent_bound = float("inf")
        self._pending = None
        if mx <= _SPEC_MAX:
            self._src, self.max_abs, self.finite = target, mx, True
            if into is not None:
                self._pending = (v, a, avec, key, random)
                self._into_fresh = True
            return self
        # Rare: values beyond int8, or non-finite inputs: store them exactly.
        wide_dtype = np.int32 if mx <= np.iinfo(np.int32).max else np.float64
        if self._wide is None or self._wide.dtype != wide_dtype:
            self._wide = np.empty(self.size, dtype=wide_dtype)
        m, bad = _round_exact(v, a, avec, key, random, self._wide)
        self._src, self.max_abs, self.finite = self._wide, float(m), bad == 0
        return self

    def _exact(self) -> np.ndarray:
        """The exact rounded values (recomputed into the scratch when they were written to ``into``)."""
        if self._pending is not None:
            v, a, avec, key, random = self._pending
            _round_fast(v, a, avec, key, random, self._spec)
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
            self._sent_bound = float("inf")
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
        a, avec = _alpha_args(alpha, self.size)
        _divide_clipped(self._exact(), min(self._sent_bound, 2.0 ** 1023), a, avec, out)
        return out

    @staticmethod
    def decode(sum_int: np.ndarray, alpha: Union[float, np.ndarray], n: int, out: np.ndarray) -> np.ndarray:
        """S / (n alpha) into ``out``, bit for bit what the numpy kernel writes."""
        _check()
        if np.ndim(alpha) == 0:
            c = n * float(alpha)
            _decode_scalar(sum_int, c, 1.0 / c, _may_multiply(sum_int, c, out), out)
        else:
            _decode_vec(sum_int, np.ascontiguousarray(alpha, dtype=np.float64), out.dtype.type(1.0 / n), out)
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
        return float(0.0 + _pairwise_step_squares(x, x_prev, 0, n))  # 0.0 +: numpy's sum of none is +0.0

    @staticmethod
    def decode_update(sum_int: np.ndarray, alpha: Union[float, np.ndarray], n: int, lr: float,
                      x: np.ndarray) -> np.ndarray:
        """x -= lr * S / (n alpha) in one pass (see :func:`decode_update`)."""
        return decode_update(sum_int, alpha, n, lr, x)


def decode_update(sum_int: np.ndarray, alpha: Union[float, np.ndarray], n: int, lr: float,
                  x: np.ndarray) -> np.ndarray:
    """x -= lr * S / (n alpha), in place and in one pass: bit for bit what ``decode`` into a mean of
    x's dtype followed by ``x -= lr * mean`` gives (IntSGD's update, without materializing the mean)."""
    _check()
    if x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
        raise ValueError(f"x must be a contiguous float32 or float64 array, got {x.dtype}")
    lr_t = x.dtype.type(lr)
    if isinstance(alpha, float) or np.ndim(alpha) == 0:
        c = n * float(alpha)
        _decode_update_scalar(sum_int, c, 1.0 / c, _may_multiply(sum_int, c, x), lr_t, x)
    else:
        _decode_update_vec(sum_int, np.ascontiguousarray(alpha, dtype=np.float64), x.dtype.type(1.0 / n), lr_t, x)
    return x


def warm_up() -> None:
    """Compile (or load from numba's cache) the common specializations, so a timed loop never pays it."""
    if not AVAILABLE:
        return
    for vt in (np.float32, np.float64):
        v = np.linspace(-3, 3, 16).astype(vt)
        for rounding in ROUNDINGS:
            q = Quantizer(16, 0, 0, 2, rounding)
            for dt in (np.int8, np.int16, np.int32, np.int64):
                buf = np.empty(16, dtype=dt)
                q.encode(v, 10.0, buf, step=0)
                for ot in (np.float32, np.float64):
                    Quantizer.decode(buf, 10.0, 2, np.empty(16, dtype=ot))
                    decode_update(buf, 10.0, 2, 0.1, np.zeros(16, dtype=ot))
