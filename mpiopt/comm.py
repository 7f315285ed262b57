"""The Communicator: the only place mpiopt talks to MPI.

Every collective here is an uppercase mpi4py buffer call on a caller-owned array, so nothing on the
hot path is pickled or allocated. Each call adds the bytes this rank contributes to ``bytes_sent``,
so that every trace can report the bits a method really put on the wire.
"""

from typing import Optional

import numpy as np
from mpi4py import MPI

_MPI_INT = {
    np.dtype(np.int8): MPI.INT8_T,
    np.dtype(np.int16): MPI.INT16_T,
    np.dtype(np.int32): MPI.INT32_T,
    np.dtype(np.int64): MPI.INT64_T,
    np.dtype(np.uint8): MPI.UINT8_T,
}
_MPI_FLOAT = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}


def _mpi_type(buf: np.ndarray, table: dict) -> MPI.Datatype:
    try:
        return table[buf.dtype]
    except KeyError:
        raise TypeError(f"no MPI type for dtype {buf.dtype}; expected one of {sorted(map(str, table))}") from None


class Communicator:
    """Wraps an mpi4py communicator (COMM_WORLD by default) and counts the bytes each rank sends.

    ``bytes_sent`` counts this rank's contribution to each collective (the buffer it hands to MPI),
    which is what a compressed method saves; the MPI library's own fan-in/fan-out is not counted.
    """

    def __init__(self, comm: Optional[MPI.Comm] = None):
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.bytes_sent = 0

    def _count(self, nbytes: int, count: bool) -> None:
        if count:
            self.bytes_sent += nbytes

    def allreduce_int(self, buf: np.ndarray, count: bool = True) -> np.ndarray:
        """Sum an integer array over all ranks, in place. Exact and independent of reduction order."""
        self.comm.Allreduce(MPI.IN_PLACE, [buf, _mpi_type(buf, _MPI_INT)], op=MPI.SUM)
        self._count(buf.nbytes, count)
        return buf

    def allreduce_max(self, buf: np.ndarray, count: bool = True) -> np.ndarray:
        """Element-wise maximum over all ranks, in place (integer or float arrays)."""
        dtype = _MPI_INT.get(buf.dtype) or _mpi_type(buf, _MPI_FLOAT)
        self.comm.Allreduce(MPI.IN_PLACE, [buf, dtype], op=MPI.MAX)
        self._count(buf.nbytes, count)
        return buf

    def allreduce_float(self, buf: np.ndarray, count: bool = True) -> np.ndarray:
        """Sum a float32/float64 array over all ranks, in place."""
        self.comm.Allreduce(MPI.IN_PLACE, [buf, _mpi_type(buf, _MPI_FLOAT)], op=MPI.SUM)
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

    def bcast(self, obj, root: int = 0):
        """Broadcast a small Python object (control messages only, never the hot path)."""
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (used when one rank fails, so no rank waits forever)."""
        self.comm.Abort(code)


def library_version() -> str:
    """The first line of the MPI library's version string (recorded in every trace)."""
    return MPI.Get_library_version().strip().splitlines()[0]
