"""The numba codec of :mod:`mpiopt.kernels.half`: 16-bit words rounded, summed and decoded in compiled,
vectorized loops on the bits, without branches (numpy's float16 casts round one value at a time).

The rounding is numpy's (``npy_doublebits_to_halfbits``: the same bits, NaN payloads included), the
decoding numpy's ``npy_halfbits_to_floatbits``; where LLVM rounds float32 to float16 in one
instruction (x86 F16C, aarch64) the encoder and the chunk sums' rounding use it, and the decoding its
converse (:func:`hardware_half`).
The codec also serves bfloat16 (``fmt='bf16'``), checks words for inf/NaN by their exponent field
(``finite``), and fuses the SGD step's decoding with its update (``decode_update``). Imported only
when a compressor uses it: numba itself costs a process about 66 MB.
"""

import os
import platform
from typing import List

import numpy as np

from mpiopt.kernels.half import FLOATS, FORMATS, WORD

try:
    import numba as _nb
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic
except ImportError:  # pragma: no cover - exercised where numba is absent
    _nb = None

AVAILABLE = _nb is not None
FP16_BITS, BF16, FP16_HW = 0, 1, 2
"""Format codes of the decoding kernels: fp16 by bit operations, bf16, fp16 by the hardware's
conversion (where :func:`hardware_half`)."""


if AVAILABLE:
    _jit = _nb.njit(nogil=True, cache=True, error_model="numpy")
    _U = np.uint64
    _FRAC = _U(0x000FFFFFFFFFFFFF)
    _OVER, _INF64 = _U(0x40F0000000000000), _U(0x7FF0000000000000)
    _ABS, _NORMAL = _U(0x7FFFFFFFFFFFFFFF), _U(0x3F10000000000000)
    _REBIAS, _ROUND = _U(1008 << 52), _U(0x000001FFFFFFFFFF)
    _MAGIC = 2.0 ** 28
    _MAGIC_BITS = np.float64(_MAGIC).view(np.uint64)
    _INF16 = _U(0x7C00)
    _BF16_BIAS, _BF16_NAN, _S16, _ONE32 = np.uint32(0x7FFF), np.uint16(0x7FC0), np.uint32(16), np.uint32(1)
    _SIGN32, _ABS32, _INF32, _NORMAL32 = np.uint32(0x8000), np.uint32(0x7FFF), np.uint32(0x7C00), np.uint32(0x0400)
    _S13, _REBIAS32, _TINY = np.uint32(13), np.uint32((127 - 15) << 23), np.float32(2.0 ** -24)
    _ABS_F32, _FRAC32, _ROUND32, _ZERO32 = np.uint32(0x7FFFFFFF), np.uint32(0x007FFFFF), np.uint32(0xFFF), np.uint32(0)
    _INF_F32, _OVER32, _NORMAL_F32 = np.uint32(0x7F800000), np.uint32(0x47800000), np.uint32(0x38800000)
    _HALF_MAGIC = np.float32(0.5)
    _HALF_MAGIC_BITS = _HALF_MAGIC.view(np.uint32)
    _S48, _S42, _ONE = _U(48), _U(42), _U(1)

    @_jit
    def _half_bits(x):
        """numpy's npy_doublebits_to_halfbits (same bits, NaN payloads included) without branches,
        so that the loops calling it vectorize: the float16 bits of float64 x, nearest even."""
        d = np.float64(x).view(np.uint64)
        sign = (d >> _S48) & _U(0x8000)
        a = d & _ABS
        # normal: drop 42 fraction bits with round to nearest even (a carry may reach inf: right)
        normal = (a - _REBIAS + _ROUND + ((a >> _S42) & _ONE)) >> _S42
        # subnormal or zero: x + 2**28 rounds |x| to a multiple of 2**-24 in hardware (nearest even)
        sub = np.float64(abs(np.float64(x)) + _MAGIC).view(np.uint64) - _MAGIC_BITS
        frac = (a & _FRAC) >> _S42
        nan = _INF16 | frac | np.uint64(frac == _U(0))
        big = nan if a > _INF64 else _INF16
        bits = big if a >= _OVER else (sub if a < _NORMAL else normal)
        return np.uint16(sign | bits)

    @_jit
    def _half_bits32(x):
        """The same for float32 x in 32-bit lanes (twice as many a vector): numpy's
        npy_floatbits_to_halfbits, which rounds a float32 as its exact float64 widening would."""
        u = np.float32(x).view(np.uint32)
        sign = (u >> _S16) & _SIGN32
        a = u & _ABS_F32
        normal = (a - _REBIAS32 + _ROUND32 + ((a >> _S13) & _ONE32)) >> _S13
        sub = np.float32(abs(np.float32(x)) + _HALF_MAGIC).view(np.uint32) - _HALF_MAGIC_BITS
        frac = (a & _FRAC32) >> _S13
        nan = _INF32 | frac | np.uint32(frac == _ZERO32)
        big = nan if a > _INF_F32 else _INF32
        bits = big if a >= _OVER32 else (sub if a < _NORMAL_F32 else normal)
        return np.uint16(sign | bits)

    @_jit
    def _bf16_bits(x):
        """The bfloat16 bits of float32(x): round to nearest even, NaN -> 0x7FC0 (bf16_bits' rule)."""
        f = np.float32(x)
        u = f.view(np.uint32)
        r = (u + _BF16_BIAS + ((u >> _S16) & _ONE32)) >> _S16
        return np.uint16(_BF16_NAN if f != f else r)

    @_jit
    def _word(x, fmt):
        """The 16-bit word of float32 x in format code ``fmt`` (FP16_BITS, BF16, FP16_HW: by the hardware)."""
        if fmt == BF16:
            return _bf16_bits(x)
        return _to_half(x) if fmt == FP16_HW else _half_bits32(x)

    @_jit
    def _encode(v, n, bf16, single, words):
        fn = np.float64(n)
        if bf16:
            for i in range(v.size):
                words[i] = _bf16_bits(v[i])
        elif n & (n - 1) == 0 and single:  # v is float32
            # 1 / n is exact: v * (1 / n) in float32 is v / n (or, below 2**-126, rounds to a value
            # whose float16 is the same signed zero), rounded in 32-bit lanes
            inv32 = np.float32(1.0 / fn)
            for i in range(v.size):
                words[i] = _half_bits32(v[i] * inv32)
        elif n & (n - 1) == 0:  # 1 / n is exact: v * (1 / n) is v / n, bit for bit, without a division
            inv = 1.0 / fn
            for i in range(v.size):
                words[i] = _half_bits(np.float64(v[i]) * inv)
        else:
            for i in range(v.size):
                words[i] = _half_bits(np.float64(v[i]) / fn)

    @_jit
    def _half_value(h):
        """The float32 value of float16 bits h (exact; NaN payloads kept), without branches."""
        u = np.uint32(h)
        sign = (u & _SIGN32) << _S16
        em = u & _ABS32
        big = (em << _S13) + _REBIAS32  # normal; inf and NaN (exponent all ones) take the rebias twice
        big = big + _REBIAS32 if em >= _INF32 else big
        sub = np.float32(np.float32(em) * _TINY).view(np.uint32)  # subnormal or zero: em * 2**-24, exact
        return np.uint32(sign | (sub if em < _NORMAL32 else big)).view(np.float32)

    @_intrinsic
    def _from_half(typingctx, h):
        """float16 bits -> float32 by LLVM's fpext (x86 F16C's vcvtph2ps, an aarch64 fcvt): exact, as
        _half_value; a NaN comes out quiet (its payload may differ from numpy's)."""
        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], _ir.HalfType()), _ir.FloatType())

        return _types.float32(_types.uint16), codegen

    @_jit
    def _value(h, fmt):
        """The float32 value of a 16-bit word of format code ``fmt`` (FP16_BITS, BF16: the top half of
        a float32, FP16_HW: by the hardware)."""
        if fmt == BF16:
            return np.uint32(np.uint32(h) << _S16).view(np.float32)
        return _from_half(h) if fmt == FP16_HW else _half_value(h)

    @_jit
    def _sum_rows(rows, order, fmt, acc):
        """acc = the float32 sum of the decoded rows[order[0]], rows[order[1]], ..., left to right."""
        first = rows[order[0]]
        for j in range(acc.size):
            acc[j] = _value(first[j], fmt)
        for t in range(1, order.size):
            row = rows[order[t]]
            for j in range(acc.size):
                acc[j] += _value(row[j], fmt)

    @_jit
    def _round(acc, fmt, words):
        for j in range(acc.size):
            words[j] = _word(acc[j], fmt)

    @_intrinsic
    def _to_half(typingctx, x):
        """float32 -> float16 bits by LLVM's fptrunc (x86 F16C's vcvtps2ph, an aarch64 fcvt): nearest
        even, as numpy; a NaN comes out quiet (its payload may differ from numpy's)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(builder.fptrunc(args[0], _ir.HalfType()), _ir.IntType(16))

        return _types.uint16(_types.float32), codegen

    @_jit
    def _encode_hw(v, inv, words):
        """words = float16 bits of v * inv (float32 v, inv = 1 / n exact), by the hardware."""
        for i in range(v.size):
            words[i] = _to_half(v[i] * inv)

    @_jit
    def _decode(words, fmt, out):
        for i in range(out.size):
            out[i] = _value(words[i], fmt)

    @_jit
    def _count_non_finite(words, exp):
        hits = 0
        for i in range(words.size):
            hits += (words[i] & exp) == exp
        return hits

    @_jit
    def _decode_update(words, fmt, scale, lr, x):
        for i in range(x.size):
            m = _value(words[i], fmt) * scale
            m = m * lr
            x[i] = x[i] - m


class NumbaCodec:
    """The compiled codec (numba) of ``fmt`` ('fp16': CastCodec's words; 'bf16': those of
    :func:`mpiopt.compressors.bf16.bf16_bits`, v itself rounded, ``n`` unused), one pass each."""

    def __init__(self, dim: int, chunk: int, fmt: str = "fp16"):
        if not AVAILABLE:
            raise ImportError("the numba half-precision codec needs numba (pip install numba)")
        self.exp = FORMATS[fmt]
        self.bf16 = fmt == "bf16"
        self.hardware = not self.bf16 and hardware_half()
        self.code = BF16 if self.bf16 else (FP16_HW if self.hardware else FP16_BITS)
        self.acc = np.empty(chunk, dtype=np.float32)
        self._order = np.zeros(0, dtype=np.int64)

    def encode(self, v, n: int, words) -> None:
        words = words[:v.size]
        if self.hardware and v.dtype == np.float32 and n & (n - 1) == 0:
            _encode_hw(v, np.float32(1.0 / n), words)  # exact: v * (1 / n) is v / n (see _encode)
        else:
            _encode(v, n, self.bf16, v.dtype == np.float32, words)

    def reduce(self, rows, order: List[int], words) -> None:
        if self._order.tolist() != list(order):
            self._order = np.asarray(order, dtype=np.int64)
        _sum_rows(rows, self._order, self.code, self.acc)
        _round(self.acc, self.code, words)

    def decode(self, words, out) -> None:
        _decode(words, self.code, out.reshape(-1) if out.flags.c_contiguous else out)

    def finite(self, words) -> bool:
        """Whether every word is finite (its exponent field is not all ones)."""
        return _count_non_finite(words, self.exp) == 0

    def takes_update(self, x) -> bool:
        """Whether :meth:`decode_update` can update ``x`` in place (float32/float64, contiguous)."""
        return x.dtype in FLOATS and x.flags.c_contiguous

    def decode_update(self, words, scale: float, lr: float, x) -> None:
        """x -= lr * (decode(words) * scale), in one pass, with the bits of decoding into a ``mean`` of
        x's dtype, ``mean *= scale`` (skipped when 1: the same bits), then ``apply_step(x, lr, mean)``."""
        t = x.dtype.type
        _decode_update(words, self.code, t(scale), t(lr), x.reshape(-1))


def hardware_half() -> bool:
    """Whether LLVM rounds float32 to float16 in one instruction on this CPU (x86 with F16C, any
    aarch64); elsewhere it would call a runtime routine numba may not link, so the bit kernels serve.
    A target numba is told to use (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES) gets the bit kernels too."""
    if not AVAILABLE or os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES"):
        return False
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    if machine not in ("x86_64", "amd64"):
        return False
    from llvmlite import binding

    return "+f16c" in binding.get_host_cpu_features().flatten().split(",")


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels for float32 and float64 vectors."""
    if not AVAILABLE:
        return
    rows = np.zeros((2, 1), dtype=WORD)
    for dtype, fmt in ((d, f) for d in (np.float32, np.float64) for f in FORMATS):
        c = NumbaCodec(1, 1, fmt)
        c.encode(np.zeros(1, dtype=dtype), 2, rows[0])
        c.reduce(rows, [0, 1], rows[1])
        c.decode(rows[0], np.empty(1, dtype=dtype))
        c.finite(rows[0])
        c.decode_update(rows[0], 1.0, 0.1, np.zeros(1, dtype=dtype))
