"""The Communicator protocol over torch.distributed (gloo on CPUs, NCCL on GPUs).

With it, the int compressor, the :mod:`mpiopt.torch` optimizers, the DDP hooks of
:mod:`mpiopt.torch.hooks` and :func:`mpiopt.minimize` run in a job started by ``torchrun`` (or any
launcher that calls ``torch.distributed.init_process_group``) instead of ``mpiexec``::

    dist.init_process_group("gloo")
    result = mpiopt.minimize(problem, "vr-intdiana", comm=TorchCommunicator())

Arrays go to the collectives without a copy (``torch.from_numpy`` for numpy arrays, DLPack for
device arrays; the views of the last few arrays are kept, as a compressor sums the same buffers at
every step), and the all-reduces call the process group's ``allreduce`` as ``dist.all_reduce`` does,
without its per-call checks (membership is checked once, when the communicator is built). Under
NCCL, which takes device tensors only, host arrays (small control messages) are copied to the
device and back. Under gloo, exact reductions (integer sums, maxima) of CPU buffers of up to
``doubling_bytes`` go by recursive doubling over send/recv (:mod:`mpiopt.torch.doubling`: log2 n
rounds instead of the ring's 2(n - 1), each rank sending log2 n times the buffer instead of
2(n - 1) / n times it; the same bits); larger ones by whichever of the two their first calls timed
the faster (:mod:`mpiopt.torch.ring_or_doubling`: it depends on the link); float sums go to the
backend's all-reduce. ``bytes_sent`` counts what this rank hands to each collective (the buffer,
whatever the algorithm), as :class:`mpiopt.comm.MPICommunicator` does. gloo and NCCL cannot SUM int16 (gloo
answers "Invalid scalar type"), so ``int_dtypes`` is (int8, int32, int64): the int compressor's
``auto`` climbs int8 -> int32 -> int64 here, and a fixed ``wire_dtype='int16'`` is refused when the
compressor is built. ``allgatherv`` pads every block to the largest count (torch.distributed has no
variable-size all-gather); only this rank's real bytes are counted.
"""

import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed import AllreduceOptions

from mpiopt.errors import InputError
from mpiopt.torch.doubling import DoublingAllreduce
from mpiopt.torch.ring_or_doubling import RingOrDoubling

INT_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.int32, np.int64))
"""The integer types gloo and NCCL can SUM, narrowest first (no int16)."""
FLOAT_DTYPES = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64))
DOUBLING_BYTES = 64 * 1024
"""Default ``doubling_bytes`` (doubling saves 2(n - 1) - log2 n rounds and sends log2 n - 2(n - 1) / n
more times the buffer). Measured on the emulated 1 Gbit/s bed (benchmarks/torch_allreduce.py --net
1gbit, README): doubling takes 0.39x the ring's time at 64 KiB on 4 ranks (0.20x on 8) and breaks even
between 128 and 192 KiB on 4; kept at 64 KiB because those ranks shared 2 cores, which makes the ring's
rounds dearer than with a core per rank."""
ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
"""The tensor all-gather: ``all_gather_single`` from torch 2.13 (which deprecates the other), else
``all_gather_into_tensor`` (torch 2.5 to 2.12)."""
VIEWS_KEPT = 16
"""Tensor views of this many arrays are kept between collectives (then the cache starts over)."""


def as_tensor(buf) -> torch.Tensor:
    """A tensor sharing ``buf``'s memory: torch.from_numpy for numpy, DLPack for device arrays."""
    if isinstance(buf, np.ndarray):
        return torch.from_numpy(buf)
    return torch.from_dlpack(buf)


def _check_dtype(buf, allowed, what: str) -> None:
    if np.dtype(buf.dtype) not in allowed:
        raise TypeError(f"{what} takes {', '.join(map(str, allowed))} arrays over torch.distributed, "
                        f"got {buf.dtype}")


def _allreduce_options(op) -> AllreduceOptions:
    """The options ``dist.all_reduce(tensor, op)`` hands its process group (a blocking call)."""
    opts = AllreduceOptions()
    opts.reduceOp = op
    if hasattr(opts, "asyncOp"):  # a flag of newer torches (not 2.5's); without it the call blocks
        opts.asyncOp = False
    return opts


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A flat tensor's bits as bytes: gloo's all-to-all refuses 16-bit integer words ("Invalid scalar
    type"), and moving raw words needs no arithmetic, so they move as uint8."""
    return tensor.view(torch.uint8)


class TorchCommunicator:
    """The Communicator of a torch.distributed process group (``group=None``: the default group).

    The process group must be initialized first (``dist.init_process_group``); ranks are the
    group's ranks. ``doubling_bytes``: under gloo, integer sums and maxima of CPU buffers of up to
    this many bytes go by recursive doubling (module docstring); 0 sends every reduction to the
    backend's all-reduce. ``measure_larger``: larger ones take whichever of the backend's all-reduce
    and doubling their first calls timed the faster, per size class
    (:mod:`mpiopt.torch.ring_or_doubling`); False: the backend's.
    """

    takes_device_arrays = True
    """CuPy buffers go to the collectives as device tensors (DLPack), with no host copy."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None, *, doubling_bytes: int = DOUBLING_BYTES,
                 measure_larger: bool = True):
        if not dist.is_available() or not dist.is_initialized():
            raise InputError("TorchCommunicator needs an initialized torch.distributed process group: call "
                             "torch.distributed.init_process_group(...) first (torchrun sets its environment)")
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise InputError("TorchCommunicator: this process is not a member of the given process group")
        self.size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self._copies_host_arrays = self.backend == "nccl"
        self._pg = dist.group.WORLD if group is None else group
        self._views: Dict[int, Tuple[Any, torch.Tensor]] = {}
        """id(array) -> (array, its tensor view): a compressor sums the same buffers at every step."""
        self._options = {op: _allreduce_options(op) for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX)}
        if isinstance(doubling_bytes, bool) or not isinstance(doubling_bytes, int) or doubling_bytes < 0:
            raise InputError(f"TorchCommunicator: doubling_bytes must be an integer >= 0, got {doubling_bytes!r}")
        self.doubling_bytes = doubling_bytes if self.backend == "gloo" and self.size > 1 else 0
        self._doubling = DoublingAllreduce(self._pg, self.rank, self.size) if self.doubling_bytes else None
        self._larger = (RingOrDoubling(self._agree, self._align) if self._doubling is not None and measure_larger
                        else None)
        self._token = torch.zeros(1, dtype=torch.int8)
        self.bytes_sent = 0
        self.int_dtypes = INT_DTYPES

    @property
    def larger_algorithms(self) -> Dict[str, str]:
        """The all-reduce each size class above ``doubling_bytes`` keeps, as {"lo-hi bytes": "ring" or
        "doubling"}, once its first calls have decided (empty before, or without ``measure_larger``)."""
        kept = {} if self._larger is None else self._larger.kept
        return {f"{1 << (b - 1)}-{(1 << b) - 1} bytes": "doubling" if d else "ring" for b, d in sorted(kept.items())}

    def _count(self, nbytes: int, count: bool) -> None:
        if count:
            self.bytes_sent += nbytes

    def _wire(self, buf) -> torch.Tensor:
        """The tensor a collective gets for ``buf``: a view of it; under NCCL, which takes device
        tensors only, a device copy of a host array (small control messages, e.g. a max)."""
        known = self._views.get(id(buf))
        if known is not None and known[0] is buf:
            tensor = known[1]
        else:
            tensor = as_tensor(buf)
            if len(self._views) >= VIEWS_KEPT:
                self._views.clear()
            self._views[id(buf)] = (buf, tensor)  # holding buf keeps its id from being reused
        if self._copies_host_arrays and tensor.device.type == "cpu":
            return tensor.to(torch.device("cuda", torch.cuda.current_device()))
        return tensor

    def _land(self, buf, tensor: torch.Tensor):
        """Copy a collective's result back into ``buf`` when :meth:`_wire` gave a copy."""
        if self._copies_host_arrays and isinstance(buf, np.ndarray) and tensor.device.type != "cpu":
            as_tensor(buf).view(-1).copy_(tensor.reshape(-1))
        return buf

    def _reduce(self, buf, op, count: bool):
        tensor = self._wire(buf)
        exact = self._doubling is not None and tensor.device.type == "cpu" and DoublingAllreduce.takes(tensor, op)
        if exact and buf.nbytes <= self.doubling_bytes:
            self._doubling(tensor, op)
        elif exact and self._larger is not None:
            self._larger.run(buf.nbytes, lambda: self._backend(tensor, op), lambda: self._doubling(tensor, op))
        else:
            self._backend(tensor, op)
        self._count(buf.nbytes, count)
        return self._land(buf, tensor)

    def _backend(self, tensor: torch.Tensor, op) -> None:
        work = self._pg.allreduce([tensor], self._options[op])  # what dist.all_reduce calls, less its checks
        if work is not None:
            work.wait()

    def _align(self) -> None:
        """Return once every rank has entered (a doubling MAX of one byte; not counted: no payload)."""
        self._doubling(self._token, dist.ReduceOp.MAX)

    def _agree(self, seconds: np.ndarray) -> None:
        """The largest of each value over the ranks, in place, by the backend (counted: a collective)."""
        self._backend(torch.from_numpy(seconds), dist.ReduceOp.MAX)
        self._count(seconds.nbytes, True)

    def allreduce_int(self, buf, count: bool = True):
        """Sum an int8/int32/int64 array over all ranks, in place (exact, order-independent)."""
        _check_dtype(buf, self.int_dtypes, "allreduce_int")
        return self._reduce(buf, dist.ReduceOp.SUM, count)

    def allreduce_float(self, buf, count: bool = True):
        """Sum a float16/float32/float64 array over all ranks, in place."""
        _check_dtype(buf, FLOAT_DTYPES, "allreduce_float")
        return self._reduce(buf, dist.ReduceOp.SUM, count)

    def allreduce_max(self, buf, count: bool = True):
        """Element-wise maximum over all ranks, in place (integer or float arrays)."""
        _check_dtype(buf, self.int_dtypes + FLOAT_DTYPES, "allreduce_max")
        return self._reduce(buf, dist.ReduceOp.MAX, count)

    def allgather(self, sendbuf, recvbuf, count: bool = True):
        """Gather equal-sized blocks from every rank: ``recvbuf`` has ``size * len(sendbuf)`` items."""
        out = self._wire(recvbuf)
        ALL_GATHER(out.view(-1), self._wire(sendbuf).reshape(-1), group=self.group)
        self._count(sendbuf.nbytes, count)
        return self._land(recvbuf, out)

    def allgatherv(self, sendbuf, recvbuf, counts: np.ndarray, count: bool = True):
        """Gather blocks of different sizes (``counts[r]`` items from rank r, in rank order) by padding
        each block to the largest count; only this rank's ``counts[rank]`` items are counted as sent."""
        counts = np.asarray(counts, dtype=np.int64)
        width = int(counts.max()) if counts.size else 0
        mine = self._wire(sendbuf)
        send = torch.zeros(width, dtype=mine.dtype, device=mine.device)
        send[:sendbuf.size] = mine.reshape(-1)
        gathered = torch.empty(self.size * width, dtype=send.dtype, device=send.device)
        ALL_GATHER(gathered, send, group=self.group)
        rows = gathered.view(self.size, width)
        out = self._wire(recvbuf).view(-1)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        for r, (start, c) in enumerate(zip(starts.tolist(), counts.tolist())):  # one copy per rank
            out[start:start + c] = rows[r, :c]
        self._count(sendbuf.nbytes, count)
        return self._land(recvbuf, out)

    def alltoall(self, sendbuf, recvbuf, count: bool = True):
        """Block r of ``sendbuf`` (``size`` equal blocks) to rank r, block r of ``recvbuf`` from rank r;
        counts the ``size - 1`` blocks that leave this rank."""
        out = self._wire(recvbuf)
        dist.all_to_all_single(_bytes(out.view(-1)), _bytes(self._wire(sendbuf).reshape(-1)), group=self.group)
        self._count(sendbuf.nbytes - sendbuf.nbytes // self.size, count)
        return self._land(recvbuf, out)

    def allgather_object(self, obj: Any) -> List[Any]:
        """Every rank's small Python object, in rank order (control messages only, never the hot path)."""
        out: List[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def _global(self, root: int) -> int:
        return root if self.group is None else dist.get_global_rank(self.group, root)

    def broadcast(self, buf, root: int = 0):
        """``root``'s array into every rank's ``buf``, in place (set-up only: not counted as wire bytes)."""
        tensor = self._wire(buf)
        dist.broadcast(tensor, src=self._global(root), group=self.group)
        return self._land(buf, tensor)

    def bcast(self, obj, root: int = 0):
        """Broadcast a small Python object from ``root`` (control messages only)."""
        box = [obj]
        dist.broadcast_object_list(box, src=self._global(root), group=self.group)
        return box[0]

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def abort(self, code: int = 1) -> None:
        """End this process at once with ``code`` after tearing down its process group: the other
        ranks' collectives then fail (gloo reports the closed connection) instead of waiting forever."""
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            dist.destroy_process_group()
        finally:
            os._exit(code)
