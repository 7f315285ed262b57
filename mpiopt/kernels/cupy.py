"""The CuPy quantizer kernel (extra ``[gpu]``): ``mpiopt.kernels.numpy``'s contract, fused on the GPU.

``Quantizer`` here has the numpy Quantizer's interface and gives the same integers, bit for bit, for
the same (seed, worker, step, coordinate): the SplitMix64 noise of ``mpiopt.kernels.numpy`` is drawn
inside one elementwise kernel together with the scaling and the rounding, so no noise array is ever
materialized. Each step is one fused kernel (scale, noise, round, |.|), one max-reduction (a single
scalar read back: the bound check and the auto wire dtype need it), and one cast kernel (or a fused
clip-and-cast kernel when something must be clipped).

Bit-exactness with numpy rests on IEEE double arithmetic without contraction: the product alpha * v
and the sum with u are written with ``__dmul_rn``/``__dadd_rn``, which NVRTC never fuses into an FMA
(numpy does not fuse either). Inputs may be float32 or float64; they are widened to double first, as
the contract says. Clipping uses the same largest double <= bound as numpy (``float_below``).

``DeviceCommunicator`` hands CuPy buffers to a :class:`mpiopt.comm.Communicator`: directly when the
MPI library is CUDA-aware (:func:`cuda_aware_mpi`), else through pinned host buffers (``cupyx.empty_pinned``),
always after synchronizing the current stream, since MPI reads memory outside CUDA's stream order.
"""

import ctypes
import os
from typing import Dict, Optional, Tuple, Union

import cupy
import cupyx
import numpy as np
from mpi4py import MPI

from mpiopt.comm import Communicator
from mpiopt.kernels.numpy import GOLDEN, MUL1, MUL2, ROUNDINGS, float_below, int_bound, stream_key

_PREAMBLE = f"""
__device__ __forceinline__ unsigned long long mpiopt_mix64(unsigned long long z) {{
    z = (z ^ (z >> 30)) * {MUL1:#x}ULL;
    z = (z ^ (z >> 27)) * {MUL2:#x}ULL;
    return z ^ (z >> 31);
}}
__device__ __forceinline__ double mpiopt_uniform(unsigned long long key, long long j) {{
    unsigned long long z = mpiopt_mix64(key + (unsigned long long)(j + 1) * {GOLDEN:#x}ULL);
    return ldexp((double)(z >> 11), -53);   /* exact: a 53-bit integer times 2**-53 */
}}
"""

_FINISH = """
    bool ok = isfinite(r);
    t = ok ? r : 0.0;
    a = ok ? fabs(r) : __longlong_as_double(0x7ff0000000000000LL);  /* +inf marks a non-finite input */
"""

_ROUND = {
    "random": cupy.ElementwiseKernel(
        "V v, float64 alpha, uint64 key", "float64 t, float64 a",
        "double r = floor(__dadd_rn(__dmul_rn((double)v, alpha), mpiopt_uniform(key, i)));" + _FINISH,
        name="mpiopt_round_random", preamble=_PREAMBLE),
    "deterministic": cupy.ElementwiseKernel(
        "V v, float64 alpha", "float64 t, float64 a",
        "double r = rint(__dmul_rn((double)v, alpha));" + _FINISH,
        name="mpiopt_round_deterministic"),
}
_NOISE = cupy.ElementwiseKernel("uint64 key", "float64 u", "u = mpiopt_uniform(key, i);",
                                name="mpiopt_noise", preamble=_PREAMBLE)
_DROP_INF = cupy.ElementwiseKernel("float64 a", "float64 b", "b = isinf(a) ? 0.0 : a;", name="mpiopt_drop_inf")
_CLIP_CAST = cupy.ElementwiseKernel("float64 t, float64 bound", "float64 c, Q q",
                                    "c = fmin(fmax(t, -bound), bound); q = (Q)c;", name="mpiopt_clip_cast")
_DIV_SCALAR = cupy.ElementwiseKernel("S s, float64 n_alpha", "float64 out",
                                     "out = __ddiv_rn((double)s, n_alpha);", name="mpiopt_decode_scalar")
_DIV_ARRAY = cupy.ElementwiseKernel("S s, float64 alpha, float64 inv_n", "float64 out",
                                    "out = __dmul_rn(__ddiv_rn((double)s, alpha), inv_n);", name="mpiopt_decode_array")
_DIV_LOCAL = cupy.ElementwiseKernel("float64 s, float64 alpha", "float64 out",
                                    "out = __ddiv_rn(s, alpha);", name="mpiopt_decode_local")

Alpha = Union[float, np.floating, "cupy.ndarray"]


class Quantizer:
    """Int(alpha * v) on the GPU for vectors of ``size`` coordinates; the numpy Quantizer's contract.

    ``encode(v, alpha, out, step=k)`` rounds alpha * v (alpha a scalar or a CuPy array of ``size``),
    clips to the bound and writes the integers into the CuPy integer array ``out``; returns the number
    clipped. After it, ``max_abs`` is max_j |Int(alpha v)_j| before clipping, ``finite`` whether v was
    finite, and ``sent`` the values written (float64), for :meth:`decode_local`. All buffers live on
    the current device and are allocated here, once.
    """

    def __init__(self, size: int, seed: int, worker: int, n_ranks: int = 1, rounding: str = "random"):
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.size, self.seed, self.worker, self.n_ranks, self.rounding = size, seed, worker, n_ranks, rounding
        self.noise_buf = cupy.empty(size)
        self.rounded = cupy.empty(size)
        """Int(alpha v) as doubles, before clipping."""
        self._clipped_buf = cupy.empty(size)
        self._abs = cupy.empty(size)
        self._mask = cupy.empty(size, dtype=bool)
        self._max = cupy.empty((), dtype=np.float64)
        self.sent = self.rounded
        self.max_abs = 0.0
        self.finite = True
        self._squares: Optional["cupy.ndarray"] = None

    def _key(self, step: int) -> np.uint64:
        return np.uint64(stream_key(self.seed, self.worker, step))

    def noise(self, step: int) -> "cupy.ndarray":
        """This worker's u_j for ``step`` (for checks; :meth:`round` draws them inside its kernel)."""
        return _NOISE(self._key(step), self.noise_buf)

    def round(self, v: "cupy.ndarray", alpha: Alpha, step: int, into: Optional["cupy.ndarray"] = None) -> "cupy.ndarray":
        """Int(alpha v) as doubles into ``rounded`` (no clipping); sets ``max_abs`` and ``finite``.
        ``into`` (the numba kernel's one-pass int8 target) is accepted and not needed: ``pack`` casts."""
        alpha = alpha if isinstance(alpha, cupy.ndarray) else np.float64(alpha)
        if self.rounding == "random":
            _ROUND["random"](v, alpha, self._key(step), self.rounded, self._abs)
        else:
            _ROUND["deterministic"](v, alpha, self.rounded, self._abs)
        m = self._reduce_max()
        self.finite = bool(np.isfinite(m))
        if not self.finite:
            _DROP_INF(self._abs, self._abs)
            m = self._reduce_max()
        self.max_abs = m
        return self.rounded

    def _reduce_max(self) -> float:
        if not self.size:
            return 0.0
        self._abs.max(out=self._max)
        return float(self._max)

    def pack(self, out: "cupy.ndarray", bound: Optional[int] = None) -> int:
        """Cast the rounded values, clipped to ``bound`` (default floor(M / n) of ``out``'s dtype), into
        ``out``; returns the number of clipped coordinates and points ``sent`` at what went out."""
        if bound is None:
            bound = int_bound(out.dtype, self.n_ranks)
        if self.max_abs > bound:
            cupy.greater(self._abs, float(bound), out=self._mask)
            clipped = int(cupy.count_nonzero(self._mask))
            _CLIP_CAST(self.rounded, float_below(bound), self._clipped_buf, out)
            self.sent = self._clipped_buf
            return clipped
        cupy.copyto(out, self.rounded, casting="unsafe")
        self.sent = self.rounded
        return 0

    def encode(self, v: "cupy.ndarray", alpha: Alpha, out: "cupy.ndarray", *, step: int,
               bound: Optional[int] = None) -> int:
        """Int(alpha v), clipped, into the integer array ``out``; returns the number clipped."""
        self.round(v, alpha, step)
        return self.pack(out, bound)

    def decode_local(self, alpha: Alpha, out: "cupy.ndarray") -> "cupy.ndarray":
        """This worker's own decoded C(v) = sent / alpha."""
        alpha = alpha if isinstance(alpha, cupy.ndarray) else np.float64(alpha)
        return _DIV_LOCAL(self.sent, alpha, out)

    @staticmethod
    def step_squares(x: "cupy.ndarray", x_prev: "cupy.ndarray", out: "cupy.ndarray") -> "cupy.ndarray":
        """out = (x - x_prev)^2 in float64, then x_prev <- x (numpy's operations, the same bits)."""
        cupy.subtract(x, x_prev, out=out)
        cupy.multiply(out, out, out=out)
        cupy.copyto(x_prev, x)
        return out

    def step_squares_sum(self, x: "cupy.ndarray", x_prev: "cupy.ndarray") -> float:
        """||x - x_prev||^2 and x_prev <- x. The squares are summed on the host in numpy's pairwise
        order, so that alpha is the CPU's bits (one device-to-host copy of d doubles per step)."""
        if self._squares is None:
            self._squares = cupy.empty(self.size)
        return float(self.step_squares(x, x_prev, self._squares).get().sum())

    @staticmethod
    def decode(sum_int: "cupy.ndarray", alpha: Alpha, n: int, out: "cupy.ndarray") -> "cupy.ndarray":
        """S / (n alpha) into ``out`` (float64), with numpy's operation order (bit-identical)."""
        if isinstance(alpha, cupy.ndarray) and alpha.ndim:
            return _DIV_ARRAY(sum_int, alpha, np.float64(1.0 / n), out)
        return _DIV_SCALAR(sum_int, np.float64(n * float(alpha)), out)


def _loaded_mpi_library() -> Optional[ctypes.CDLL]:
    """The MPI shared library mpi4py loaded into this process (found in /proc/self/maps), if any."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libmpi" in line}
    except OSError:
        return None
    for path in sorted(p for p in paths if os.path.basename(p).startswith(("libmpi.", "libmpi_abi."))):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def cuda_aware_mpi() -> bool:
    """Whether the MPI library reads and writes CUDA device buffers itself.

    In order: ``MPIOPT_CUDA_AWARE=0|1`` in the environment; ``MPI.Query_cuda_support()`` where mpi4py
    has it; the library's ``MPIX_Query_cuda_support()`` (Open MPI, MPICH >= 4.1) or
    ``MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA, ...)`` (MPICH), looked up with ctypes. Unknown
    means False: staging through host memory is always correct, only slower.
    """
    forced = os.environ.get("MPIOPT_CUDA_AWARE")
    if forced in ("0", "1"):
        return forced == "1"
    query = getattr(MPI, "Query_cuda_support", None)
    if query is not None:
        return bool(query())
    lib = _loaded_mpi_library()
    if lib is None:
        return False
    if hasattr(lib, "MPIX_Query_cuda_support"):
        lib.MPIX_Query_cuda_support.restype = ctypes.c_int
        return lib.MPIX_Query_cuda_support() == 1
    if hasattr(lib, "MPIX_GPU_query_support"):
        supported = ctypes.c_int(0)
        return lib.MPIX_GPU_query_support(0, ctypes.byref(supported)) == 0 and supported.value == 1
    return False


class DeviceCommunicator:
    """A Communicator for CuPy buffers over a host Communicator (MPI), counting bytes as it does.

    CUDA-aware MPI gets the device buffers themselves; otherwise each buffer goes through a pinned
    host buffer of the same shape and dtype (allocated on first use, then reused). Either way the
    current stream is synchronized before MPI touches the memory. numpy buffers (small control
    messages such as a max or the first step's exponents) go to the host Communicator unchanged.
    """

    takes_device_arrays = True

    def __init__(self, comm: Communicator, cuda_aware: Optional[bool] = None):
        self.comm = comm
        self.rank, self.size, self.int_dtypes = comm.rank, comm.size, comm.int_dtypes
        self.cuda_aware = cuda_aware_mpi() if cuda_aware is None else bool(cuda_aware)
        self._pinned: Dict[Tuple[Tuple[int, ...], np.dtype], np.ndarray] = {}

    @property
    def bytes_sent(self) -> int:
        return self.comm.bytes_sent

    @bytes_sent.setter
    def bytes_sent(self, value: int) -> None:
        self.comm.bytes_sent = value

    def _host(self, buf: "cupy.ndarray", slot: int = 0) -> np.ndarray:
        key = (buf.shape, buf.dtype, slot)
        if key not in self._pinned:
            self._pinned[key] = cupyx.empty_pinned(buf.shape, dtype=buf.dtype)
        return self._pinned[key]

    def _collective(self, op, bufs, *args, **kw):
        """``op(*bufs, ...)`` on device buffers, whose last one receives the result: directly
        (CUDA-aware MPI), or through pinned host copies, uploading ``bufs[0]`` (what this rank sends)
        and copying the result back into ``bufs[-1]``."""
        out = bufs[-1]
        if all(isinstance(b, np.ndarray) for b in bufs):
            return op(*bufs, *args, **kw)
        stream = cupy.cuda.get_current_stream()
        if self.cuda_aware:
            stream.synchronize()
            op(*bufs, *args, **kw)
            return out
        hosts = [b if isinstance(b, np.ndarray) else self._host(b, slot) for slot, b in enumerate(bufs)]
        if hosts[0] is not bufs[0]:
            bufs[0].get(stream=stream, out=hosts[0], blocking=False)
        stream.synchronize()
        op(*hosts, *args, **kw)
        if hosts[-1] is not out:
            out.set(hosts[-1], stream=stream)
        return out

    def allreduce_int(self, buf, count: bool = True):
        """Sum an integer array over all ranks, in place (exact)."""
        return self._collective(self.comm.allreduce_int, (buf,), count=count)

    def allreduce_float(self, buf, count: bool = True):
        """Sum a float array over all ranks, in place."""
        return self._collective(self.comm.allreduce_float, (buf,), count=count)

    def allreduce_max(self, buf, count: bool = True):
        """Element-wise maximum over all ranks, in place."""
        return self._collective(self.comm.allreduce_max, (buf,), count=count)

    def allgather(self, sendbuf, recvbuf, count: bool = True):
        """Gather equal-sized blocks from every rank into ``recvbuf``."""
        return self._collective(self.comm.allgather, (sendbuf, recvbuf), count=count)

    def allgatherv(self, sendbuf, recvbuf, counts: np.ndarray, count: bool = True):
        """Gather blocks of different sizes (``counts[r]`` items from rank r) into ``recvbuf``."""
        return self._collective(self.comm.allgatherv, (sendbuf, recvbuf), counts, count=count)

    def alltoall(self, sendbuf, recvbuf, count: bool = True):
        """Block r of ``sendbuf`` to rank r, block r of ``recvbuf`` from rank r."""
        return self._collective(self.comm.alltoall, (sendbuf, recvbuf), count=count)

    def broadcast(self, buf, root: int = 0):
        """``root``'s array into every rank's ``buf``, in place (set-up only)."""
        return self._collective(self.comm.broadcast, (buf,), root=root)

    def allgather_object(self, obj):
        return self.comm.allgather_object(obj)

    def abort(self, code: int = 1) -> None:
        self.comm.abort(code)

