"""Any registered compressor behind a DDP hook: one compressor per bucket, fed in the optimizer's order.

The compressors other than IntSGD's (nat, qsgd, hint, ...) keep no state that depends on the
iterate, so one per bucket index is enough: a coordinate's place in the compressor's vector is its
place in the optimizer's order (DDP orders a bucket's buffer by gradient readiness and reorders it when
it rebuilds its buckets), the gradient is copied to a float64 vector in that order and the mean copied
back. A bucket DDP only reorders keeps its compressor; one with other parameters gets a new one.
"""

import functools
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from mpiopt.comm import Communicator, on_device
from mpiopt.errors import InputError
from mpiopt.problems.torch import array_module, as_array
from mpiopt.state import capture, restore
from mpiopt.torch.common import CompressorEngine, non_finite_gradient, record_from_torch, record_to_torch

Layout = Tuple[Tuple[int, int], ...]
"""A bucket's contents: (position in the optimizer's parameter list, numel) of each parameter."""


class _BucketPlan:
    """Where a DDP bucket's parameters lie in its buffer (DDP's order) and in the compressor's vector
    (the optimizer's order), as runs of slice copies: vector[dst:dst + n] = buffer[src:src + n] for
    each (src, dst, n) in ``runs`` (one run per parameter, adjacent ones merged)."""

    def __init__(self, params: Sequence[torch.Tensor], position: Dict[int, int]):
        missing = [i for i, p in enumerate(params) if id(p) not in position]
        if missing:
            raise InputError(f"the DDP bucket holds {len(missing)} parameter(s) the optimizer does not: give the "
                             "hook state the optimizer of all of the model's parameters")
        sizes = np.array([p.numel() for p in params], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        order = np.argsort([position[id(p)] for p in params], kind="stable")
        self.ids = tuple(id(p) for p in params)
        self.layout: Layout = tuple((position[id(params[i])], int(sizes[i])) for i in order)
        starts = np.concatenate(([0], np.cumsum(sizes[order])[:-1])).tolist()
        self.dim = int(sizes.sum())
        self.runs = merged_runs([(int(offsets[i]), start, int(sizes[i])) for i, start in zip(order, starts)])


def merged_runs(runs: List[Tuple[int, int, int]]) -> List[Tuple[int, int, int]]:
    """(src, dst, n) copies with each run that continues the previous one in both buffers merged into it."""
    merged: List[Tuple[int, int, int]] = []
    for src, dst, n in runs:
        if merged and merged[-1][0] + merged[-1][2] == src and merged[-1][1] + merged[-1][2] == dst:
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + n)
        else:
            merged.append((src, dst, n))
    return merged


class _Bucket:
    """One bucket index: its plan, its compressor (with the counters of a method) and step counter."""

    def __init__(self, engine: "BucketEngine", plan: _BucketPlan, index: int, xp):
        self.plan, self.k = plan, 0
        comm = engine.comm if xp is np else on_device(engine.comm)
        comp = engine.cls(comm, plan.dim, seed=engine.seed + (index << 32), worker=engine.comm.rank,
                          fail=functools.partial(non_finite_gradient, engine.comm), xp=xp, **engine.options)
        self.engine = CompressorEngine(comp)
        self.v, self.mean = xp.empty(plan.dim), xp.empty(plan.dim)
        comp.prepare(self.v)  # compile its kernels (once per process) before the first exchange

    def record(self) -> Dict[str, Any]:
        rec = record_to_torch(capture(self.engine, {}, self.engine.comp.comm))
        return {"layout": [list(e) for e in self.plan.layout], "step": self.k, **rec}

    def restore(self, saved: Dict[str, Any], index: int) -> None:
        layout = tuple(tuple(e) for e in saved["layout"])
        if layout != self.plan.layout:
            raise ValueError(f"saved hook state of bucket {index} is for parameters {list(layout)} (position in the "
                             f"optimizer, numel), this DDP bucket holds {list(self.plan.layout)}: build the model "
                             "and DDP (bucket_cap_mb) as in the saved run")
        restore(record_from_torch(saved), self.engine, {}, self.engine.comp.comm)
        self.k = int(saved["step"])


class BucketEngine:
    """One compressor of class ``cls`` per DDP bucket index (module docstring)."""

    def __init__(self, comm: Communicator, optimizer: torch.optim.Optimizer, cls, options: Dict[str, Any], seed: int):
        self.comm, self.cls, self.options, self.seed = comm, cls, options, seed
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._position = {id(p): i for i, p in enumerate(params)}
        self.buckets: Dict[int, _Bucket] = {}
        self._saved: Dict[int, Dict[str, Any]] = {}

    def bucket(self, index: int, params: Sequence[torch.Tensor], buf: torch.Tensor) -> _Bucket:
        known = self.buckets.get(index)
        if known is not None and known.plan.ids == tuple(id(p) for p in params):
            return known
        plan = _BucketPlan(params, self._position)
        if known is not None and known.plan.layout == plan.layout:
            known.plan = plan
            return known
        if buf.dtype == torch.bfloat16:
            raise InputError(f"compressor '{self.cls.name}' cannot take bfloat16 gradients (numpy has no bfloat16): "
                             "use the IntSGD hook, or keep the parameters in float32 or float16")
        made = self.buckets[index] = _Bucket(self, plan, index, array_module(buf.device))
        if index in self._saved:
            made.restore(self._saved.pop(index), index)
        return made

    def exchange(self, b: _Bucket, buf: torch.Tensor) -> torch.Tensor:
        """The bucket's gradient replaced by the mean of its compressed gradients (copied both ways)."""
        flat = as_array(buf)
        for src, dst, n in b.plan.runs:
            b.v[dst:dst + n] = flat[src:src + n]
        b.engine.comp.exchange(b.v, b.k, None, 0.0, b.mean)
        b.engine.count()
        b.k += 1
        for src, dst, n in b.plan.runs:
            flat[src:src + n] = b.mean[dst:dst + n]
        return buf

    @property
    def counters(self) -> Dict[str, Any]:
        engines = [b.engine for b in self.buckets.values()]
        return {"info_bits": sum(e.info_bits for e in engines), "clipped": sum(e.clipped for e in engines),
                "max_abs_q": max([float(e.comp.state.get("max_abs_q", 0.0)) for e in engines] or [0.0]),
                "redone_steps": sum(int(e.comp.state.get("redone_steps", 0)) for e in engines), "skipped_steps": 0}

    def record(self) -> Dict[str, Any]:
        return {"buckets": {index: b.record() for index, b in self.buckets.items()}}

    def restore(self, saved: Dict[str, Any]) -> None:
        """Buckets not built yet are restored when the hook first meets them."""
        self._saved = dict(saved["buckets"])
        for index in list(self._saved):
            if index in self.buckets:
                self.buckets[index].restore(self._saved.pop(index), index)
