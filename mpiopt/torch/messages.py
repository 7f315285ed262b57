"""Several consecutive DDP buckets exchanged as one message of the hook.

Why: an integer bucket is a quarter of its float32 bytes (int8), so with the ``bucket_cap_mb`` a user
tuned for float messages the hook sends four times as many messages of a quarter of the size, and
where each message pays a round trip (a real or emulated link, ranks that wait for each other's
turns on busy cores) the rounds cost more than the bytes. ``buckets_per_message = k`` hands buckets
``0..k-1``, ``k..2k-1``, ... (and the step's last ones) to the engine as one bucket: their parameters
in their order, their gradients copied into one buffer, one exchange (one exponent MAX, one integer
sum), the mean copied back into each bucket. With k = 4 an int8 message holds as many bytes as one
float32 bucket, the size DDP was tuned for. With one alpha per layer (``block='layer'``, the
default) the integers do not depend on the buckets (the engine keys noise and alpha on parameters),
so the iterates are those of k = 1, bit for bit; with ``block='bucket'`` the message is the alpha
block. The exchange of a group starts when its last bucket is ready, so backward overlaps with
``1/k`` as many exchanges.

Which buckets travel together depends only on their indices and dtypes (a group that holds two
dtypes goes as one message per run of equal dtype), the same on every rank.
"""

from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

Member = Tuple[int, Sequence[torch.Tensor], torch.Tensor, torch.futures.Future]
"""(bucket index, its parameters in buffer order, its buffer, the Future handed to DDP for it)."""


class MessageGroups:
    """Collects DDP buckets into messages of ``per_message`` buckets and settles each bucket's Future
    when its message's exchange is done."""

    def __init__(self, per_message: int):
        if isinstance(per_message, bool) or not isinstance(per_message, int) or per_message < 1:
            raise ValueError(f"buckets_per_message must be a positive integer, got {per_message!r}")
        self.per_message = per_message
        self._pending: List[Member] = []
        self._fused: Dict[Tuple[int, torch.dtype], torch.Tensor] = {}

    def add(self, index: int, params: Sequence[torch.Tensor], buf: torch.Tensor, last: bool,
            start: Callable[[List[Member]], torch.futures.Future]) -> torch.futures.Future:
        """The Future of bucket ``index``; when it closes a message (its index ends a group of
        ``per_message``, or it is the step's ``last``), ``start`` is called with the message's members
        and returns the Future of the message's exchange, which settles theirs."""
        fut: torch.futures.Future = torch.futures.Future()
        if self._pending and index <= self._pending[-1][0]:  # a new step after one whose backward failed midway
            self._pending = []
        self._pending.append((index, params, buf, fut))
        if (index + 1) % self.per_message and not last:
            return fut
        members, self._pending = self._pending, []
        for run in _dtype_runs(members):
            start(run).add_done_callback(lambda done, run=run: _settle(done, run))
        return fut

    def exchange(self, members: List[Member], exchange: Callable[[int, List[torch.Tensor], torch.Tensor], Any]) -> None:
        """Run ``exchange(key, params, buffer)`` over the members' buckets as one: their gradients
        copied into one buffer (kept per first index and dtype), the mean copied back (a message of
        one bucket is exchanged in place)."""
        key = members[0][0]
        if len(members) == 1:
            exchange(key, members[0][1], members[0][2])
            return
        params = [p for _, ps, _, _ in members for p in ps]
        dims = [sum(p.numel() for p in ps) for _, ps, _, _ in members]
        dtype = members[0][2].dtype
        fused = self._fused.get((key, dtype))
        if fused is None or fused.numel() != sum(dims):
            fused = self._fused[(key, dtype)] = torch.empty(sum(dims), dtype=dtype)
        torch.cat([buf.view(-1)[:n] for (_, _, buf, _), n in zip(members, dims)], out=fused)
        exchange(key, params, fused)
        for (_, _, buf, _), n, part in zip(members, dims, fused.split(dims)):
            buf.view(-1)[:n].copy_(part)


def _dtype_runs(members: List[Member]) -> List[List[Member]]:
    runs: List[List[Member]] = []
    for m in members:
        if runs and runs[-1][-1][2].dtype == m[2].dtype:
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def _settle(done: torch.futures.Future, members: List[Member]) -> None:
    """Each member's Future gets its bucket (now the mean), or the exchange's error."""
    try:
        done.value()
    except BaseException as exc:  # handed to whoever waits on the members' futures (DDP re-raises it)
        for *_, fut in members:
            fut.set_exception(exc)
        return
    for _, _, buf, fut in members:
        fut.set_result(buf)
