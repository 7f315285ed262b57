"""DeviceCommunicator: a Communicator for device (CuPy) buffers over a host Communicator (MPI).

A communicator, not a kernel: it lives beside :mod:`mpiopt.comm` (which imports it only in
:func:`mpiopt.comm.on_device`), and the kernels import no communicator. CuPy is imported when a
DeviceCommunicator is built, never by importing this module.

Stream order: every collective first orders itself after the work already queued on the current
stream (the quantizer's kernels, which write the buffer MPI reads): the stream is synchronized
before MPI touches device memory (CUDA-aware MPI) or before the pinned host copy is handed to MPI
(staging). The result is written back into the device buffer on that same stream, so whatever the
caller queues next on it (decoding, reading the header) runs after the sum has landed.
"""

import ctypes
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
from mpi4py import MPI

from mpiopt.comm import Communicator


def _empty_pinned(xp: Any, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A page-locked host array (numpy) for staging: ``cupyx.empty_pinned`` under CuPy, the array
    module's own ``empty_pinned`` otherwise (the CuPy-rules module of the tests)."""
    if getattr(xp, "__name__", "") == "cupy":
        import cupyx

        return cupyx.empty_pinned(shape, dtype=dtype)
    return xp.empty_pinned(shape, dtype=dtype)


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

    def __init__(self, comm: Communicator, cuda_aware: Optional[bool] = None, xp: Any = None):
        if xp is None:
            import cupy as xp
        self.xp = xp
        """The device array module (CuPy; the CuPy-rules module in CPU tests)."""
        self.comm = comm
        self.rank, self.size, self.int_dtypes = comm.rank, comm.size, comm.int_dtypes
        self.cuda_aware = cuda_aware_mpi() if cuda_aware is None else bool(cuda_aware)
        self._pinned: Dict[Tuple[Tuple[int, ...], np.dtype, int], np.ndarray] = {}

    @property
    def bytes_sent(self) -> int:
        return self.comm.bytes_sent

    @bytes_sent.setter
    def bytes_sent(self, value: int) -> None:
        self.comm.bytes_sent = value

    def _host(self, buf, slot: int = 0) -> np.ndarray:
        key = (buf.shape, buf.dtype, slot)
        if key not in self._pinned:
            self._pinned[key] = _empty_pinned(self.xp, buf.shape, buf.dtype)
        return self._pinned[key]

    def _collective(self, op, bufs, *args, **kw):
        """``op(*bufs, ...)`` on device buffers, whose last one receives the result: directly
        (CUDA-aware MPI), or through pinned host copies, uploading ``bufs[0]`` (what this rank sends)
        and copying the result back into ``bufs[-1]``."""
        out = bufs[-1]
        if all(isinstance(b, np.ndarray) for b in bufs):
            return op(*bufs, *args, **kw)
        stream = self.xp.cuda.get_current_stream()
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

