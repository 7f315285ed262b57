"""The Communicator protocol, and its mpi4py implementation: the only place mpiopt talks to MPI.

Compressors, methods and the runner talk to a :class:`Communicator` only: ``rank``, ``size``, the
in-place collectives on caller-owned arrays (``allreduce_int``, ``allreduce_float``, ``allreduce_max``,
``allgather``, ``allgatherv``, ``alltoall``), ``broadcast`` (set-up), ``allgather_object`` for small control
messages, and ``bytes_sent``,
the bytes this rank handed to the collectives, so that every trace reports bytes on the wire.
``int_dtypes`` lists the integer types the backend can SUM (gloo and NCCL have no int16), which is
the ladder the int compressor's ``auto`` wire dtype climbs. A backend may set ``sums_words`` (the
MPI one does): it sums uint64 arrays exactly, so that the int compressor may pack its bounded narrow
integers several to a 64-bit word (:mod:`mpiopt.compressors.lanes`).

:class:`MPICommunicator` does every collective with an uppercase mpi4py buffer call, so nothing on
the hot path is pickled or allocated. mpi4py is imported when the first MPICommunicator is built
(importing it initializes MPI), so the protocol and the compressors that import this module run in a
torchrun worker without an MPI runtime.
"""

import functools
from typing import Any, Dict, List, Protocol, Tuple, runtime_checkable

import numpy as np

INT_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64))
"""The integer types MPI sums (all of them), narrowest first."""


@functools.lru_cache(maxsize=None)
def _mpi_tables() -> Tuple[Any, Dict[np.dtype, Any], Dict[np.dtype, Any]]:
    """(mpi4py's MPI module, MPI datatypes of the integer dtypes, of the float dtypes), on first use."""
    from mpi4py import MPI

    ints = {np.dtype(np.int8): MPI.INT8_T, np.dtype(np.int16): MPI.INT16_T, np.dtype(np.int32): MPI.INT32_T,
            np.dtype(np.int64): MPI.INT64_T, np.dtype(np.uint8): MPI.UINT8_T, np.dtype(np.uint64): MPI.UINT64_T}
    floats = {np.dtype(np.float16): MPI.Datatype.fromcode("e"), np.dtype(np.float32): MPI.FLOAT,
              np.dtype(np.float64): MPI.DOUBLE}
    return MPI, ints, floats


def _mpi_type(buf: np.ndarray, table: dict):
    try:
        return table[buf.dtype]
    except KeyError:
        raise TypeError(f"no MPI type for dtype {buf.dtype}; expected one of {sorted(map(str, table))}") from None


@runtime_checkable
class Communicator(Protocol):
    """What mpiopt needs from a communication backend (collectives are in place, over all ranks)."""

    rank: int
    size: int
    bytes_sent: int
    int_dtypes: Tuple[np.dtype, ...]

    def allreduce_int(self, buf, count: bool = True): ...

    def allreduce_float(self, buf, count: bool = True): ...

    def allreduce_max(self, buf, count: bool = True): ...

    def allgather(self, sendbuf, recvbuf, count: bool = True): ...

    def allgatherv(self, sendbuf, recvbuf, counts: np.ndarray, count: bool = True): ...

    def alltoall(self, sendbuf, recvbuf, count: bool = True): ...

    def allgather_object(self, obj: Any) -> List[Any]: ...

    def broadcast(self, buf, root: int = 0): ...

    def abort(self, code: int = 1) -> None: ...


class MPICommunicator:
    """The mpi4py Communicator: wraps an mpi4py communicator (COMM_WORLD by default) and counts the bytes each rank sends.

    ``bytes_sent`` counts this rank's contribution to each collective (the buffer it hands to MPI),
    which is what a compressed method saves; the MPI library's own fan-in/fan-out is not counted.
    """

    def __init__(self, comm=None):
        MPI, self._ints, self._floats = _mpi_tables()
        self._in_place, self._sum, self._max = MPI.IN_PLACE, MPI.SUM, MPI.MAX
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.bytes_sent = 0
        self.int_dtypes = INT_DTYPES
        self.sums_words = True
        """uint64 words sum exactly here, and MPI sums element by element: bounded narrow integers go
        several to a word (:mod:`mpiopt.compressors.lanes`)."""

    def _count(self, nbytes: int, count: bool) -> None:
        if count:
            self.bytes_sent += nbytes

    def allreduce_int(self, buf: np.ndarray, count: bool = True) -> np.ndarray:
        """Sum an integer array over all ranks, in place. Exact and independent of reduction order."""
        self.comm.Allreduce(self._in_place, [buf, _mpi_type(buf, self._ints)], op=self._sum)
        self._count(buf.nbytes, count)
        return buf

    def allreduce_max(self, buf: np.ndarray, count: bool = True) -> np.ndarray:
        """Element-wise maximum over all ranks, in place (integer or float arrays)."""
        dtype = self._ints.get(buf.dtype) or _mpi_type(buf, self._floats)
        self.comm.Allreduce(self._in_place, [buf, dtype], op=self._max)
        self._count(buf.nbytes, count)
        return buf

    def allreduce_float(self, buf: np.ndarray, count: bool = True) -> np.ndarray:
        """Sum a float16/float32/float64 array over all ranks, in place."""
        self.comm.Allreduce(self._in_place, [buf, _mpi_type(buf, self._floats)], op=self._sum)
        self._count(buf.nbytes, count)
        return buf

    def allgather(self, sendbuf: np.ndarray, recvbuf: np.ndarray, count: bool = True) -> np.ndarray:
        """Gather equal-sized blocks from every rank: ``recvbuf`` has ``size * len(sendbuf)`` items."""
        self.comm.Allgather(sendbuf, recvbuf)
        self._count(sendbuf.nbytes, count)
        return recvbuf

    def allgatherv(self, sendbuf: np.ndarray, recvbuf: np.ndarray, counts: np.ndarray, count: bool = True) -> np.ndarray:
        """Gather blocks of different sizes; ``counts[r]`` items come from rank r, in rank order."""
        displs = np.zeros(len(counts), dtype=np.int64)
        np.cumsum(counts[:-1], out=displs[1:])
        self.comm.Allgatherv(sendbuf, [recvbuf, (counts, displs)])
        self._count(sendbuf.nbytes, count)
        return recvbuf

    def alltoall(self, sendbuf: np.ndarray, recvbuf: np.ndarray, count: bool = True) -> np.ndarray:
        """Block r of ``sendbuf`` (``size`` equal blocks, any dtype: raw words move unchanged) to rank r;
        block r of ``recvbuf`` from rank r. Counts the ``size - 1`` blocks that leave this rank."""
        self.comm.Alltoall(sendbuf, recvbuf)
        self._count(sendbuf.nbytes - sendbuf.nbytes // self.size, count)
        return recvbuf

    def allgather_object(self, obj: Any) -> List[Any]:
        """Every rank's small Python object, in rank order (control messages only, never the hot path)."""
        return self.comm.allgather(obj)

    def broadcast(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """``root``'s array into every rank's ``buf``, in place (set-up only: not counted as wire bytes)."""
        self.comm.Bcast(buf, root=root)
        return buf

    def bcast(self, obj, root: int = 0):
        """Broadcast a small Python object (control messages only, never the hot path)."""
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (used when one rank fails, so no rank waits forever)."""
        self.comm.Abort(code)


def on_device(comm: Communicator, xp=None) -> Communicator:
    """``comm`` made able to take CuPy buffers: as it is when it already does (torch.distributed,
    whose NCCL takes device tensors), else a :class:`mpiopt.device_comm.DeviceCommunicator` over
    it (CUDA-aware MPI, or pinned host staging). ``xp``: the device array module (default CuPy)."""
    if getattr(comm, "takes_device_arrays", False):
        return comm
    from mpiopt.device_comm import DeviceCommunicator

    return DeviceCommunicator(comm, xp=xp)


def as_communicator(comm) -> Communicator:
    """Accept None (COMM_WORLD: size 1 without mpiexec), an mpi4py communicator, or a Communicator."""
    if isinstance(comm, Communicator):
        return comm
    return MPICommunicator(comm)


def library_version() -> str:
    """The first line of the MPI library's version string (recorded in every trace); Open MPI's ends in
    a NUL byte, dropped."""
    return _mpi_tables()[0].Get_library_version().replace("\x00", "").strip().splitlines()[0]

