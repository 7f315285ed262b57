"""DDP communication hooks: IntSGD's integer sum (or any registered compressor) for DistributedDataParallel.

::

    from mpiopt.torch.hooks import IntSGDState, intsgd_hook
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    state = IntSGDState(process_group=None, optimizer=opt, wire_dtype="auto", seed=0)
    ddp.register_comm_hook(state, intsgd_hook)

    # any registered compressor (mpiopt.compressors): its options as keywords
    state = CompressorState(process_group=None, optimizer=opt, compressor="nat")
    ddp.register_comm_hook(state, compressor_hook)

Each DDP bucket gets its own compressor (one :class:`~mpiopt.compressors.integer.IntCompressor`
per bucket index) over a :class:`~mpiopt.torch.comm.TorchCommunicator` of the process group. A
coordinate's integer is keyed on its place in the *optimizer's* order (DDP orders a bucket's buffer
by gradient readiness, and reorders it when it rebuilds its buckets after the first iteration): so
the integers do not depend on DDP's bucket order, and on a one-bucket model they are those of
:class:`mpiopt.torch.IntSGD`, coordinate by coordinate. On CPU tensors with the numba kernel the int
compressor works in the bucket's buffer itself (its ``layout`` maps DDP's order to the optimizer's):
it rounds the float32 gradient where it lies and writes the mean there, with no float64 copy. The
mean is decoded into the bucket's dtype as every kernel decodes into a float32 array: S / (n alpha)
rounded once with one alpha; with one alpha per layer S / alpha, then times 1 / n, each rounded to
that dtype (the bits of a float64 mean cast once, as the copy path writes, whenever n is a power of
two and the mean is not subnormal; otherwise they may differ in the last bit).
Other compressors, float16 and CUDA buckets get the gradient copied to float64 in the optimizer's
order, and the mean copied back; bfloat16 buckets are refused (numpy has no bfloat16). The hook
returns a completed Future holding the bucket: every rank gets the same bits, so the replicas stay
bit-identical.

IntSGD's alpha (Alg. 1, or Alg. 2 with one block per layer: ``block='layer'``, the default; one
block per bucket: ``block='bucket'``) reads the real parameter movement ||x^k - x^{k-1}||^2 of
the bucket's parameters, taken when the hook runs (during backward, before the optimizer's step),
and the optimizer's step size of this step, so LR schedules are followed: with param groups of
different ``lr``, each layer's alpha reads its own group's (one alpha per bucket then refuses to
run with an :class:`~mpiopt.errors.InputError`).
Every input of alpha is the same on all ranks, so alpha is never sent. A bucket's first step has no
x^{k-1}: it sends integers scaled by the largest |g| over the ranks (``first_step='exponent'``, the
default here, unless ``alpha0`` is given: one integer MAX Allreduce of an exponent per block), or
float64 with ``first_step='float'``.

:meth:`CompressorState.state_dict` holds every bucket's state record (:mod:`mpiopt.state`): save it
per rank with the model and the optimizer; :meth:`~CompressorState.load_state_dict` resumes
bit-identically. The state exposes ``bytes_sent``, ``info_bits``, ``max_abs_q``, ``clipped`` and
``redone_steps``. gloo and NCCL cannot sum int16: ``wire_dtype='int16'`` is refused there when the
state is built, and ``auto`` climbs int8 -> int32 -> int64.

CUDA buckets run on CuPy arrays (DLPack views, the CuPy quantizer, NCCL); that path needs a GPU and
is exercised by ``benchmarks/gpu_check.py`` only.
"""

import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from mpiopt.comm import Communicator, on_device
from mpiopt.compressors import compressor_class
from mpiopt.compressors.integer import IntCompressor
from mpiopt.errors import InputError
from mpiopt.kernels import cpu_kernel
from mpiopt.problems.torch import array_module, as_array
from mpiopt.state import capture, restore
from mpiopt.torch.common import (CompressorEngine, check_identity, layer_starts, non_finite_gradient, record_from_torch,
                          record_to_torch, with_integer_first_step)
from mpiopt.torch.comm import TorchCommunicator

Layout = Tuple[Tuple[int, int], ...]
"""A bucket's contents: (position in the optimizer's parameter list, numel) of each parameter."""
BLOCKS = ("layer", "bucket")
IN_PLACE_DTYPES = (torch.float32, torch.float64)
"""Bucket dtypes the numba kernel reads and writes in place (a float16 bucket is copied to float64)."""


class _BucketPlan:
    """Where a DDP bucket's parameters lie in its buffer (DDP's order) and in the compressor's vector
    (the optimizer's order), as runs of slice copies: vector[dst:dst + n] = buffer[src:src + n] for
    each (src, dst, n) in ``runs`` (one run per parameter, adjacent ones merged: one run when DDP's
    order is the optimizer's)."""

    def __init__(self, params: Sequence[torch.Tensor], position: Dict[int, int], group: Dict[int, int]):
        missing = [i for i, p in enumerate(params) if id(p) not in position]
        if missing:
            raise ValueError(f"the DDP bucket holds {len(missing)} parameter(s) the optimizer does not: give the "
                             "hook state the optimizer of all of the model's parameters")
        sizes = np.array([p.numel() for p in params], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        order = np.argsort([position[id(p)] for p in params], kind="stable")
        self.ids = tuple(id(p) for p in params)
        self.params = [params[i] for i in order]
        self.groups = [group[id(p)] for p in self.params]
        """The optimizer's param group of each parameter (optimizer's order)."""
        self._views: List[torch.Tensor] = []
        self._ptrs: List[int] = []
        self.layout: Layout = tuple((position[id(params[i])], int(sizes[i])) for i in order)
        self.starts = np.concatenate(([0], np.cumsum(sizes[order])[:-1])).tolist()
        self.dim = int(sizes.sum())
        self.runs = merged_runs([(int(offsets[i]), start, int(sizes[i])) for i, start in zip(order, self.starts)])

    def flat_views(self) -> List[torch.Tensor]:
        """The parameters as flat views, in the optimizer's order (kept between steps; made again
        when a parameter's storage was replaced, e.g. by ``p.data = ...``)."""
        ptrs = [p.data_ptr() for p in self.params]
        if ptrs != self._ptrs:
            self._views = [p.detach().reshape(-1) for p in self.params]
            self._ptrs = ptrs if all(v.data_ptr() == q for v, q in zip(self._views, ptrs)) else []
        return self._views


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
    """One bucket index: its plan, its compressor (with the counters of a method) and step counter.

    ``in_place``: the compressor reads the gradient from the bucket's buffer and writes the mean
    back into it, in DDP's order (the int compressor with the numba kernel, given the plan's runs as
    its ``layout``); otherwise both are copied to and from float64 vectors in the optimizer's order."""

    def __init__(self, state: "CompressorState", plan: _BucketPlan, index: int, xp, dtype: torch.dtype):
        self.plan, self.k = plan, 0
        self._flat, self._flat_ptr, self._flat_numel = None, -1, -1
        opts = dict(state.options)
        names = {o.name for o in state.cls.options}
        self.layer_groups: Optional[np.ndarray] = None
        """The param group of each alpha block (one per non-empty parameter), when alpha has a block per layer."""
        if "block_starts" in names:
            opts["block_starts"] = (layer_starts(zip(plan.starts, (numel for _, numel in plan.layout)))
                                    if state.block == "layer" else None)
            if state.block == "layer":
                self.layer_groups = np.array([g for g, (_, numel) in zip(plan.groups, plan.layout) if numel],
                                             dtype=np.intp)
        self.in_place = ("layout" in names and xp is np and dtype in IN_PLACE_DTYPES
                         and cpu_kernel(opts.get("kernel")) == "numba")
        if self.in_place:
            opts["layout"] = plan.runs
        comm = state.comm if xp is np else on_device(state.comm)
        comp = state.cls(comm, plan.dim, seed=state.seed + (index << 32), worker=state.comm.rank,
                         fail=functools.partial(non_finite_gradient, state.comm), xp=xp, **opts)
        self.engine = CompressorEngine(comp)
        if self.in_place:
            self.v = self.mean = None
            self._x = torch.zeros(plan.dim, dtype=dtype)
            self.x = self._x.numpy()
        else:
            self.v, self.x, self.mean = xp.empty(plan.dim), xp.zeros(plan.dim), xp.empty(plan.dim)
        comp.prepare(self.x)  # compile its kernels (once per process) before the first exchange

    def flat(self, buf: torch.Tensor):
        """The bucket's buffer as the compressor reads it (a numpy view in place, else an array of
        ``buf``'s module), kept while DDP hands the same buffer (holding it keeps its address)."""
        if buf.data_ptr() != self._flat_ptr or buf.numel() != self._flat_numel:
            self._flat = buf.numpy() if self.in_place else as_array(buf)
            self._flat_ptr, self._flat_numel = buf.data_ptr(), buf.numel()
        return self._flat

    def step_size(self, groups: List[Dict[str, Any]]):
        """This step's lr for alpha: a float when the bucket's parameters share one, else one per
        layer block (each its param group's lr). Raises InputError when one alpha (``block='bucket'``)
        would have to serve parameters with different step sizes."""
        lrs = [float(g["lr"]) for g in groups]
        if lrs.count(lrs[0]) == len(lrs):
            return lrs[0]
        here = self.plan.groups if self.layer_groups is None else self.layer_groups.tolist()
        mine = {lrs[g] for g in here}
        if len(mine) <= 1:
            return mine.pop() if mine else lrs[0]
        if self.layer_groups is None:
            if not isinstance(self.engine.comp, IntCompressor):
                return lrs[here[0]]  # only the int compressor reads the step size
            raise InputError(f"one alpha per bucket (block='bucket') cannot follow the optimizer's param groups' "
                             f"different step sizes {sorted(mine)}; use block='layer' (each layer's alpha "
                             "reads its own group's lr)")
        return np.array(lrs)[self.layer_groups]

    def replan(self, plan: _BucketPlan) -> None:
        """DDP reordered the bucket's parameters (same ones): follow the new order."""
        self.plan = plan
        if self.in_place:
            self.engine.comp.set_layout(plan.runs)

    def load(self, flat, reads_iterate: bool):
        """The gradient as the compressor takes it (``flat`` itself in place, else a float64 copy in
        the optimizer's order), and x <- the parameters (in the optimizer's order)."""
        if self.in_place:
            if reads_iterate:
                torch.cat(self.plan.flat_views(), out=self._x)
            return flat
        for src, dst, n in self.plan.runs:
            self.v[dst:dst + n] = flat[src:src + n]
        if reads_iterate:
            for p, start, (_, size) in zip(self.plan.params, self.plan.starts, self.plan.layout):
                self.x[start:start + size] = as_array(p).reshape(-1)
        return self.v

    def store(self, flat) -> None:
        """The mean into the bucket's buffer (already there in place)."""
        if not self.in_place:
            for src, dst, n in self.plan.runs:
                flat[src:src + n] = self.mean[dst:dst + n]

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


class CompressorState:
    """The state of :func:`compressor_hook`: the process group, the optimizer (for the step size and
    the parameters' order), a compressor name with its options, and one compressor per DDP bucket.

    ``block``: 'layer' (one alpha per parameter tensor, IntSGD Alg. 2) or 'bucket' (one alpha per
    bucket, Alg. 1), for compressors with alpha blocks. ``comm``: a Communicator to use instead of
    ``TorchCommunicator(process_group)``. Bad options raise :class:`mpiopt.errors.InputError` here,
    on every rank (e.g. ``wire_dtype='int16'`` on gloo or NCCL).
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                 compressor: str = "int", *, seed: int = 0, block: str = "layer",
                 comm: Optional[Communicator] = None, **options: Any):
        if optimizer is None:
            raise ValueError("the hook state needs the optimizer: alpha reads its step size at every step")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        self.process_group, self.optimizer, self.seed, self.block = process_group, optimizer, int(seed), block
        self.comm = TorchCommunicator(process_group) if comm is None else comm
        self.cls = compressor_class(compressor)
        self.cls.resolve(dict(options), self.comm)  # refuse bad options now, not inside backward
        self.options = options
        self.reads_iterate = issubclass(self.cls, IntCompressor)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._position = {id(p): i for i, p in enumerate(params)}
        self._group = {id(p): gi for gi, group in enumerate(optimizer.param_groups) for p in group["params"]}
        self.buckets: Dict[int, _Bucket] = {}
        self._saved: Dict[int, Dict[str, Any]] = {}

    def bucket(self, grad_bucket: dist.GradBucket) -> _Bucket:
        """The compressor of ``grad_bucket``'s index, made on first use (restoring a loaded state);
        a bucket DDP only reordered keeps its compressor, one with other parameters gets a new one."""
        index, params = grad_bucket.index(), grad_bucket.parameters()
        known = self.buckets.get(index)
        if known is not None and known.plan.ids == tuple(id(p) for p in params):
            return known
        plan = _BucketPlan(params, self._position, self._group)
        if known is not None and known.plan.layout == plan.layout:
            known.replan(plan)
            return known
        buf = grad_bucket.buffer()
        if buf.dtype == torch.bfloat16:
            raise InputError("the mpiopt hooks cannot take bfloat16 gradients (numpy and CuPy have no bfloat16): "
                             "keep the parameters in float32 (torch.autocast computes in bfloat16 with float32 "
                             "parameters) or float16")
        made = self.buckets[index] = _Bucket(self, plan, index, array_module(buf.device), buf.dtype)
        if index in self._saved:
            made.restore(self._saved.pop(index), index)
        return made

    # ---- counters ----------------------------------------------------------------------------
    def _engines(self) -> List[CompressorEngine]:
        return [b.engine for b in self.buckets.values()]

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank handed to the collectives so far."""
        return self.comm.bytes_sent

    @property
    def info_bits(self) -> int:
        """Information bits sent so far (int: d (1 + ceil(log2(max|Q| + 1))) per step and bucket)."""
        return sum(e.info_bits for e in self._engines())

    @property
    def clipped(self) -> int:
        """Coordinates clipped to the wire dtype's bound so far (never, with ``auto``)."""
        return sum(e.clipped for e in self._engines())

    @property
    def max_abs_q(self) -> float:
        """The largest |Q| this rank sent (integer compressors; 0 otherwise)."""
        return max([float(e.comp.state.get("max_abs_q", 0.0)) for e in self._engines()] or [0.0])

    @property
    def redone_steps(self) -> int:
        """Bucket steps that ``auto`` redid in a wider dtype after an overflow."""
        return sum(int(e.comp.state.get("redone_steps", 0)) for e in self._engines())

    def stats(self) -> Dict[str, Any]:
        """The counters above as one dict (this rank's)."""
        return {"bytes_sent": self.bytes_sent, "info_bits": self.info_bits, "clipped": self.clipped,
                "max_abs_q": self.max_abs_q, "redone_steps": self.redone_steps}

    # ---- checkpoints -------------------------------------------------------------------------
    def _identity(self) -> Dict[str, Any]:
        return {"compressor": self.cls.name, "n_ranks": self.comm.size, "rank": self.comm.rank, "seed": self.seed}

    def state_dict(self) -> Dict[str, Any]:
        """This rank's hook state: each bucket's layout, step and state record (tensors and plain values)."""
        return {**self._identity(), "buckets": {index: b.record() for index, b in self.buckets.items()}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore a state saved on the same rank of a same-size job with the same compressor; buckets
        not built yet are restored when the hook first meets them."""
        check_identity(state_dict, self._identity(), "hook state does not match this hook")
        self._saved = dict(state_dict["buckets"])
        for index in list(self._saved):
            if index in self.buckets:
                self.buckets[index].restore(self._saved.pop(index), index)


class IntSGDState(CompressorState):
    """The state of :func:`intsgd_hook`: IntSGD's integers (the ``int`` compressor) with ``wire_dtype``
    ('auto' promotes instead of clipping) and the int compressor's other options as keywords
    (``rounding``, ``alpha``, ``alpha0``, ``first_step``, ``beta``, ``eps``, ``kernel``); the first
    step sends integers (``first_step='exponent'``) unless ``alpha0`` or ``first_step`` says otherwise."""

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                 wire_dtype: str = "auto", seed: int = 0, **options: Any):
        super().__init__(process_group, optimizer, "int", seed=seed, wire_dtype=wire_dtype,
                         **with_integer_first_step(options))


def compressor_hook(state: CompressorState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Replace the bucket's gradient by the mean over ranks of its compressed gradients (every rank
    gets the same bits); returns a completed Future holding the bucket's buffer."""
    buf = bucket.buffer()
    b = state.bucket(bucket)
    flat = b.flat(buf)
    v = b.load(flat, state.reads_iterate)
    lr = b.step_size(state.optimizer.param_groups)
    b.engine.comp.exchange(v, b.k, b.x, lr, flat if b.in_place else b.mean)
    b.engine.count()
    b.k += 1
    b.store(flat)
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(buf)
    return fut


intsgd_hook = compressor_hook
"""The hook of :class:`IntSGDState` (the same function: the state names the compressor)."""
