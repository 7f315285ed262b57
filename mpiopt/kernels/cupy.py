"""The CuPy quantizer kernel (extra ``[gpu]``): ``mpiopt.kernels.numpy``'s contract, on the GPU.

``Quantizer`` here has the numba Quantizer's interface (``takes_blocks``: alpha may be one value per
alpha block) and gives the numpy reference's integers, bit for bit, for the same (seed, worker,
step, coordinate) and alpha: the SplitMix64 noise is drawn inside the kernels, so no noise array is
ever stored, and Int(alpha v) is *recomputed* from v and the counter-based noise wherever it is
needed rather than kept. A quantizer step is two passes over v:

* ``round``: per chunk, max |Int(alpha v)| over the finite values and the count of non-finite
  ones (reads v: 4 bytes per element for float32); one 16-byte read-back, because the overflow
  protocol of the int compressor decides the header from it before the collective;
* ``pack``: Int(alpha v) again, clipped and cast into the wire buffer (reads v, writes the integer:
  5 bytes per element for float32 into int8), counting the clipped ones per chunk (read back only
  when something can have been clipped).

So 9 bytes move per float32 element and nothing of size d is allocated by the quantizer beyond
what its caller asks for (``sent``, ``rounded`` and ``noise`` are made on demand, for checks and
for methods that need their own C(v)). v (and a device alpha array) must stay unchanged between
``round`` and the last ``pack``/``decode_local`` of a step, as with the numba kernel.

Every reduction has a fixed order, the same bits on every rank and every run: the coordinates are
cut into chunks of at most ``CHUNK`` that never straddle an alpha block; each chunk is one CUDA
block of ``THREADS`` threads, thread t adding coordinates lo + t, lo + t + THREADS, ... in that
order, then a shared-memory tree of fixed shape; a second kernel adds a block's chunk sums in chunk
order. (CuPy's float ``add.reduceat`` is computed from a float cumsum whose bits vary run to run
and can be negative for a block that did not move; ``maximum.reduceat`` does not exist in CuPy.)
The block sums of ||x - x_prev||^2 therefore differ in the last bits from numpy's pairwise sum
(CPU); they are identical across ranks, runs and GPUs, which is what alpha needs.

Bit-exactness of the integers with numpy rests on IEEE double arithmetic without contraction: the
product alpha * v and the sum with u are written with ``__dmul_rn``/``__dadd_rn``, which NVRTC never
fuses into an FMA. Inputs may be float16, float32 or float64; they are widened to double first.

All work is queued on CuPy's current device and stream: wrap calls in :func:`torch_stream` (or
:func:`device_stream`) to put them on torch's current stream of the tensor's device, so that the
quantizer reads a bucket after what torch queued before it and the collective (NCCL, on torch's
stream order) reads the integers after the quantizer wrote them, with no ``set_device``.

``xp`` (default CuPy) is the array module the quantizer allocates with and launches ``RawKernel``s
of; the tests pass the CuPy-rules module (numpy arrays under CuPy's rules, with numpy twins of these
kernels), so the Python side of this module runs in ``make test`` without a GPU.
"""

import contextlib
import math
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from mpiopt.kernels.numpy import GOLDEN, MASK, MUL1, MUL2, ROUNDINGS, float_below, int_bound, mix64, worker_key

THREADS = 256
"""Threads per CUDA block of the chunk kernels (part of the reduction order: never change it alone)."""
CHUNK = 8192
"""Most coordinates of one chunk (one CUDA block); chunks never straddle an alpha block."""

C_TYPES = {np.dtype(np.float16): "__half", np.dtype(np.float32): "float", np.dtype(np.float64): "double",
           np.dtype(np.int8): "signed char", np.dtype(np.int16): "short", np.dtype(np.int32): "int",
           np.dtype(np.int64): "long long"}
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
"""The dtypes a decoded mean or an updated x may have."""

Alpha = Union[float, np.floating, np.ndarray, Any]


def _cupy():
    import cupy

    return cupy


def chunk_table(size: int, starts: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, block, first): chunk c covers [lo[c], hi[c]) inside alpha block ``block[c]``, and
    block b's chunks are first[b] .. first[b + 1] - 1 (int64 arrays, built once on the host)."""
    ends = np.append(starts[1:], size).astype(np.int64)
    counts = np.maximum(-(-(ends - starts) // CHUNK), 0)
    first = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    block = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    lo = starts[block] + (np.arange(first[-1], dtype=np.int64) - first[block]) * CHUNK
    hi = np.minimum(lo + CHUNK, ends[block])
    return lo.astype(np.int64), hi.astype(np.int64), block, first


HALF = """
#include <cuda_fp16.h>
__device__ __forceinline__ double mpiopt_load(const __half* p, long long j) { return (double)__half2float(p[j]); }
"""
"""Prepended for float16 inputs only (the one kernel family that needs CUDA's half header)."""

PREAMBLE = f"""
#define MPIOPT_THREADS {THREADS}
__device__ __forceinline__ unsigned long long mpiopt_mix64(unsigned long long z) {{
    z = (z ^ (z >> 30)) * {MUL1:#x}ULL;
    z = (z ^ (z >> 27)) * {MUL2:#x}ULL;
    return z ^ (z >> 31);
}}
__device__ __forceinline__ double mpiopt_uniform(unsigned long long key, long long j) {{
    unsigned long long z = mpiopt_mix64(key + (unsigned long long)(j + 1) * {GOLDEN:#x}ULL);
    return ldexp((double)(z >> 11), -53);   /* exact: a 53-bit integer times 2**-53 */
}}
__device__ __forceinline__ double mpiopt_load(const double* p, long long j) {{ return p[j]; }}
__device__ __forceinline__ double mpiopt_load(const float* p, long long j) {{ return (double)p[j]; }}
/* alpha of coordinate j in chunk block b: mode 0 one scalar, 1 one per block, 2 one per coordinate */
__device__ __forceinline__ double mpiopt_alpha(const double* alphas, double a0, int mode, long long b, long long j) {{
    return mode == 0 ? a0 : (mode == 1 ? alphas[b] : alphas[j]);
}}
/* Int(alpha v): floor(alpha v + u_j) or rint(alpha v), in IEEE double without contraction */
__device__ __forceinline__ double mpiopt_int(double v, double a, unsigned long long key, long long j, int random) {{
    double t = __dmul_rn(v, a);
    return random ? floor(__dadd_rn(t, mpiopt_uniform(key, j))) : rint(t);
}}
__device__ __forceinline__ float mpiopt_mul(float a, float b) {{ return __fmul_rn(a, b); }}
__device__ __forceinline__ double mpiopt_mul(double a, double b) {{ return __dmul_rn(a, b); }}
__device__ __forceinline__ float mpiopt_sub(float a, float b) {{ return __fsub_rn(a, b); }}
__device__ __forceinline__ double mpiopt_sub(double a, double b) {{ return __dsub_rn(a, b); }}
/* S / (n alpha) into O with numpy's operations: s / (n a) for one alpha, else (O)(s / a) * (O)(1 / n) */
template <typename O> __device__ __forceinline__ O mpiopt_decode(double s, double a, int mode, double c, double inv_n) {{
    return mode == 0 ? (O)__ddiv_rn(s, c) : mpiopt_mul((O)__ddiv_rn(s, a), (O)inv_n);
}}
"""

_SUM_TREE = """
    __shared__ double part[MPIOPT_THREADS];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int w = MPIOPT_THREADS / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] = __dadd_rn(part[threadIdx.x], part[threadIdx.x + w]);
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[c] = part[0];
"""

_MAX_TREE = """
    __shared__ double part[MPIOPT_THREADS];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int w = MPIOPT_THREADS / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            double o = part[threadIdx.x + w];
            if (o > part[threadIdx.x] || o != o) part[threadIdx.x] = o;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[c] = part[0];
"""

_COUNT_TREE = """
    __shared__ long long cnt[MPIOPT_THREADS];
    cnt[threadIdx.x] = n;
    __syncthreads();
    for (int w = MPIOPT_THREADS / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) cnt[threadIdx.x] += cnt[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) counts[c] = cnt[0];
"""

_CHUNK_ARGS = "const long long* lo, const long long* hi, const long long* blk"
_ALPHA_ARGS = "const double* alphas, double a0, int mode"
_LOOP = "long long c = blockIdx.x;\n    for (long long j = lo[c] + threadIdx.x; j < hi[c]; j += MPIOPT_THREADS)"

_COMBINE = """extern "C" __global__ void {name}(const double* partial, const long long* first, long long nb,
        double* out) {{
    long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nb) return;
    double acc = 0.0;
    for (long long c = first[b]; c < first[b + 1]; ++c) ACCUMULATE
    out[b] = acc;
}}"""
"""One thread per alpha block folds its chunks' partial results in chunk order."""

_SOURCES = {
    # sum over the chunk of (x_j - x_prev_j)^2 in double, and x_prev_j = x_j
    "sqdiff": """extern "C" __global__ void {name}(const {T}* x, double* x_prev, {chunk}, double* partial) {{
    double acc = 0.0;
    {loop} {{
        double xj = mpiopt_load(x, j);
        double t = __dsub_rn(xj, x_prev[j]);
        acc = __dadd_rn(acc, __dmul_rn(t, t));
        x_prev[j] = xj;
    }}
    {sum_tree}}}""",
    # max |v| over the chunk, NaN when a value is NaN (an inf is its own max)
    "absmax": """extern "C" __global__ void {name}(const {T}* v, {chunk}, double* partial) {{
    double acc = 0.0;
    {loop} {{
        double a = fabs(mpiopt_load(v, j));
        if (a > acc || a != a) acc = a;
    }}
    {max_tree}}}""",
    # max |Int(alpha v)| over the chunk's finite values, and how many were not finite
    "qmax": """extern "C" __global__ void {name}(const {T}* v, {alpha}, {chunk}, unsigned long long key, int random,
        double* partial, long long* counts) {{
    double acc = 0.0;
    long long n = 0;
    {loop} {{
        double r = mpiopt_int(mpiopt_load(v, j), mpiopt_alpha(alphas, a0, mode, blk[c], j), key, j, random);
        if (isfinite(r)) acc = fmax(acc, fabs(r)); else n += 1;
    }}
    {max_tree}
    {count_tree}}}""",
    # Int(alpha v) clipped to [-fb, fb] (non-finite: 0) cast into the wire; counts |Int| > bound
    "pack": """extern "C" __global__ void {name}(const {T}* v, {alpha}, {chunk}, unsigned long long key, int random,
        double bound, double fb, {Q}* out, long long* counts) {{
    long long n = 0;
    {loop} {{
        double r = mpiopt_int(mpiopt_load(v, j), mpiopt_alpha(alphas, a0, mode, blk[c], j), key, j, random);
        if (!isfinite(r)) r = 0.0;
        if (fabs(r) > bound) n += 1;
        out[j] = ({Q})fmin(fmax(r, -fb), fb);
    }}
    {count_tree}}}""",
    # the values sent, as doubles: Int(alpha v) clipped to [-fb, fb], non-finite as 0
    "values": """extern "C" __global__ void {name}(const {T}* v, {alpha}, {chunk}, unsigned long long key, int random,
        double fb, double* out) {{
    {loop} {{
        double r = mpiopt_int(mpiopt_load(v, j), mpiopt_alpha(alphas, a0, mode, blk[c], j), key, j, random);
        out[j] = isfinite(r) ? fmin(fmax(r, -fb), fb) : 0.0;
    }}
}}""",
    # this worker's own C(v) = sent / alpha into O
    "local": """extern "C" __global__ void {name}(const {T}* v, {alpha}, {chunk}, unsigned long long key, int random,
        double fb, {O}* out) {{
    {loop} {{
        double a = mpiopt_alpha(alphas, a0, mode, blk[c], j);
        double r = mpiopt_int(mpiopt_load(v, j), a, key, j, random);
        out[j] = ({O})__ddiv_rn(isfinite(r) ? fmin(fmax(r, -fb), fb) : 0.0, a);
    }}
}}""",
    # S / (n alpha) into O
    "decode": """extern "C" __global__ void {name}(const {S}* s, {alpha}, {chunk}, double cn, double inv_n, {O}* out) {{
    {loop} {{
        out[j] = mpiopt_decode<{O}>((double)s[j], mpiopt_alpha(alphas, a0, mode, blk[c], j), mode, cn, inv_n);
    }}
}}""",
    # x -= lr * S / (n alpha): decode into O, times (O)lr, subtracted (numpy's apply_step)
    "decode_update": """extern "C" __global__ void {name}(const {S}* s, {alpha}, {chunk}, double cn, double inv_n,
        {O} lr, {O}* x) {{
    {loop} {{
        {O} m = mpiopt_decode<{O}>((double)s[j], mpiopt_alpha(alphas, a0, mode, blk[c], j), mode, cn, inv_n);
        x[j] = mpiopt_sub(x[j], mpiopt_mul(m, lr));
    }}
}}""",
    # u_j for every coordinate (checks only: the other kernels draw it inline)
    "noise": """extern "C" __global__ void {name}(unsigned long long key, long long size, double* out) {{
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < size; j += (long long)gridDim.x * blockDim.x)
        out[j] = mpiopt_uniform(key, j);
}}""",
    # out[b] = the chunk sums of block b added in chunk order
    "combine_sum": _COMBINE.replace("ACCUMULATE", "acc = __dadd_rn(acc, partial[c]);"),
    # out[b] = the max of block b's chunk maxima (NaN sticky)
    "combine_max": _COMBINE.replace("ACCUMULATE", "if (partial[c] > acc || partial[c] != partial[c]) acc = partial[c];"),
    # out = [max of the chunk maxima, sum of the chunk counts] (one thread)
    "finish": """extern "C" __global__ void {name}(const double* partial, const long long* counts, long long nc,
        double* out) {{
    double m = 0.0;
    long long n = 0;
    for (long long c = 0; c < nc; ++c) {{ m = fmax(m, partial[c]); n += counts[c]; }}
    out[0] = m;
    out[1] = (double)n;
}}""",
}


def _type_suffix(*dtypes: np.dtype) -> str:
    return "".join("_" + np.dtype(t).name for t in dtypes)


def kernel_name(kind: str, *dtypes) -> str:
    """The C name of kernel ``kind`` for these element types, e.g. ``mpiopt_pack_float32_int8``."""
    return f"mpiopt_{kind}{_type_suffix(*dtypes)}"


def kernel_body(kind: str, **types: np.dtype) -> str:
    """The CUDA C function of kernel ``kind`` with its element types (T: v or x, Q: the wire, S: a
    sum, O: a decoded output), without the preamble."""
    names = {k: C_TYPES[np.dtype(t)] for k, t in types.items()}
    return _SOURCES[kind].format(name=kernel_name(kind, *types.values()), chunk=_CHUNK_ARGS, alpha=_ALPHA_ARGS,
                                 loop=_LOOP, sum_tree=_SUM_TREE, max_tree=_MAX_TREE, count_tree=_COUNT_TREE, **names)


def kernel_source(kind: str, **types: np.dtype) -> str:
    """The CUDA C source of kernel ``kind``: the preamble (with the half header for float16) and the body."""
    half = any(np.dtype(t) == np.float16 for t in types.values())
    return (HALF if half else "") + PREAMBLE + kernel_body(kind, **types)


_KERNELS: Dict[Tuple[int, str, Tuple[str, ...]], Any] = {}


def kernel(xp: Any, kind: str, **types) -> Any:
    """``xp.RawKernel`` of ``kind`` for these types, compiled once per array module and types."""
    key = (id(xp), kind, tuple(np.dtype(t).name for t in types.values()))
    made = _KERNELS.get(key)
    if made is None:
        made = _KERNELS[key] = xp.RawKernel(kernel_source(kind, **types), kernel_name(kind, *types.values()),
                                            options=("-std=c++14",))
    return made


class Quantizer:
    """Int(alpha * v) on the GPU for vectors of ``size`` coordinates; the numba Quantizer's interface.

    ``blocks``: the first coordinate of each alpha block; alpha may then be one value per block (a
    numpy or device array of ``len(blocks)``), besides a scalar or a device array of ``size``
    values. After ``round``, ``max_abs`` is max_j |Int(alpha v)_j| over the finite values and
    ``finite`` whether all were finite. Device memory: the chunk table and a few values per chunk
    and per block, allocated on first use on the current device; ``sent``, ``rounded`` and
    ``noise`` allocate d doubles each, on demand.
    """

    takes_blocks = True
    """alpha may be one value per block of ``blocks``."""

    def __init__(self, size: int, seed: int, worker: int, n_ranks: int = 1, rounding: str = "random",
                 blocks: Optional[Sequence[int]] = None, xp: Any = None):
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.xp = _cupy() if xp is None else xp
        self.size, self.seed, self.worker, self.n_ranks, self.rounding = size, seed, worker, n_ranks, rounding
        self._worker_key = worker_key(seed, worker)
        starts = np.asarray([0] if blocks is None else blocks, dtype=np.int64)
        self.n_blocks = len(starts)
        self._host_table = chunk_table(size, starts)
        self.n_chunks = len(self._host_table[0])
        self._table: Optional[Tuple[Any, ...]] = None
        self._dev: Dict[str, Any] = {}
        self._alphas_host = np.full(self.n_blocks, np.nan)
        self._last: Optional[tuple] = None
        self._sent_bound = math.inf
        self.max_abs = 0.0
        self.finite = True

    # -- device memory, made on first use ---------------------------------------------------------
    def _buf(self, name: str, shape, dtype=np.float64):
        """The device scratch ``name``, allocated once (on the current device) and reused."""
        buf = self._dev.get(name)
        if buf is None:
            buf = self._dev[name] = self.xp.empty(shape, dtype=dtype)
        return buf

    def _chunks(self) -> Tuple[Any, ...]:
        """(lo, hi, block, first, [0, n_chunks]) on the device."""
        if self._table is None:
            lo, hi, block, first = self._host_table
            whole = np.array([0, self.n_chunks], dtype=np.int64)
            self._table = tuple(self.xp.asarray(a) for a in (lo, hi, block, first, whole))
        return self._table

    @property
    def device_bytes(self) -> int:
        """Bytes of device memory this quantizer holds now (the chunk table and its scratch)."""
        table = sum(int(a.nbytes) for a in self._table) if self._table is not None else 0
        return table + sum(int(b.nbytes) for b in self._dev.values())

    def _launch(self, kind: str, args: tuple, grid: Optional[int] = None, **types) -> None:
        """Kernel ``kind`` over every chunk (or ``grid`` blocks), on the current stream."""
        blocks = self.n_chunks if grid is None else grid
        if blocks:
            kernel(self.xp, kind, **types)((blocks,), (THREADS,), args)

    def _alpha(self, alpha: Alpha) -> Tuple[Any, np.float64, np.int32]:
        """(alphas, a0, mode) for the kernels: mode 0 one scalar a0, 1 one per block, 2 one per coordinate."""
        dummy = self._buf("alphas", self.n_blocks)
        if isinstance(alpha, self.xp.ndarray):
            if alpha.dtype != np.float64 or alpha.ndim != 1 or alpha.shape[0] not in (self.n_blocks, self.size):
                raise ValueError(f"a device alpha must be float64 of {self.n_blocks} blocks or {self.size} "
                                 f"coordinates, got {alpha.dtype} {alpha.shape}")
            return alpha, np.float64(0.0), np.int32(1 if alpha.shape[0] == self.n_blocks else 2)
        if np.ndim(alpha) == 0:
            return dummy, np.float64(alpha), np.int32(0)
        host = np.asarray(alpha, dtype=np.float64)
        if host.shape != (self.n_blocks,):
            raise ValueError(f"alpha must be a scalar, {self.n_blocks} block values or a device array of "
                             f"{self.size}, got shape {host.shape}")
        if not np.array_equal(host, self._alphas_host):  # upload only what changed (decode reuses round's)
            dummy.set(host)
            self._alphas_host[...] = host
        return dummy, np.float64(0.0), np.int32(1)

    def _key(self, step: int) -> np.uint64:
        return np.uint64(mix64(self._worker_key + (step & MASK) + GOLDEN))

    def _v(self, v) -> Any:
        if v.shape != (self.size,) or v.dtype not in C_TYPES or v.dtype.kind != "f":
            raise ValueError(f"v must be a float16/32/64 device array of shape ({self.size},), got {v.dtype} {v.shape}")
        if not v.flags.c_contiguous:
            raise ValueError("v must be contiguous")
        return v

    # -- the quantizer contract -------------------------------------------------------------------
    def noise(self, step: int):
        """This worker's u_j for ``step`` (checks only; the other kernels draw it inline)."""
        out = self._buf("noise", self.size)
        kernel(self.xp, "noise")(((self.size + THREADS - 1) // THREADS or 1,), (THREADS,),
                                 (self._key(step), np.int64(self.size), out))
        return out

    def round(self, v, alpha: Alpha, step: int, into=None) -> "Quantizer":
        """max |Int(alpha v)| (``max_abs``) and whether every value was finite (``finite``), one
        16-byte read-back; the integers themselves are made by ``pack``. ``into`` (the numba kernel's
        int8 target) is accepted and not needed."""
        v = self._v(v)
        alphas, a0, mode = self._alpha(alpha)
        lo, hi, blk, _, _ = self._chunks()
        key, random = self._key(step), np.int32(self.rounding == "random")
        pmax, counts = self._buf("partial", self.n_chunks), self._buf("counts", self.n_chunks, np.int64)
        self._launch("qmax", (v, alphas, a0, mode, lo, hi, blk, key, random, pmax, counts), T=v.dtype)
        res = self._buf("result", 2)
        kernel(self.xp, "finish")((1,), (1,), (pmax, counts, np.int64(self.n_chunks), res))
        m, bad = res.tolist()
        self.max_abs, self.finite = float(m), bad == 0
        self._last = (v, alphas, a0, mode, key, random)
        self._sent_bound = math.inf
        return self

    def _recompute(self) -> tuple:
        if self._last is None:
            raise RuntimeError("round() first: the integers are recomputed from its v and alpha")
        v, alphas, a0, mode, key, random = self._last
        lo, hi, blk, _, _ = self._chunks()
        return v, (v, alphas, a0, mode, lo, hi, blk, key, random)

    def pack(self, out, bound: Optional[int] = None) -> int:
        """Int(alpha v) of the last ``round``, clipped to ``bound`` (default floor(M / n) of ``out``'s
        dtype), cast into the device array ``out``; returns the number clipped (read back only when
        ``max_abs`` exceeds the bound)."""
        if bound is None:
            bound = int_bound(out.dtype, self.n_ranks)
        if out.shape != (self.size,) or out.dtype not in C_TYPES or out.dtype.kind != "i":
            raise ValueError(f"out must be a signed integer device array of shape ({self.size},), got {out.dtype}")
        v, args = self._recompute()
        clips = self.max_abs > bound
        fb = float_below(bound)
        counts = self._buf("counts", self.n_chunks, np.int64)
        self._launch("pack", args + (np.float64(bound), np.float64(fb), out, counts), T=v.dtype, Q=out.dtype)
        self._sent_bound = fb if clips else math.inf
        if not clips:
            return 0
        return int(counts.sum())

    def encode(self, v, alpha: Alpha, out, *, step: int, bound: Optional[int] = None) -> int:
        """Int(alpha v), clipped, into the integer device array ``out``; returns the number clipped."""
        self.round(v, alpha, step)
        return self.pack(out, bound)

    def _values(self, name: str, fb: float):
        v, args = self._recompute()
        out = self._buf(name, self.size)
        self._launch("values", args + (np.float64(fb), out), T=v.dtype)
        return out

    @property
    def rounded(self):
        """Int(alpha v) of the last ``round`` as doubles, before clipping (made on demand)."""
        return self._values("rounded", math.inf)

    @property
    def sent(self):
        """The values the last ``pack`` wrote, as doubles (made on demand)."""
        return self._values("sent", self._sent_bound)

    def decode_local(self, alpha: Alpha, out):
        """This worker's own decoded C(v) = sent / alpha into ``out`` (float32 or float64)."""
        if out.dtype not in FLOATS:
            raise ValueError(f"out must be float32 or float64, got {out.dtype}")
        v, args = self._recompute()
        self._launch("local", args + (np.float64(self._sent_bound), out), T=v.dtype, O=out.dtype)
        return out

    def _decoding(self, sum_int, alpha: Alpha, n: int, out) -> tuple:
        if out.dtype not in FLOATS:
            raise ValueError(f"out must be float32 or float64, got {out.dtype}")
        alphas, a0, mode = self._alpha(alpha)
        lo, hi, blk, _, _ = self._chunks()
        return (sum_int, alphas, a0, mode, lo, hi, blk, np.float64(n * float(a0)), np.float64(1.0 / n))

    def decode(self, sum_int, alpha: Alpha, n: int, out):
        """S / (n alpha) into ``out``: the numpy kernel's operations, bit for bit."""
        self._launch("decode", self._decoding(sum_int, alpha, n, out) + (out,), S=sum_int.dtype, O=out.dtype)
        return out

    def decode_update(self, sum_int, alpha: Alpha, n: int, lr: float, x):
        """x -= lr * S / (n alpha) in place, in one pass: the bits of ``decode`` into a mean of x's
        dtype followed by numpy's ``apply_step``."""
        self._launch("decode_update", self._decoding(sum_int, alpha, n, x) + (x.dtype.type(lr), x),
                     S=sum_int.dtype, O=x.dtype)
        return x

    def _block_squares(self, x, x_prev, whole: bool):
        """Each block's (or, ``whole``, the vector's) sum of (x - x_prev)^2 in the fixed chunk
        order, on the device; x_prev <- x."""
        if x.shape != (self.size,) or x_prev.shape != (self.size,) or x_prev.dtype != np.float64:
            raise ValueError(f"x and a float64 x_prev of shape ({self.size},) are needed")
        lo, hi, blk, first, all_chunks = self._chunks()
        partial = self._buf("partial", self.n_chunks)
        self._launch("sqdiff", (x, x_prev, lo, hi, blk, partial), T=x.dtype)
        nb = 1 if whole else self.n_blocks
        out = self._buf("one" if whole else "blocks", nb)
        kernel(self.xp, "combine_sum")(((nb + THREADS - 1) // THREADS,), (THREADS,),
                                       (partial, all_chunks if whole else first, np.int64(nb), out))
        return out

    def step_squares_sum(self, x, x_prev) -> float:
        """||x - x_prev||^2 in the fixed chunk order (the same bits on every rank and run), and x_prev <- x."""
        return float(self._block_squares(x, x_prev, whole=True).tolist()[0])

    def block_adaptive_alpha(self, x, x_prev, r: np.ndarray, have_r: bool, beta: float, lr, n: int,
                             constants: Tuple[np.ndarray, np.ndarray], squares: np.ndarray,
                             out: np.ndarray) -> np.ndarray:
        """The numba kernel's method of this name: each block's ||x - x_prev||^2 (fixed order, on the
        device; one read-back of a value per block) into ``squares``, x_prev <- x, then on the host
        r <- beta r + (1 - beta) squares (r <- squares when not ``have_r``) and
        alpha = lr (sqrt(d_l) / sqrt(2 n r + lr^2 eps_share)) per block into ``out`` (the numpy
        operations of the int compressor, ``lr`` one step size or one per block)."""
        squares[...] = self._block_squares(x, x_prev, whole=False).get()
        if have_r:
            r *= beta
            r += (1.0 - beta) * squares
        else:
            r[...] = squares
        sqrt_sizes, eps_share = constants
        np.multiply(r, 2.0 * n, out=out)
        out += np.multiply(lr, lr) * eps_share
        np.sqrt(out, out=out)
        np.divide(sqrt_sizes, out, out=out)
        out *= lr
        return out

    def block_max_abs(self, v, out: np.ndarray) -> np.ndarray:
        """max |v| of each block into the host array ``out`` (NaN or inf where a value is not
        finite); one read-back of a value per block."""
        v = self._v(v)
        lo, hi, blk, first, _ = self._chunks()
        partial = self._buf("partial", self.n_chunks)
        self._launch("absmax", (v, lo, hi, blk, partial), T=v.dtype)
        dev = self._buf("blocks", self.n_blocks)
        kernel(self.xp, "combine_max")(((self.n_blocks + THREADS - 1) // THREADS,), (THREADS,),
                                       (partial, first, np.int64(self.n_blocks), dev))
        out[...] = dev.get()
        return out


@contextlib.contextmanager
def device_stream(device: int, stream_ptr: int, xp: Any = None) -> Iterator[None]:
    """CuPy's current device set to ``device`` and its current stream to the CUDA stream at
    ``stream_ptr`` (owned by someone else, e.g. torch) for the ``with`` body."""
    xp = _cupy() if xp is None else xp
    with xp.cuda.Device(device), xp.cuda.ExternalStream(stream_ptr, device):
        yield


def torch_stream(tensor: Any, xp: Any = None):
    """:func:`device_stream` of ``tensor``'s device and torch's current stream on it: the quantizer
    then runs after whatever torch queued for the tensor, on its GPU, without ``torch.cuda.set_device``."""
    import torch

    stream = torch.cuda.current_stream(tensor.device)
    return device_stream(tensor.device.index, stream.cuda_stream, xp)
