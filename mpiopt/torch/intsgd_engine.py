"""IntSGD for DDP buckets with its state per parameter, in the optimizer's order.

IntSGD's alpha (Alg. 1/2 of the paper) reads its own iterate's last move: x~ <- x~ - lr * mean, what
the method assumes the step is, whatever optimizer actually moves the parameters (momentum, Adam,
AdamW). So the state lives per parameter, in the order of the optimizer's parameters, whatever DDP's
buckets are: x~ (float64, set from the parameters at the first exchange, when DDP has broadcast them),
per alpha block (one per non-empty parameter) the running average r of its ||x~^k - x~^{k-1}||^2, the
auto wire dtype's level and streak; and one step counter k that keys the rounding noise. Only the
paper's rule reads x~ and r: under ``alpha='exponent'`` (the default under Adam) and ``'constant'`` the
engine keeps no x~ and, after the sum, only decodes the mean into the bucket. A bucket only
selects slices of it: each coordinate's noise is keyed on its global number (its place in the
optimizer's parameters), so its integer is the one :class:`mpiopt.torch.IntSGD` sends, whatever
bucket carries it. DDP's bucket rebuild, another ``bucket_cap_mb`` and a resume are invisible to the
iterates.

A step ends when every parameter has been exchanged once (DDP hands every parameter to the hook at
every synchronized backward). Its new x~ and squared moves are kept aside until then and committed
together: a step in which some bucket was not finite on some rank (a GradScaler overflow) commits
nothing, so the state does not advance and the scaler's skipped step leaves no trace.

With ``alpha='exponent'`` every block takes that first step's scaling at every step (below): the
largest |g| over the ranks fills the speculative dtype, rounding noise at most (2^e / bound)^2 / 4 a
coordinate, in place of Alg. 1/2's noise about the step's own size.

Blocks whose alpha cannot follow Alg. 1/2 -- the first step (no move yet) and a block whose lr is 0
(a schedule's end, a frozen group: its alpha would be 0, its mean 0 / 0) -- send integers scaled by the
largest |g| over the ranks (one integer MAX Allreduce of one exponent per block of the bucket), or,
with ``first_step='float'``, the whole bucket in float64, or with ``alpha0`` that constant.

With ``grad_scaler``, the bucket holds s g for the scaler's current scale s: Alg. 1/2's alpha is
divided by s, so the integers are those of the unscaled gradient (the scale does not widen the wire),
the bucket gets the scaled mean back, and x~ moves by lr * mean / s.

Precision: float32 and float64 buckets are read where they lie; float16 and bfloat16 ones are widened
(exactly) to float32 first. The mean is decoded in float64 (x~ moves by it, as IntSGD's does) and
written back into the bucket with one rounding to its dtype.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mpiopt.compressors.alpha import adaptive_alpha, block_constants
from mpiopt.compressors.base import info_bits_int, sum_rows, worker_order
from mpiopt.compressors.integer import (HEADER, NON_FINITE, OVER, FITS_SMALLER, SHRINK_AFTER, WIRE_NAMES,
                                        exponent_dtype, max_exponents, non_finite, resend_wider, scaled, send_at,
                                        send_speculative)
from mpiopt.comm import INT_DTYPES, Communicator
from mpiopt.errors import InputError
from mpiopt.kernels import cpu_kernel, int_bound
from mpiopt.kernels.numpy import GOLDEN, Quantizer as NumpyQuantizer, float_below
from mpiopt.torch.common import non_finite_gradient

WIDENED = (torch.float16, torch.bfloat16)
"""Bucket dtypes widened to float32 for the rounding (numpy has no bfloat16; numba no float16)."""
TAKES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Parameter dtypes the hook takes (checked when its state is built)."""
_AT_ZERO = np.zeros(1, dtype=np.intp)
_NO_SUMS = np.zeros(0, dtype=np.int8)
_ONE = np.ones(1)
STATE_ARRAYS = ("x", "r", "have_r", "level", "fit_streak", "steps_by_wire")


class ParameterLayout:
    """The optimizer's parameters: global offsets, sizes, param groups and alpha blocks (one per
    non-empty parameter), in the optimizer's order."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.groups = [gi for gi, group in enumerate(optimizer.param_groups) for _ in group["params"]]
        self.position = {id(p): i for i, p in enumerate(self.params)}
        if len(self.position) != len(self.params):
            raise InputError("the optimizer lists a parameter twice")
        bad = sorted({str(p.dtype) for p in self.params if p.dtype not in TAKES})
        if bad:
            raise InputError(f"the IntSGD hook takes float16, bfloat16, float32 and float64 parameters, got {bad}")
        self.sizes = np.array([p.numel() for p in self.params], dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(self.sizes)[:-1])).astype(np.int64)
        self.dim = int(self.sizes.sum())
        nonempty = self.sizes > 0
        self.block_of = np.where(nonempty, np.cumsum(nonempty) - 1, -1)
        """The alpha block of each parameter (-1: an empty parameter has none)."""
        self.block_sizes = self.sizes[nonempty].astype(np.float64)
        self.block_groups = np.array(self.groups, dtype=np.intp)[nonempty]
        self.n_blocks = int(nonempty.sum())


class BucketPlan:
    """Where a DDP bucket's parameters lie in its buffer and in the optimizer's order.

    ``rows``: (position in the buffer, global coordinate, count, block of the bucket) per non-empty
    parameter; ``blocks``: the global alpha blocks of the bucket's blocks, ascending (one block over all
    of them with ``per_bucket``)."""

    def __init__(self, params: Sequence[torch.Tensor], layout: ParameterLayout, per_bucket: bool):
        missing = [i for i, p in enumerate(params) if id(p) not in layout.position]
        if missing:
            raise InputError(f"the DDP bucket holds {len(missing)} parameter(s) the optimizer does not: give the "
                             "hook state the optimizer of all of the model's parameters")
        self.ids = tuple(id(p) for p in params)
        self.positions = np.array([layout.position[id(p)] for p in params], dtype=np.int64)
        sizes = layout.sizes[self.positions]
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        self.dim = int(sizes.sum())
        self.blocks = np.unique(layout.block_of[self.positions][sizes > 0])
        local = {int(b): i for i, b in enumerate(self.blocks)}
        rows = [(int(s), int(layout.offsets[pos]), int(n), 0 if per_bucket else local[int(layout.block_of[pos])])
                for s, pos, n in zip(starts, self.positions, sizes) if n]
        self.row_blocks = np.array([layout.block_of[pos] for pos, n in zip(self.positions, sizes) if n], dtype=np.intp)
        """The global alpha block of each row (whose r the row's squared move feeds)."""
        self.rows = np.array(rows, dtype=np.int64).reshape(-1, 4)
        self.coords = np.empty(self.dim, dtype=np.int64)
        """The global coordinate at each position of the buffer."""
        self.block_at = np.empty(self.dim, dtype=np.intp)
        """The bucket block at each position of the buffer."""
        for p, c, n, b in self.rows.tolist():
            self.coords[p:p + n] = np.arange(c, c + n)
            self.block_at[p:p + n] = b
        self.n_blocks = 1 if per_bucket else len(self.blocks)


def _numba_quantizer():
    from mpiopt.kernels.numba import Quantizer

    class RowQuantizer(Quantizer):
        """The numba quantizer over a bucket's rows: each row's noise is keyed on the global
        coordinates it holds (the kernels shift the noise key by a row's coordinate), its alpha is
        its bucket block's."""

        def __init__(self, plan: BucketPlan, seed: int, worker: int, n_ranks: int, rounding: str):
            super().__init__(plan.dim, seed, worker, n_ranks, rounding)
            self.n_blocks = plan.n_blocks
            self._segs = plan.rows
            self._segs_one = plan.rows.copy()
            self._segs_one[:, 3] = 0

    return RowQuantizer


class CounterQuantizer(NumpyQuantizer):
    """The numpy quantizer with the noise counters of a bucket's global coordinates (alpha per position)."""

    def __init__(self, plan: BucketPlan, seed: int, worker: int, n_ranks: int, rounding: str):
        super().__init__(plan.dim, seed, worker, n_ranks, rounding)
        ctr = (plan.coords.astype(np.uint64) + np.uint64(1)) * np.uint64(GOLDEN)
        self._ctr = ctr if self._ctr.ndim == 1 else ctr[None, :]


class _Bucket:
    """What the engine keeps for one DDP bucket (rebuilt freely: nothing here is state)."""

    def __init__(self, engine: "IntSGDEngine", plan: BucketPlan, buf: torch.Tensor):
        self.plan = plan
        kind = _numba_quantizer() if engine.kernel == "numba" else CounterQuantizer
        self.quant = kind(plan, engine.seed, engine.worker, engine.n, engine.opts["rounding"])
        self.per_coordinate = engine.kernel != "numba"
        self.widened = torch.empty(plan.dim, dtype=torch.float32) if buf.dtype in WIDENED else None
        self.mean = np.empty(plan.dim)
        self.squares = None if engine.kernel == "numba" else np.empty(plan.dim)
        self.row_sums = np.empty(len(plan.rows))
        self.summed: Optional[Tuple[np.ndarray, Any]] = None
        """(the summed integers, alpha) of this step's integer exchange, decoded by ``_move``; None after a
        float step, which leaves the mean in ``mean``."""
        self.bufs: List[Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]] = [None] * len(engine.dtypes)
        self.peak = np.empty(plan.n_blocks)

    def wire(self, level: int, dtype) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        views = self.bufs[level]
        if views is None:
            buf = np.zeros(self.plan.dim + HEADER, dtype=dtype)
            views = self.bufs[level] = (buf, buf[:self.plan.dim], buf[self.plan.dim:])
        return views


class IntSGDEngine:
    """IntSGD's per-parameter state and the exchange of one bucket (module docstring)."""

    def __init__(self, comm: Communicator, optimizer: torch.optim.Optimizer, opts: Dict[str, Any], seed: int,
                 block: str, grad_scaler: Any = None):
        if any(opts.get(k) is not None for k in ("block_size", "block_starts", "layout")):
            raise InputError("the hook makes its own alpha blocks (block='layer' or 'bucket'): block_size, "
                             "block_starts and layout are not hook options")
        if opts["alpha"] == "exponent" and opts["alpha0"] is not None:
            raise InputError("alpha='exponent' scales every step of the hook by the largest |g|, the first too: it "
                             "takes no alpha0")
        if opts["alpha"] == "fill":
            raise InputError("alpha='fill' is not a hook option (its int16 floor is for convex problems' flat "
                             "directions, and a deep model's gradients do not shrink past it): use 'exponent', "
                             "the same scaling without the floor, or 'paper'")
        layout = ParameterLayout(optimizer)
        self.comm, self.optimizer, self.layout, self.opts = comm, optimizer, layout, opts
        self.seed, self.block = seed, block
        self.grad_scaler = grad_scaler
        self.n, self.worker = comm.size, comm.rank
        self.kernel = cpu_kernel(opts.get("kernel"))
        self.auto = opts["wire_dtype"] == "auto"
        self.dtypes = [t for t in INT_DTYPES if t in comm.int_dtypes]
        self.bounds = [int_bound(t, self.n) for t in self.dtypes]
        self.first = min(lv for lv, b in enumerate(self.bounds) if b >= 1)
        self.exponent_dtype = exponent_dtype(self.dtypes)
        start = self.first if self.auto else self.dtypes.index(np.dtype(opts["wire_dtype"]))
        self._wire_slot = [WIRE_NAMES.index(str(t)) for t in self.dtypes]
        nb = layout.n_blocks
        self._constants = block_constants(layout.block_sizes, opts["eps"]) if nb > 1 else None
        self.state: Dict[str, Any] = {
            "x": None,
            "r": np.zeros(nb),
            "have_r": np.zeros(nb, dtype=np.int8),
            "level": np.full(nb, start, dtype=np.int64),
            "fit_streak": np.zeros(nb, dtype=np.int64),
            "steps_by_wire": np.zeros(len(WIRE_NAMES), dtype=np.int64),
        }
        self.k = 0
        self.counters = {"info_bits": 0, "clipped": 0, "max_abs_q": 0.0, "redone_steps": 0, "skipped_steps": 0}
        self.alpha_blocks = np.zeros(nb)
        """Each block's alpha at its last exchange (as sent: divided by the scale under a GradScaler)."""
        self._x_next: Optional[np.ndarray] = None
        self._sq_next = np.zeros(nb)
        self.tracks_moves = opts["alpha"] == "paper"
        """Whether the exchange keeps x~ and r: only Alg. 1/2 (``alpha='paper'``) reads them. The exponent
        and constant rules keep neither: no float64 copy of the parameters (8 bytes each, 16 with the
        next step's), and after the sum only the decoding, not the pass that moves x~ and sums its
        squares."""
        self._done = np.zeros(len(layout.params), dtype=bool)
        self._bad_step = False
        self._buckets: Dict[int, _Bucket] = {}
        self._order: Optional[List[int]] = None

    # ---- the bucket ------------------------------------------------------------------------
    def bucket(self, index: int, params: Sequence[torch.Tensor], buf: torch.Tensor) -> _Bucket:
        known = self._buckets.get(index)
        if known is not None and known.plan.ids == tuple(id(p) for p in params):
            return known
        if buf.device.type != "cpu":
            raise InputError("the IntSGD hook's per-parameter engine runs on CPU tensors (gloo); CUDA buckets "
                             "are not supported yet")
        made = self._buckets[index] = _Bucket(self, BucketPlan(params, self.layout, self.block == "bucket"), buf)
        return made

    def exchange(self, b: _Bucket, buf: torch.Tensor) -> torch.Tensor:
        """Replace the bucket's gradient by the mean over ranks of Int(alpha g) / alpha (or NaN under a
        GradScaler when some rank's gradient is not finite); commit the step after its last bucket."""
        plan = b.plan
        if self.tracks_moves and self.state["x"] is None:
            self._start()
        if plan.dim:
            if b.widened is not None:
                b.widened.copy_(buf)
                v = b.widened.numpy()
            else:
                v = buf.numpy()
            scale = self._scale()
            lrs = self._lrs(plan)
            needs = self._needs_first_rule(plan, lrs)
            if needs.any() and self.opts["alpha"] not in ("constant", "exponent") and self.opts["alpha0"] is None \
                    and self.opts["first_step"] == "float":
                finite = self._float_step(b, v)
            else:
                alpha, decided = self._alphas(b, v, lrs, needs, scale)
                finite = self._integer_step(b, v, alpha, decided)
            if finite:
                self._move(b, lrs, scale, buf)
            else:
                self._bad_step = True
                buf.fill_(float("nan"))
        self._done[plan.positions] = True
        if self._done.all():
            self._commit()
        return buf

    # ---- inputs of alpha -------------------------------------------------------------------
    def _start(self) -> None:
        """x~ <- the parameters (DDP has broadcast them by the first backward)."""
        x = np.empty(self.layout.dim)
        for p, off, n in zip(self.layout.params, self.layout.offsets.tolist(), self.layout.sizes.tolist()):
            x[off:off + n] = p.detach().reshape(-1).double().numpy()
        self.state["x"] = x

    def _scale(self) -> float:
        s = self.grad_scaler
        if s is None or not s.is_enabled():
            return 1.0
        return float(s.get_scale())

    def _lrs(self, plan: BucketPlan) -> np.ndarray:
        """The step size of each bucket block (its param group's current lr)."""
        groups = self.layout.block_groups[plan.blocks]
        lrs = np.array([float(g["lr"]) for g in self.optimizer.param_groups])[groups]
        if self.block == "bucket" and lrs.size and (lrs != lrs[0]).any():
            raise InputError(f"one alpha per bucket (block='bucket') cannot follow the optimizer's param groups' "
                             f"different step sizes {sorted(set(lrs.tolist()))}; use block='layer' (each layer's "
                             "alpha reads its own group's lr)")
        return lrs

    def _needs_first_rule(self, plan: BucketPlan, lrs: np.ndarray) -> np.ndarray:
        """Per bucket block: whether its alpha follows the first step's rule (no move yet, or lr 0; every
        block at every step with ``alpha='exponent'``)."""
        if self.opts["alpha"] == "exponent":
            return np.ones(plan.n_blocks, dtype=bool)
        fresh = self.state["have_r"][plan.blocks] == 0
        zero = lrs == 0.0
        if self.block == "bucket":
            return np.array([bool(fresh.any() or zero.any())])
        return fresh | zero

    def _alphas(self, b: _Bucket, v: np.ndarray, lrs: np.ndarray, needs: np.ndarray, scale: float):
        """Each bucket block's alpha (a float when the model has one block, as IntSGD's Alg. 1), and
        whether the exponents decided it in every block, all finite (the integers then fit the level)."""
        o, plan = self.opts, b.plan
        decided = False
        if o["alpha"] == "constant":
            alpha = np.full(plan.n_blocks, float(o["alpha0"]))
        else:
            alpha = np.empty(plan.n_blocks)
            if (~needs).any():
                with np.errstate(divide="ignore", invalid="ignore"):  # lr-0 blocks: replaced just below
                    alpha[...] = self._adaptive(plan, lrs) / scale
            if needs.any() and o["alpha0"] is not None:
                alpha[needs] = float(o["alpha0"])
            elif needs.any():
                exponents, finite = self._exponent_alpha(b, v)
                alpha[needs] = exponents[needs]
                decided = finite and bool(needs.all())
        self.alpha_blocks[plan.blocks] = alpha if self.block == "layer" else alpha[0]
        if self.layout.n_blocks == 1:
            return float(alpha[0]), decided
        return (alpha[plan.block_at] if b.per_coordinate else alpha), decided

    def _adaptive(self, plan: BucketPlan, lrs: np.ndarray) -> np.ndarray:
        st, o = self.state, self.opts
        if self.block == "bucket":
            sizes = self.layout.block_sizes[plan.blocks]
            r = np.array([st["r"][plan.blocks].sum()])
            return np.array([adaptive_alpha(float(lrs[0]), r, np.array([sizes.sum()]), self.n, o["eps"])])
        if self.layout.n_blocks == 1:
            return np.array([adaptive_alpha(float(lrs[0]), st["r"], self.layout.block_sizes, self.n, o["eps"])])
        sqrt_sizes, eps_share = self._constants
        blocks = plan.blocks
        return adaptive_alpha(lrs, st["r"][blocks], self.layout.block_sizes[blocks], self.n, o["eps"],
                              constants=(sqrt_sizes[blocks], eps_share[blocks]))

    def _level(self, plan: BucketPlan) -> int:
        return int(self.state["level"][plan.blocks].max()) if plan.blocks.size else self.first

    def _exponent_alpha(self, b: _Bucket, v: np.ndarray) -> Tuple[np.ndarray, bool]:
        """alpha = floor(M / n) / 2^e per bucket block, 2^e >= max over ranks of the block's |g|: the
        ranks' integer exponents go through one MAX Allreduce (IntSGD's ``first_step='exponent'``, the
        same exponents in the same dtype); and whether no rank had a non-finite value."""
        plan, peak = b.plan, b.peak
        if self.kernel == "numba":  # one compiled pass over the rows, nothing allocated
            b.quant.block_max_abs(v, peak)
        else:
            peak[...] = 0.0
            for p, _, n, blk in plan.rows.tolist():
                row = v[p:p + n]
                peak[blk] = np.maximum(peak[blk], np.maximum(row.max(), -row.min()))  # NaN stays NaN
        exps = max_exponents(self.comm, peak, self.exponent_dtype)
        bound = float_below(self.bounds[self._level(plan)])
        return scaled(exps, bound), not non_finite(exps)

    # ---- the wire ----------------------------------------------------------------------------
    def _integer_step(self, b: _Bucket, v: np.ndarray, alpha, decided: bool) -> bool:
        """Int(alpha v) summed over ranks (``auto``: redone in a wider dtype when a rank overflowed,
        never clipped), kept in ``b.summed`` for ``_move`` to decode; False when some rank's values
        were not finite. ``decided``: the exponents say every rank's integers fit this level."""
        st, q, plan = self.state, b.quant, b.plan
        level = self._level(plan)

        def wire(lv: int):
            return b.wire(lv, self.dtypes[lv])

        ints = wire(level)[1]
        q.round(v, alpha, self.k, into=ints if ints.dtype == np.int8 else None)  # int8: no copy into the wire
        if decided:  # no header, never redone
            ints, clipped = send_at(self.comm, q, wire, self.bounds, level)
            m = q.max_abs
        else:
            sent = self._speculate(b, wire, level)
            if sent is None:
                return False
            level, ints, clipped, m = sent
        sent_max = min(m, self.bounds[level])
        self.counters["info_bits"] += info_bits_int(plan.dim, sent_max)
        self.counters["clipped"] += clipped
        self.counters["max_abs_q"] = max(self.counters["max_abs_q"], sent_max)
        st["steps_by_wire"][self._wire_slot[level]] += 1
        b.summed = (ints, alpha)
        return True

    def _speculate(self, b: _Bucket, wire, level: int):
        """The rounded integers in the dtype of ``level`` with the header; with ``auto``, redone wider
        if a rank overflowed, and the next step's level chosen. Returns (level, summed integers,
        clipped count, this rank's max |Q|), or None when some rank's values were not finite."""
        st, n, q, blocks = self.state, self.n, b.quant, b.plan.blocks
        summed, ints, clipped, m = send_speculative(self.comm, q, wire, level, self.bounds, self.first, self.auto)
        if summed[NON_FINITE] > 0:
            if self.grad_scaler is None:
                non_finite_gradient(self.comm, self.k, not q.finite)
            return None
        if self.auto and summed[OVER] > 0:
            level, ints, clipped = resend_wider(self.comm, q, wire, self.bounds, m, np.empty(1))
            self.counters["redone_steps"] += 1
            st["level"][blocks] = level
            st["fit_streak"][blocks] = 0
        elif self.auto and summed[FITS_SMALLER] == n:
            st["fit_streak"][blocks] += 1
            if st["fit_streak"][blocks].min() >= SHRINK_AFTER:
                st["level"][blocks] = level - 1
                st["fit_streak"][blocks] = 0
        elif self.auto:
            st["fit_streak"][blocks] = 0
        return level, ints, clipped, m

    def _float_step(self, b: _Bucket, v: np.ndarray) -> bool:
        """The bucket in float64: an Allgather summed in worker order (exact, rank-order independent)."""
        if self._order is None:
            self._order = worker_order(self.comm, self.worker)
        rows = np.empty((self.n, b.plan.dim))
        self.comm.allgather(np.ascontiguousarray(v, dtype=np.float64), rows)
        sum_rows(rows, self._order, b.mean)
        if not np.isfinite(b.mean).all():
            if self.grad_scaler is None:
                non_finite_gradient(self.comm, self.k, not np.isfinite(v).all())
            return False
        b.mean *= 1.0 / self.n
        b.summed = None
        self.counters["info_bits"] += 64 * b.plan.dim
        self.state["steps_by_wire"][0] += 1
        return True

    # ---- after the sum -----------------------------------------------------------------------
    def _move(self, b: _Bucket, lrs: np.ndarray, scale: float, buf: torch.Tensor) -> None:
        """The mean (decoded from ``b.summed`` after an integer step) into ``buf`` (one rounding to its
        dtype); x~_next = x~ - lr * mean (mean / s under a GradScaler) on the bucket's slices, and each
        block's ||x~_next - x~||^2, summed as :class:`mpiopt.torch.IntSGD` sums it (the same bits). The
        numba kernel makes it all one pass (:mod:`mpiopt.kernels.move_numba`); numpy's passes are the
        reference. Without ``tracks_moves``: the decoding and the write-back only."""
        if not self.tracks_moves:
            self._write_mean(b, buf)
            return
        x = self.state["x"]
        if self._x_next is None:
            self._x_next = np.empty_like(x)
        nxt, mean, plan = self._x_next, b.mean, b.plan
        per_block_lr = lrs if self.block == "layer" else np.full(plan.n_blocks, lrs[0])
        one_block = self.layout.n_blocks == 1  # IntSGD sums one block with numpy's sum, several with add.reduceat
        if self.kernel == "numba":
            from mpiopt.kernels.move_numba import settle_rows

            if b.summed is None:
                sums, decoded, alphas, one, mul, c, r, inv_n = _NO_SUMS, True, _ONE, True, False, 1.0, 0.0, 1.0
            else:
                sums, alpha = b.summed
                _, alphas, _, one, c, r, mul, inv_n = b.quant.decoding(sums, alpha, self.n, mean)
                decoded = False
            direct = b.widened is None  # float32 / float64 buckets are written in the kernel's pass
            settle_rows(plan.rows, sums, mean, decoded, alphas, one, mul, c, r, inv_n, per_block_lr, scale, x, nxt,
                        buf.numpy() if direct else mean, one_block, b.row_sums)
            if not direct:
                buf.copy_(torch.from_numpy(mean))
        else:
            if b.summed is not None:
                b.quant.decode(*b.summed[:2], self.n, mean)
            buf.copy_(torch.from_numpy(mean))
            if scale != 1.0:
                mean = mean / scale
            sq = b.squares
            for k, (p, c, n, blk) in enumerate(plan.rows.tolist()):
                np.multiply(mean[p:p + n], per_block_lr[blk], out=nxt[c:c + n])
                np.subtract(x[c:c + n], nxt[c:c + n], out=nxt[c:c + n])
                np.subtract(nxt[c:c + n], x[c:c + n], out=sq[p:p + n])
                np.multiply(sq[p:p + n], sq[p:p + n], out=sq[p:p + n])
                b.row_sums[k] = sq[p:p + n].sum() if one_block else np.add.reduceat(sq[p:p + n], _AT_ZERO)[0]
        self._sq_next[plan.row_blocks] = b.row_sums

    def _write_mean(self, b: _Bucket, buf: torch.Tensor) -> None:
        """The mean into ``buf`` with one rounding to its dtype (decoded from ``b.summed`` after an integer
        step in float64, as :meth:`_move` decodes it), nothing else: the rules that keep no x~. The numba
        kernel decodes into a float32 / float64 bucket in one pass (:func:`mpiopt.kernels.move_numba.decode_rows`)."""
        if b.summed is None:
            buf.copy_(torch.from_numpy(b.mean))
            return
        sums, alpha = b.summed
        if self.kernel == "numba" and b.widened is None:
            from mpiopt.kernels.move_numba import decode_rows

            _, alphas, _, one, c, _, _, inv_n = b.quant.decoding(sums, alpha, self.n, b.mean)
            lo, hi = (-128, 127) if sums.dtype == np.int8 else (1, 0)  # the range checked for a product
            decode_rows(b.plan.rows, sums, alphas, one, c, inv_n, lo, hi, buf.numpy())
            return
        b.quant.decode(sums, alpha, self.n, b.mean)
        buf.copy_(torch.from_numpy(b.mean))

    def _commit(self) -> None:
        """The step's last bucket is done: x~ and r advance (unless some bucket was not finite)."""
        st = self.state
        if self._bad_step:
            self.counters["skipped_steps"] += 1
        elif not self.tracks_moves:
            self.k += 1
        else:
            st["x"], self._x_next = self._x_next, st["x"]
            r, have = st["r"], st["have_r"]
            beta = self.opts["beta"]
            fresh = have == 0
            r[~fresh] = beta * r[~fresh] + (1.0 - beta) * self._sq_next[~fresh]
            r[fresh] = self._sq_next[fresh]
            have[...] = 1
            self.k += 1
        self._done[...] = False
        self._bad_step = False

    # ---- checkpoints -------------------------------------------------------------------------
    def record(self) -> Dict[str, Any]:
        """The state as tensors and plain values (independent of DDP's buckets)."""
        st = self.state
        arrays = {name: torch.from_numpy(np.array(st[name])) for name in STATE_ARRAYS if st[name] is not None}
        return {"step": self.k, "dim": self.layout.dim, "blocks": self.layout.n_blocks, "arrays": arrays,
                "counters": dict(self.counters)}

    def restore(self, saved: Dict[str, Any]) -> None:
        if saved["dim"] != self.layout.dim or saved["blocks"] != self.layout.n_blocks:
            raise ValueError(f"hook state is for {saved['dim']} coordinates in {saved['blocks']} blocks, this "
                             f"optimizer has {self.layout.dim} in {self.layout.n_blocks}: build the model as saved")
        if self._done.any():
            raise ValueError("load_state_dict between the buckets of a step (call it between steps)")
        for name, value in saved["arrays"].items():
            if name != "x" or self.tracks_moves:  # an older record of a rule that keeps no x~ still holds one
                self.state[name] = value.numpy().copy()
        self.k = int(saved["step"])
        self.counters.update(saved["counters"])
