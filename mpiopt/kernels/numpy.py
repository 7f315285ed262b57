"""The numpy quantizer kernel: Int(alpha * v) with counter-based rounding noise, into preallocated buffers.

Rounding noise (the contract every kernel -- numpy, a compiled CPU one, CuPy -- must reproduce bit
for bit). All arithmetic is on unsigned 64-bit integers modulo 2**64::

    G = 0x9E3779B97F4A7C15                                   (the SplitMix64 increment)
    mix64(z):  z ^= z >> 30;  z *= 0xBF58476D1CE4E5B9
               z ^= z >> 27;  z *= 0x94D049BB133111EB
               z ^= z >> 31;  return z                        (SplitMix64's finalizer)
    key(seed, worker, step) = mix64(mix64(mix64(seed + G) + worker + G) + step + G)
    u_j = (mix64(key + (j + 1) * G) >> 11) * 2**-53          for coordinate j = 0, 1, ..., d - 1

so u_j is the j-th output of SplitMix64 started at ``key``, turned into a double in [0, 1) from its
top 53 bits (the conversion is exact). ``seed`` and ``step`` are taken modulo 2**64, ``worker`` is
the shard id (never the comm rank, so reordering ranks cannot change any integer). There is no
generator state: the noise of step k is a pure function of (seed, worker, k, j), so a resumed run
and a GPU run draw the same bits.

Rounding of t_j = alpha_j * v_j (one IEEE double multiplication, rounded, *not* fused with the
addition that follows -- a CUDA kernel must not contract it into an FMA):

* ``random``:        Int(t) = floor(t + u)   (unbiased up to double rounding: E Int(t) = t, Var <= 1/4)
* ``deterministic``: Int(t) = rint(t)        (round half to even)

Clipping to a bound B (by default floor(M / n) for the wire dtype's maximum M and n ranks, so that a
sum of n clipped values cannot wrap) is counted: ``pack`` returns the number of clipped coordinates.
Non-finite inputs are replaced by 0 before the cast (casting NaN to an integer is undefined) and
reported through ``finite``, so the caller can stop every rank collectively.
"""

import math
from typing import Dict, Optional, Union

import numpy as np

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MUL1 = 0xBF58476D1CE4E5B9
MUL2 = 0x94D049BB133111EB
TO_UNIT = 2.0 ** -53

_G = np.uint64(GOLDEN)
_M1 = np.uint64(MUL1)
_M2 = np.uint64(MUL2)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))

ROUNDINGS = ("random", "deterministic")
NOISE_STEPS = 256
"""At most this many steps of noise are drawn at once, ..."""
NOISE_BLOCK = 1 << 14
"""... and only while steps * size stays within this many coordinates (so small vectors only)."""


def mix64(z: int) -> int:
    """SplitMix64's finalizer on a Python int (the scalar version of the array code below)."""
    z &= MASK
    z = ((z ^ (z >> 30)) * MUL1) & MASK
    z = ((z ^ (z >> 27)) * MUL2) & MASK
    return z ^ (z >> 31)


def worker_key(seed: int, worker: int) -> int:
    """mix64(mix64(seed + G) + worker + G): the part of the key fixed for a run and a worker."""
    return mix64(mix64((seed & MASK) + GOLDEN) + (worker & MASK) + GOLDEN)


def stream_key(seed: int, worker: int, step: int) -> int:
    """key(seed, worker, step) of the module docstring, as a Python int in [0, 2**64)."""
    return mix64(worker_key(seed, worker) + (step & MASK) + GOLDEN)


def counters(size: int) -> np.ndarray:
    """(j + 1) * G mod 2**64 for j < size: the per-coordinate counters, computed once per buffer."""
    return np.arange(1, size + 1, dtype=np.uint64) * _G


def mix64_array(z: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """mix64 of every value of the uint64 array ``z``, in place (``scratch``: a uint64 buffer of its shape)."""
    np.right_shift(z, _S30, out=scratch)
    np.bitwise_xor(z, scratch, out=z)
    np.multiply(z, _M1, out=z)
    np.right_shift(z, _S27, out=scratch)
    np.bitwise_xor(z, scratch, out=z)
    np.multiply(z, _M2, out=z)
    np.right_shift(z, _S31, out=scratch)
    return np.bitwise_xor(z, scratch, out=z)


def uniform(key, ctr: np.ndarray, out: np.ndarray, scratch: np.ndarray, z: np.ndarray) -> np.ndarray:
    """u_j = (mix64(key + ctr_j) >> 11) * 2**-53 into ``out`` (float64), with uint64 buffers
    ``scratch`` and ``z`` of out's shape; nothing is allocated. ``key`` is an int, or a (steps, 1)
    uint64 array of keys with ``ctr`` of shape (1, d), giving one row of noise per key."""
    np.add(ctr, key if isinstance(key, np.ndarray) else np.uint64(key), out=z)
    mix64_array(z, scratch)
    np.right_shift(z, _S11, out=z)
    return np.multiply(z, TO_UNIT, out=out)


def int_bound(dtype, n_ranks: int) -> int:
    """floor(M / n): the largest |value| one of n ranks may send so that the sum cannot wrap."""
    return int(np.iinfo(np.dtype(dtype)).max) // n_ranks


def float_below(bound: int) -> float:
    """The largest double <= ``bound`` (float(2**63 - 1) rounds up to 2**63, which int64 cannot hold)."""
    f = float(bound)
    return f if f <= bound else math.nextafter(f, 0.0)


def apply_step(x: np.ndarray, lr: float, mean: np.ndarray) -> None:
    """x -= lr * mean in place, with ``mean`` as the scratch for the product (the bits of
    ``x -= lr * mean``, without its temporary array)."""
    mean *= x.dtype.type(lr)
    x -= mean


class Quantizer:
    """Int(alpha * v) for vectors of ``size`` coordinates on one worker, all in preallocated buffers.

    ``encode(v, alpha, out, step=k)`` rounds alpha * v (alpha a scalar or a per-coordinate array),
    clips to the bound and writes the integers into ``out`` (any signed integer array of length
    ``size``); it returns the number of clipped coordinates. After it, ``max_abs`` holds
    max_j |Int(alpha v)_j| before clipping, ``finite`` whether v was finite, and ``sent`` (float64)
    the values actually written, so that ``decode_local`` gives this worker's own C(v) = sent / alpha.
    ``pack(out, bound)`` re-casts the same rounded values into another buffer (a wider dtype) without
    drawing new noise. ``decode(sum_int, alpha, n, out)`` is S / (n alpha), and
    ``decode_update(sum_int, alpha, n, lr, x)`` IntSGD's x -= lr * S / (n alpha).
    """

    def __init__(self, size: int, seed: int, worker: int, n_ranks: int = 1, rounding: str = "random"):
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.size, self.seed, self.worker, self.n_ranks, self.rounding = size, seed, worker, n_ranks, rounding
        self._worker_key = worker_key(seed, worker)
        steps = max(1, min(NOISE_STEPS, NOISE_BLOCK // max(size, 1)))
        self._ctr = counters(size) if steps == 1 else counters(size)[None, :]
        self._z = np.empty((steps, size) if steps > 1 else size, dtype=np.uint64)
        self._scratch = np.empty_like(self._z)
        self._keys = np.empty((steps, 1), dtype=np.uint64)
        self._key_scratch = np.empty_like(self._keys)
        self._offsets = np.arange(steps, dtype=np.uint64)[:, None]
        """i for the i-th row of a block of noise: its key is mix64(worker_key + (first + i) + G)."""
        self.noise_buf = np.empty(self._z.shape)
        """u for ``steps`` consecutive steps at once when vectors are small (one row per step)."""
        self._first = -1  # the step of noise_buf's first row; -1: nothing drawn yet
        self._noise_rows = list(self.noise_buf) if self.noise_buf.ndim == 2 else None
        """noise_buf's rows, as views made once (a view costs more than adding a short row)."""
        self._alpha_0d = np.zeros(())
        self._lr_0d: Dict[np.dtype, np.ndarray] = {}
        """A scalar factor as a 0-d array of the vector's dtype: numpy converts a Python float
        argument on every call, which costs more than multiplying a short vector (the same bits)."""
        self.rounded = np.empty(size)
        """Int(alpha v) as doubles, before clipping."""
        self._clipped_buf = np.empty(size)
        self._abs = np.empty(size)
        self._mask = np.empty(size, dtype=bool)
        self.sent = self.rounded
        self.max_abs = 0.0
        self.finite = True
        self._means: Dict[np.dtype, np.ndarray] = {}
        self._squares: Optional[np.ndarray] = None

    def noise(self, step: int) -> np.ndarray:
        """This worker's u_j for ``step`` (a view of an internal buffer, valid until the next call).

        For small vectors the noise of NOISE_STEPS consecutive steps is drawn in one go (the same
        bits, since u is a pure function of the step), which cuts numpy's per-call overhead by that
        factor; the block is redrawn whenever a step outside it is asked for (a resume, a rerun)."""
        rows = self._noise_rows
        if rows is None:
            key = mix64(self._worker_key + (step & MASK) + GOLDEN)  # = stream_key(seed, worker, step)
            return uniform(key, self._ctr, self.noise_buf, self._scratch, self._z)
        row = step - self._first
        if self._first < 0 or not 0 <= row < len(rows):
            buf = self.noise_buf
            keys = np.add(self._offsets, np.uint64((self._worker_key + (step & MASK) + GOLDEN) & MASK), out=self._keys)
            uniform(mix64_array(keys, self._key_scratch), self._ctr, buf, self._scratch, self._z)
            self._first, row = step, 0
        return rows[row]

    def round(self, v: np.ndarray, alpha: Union[float, np.ndarray], step: int,
              into: Optional[np.ndarray] = None) -> np.ndarray:
        """Int(alpha v) as doubles into ``self.rounded`` (no clipping); sets ``max_abs`` and ``finite``.

        ``into`` (the int8 wire buffer the next ``pack`` fills) lets the numba kernel write the
        integers there in the same pass; here ``pack`` copies them, so it is accepted and not needed."""
        if alpha.__class__ is float:
            self._alpha_0d[...] = alpha
            alpha = self._alpha_0d
        t = np.multiply(v, alpha, out=self.rounded, dtype=np.float64)  # in double even for float32 v
        if self.rounding == "random":
            t += self.noise(step)
            np.floor(t, out=t)
        else:
            np.rint(t, out=t)
        a = np.abs(t, out=self._abs)
        m = float(np.maximum.reduce(a)) if self.size else 0.0  # a.max() without its Python wrapper
        self.finite = math.isfinite(m)
        if not self.finite:
            np.nan_to_num(t, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            m = float(np.abs(t, out=a).max())
        self.max_abs = m
        return t

    def pack(self, out: np.ndarray, bound: Optional[int] = None) -> int:
        """Cast the rounded values, clipped to ``bound`` (default floor(M / n) of ``out``'s dtype),
        into ``out``; returns the number of clipped coordinates and points ``sent`` at what went out."""
        if bound is None:
            bound = int_bound(out.dtype, self.n_ranks)
        clipped = 0
        src = self.rounded
        if self.max_abs > bound:
            clipped = int(np.count_nonzero(np.greater(self._abs, bound, out=self._mask)))
            fb = float_below(bound)
            src = np.clip(self.rounded, -fb, fb, out=self._clipped_buf)
        out[...] = src  # an unsafe cast, as np.copyto(casting="unsafe"), with less call overhead
        self.sent = src
        return clipped

    def encode(self, v: np.ndarray, alpha: Union[float, np.ndarray], out: np.ndarray, *, step: int,
               bound: Optional[int] = None) -> int:
        """Int(alpha v), clipped, into the integer array ``out``; returns the number clipped."""
        self.round(v, alpha, step)
        return self.pack(out, bound)

    def decode_local(self, alpha: Union[float, np.ndarray], out: np.ndarray) -> np.ndarray:
        """This worker's own decoded C(v) = sent / alpha."""
        return np.divide(self.sent, alpha, out=out)

    @staticmethod
    def decode(sum_int: np.ndarray, alpha: Union[float, np.ndarray], n: int, out: np.ndarray) -> np.ndarray:
        """S / (n alpha) into ``out`` (float64); identical on every rank given identical inputs."""
        if alpha.__class__ is float or np.ndim(alpha) == 0:
            return np.divide(sum_int, n * float(alpha), out=out)
        np.divide(sum_int, alpha, out=out)
        out *= 1.0 / n
        return out

    @staticmethod
    def step_squares(x: np.ndarray, x_prev: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out = (x - x_prev)^2 in float64 (x_prev float64), then x_prev <- x: the squares whose sum is
        adaptive alpha's ||x^k - x^{k-1}||^2, and the iterate remembered for the next step."""
        np.subtract(x, x_prev, out=out)
        np.multiply(out, out, out=out)
        x_prev[...] = x
        return out

    def step_squares_sum(self, x: np.ndarray, x_prev: np.ndarray) -> float:
        """||x - x_prev||^2 (the sum of ``step_squares``, numpy's pairwise order), and x_prev <- x."""
        if self._squares is None:
            self._squares = np.empty(self.size)
        return float(np.add.reduce(self.step_squares(x, x_prev, self._squares)))  # .sum(), without its wrapper

    def decode_update(self, sum_int: np.ndarray, alpha: Union[float, np.ndarray], n: int, lr: float,
                      x: np.ndarray) -> np.ndarray:
        """x -= lr * S / (n alpha) in place: ``decode`` into a mean of x's dtype, then ``x -= lr * mean``
        (IntSGD's update; the numba kernel does it in one pass with these bits)."""
        mean = self._means.get(x.dtype)
        if mean is None:
            mean = self._means[x.dtype] = np.empty(x.shape, dtype=x.dtype)
            self._lr_0d[x.dtype] = np.zeros((), dtype=x.dtype)
        if alpha.__class__ is float:
            self._alpha_0d[...] = n * alpha
            np.divide(sum_int, self._alpha_0d, out=mean)
        else:
            self.decode(sum_int, alpha, n, mean)
        factor = self._lr_0d[x.dtype]
        factor[...] = lr
        mean *= factor
        x -= mean
        return x
