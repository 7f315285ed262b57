"""An exact all-reduce in log2(n) rounds over a process group's send/recv: recursive doubling.

gloo's all-reduce is a ring: 2(n - 1) rounds, each rank sending 2(n - 1) / n times the buffer. When
its ranks share few cores, or talk over TCP, a round's latency (the peers' wake-ups, the hand-offs
to gloo's worker thread) outweighs a small buffer's bytes: at 4 ranks on 2 cores, a 38 KB int8 ring
all-reduce took 4.8 to 5.7 ms and this one 0.7 to 2.8 ms (``benchmarks/ddp_hooks.py`` shows what that
does to a DDP step). Recursive doubling (as MPI libraries do for short messages) pairs rank r with
r xor 2^j in round j, both send their whole buffer and both add what they receive: log2(n) rounds,
each rank sending log2(n) times the buffer. With n not a power of two, the first 2e ranks
(e = n - 2^floor(log2 n)) fold first: each even one hands its buffer to the odd one above it and
gets the result back at the end (two more rounds).

Only for reductions whose result does not depend on the order of the operands (integer sums, which
wrap alike in any order, and maxima): every rank then gets the same bits as from the ring. A float
sum would round differently from the backend's; it is not offered here.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

TAG = 0x6D706F00
"""Tags of this all-reduce's messages (TAG + round), apart from the small tags users tend to pick."""
FOLD_ROUND, UNFOLD_ROUND = 0, 255
"""The rounds (tag offsets) of the fold and of the result's way back; doubling round j is j (1, 2, ...)."""
SCRATCH_KEPT = 8
"""Scratch tensors kept between calls (then the cache starts over)."""


def doubling_plan(rank: int, size: int) -> Tuple[Optional[int], List[int]]:
    """(fold, partners) of ``rank`` among ``size`` ranks.

    ``fold``: the rank this one hands its buffer to before the doubling and gets the result back
    from (an even rank: it takes no part in the doubling), or, for the odd rank above it, receives
    that buffer from and sends the result back to; None for the others. ``partners``: its peer in
    each doubling round."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not one of {size} ranks")
    low = 1 << (size.bit_length() - 1)
    extra = size - low
    if rank < 2 * extra:
        peer = rank + 1 if rank % 2 == 0 else rank - 1
        if rank % 2 == 0:
            return peer, []
        virtual = rank // 2
    else:
        peer, virtual = None, rank - extra
    partners = []
    bit = 1
    while bit < low:
        other = virtual ^ bit
        partners.append(2 * other + 1 if other < extra else other + extra)
        bit <<= 1
    return peer, partners


class DoublingAllreduce:
    """The all-reduce of one process group by recursive doubling, for ``dist.ReduceOp.SUM`` of integer
    tensors and ``dist.ReduceOp.MAX`` (see :meth:`takes`). A scratch tensor per (dtype, shape) is
    kept: a compressor sums the same buffer at every step."""

    def __init__(self, group: dist.ProcessGroup, rank: int, size: int):
        self.group, self.rank, self.size = group, rank, size
        self.fold, self.partners = doubling_plan(rank, size)
        self._scratch: Dict[tuple, torch.Tensor] = {}

    @staticmethod
    def takes(tensor: torch.Tensor, op: dist.ReduceOp) -> bool:
        """Whether the reduction's result does not depend on the order of its operands (a maximum, or
        a sum of integers): only then does doubling give the ring's bits."""
        return op == dist.ReduceOp.MAX or (op == dist.ReduceOp.SUM and not tensor.is_floating_point())

    def __call__(self, tensor: torch.Tensor, op: dist.ReduceOp) -> None:
        """Reduce the contiguous CPU ``tensor`` over the group, in place."""
        if not self.takes(tensor, op):
            raise TypeError(f"the doubling all-reduce takes maxima and integer sums only, not {op} of {tensor.dtype} "
                            "(a float sum's rounding depends on the order of its operands)")
        add = torch.Tensor.add_ if op == dist.ReduceOp.SUM else _max_into
        if self.fold is not None and self.rank % 2 == 0:
            self._send(tensor, self.fold, FOLD_ROUND)
            self._recv(tensor, self.fold, UNFOLD_ROUND)
            return
        scratch = self._scratch_for(tensor)
        if self.fold is not None:
            self._recv(scratch, self.fold, FOLD_ROUND)
            add(tensor, scratch)
        for j, peer in enumerate(self.partners, start=1):
            sent = self.group.send([tensor], peer, TAG + j)
            self._recv(scratch, peer, j)
            sent.wait()
            add(tensor, scratch)
        if self.fold is not None:
            self._send(tensor, self.fold, UNFOLD_ROUND)

    def _send(self, tensor: torch.Tensor, peer: int, round_: int) -> None:
        self.group.send([tensor], peer, TAG + round_).wait()

    def _recv(self, tensor: torch.Tensor, peer: int, round_: int) -> None:
        self.group.recv([tensor], peer, TAG + round_).wait()

    def _scratch_for(self, tensor: torch.Tensor) -> torch.Tensor:
        key = (tensor.dtype, tensor.shape)
        scratch = self._scratch.get(key)
        if scratch is None:
            if len(self._scratch) >= SCRATCH_KEPT:
                self._scratch.clear()
            scratch = self._scratch[key] = torch.empty_like(tensor)
        return scratch


def _max_into(tensor: torch.Tensor, other: torch.Tensor) -> None:
    torch.maximum(tensor, other, out=tensor)
