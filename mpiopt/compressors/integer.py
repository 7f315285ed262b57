"""int: IntSGD's compressor. Q_i = Int(alpha v_i), S = one integer Allreduce(SUM), mean = S / (n alpha).

alpha is :func:`mpiopt.compressors.alpha.adaptive_alpha` of the iterate's movement (Alg. 1, or Alg. 2
per block with ``block_size``/``block_starts``, where ``lr`` may be one step size per block); r
starts at the first ||x^1 - x^0||^2, as in the reference code. The first step has no x^{k-1}: unless
``alpha0`` is given it sends v in float64 (an Allgather summed in worker order, so it is exact and
independent of the rank order), or, with ``first_step='exponent'``, integers already: per alpha
block, e = ceil(log2 max_i max_j |v_ij|) from a MAX Allreduce of each rank's integer exponents (no
float crosses the wire), and alpha = floor(M / n) / 2^e, so that no rank's |alpha v| exceeds the
speculative dtype's bound (SwitchML's scaling, for this one step; the exponents go in int16 where the
communicator sums it, and the integers, known to fit, without the header). ``alpha='constant'`` uses
``alpha0`` throughout. ``alpha='exponent'`` (vr-intdiana's default, with the method's feedback) takes
the first step's scaling at every step (the first included, unless ``alpha0`` is given; the
speculative dtype's bound / 2^e, no floor). ``alpha='fill'`` (vr-intdiana's default before the
feedback) takes that scaling at every step, from an int16 MAX Allreduce of the exponents, for the narrowest
dtype's bound, and never goes below the first such step's alpha for half the next wider dtype's bound
(see :meth:`IntCompressor._fill_alpha`); with ``auto`` the exponents also tell every rank the
narrowest dtype that holds this step's integers, so they go out without a header and are never
redone (:meth:`IntCompressor._fill_level`).

``wire_dtype='auto'`` costs one collective per step in the common case: the integers go out in a
speculative dtype (the narrowest the communicator sums whose bound floor(M / n) is >= 1, then the one
chosen last step) with three header slots summed with them: [ranks whose max|Q_i| exceeds
floor(M / n), ranks whose max fits the next smaller dtype with a bit to spare, ranks with non-finite
values]. If any rank overflowed, all ranks redo the step: a 1-element MAX Allreduce of max|Q_i| and
the sum again in the smallest dtype with n max <= M, so nothing is clipped and the sum is exact. After
``SHRINK_AFTER`` steps in a row that every rank fitted the next smaller dtype, the next step speculates
on it -- never on a dtype whose bound is below 1 (at 128+ ranks, int8: its header could not count
the ranks either). Fixed dtypes clip to floor(M / n) and count the clipped coordinates.

With a kernel that ``takes_blocks`` (numba), block alphas go to it as one value per block, and the
blocks' ||x^k - x^{k-1}||^2, their running averages r and alpha come from one fused pass (the bits of
the squares' ``add.reduceat`` and of the numpy arithmetic below); otherwise alpha is spread to every
coordinate. ``layout`` (numba only; the DDP hook's in-place
path) lets v and the mean hold the coordinates in another order, x staying in coordinate order.
"""

import math
from typing import List, Optional, Sequence

import numpy as np

from mpiopt.comm import INT_DTYPES
from mpiopt.compressors.alpha import adaptive_alpha, block_constants, block_layout, one_block_alpha
from mpiopt.compressors.base import (KERNEL, Compressor, Option, all_finite, bad_option, info_bits_int, is_number,
                                     positive, positive_int, register, sum_rows, worker_order)
from mpiopt.compressors.lanes import sum_bounded, wire_items
from mpiopt.kernels import int_bound
from mpiopt.kernels.numpy import apply_step, float_below

WIRE_NAMES = ("float64",) + tuple(str(t) for t in INT_DTYPES)
"""Index of ``steps_by_wire``: 0 = a float step, 1 + i = INT_DTYPES[i]."""
HEADER = 3
"""Slots summed with the integers: [ranks over the bound, ranks that would fit the next smaller
dtype with a bit to spare, ranks with non-finite values]."""
OVER, FITS_SMALLER, NON_FINITE = 0, 1, 2
SHRINK_AFTER = 16
"""Steps in a row that every rank must fit the smaller dtype before ``auto`` speculates on it."""

FILL_MIN_BLOCK = 64
"""Average block size from which the per-coordinate alpha is written block by block (see ``_fill``)."""
MIN_EXPONENT = -960
"""The smallest exponent of the first step's scaling: 2^960 times a dtype's bound stays finite."""
NON_FINITE_EXPONENT = np.iinfo(np.int64).max
"""A rank's exponent for a block with a non-finite value."""

ALPHA_RULES = ("paper", "fill", "exponent", "constant", "adaptive")
"""``alpha`` choices; ``adaptive`` is the earlier name of ``paper`` (the IntSGD paper's rule)."""


def exponent_dtype(dtypes: Sequence[np.dtype]) -> np.dtype:
    """The exponents' wire dtype: int16 where the communicator sums it (2 bytes a block), else int32
    (gloo has no int16); exponents lie in [MIN_EXPONENT, 1024]."""
    return np.dtype(np.int16) if np.dtype(np.int16) in dtypes else np.dtype(np.int32)


def max_exponents(comm, peak, dtype: np.dtype):
    """e_b = ceil(log2 max_i peak_ib) per block, ``peak`` this rank's max |v| per block, from one MAX
    Allreduce of the ranks' integer exponents in ``dtype`` (no float crosses the wire). Exponents are
    kept >= ``MIN_EXPONENT`` (alpha stays finite for tiny blocks; a zero block gets alpha = the bound);
    a non-finite block gets ``NON_FINITE_EXPONENT`` (sent as ``dtype``'s largest value). int64."""
    finite = np.isfinite(peak)
    mant, exps = np.frexp(np.where(finite, peak, 1.0))
    exps = exps.astype(np.int64) - (mant == 0.5)
    top = np.iinfo(dtype).max
    exps = np.where(finite, np.maximum(exps, MIN_EXPONENT), top).astype(dtype)
    comm.allreduce_max(exps)
    return np.where(exps == top, NON_FINITE_EXPONENT, exps.astype(np.int64))


def non_finite(exps) -> bool:
    """Whether some rank had a non-finite value in a block (:func:`max_exponents`' MAX tells every rank)."""
    return bool((exps == NON_FINITE_EXPONENT).any())


def scaled(exps, bound: float):
    """bound / 2^e per block; 1 where a block was not finite (the integer step's header then stops
    every rank)."""
    return np.where(exps == NON_FINITE_EXPONENT, 1.0, np.ldexp(bound, -np.minimum(exps, 1 << 20)))


def send_speculative(comm, quant, wire, level: int, bounds: Sequence[int], first: int, auto: bool):
    """The integer sum's first try: ``quant``'s rounded integers (``quant.round`` done) packed into the
    wire of dtype ``level`` (``wire(level)`` -> (buffer, integers, header)) with the header each rank
    adds (over the bound; would fit the next smaller dtype with a bit to spare; non-finite), summed by
    one Allreduce. Returns (the summed header as ints, the summed integers, clipped count, max |Q|)."""
    buf, ints, hdr = wire(level)
    m = quant.max_abs
    clipped = quant.pack(ints, bounds[level])
    hdr[OVER] = m > bounds[level]
    hdr[FITS_SMALLER] = auto and level > first and m <= bounds[level - 1] // 2
    hdr[NON_FINITE] = not quant.finite
    sum_bounded(comm, buf, ints.size + hdr.size, bounds[level])
    return hdr.tolist(), ints, clipped, m


def narrowest_level(bounds: Sequence[int], m: float) -> Optional[int]:
    """The first level whose bound floor(M / n) holds ``m`` (None: not even the widest)."""
    return next((lv for lv, bound in enumerate(bounds) if m <= bound), None)


def send_at(comm, quant, wire, bounds: Sequence[int], level: int):
    """The rounded integers (``quant.round`` done) packed into the wire of dtype ``level`` and summed
    by one Allreduce, without a header. Returns (the summed integers, clipped count)."""
    buf, ints, _ = wire(level)
    clipped = quant.pack(ints, bounds[level])
    sum_bounded(comm, buf, ints.size, bounds[level])
    return ints, clipped


def resend_wider(comm, quant, wire, bounds: Sequence[int], m: float, scratch: np.ndarray):
    """The integer sum again after some rank overflowed: in the smallest dtype whose bound holds every
    rank's max |Q| (one MAX Allreduce of it, in the float64 ``scratch`` of one value), never clipped
    unless even the widest cannot hold it. Returns (level, summed integers, clipped count)."""
    scratch[0] = m
    level = narrowest_level(bounds, float(comm.allreduce_max(scratch)[0]))
    level = len(bounds) - 1 if level is None else level
    return (level, *send_at(comm, quant, wire, bounds, level))

ROUNDING = Option("rounding", "random", str, "integer rounding: unbiased random or round-half-even",
                  choices=("random", "deterministic"))


@register
class IntCompressor(Compressor):
    """IntSGD's integers in one Allreduce; alpha from the iterate's movement (see the module docstring)."""

    name = "int"
    collective = "allreduce_int"
    options = (
        Option("wire_dtype", "auto", str, "integer type on the wire; auto promotes instead of clipping",
               choices=("int8", "int16", "int32", "int64", "auto")),
        ROUNDING,
        Option("alpha", "paper", str, "scaling rule of the integers: paper (Alg. 1/2: noise about the step's "
               "size; 'adaptive' is its earlier name), fill (the largest power-of-two alpha that keeps every "
               "rank's |alpha v| within the narrowest dtype's bound, never below the first integer step's "
               "alpha for half the next wider dtype's), exponent (the largest |v| over the ranks fills the dtype "
               "at every step, without fill's floor: SwitchML's scaling per alpha block, one int MAX Allreduce "
               "of an exponent per block a step; vr-intdiana's default, with --feedback on), constant (alpha0)",
               choices=ALPHA_RULES),
        Option("alpha0", None, float, "alpha of the first step (else it sends floats, or with --alpha exponent "
               "scales by the largest |v|) and of --alpha constant",
               valid=positive, rule="a positive number"),
        Option("first_step", "float", str, "first step (no x^{k-1} yet): float64 Allgather, or integers "
               "scaled by the largest |v| over the ranks (an int MAX Allreduce of one exponent per block)",
               choices=("float", "exponent")),
        Option("beta", 0.9, float, "moving-average factor of adaptive alpha's r_k",
               valid=lambda b: is_number(b) and 0 <= b < 1, rule="in [0, 1)"),
        Option("eps", 1e-8, float, "eps of adaptive alpha = eta sqrt(d) / sqrt(2 n r_k + eta^2 eps^2)",
               valid=positive, rule="a positive number (it bounds alpha once x stops moving)"),
        Option("block_size", None, int, "coordinates per alpha block (block alpha, Alg. 2)",
               valid=positive_int, rule="a positive integer"),
        Option("block_starts", None, list, "first coordinate of each alpha block (e.g. one per layer)",
               cli=False),
        Option("layout", None, list, "(position, coordinate, count) runs: v and the mean hold coordinates in "
               "another order (a DDP bucket's buffer); numba kernel only", cli=False),
        KERNEL,
    )

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        o, d, n = self.opts, dim, self.n
        self.auto = o["wire_dtype"] == "auto"
        self.dtypes = [t for t in INT_DTYPES if t in comm.int_dtypes]
        self.bounds = [int_bound(t, n) for t in self.dtypes]
        self._wire_slot = [WIRE_NAMES.index(str(t)) for t in self.dtypes]
        self.first = min(lv for lv, b in enumerate(self.bounds) if b >= 1)
        start_level = self.first if self.auto else self.dtypes.index(np.dtype(o["wire_dtype"]))
        self.starts = block_layout(d, o["block_size"], o["block_starts"])
        nb = len(self.starts)
        try:
            self.quant = self.quantizer(d, o["rounding"], blocks=self.starts if nb > 1 else None, layout=o["layout"])
        except ValueError as e:
            raise bad_option(f"layout: {e}") from None
        self.takes_blocks = bool(getattr(self.quant, "takes_blocks", False))
        """alpha goes to the kernel as one value per block (else spread to every coordinate)."""
        self._bufs: List[Optional[tuple]] = [None] * len(self.dtypes)
        self._wire = None
        ends = np.append(self.starts[1:], d)
        self.sizes = (ends - self.starts).astype(np.float64)
        self._constants = block_constants(self.sizes, o["eps"]) if nb > 1 else None
        self.alpha_blocks = np.zeros(nb)
        """The alpha of the last step, per block."""
        if o["alpha"] == "constant":
            self._alpha0 = float(o["alpha0"])
            self.alpha_blocks[...] = self._alpha0
        xp = self.xp
        spreads = nb > 1 and not self.takes_blocks
        self._alpha_vec = xp.empty(d) if spreads else None
        self._fill = (list(zip(self.starts.tolist(), ends.tolist()))
                      if spreads and xp is np and nb * FILL_MIN_BLOCK <= d else None)
        """Each block's (start, end) when alpha is spread by slice fills (numpy, blocks of >= FILL_MIN_BLOCK
        coordinates on average: one memset-like fill per block beats a gather of d indices)."""
        self._block_of = (xp.asarray(np.repeat(np.arange(nb, dtype=np.intp), self.sizes.astype(np.intp)))
                          if spreads and self._fill is None else None)
        """The block of each coordinate, for spreading alpha by a gather (only when not by fills)."""
        self._blocksq = np.empty(nb)
        self._sqrt_d = math.sqrt(float(self.sizes[0])) if nb else 0.0
        """sqrt(d) of one block's alpha (Alg. 1)."""
        self._bits_of = (-1.0, 0)
        """(max |Q| sent, its ``info_bits_int``) of the last step: most steps send the same max."""
        self._diff = xp.empty(d) if spreads else None
        self._peak = np.empty(nb)
        self._exponent_dtype = exponent_dtype(self.dtypes)
        self._one_host_block = nb == 1 and xp is np
        """The exponent rules' arithmetic on one block's values in Python (numpy's calls on arrays of
        one value cost more than the arithmetic: most of a fill step at small d); the same values."""
        self._exponent_sent = np.empty(1, dtype=self._exponent_dtype)
        self._exponent_top = int(np.iinfo(self._exponent_dtype).max)
        self._exps = np.empty(1, dtype=np.int64)
        self._scaled_one = np.empty(1)
        self._max = np.empty(1)
        self._order: Optional[List[int]] = None
        self._kept = None
        """(integer sum, alpha, step, Delta) of a :meth:`shifted_exchange` until its :meth:`shift_update`."""
        self._decided: Optional[int] = None
        """This step's wire level when the fill rule decided it (see :meth:`_fill_level`), else None."""
        self._tracks_move = (o["alpha"] == "paper" and nb == 1 and getattr(self.quant, "tracks_move", False))
        """The paper's alpha on one block with a kernel whose update can sum the move (see
        :meth:`exchange_update`)."""
        self._moves = False
        self._move: Optional[tuple] = None
        """(x, the step it is for, ||x - x_prev||^2) from the last update, when it summed the move."""
        self.state = {
            "x_prev": xp.zeros(d),
            "have_prev": np.zeros((), dtype=np.int8),
            "r": np.zeros(nb),
            "have_r": np.zeros((), dtype=np.int8),
            "level": np.array(start_level, dtype=np.int64),
            "max_abs_q": np.zeros(()),
            "steps_by_wire": np.zeros(len(WIRE_NAMES), dtype=np.int64),
            "redone_steps": np.zeros((), dtype=np.int64),
            "fit_streak": np.zeros((), dtype=np.int64),
        }
        if o["alpha"] == "fill":
            self.state["alpha_floor"] = np.zeros(nb)

    @classmethod
    def resolve(cls, given, comm, dim=None):
        opts = super().resolve(given, comm, dim)
        if opts["alpha"] == "adaptive":
            opts["alpha"] = "paper"
        return opts

    @classmethod
    def check(cls, o, comm):
        n, wire = comm.size, o["wire_dtype"]
        if wire != "auto" and np.dtype(wire) not in comm.int_dtypes:
            sums = ", ".join(map(str, comm.int_dtypes))
            raise bad_option(f"--wire-dtype {wire}: this communicator cannot sum {wire} (it sums {sums}); "
                             "use one of those or auto")
        if wire != "auto" and int_bound(wire, n) < 1:
            raise bad_option(f"--wire-dtype {wire} cannot carry a sum over {n} ranks without "
                             f"wrapping (its max is below {n}); use a wider dtype or auto")
        if o["alpha"] == "constant" and o["alpha0"] is None:
            raise bad_option("--alpha constant needs --alpha0 (the scaling factor to use at every step)")
        if o["first_step"] == "exponent" and o["alpha0"] is not None:
            raise bad_option("give alpha0 (the first step's alpha) or --first-step exponent, not both")
        if o["block_size"] is not None and o["block_starts"] is not None:
            raise bad_option("give block_size (equal chunks) or block_starts (e.g. one block per layer), not both")

    @classmethod
    def describe(cls, o):
        if o["alpha"] == "constant":
            first = "int (constant alpha0)"
        elif o["alpha"] == "exponent" and o["alpha0"] is None:
            first = "int (alpha from the largest |v|, as every step: int MAX Allreduce of an exponent per block)"
        elif o["alpha0"] is not None:
            first = "int (alpha0)"
        elif o["first_step"] == "exponent":
            first = "int (alpha from the largest |v|: int MAX Allreduce of an exponent per block)"
        else:
            first = "float64 (no x^{k-1} yet: Allgather of v, summed in worker order)"
        return {"first_step": first}

    def set_layout(self, runs) -> None:
        """v and the mean hold the coordinates in the order of ``runs`` from now on (see ``layout``)."""
        if self.opts["layout"] is None:
            raise bad_option("set_layout: this compressor was built without a layout (the option ``layout``)")
        try:
            self.quant.set_layout(runs)
        except ValueError as e:
            raise bad_option(f"layout: {e}") from None
        self.opts["layout"] = runs

    def clip_advice(self) -> str:
        """What to do about clipped coordinates: with auto only an alpha too large for int64 clips."""
        if self.auto:
            return ("alpha * v exceeds even int64's bound, so alpha is too large: lower --alpha0 "
                    "(or use --alpha fill or paper)")
        return "use --wire-dtype auto or a wider dtype"

    def _per_block(self, ufunc: np.ufunc, values: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """``ufunc.reduceat`` over the alpha blocks (numpy kernel only: the numba and CuPy kernels
        ``take_blocks`` and reduce per block themselves, CuPy in a fixed order, since its
        ``reduceat`` exists only for add and sums in an order that varies run to run)."""
        return ufunc.reduceat(values, self.starts, out=out)

    def _buffer(self, level: int):
        """(whole buffer, its d integers, its header) for ``level``: views of one byte buffer as wide as
        the widest level used so far (allocated on first use, grown when a wider level comes), so the
        wire costs d times the widest integer's size, not the sum of all the levels'. A step reads
        only its own level's buffer, so the levels may share the memory."""
        views = self._bufs[level]
        if views is None:
            dtype, d = self.dtypes[level], self.dim
            need = wire_items(self.comm, dtype.itemsize, d + HEADER) * dtype.itemsize  # whole words: lanes.py
            if self._wire is None or self._wire.nbytes < need:
                self._wire = self.xp.zeros(need, dtype=np.uint8)
                self._bufs = [None] * len(self.dtypes)
            buf = self._wire[:need].view(dtype)
            views = self._bufs[level] = (buf, buf[:d], buf[d:d + HEADER])
        return views

    def _next_alpha(self, v: np.ndarray, x: np.ndarray, lr: float, peak: Optional[np.ndarray] = None,
                    move: Optional[float] = None):
        """This step's alpha (a float; with blocks, as :meth:`_spread` gives it; None: send floats),
        remembering x as x^{k-1} for the next step. ``peak``: v's max |v| per block when the caller
        has it already (see :meth:`_max_exponents`). ``move``: ||x - x_prev||^2 when the last step's
        update computed it (:meth:`exchange_update`); x_prev <- x is then left to this step's update.
        Sets ``_moves``: this step's update may be the one that computes the next step's ``move``."""
        st, o = self.state, self.opts
        self._decided = None
        self._moves, self._move = False, None
        if o["alpha"] == "constant":
            return self._alpha0
        if o["alpha"] == "exponent" and (o["alpha0"] is None or st["have_prev"]):
            return self._spread(self._exponent_alpha(v, peak))
        if not st["have_prev"]:
            st["x_prev"][...] = x
            st["have_prev"][...] = 1
            if o["alpha0"] is not None:
                self.alpha_blocks[...] = o["alpha0"]
                return float(o["alpha0"])
            if o["first_step"] == "exponent":
                return self._spread(self._exponent_alpha(v, peak))
            return None
        if lr == 0.0 if isinstance(lr, float) else np.any(np.asarray(lr) == 0.0):  # alpha 0, a 0 / 0 mean
            return self._spread(self._exponent_alpha(v, peak))  # lr 0 (a schedule's end): scale by the largest |v|
        if o["alpha"] == "fill":
            return self._spread(self._fill_alpha(v, peak))
        r = st["r"]
        if self.takes_blocks and len(self.starts) > 1:  # squares, r and alpha in one pass, the bits of the lines below
            self.quant.block_adaptive_alpha(x, st["x_prev"], r, st["have_r"], o["beta"], lr, self.n, self._constants,
                                            self._blocksq, self.alpha_blocks)
            st["have_r"][...] = 1
            return self.alpha_blocks
        if len(self.starts) == 1:  # one block: Python floats, the same IEEE operations
            sq = self.quant.step_squares_sum(x, st["x_prev"]) if move is None else move  # ||x^k - x^{k-1}||^2; x_prev <- x
            self._moves = self._tracks_move
            if st["have_r"]:
                sq = o["beta"] * float(r[0]) + (1.0 - o["beta"]) * sq
            else:
                st["have_r"][...] = 1
            r[0] = sq
            alpha = one_block_alpha(lr, self._sqrt_d, sq, self.n, o["eps"])
            self.alpha_blocks[0] = alpha
            return alpha
        sq = self._per_block(np.add, self.quant.step_squares(x, st["x_prev"], self._diff), out=self._blocksq)
        if st["have_r"]:
            r *= o["beta"]
            r += (1.0 - o["beta"]) * sq
        else:
            r[...] = sq
            st["have_r"][...] = 1
        return self._spread(adaptive_alpha(lr, r, self.sizes, self.n, o["eps"], out=self.alpha_blocks,
                                           constants=self._constants))

    def _spread(self, alphas: np.ndarray):
        """The alpha of each block as the exchange takes it: a float (one block), the blocks' values
        (a kernel that ``takes_blocks``), or one per coordinate."""
        if len(self.starts) == 1:
            return float(alphas[0])
        if self.takes_blocks:
            return alphas
        if self._fill is not None:
            vec = self._alpha_vec
            for a, (lo, hi) in zip(alphas.tolist(), self._fill):
                vec[lo:hi] = a
            return vec
        return self.xp.take(self.xp.asarray(alphas), self._block_of, out=self._alpha_vec)

    def _exponent_alpha(self, v, peak: Optional[np.ndarray] = None) -> np.ndarray:
        """alpha_b = floor(M / n) / 2^e_b with 2^e_b >= max_i max_{j in b} |v_ij| (see
        :meth:`_max_exponents`, the exponents in int16 where the communicator has it), so |alpha v|
        never exceeds the speculative dtype's bound: every rank knows beforehand that its integers fit
        that dtype, and they go out without the header (a non-finite block takes the speculative path,
        whose header stops every rank)."""
        if self.dim == 0:
            self.alpha_blocks[...] = 1.0
            return self.alpha_blocks
        exps = self._max_exponents(v, peak)
        level = int(self.state["level"])
        self.alpha_blocks[...] = self._scaled(exps, float_below(self.bounds[level]))
        self._decided = None if self._non_finite(exps) else level
        return self.alpha_blocks

    def _fill_alpha(self, v, peak: Optional[np.ndarray] = None) -> np.ndarray:
        """``alpha='fill'``: alpha_b = max(T / 2^e_b, floor_b), T = the narrowest dtype's bound
        floor(M / n), so every rank's integers fit that dtype and the rounding noise is as small as
        the bytes already paid for allow. floor_b is the first fill step's T' / 2^e_b with T' half
        the next wider dtype's bound (room for |v| to double), kept for the whole run: the first
        steps' noise lands in every direction, also in those only a regularizer curves, where it
        decays no faster than 1 - eta mu per step (docs/design.md, "Fill alpha"). The exponents'
        MAX Allreduce goes in int16 where the communicator has it (2 bytes a block); with ``auto``
        it also decides this step's dtype (:meth:`_fill_level`)."""
        if self.dim == 0:
            self.alpha_blocks[...] = 1.0
            return self.alpha_blocks
        st, first = self.state, self.first
        exps = self._max_exponents(v, peak)
        if not st["have_r"]:  # the first fill step sets the floor (r is not used by this rule)
            wide = self.bounds[min(first + 1, len(self.bounds) - 1)]
            st["alpha_floor"][...] = self._scaled(exps, float(wide // 2))
            st["have_r"][...] = 1
        np.maximum(self._scaled(exps, float(self.bounds[first])), st["alpha_floor"], out=self.alpha_blocks)
        if self.auto:
            self._decided = self._fill_level(exps)
        return self.alpha_blocks

    def _fill_level(self, exps: np.ndarray) -> Optional[int]:
        """The narrowest level whose bound holds ceil(max_b alpha_b 2^e_b), which bounds every rank's
        |Int(alpha_b v)| since 2^e_b >= max |v| in block b. Every rank computes it from the same
        exponents, so the fill rule's integers go out without a header and are never redone. None
        (the speculative path: its header stops every rank, or its redo clips) for a non-finite block
        or integers beyond the widest dtype."""
        if self._non_finite(exps):
            return None
        if self._one_host_block:
            try:
                return narrowest_level(self.bounds, math.ldexp(float(self.alpha_blocks[0]), int(exps[0])))
            except OverflowError:  # numpy's ldexp gives inf there: beyond every dtype
                return None
        with np.errstate(over="ignore"):  # inf: beyond every dtype
            return narrowest_level(self.bounds, float(np.ldexp(self.alpha_blocks, exps.astype(np.intc)).max()))

    def _non_finite(self, exps: np.ndarray) -> bool:
        """:func:`non_finite`; one host block in Python."""
        if self._one_host_block:
            return int(exps[0]) == NON_FINITE_EXPONENT
        return non_finite(exps)

    def _scaled(self, exps: np.ndarray, bound: float) -> np.ndarray:
        """:func:`scaled`; one host block in Python floats."""
        if self._one_host_block:
            e = int(exps[0])
            self._scaled_one[0] = 1.0 if e == NON_FINITE_EXPONENT else math.ldexp(bound, -e)
            return self._scaled_one
        return scaled(exps, bound)

    def _max_exponents(self, v, peak: Optional[np.ndarray] = None) -> np.ndarray:
        """:func:`max_exponents` of v's max |v| per alpha block (``peak`` when the caller has it), in
        the exponents' wire dtype; one host block in Python floats."""
        if peak is None:
            peak = (self.quant.block_max_abs(v, self._peak) if self.takes_blocks
                    else self._per_block(np.maximum, self.xp.abs(v)))
        if not self._one_host_block:
            return max_exponents(self.comm, peak, self._exponent_dtype)
        sent, top = self._exponent_sent, self._exponent_top
        p = float(peak[0])
        if math.isfinite(p):
            mant, e = math.frexp(p)
            sent[0] = max(e - (mant == 0.5), MIN_EXPONENT)
        else:
            sent[0] = top
        e = int(self.comm.allreduce_max(sent)[0])
        self._exps[0] = NON_FINITE_EXPONENT if e == top else e
        return self._exps

    def _float_step(self, v, k, out_mean, out_local):
        if self._order is None:
            self._order = worker_order(self.comm, self.worker)
            self._rows = self.xp.empty((self.n, self.dim))
        v64 = self.xp.ascontiguousarray(v, dtype=np.float64)
        self.comm.allgather(v64, self._rows)
        mean = out_mean if out_mean.dtype == np.float64 else self.xp.empty(self.dim)  # summed in float64
        sum_rows(self._rows, self._order, mean)
        if not all_finite(mean):
            self.fail(k, not all_finite(v))
        mean *= 1.0 / self.n
        if mean is not out_mean:
            out_mean[...] = mean
        if out_local is not None:
            out_local[...] = v
        self.bits, self.clipped = 64 * self.dim, 0
        self.state["steps_by_wire"][0] += 1

    def exchange(self, v, k, x, lr, out_mean, out_local=None):
        alpha = self._next_alpha(v, x, lr)
        if alpha is None:
            self._float_step(v, k, out_mean, out_local)
            return
        ints = self._sum_ints(v, k, alpha, round_into_wire=out_local is None)
        self.quant.decode(ints, alpha, self.n, out_mean)
        if out_local is not None:
            self.quant.decode_local(alpha, out_local)

    def shifted_exchange(self, g, h_local, k, x, lr, delta, out_mean, out_local, error=None):
        """With a quantizer that ``fuses_shift`` (numba) and one step size: Delta and its blocks'
        max |Delta| in one pass, the integer sum kept for :meth:`shift_update`, which decodes, updates
        the shifts and x (and the feedback's error) in one more pass (the float first step takes the
        plain path)."""
        self._kept = None
        if not (getattr(self.quant, "fuses_shift", False) and isinstance(lr, float)):
            super().shifted_exchange(g, h_local, k, x, lr, delta, out_mean, out_local, error)
            return
        peak = self.quant.shift_delta(g, h_local, delta, self._peak, error)
        alpha = self._next_alpha(delta, x, lr, peak, move=self._known_move(x, k))
        if alpha is None:
            self._float_step(delta, k, out_mean, out_local)
            if error is not None:
                np.subtract(delta, out_local, out=error)
            return
        self._kept = (self._sum_ints(delta, k, alpha, round_into_wire=False), alpha, k, delta)

    def shift_update(self, h_local, h, x, lr, a, mean, local, scratch, error=None):
        if self._kept is None:
            super().shift_update(h_local, h, x, lr, a, mean, local, scratch, error)
            return
        ints, alpha, k, delta = self._kept
        self._kept = None
        if self._moves:  # as exchange_update's: the update also sums x's move for the next alpha
            self._move = (x, k + 1, self.quant.shift_update_move(ints, alpha, self.n, h_local, h, x, lr,
                                                                 self.state["x_prev"], delta, error))
        else:
            self.quant.shift_update(ints, alpha, self.n, h_local, h, x, lr, delta, error)  # omega 0: a = 1

    def iterate_changed(self) -> None:
        self._move = None

    def _known_move(self, x, k: int) -> Optional[float]:
        """||x - x_prev||^2 when the last update summed it for step k on this x (see exchange_update)."""
        known = self._move
        return known[2] if known is not None and known[0] is x and known[1] == k else None

    def exchange_update(self, v, k, x, lr, mean):
        """IntSGD's step. With the paper's alpha on one block (numba kernel, plain layout) the update
        also sums the squared move x^{k+1} - x^k and sets x_prev <- x^k, the pass the next step's alpha
        would otherwise make over x and x_prev: that step takes the sum if it is step k + 1 on the same
        x (else, as after a resume, it makes the pass). The same bits either way."""
        alpha = self._next_alpha(v, x, lr, move=self._known_move(x, k))
        if alpha is None:
            self._float_step(v, k, mean, None)
            apply_step(x, lr, mean)
            return
        ints = self._sum_ints(v, k, alpha, round_into_wire=True)
        if self._moves:
            self._move = (x, k + 1, self.quant.decode_update_move(ints, alpha, self.n, lr, x, self.state["x_prev"]))
        else:
            self.quant.decode_update(ints, alpha, self.n, lr, x)

    def _sum_ints(self, v: np.ndarray, k: int, alpha, round_into_wire: bool) -> np.ndarray:
        """Int(alpha v) summed over ranks (exact with ``auto``: redone in a wider dtype if a rank
        overflowed); returns the integer sum and updates the counters. ``round_into_wire``: the
        quantizer may round straight into an int8 wire buffer (nothing needs this rank's own values
        afterwards, which would cost a second pass)."""
        st, q = self.state, self.quant
        level = int(st["level"]) if self._decided is None else self._decided
        ints = (self._bufs[level] or self._buffer(level))[1]
        q.round(v, alpha, k, into=ints if round_into_wire and ints.dtype == np.int8 else None)
        if self._decided is not None:  # the fill rule's level: every rank's integers fit it
            m = q.max_abs
            ints, clipped = send_at(self.comm, q, self._buffer, self.bounds, level)
            st["level"][...] = level
        else:
            level, ints, clipped, m = self._speculate(level, k)
        sent_max = min(m, self.bounds[level])
        if self._bits_of[0] != sent_max:
            self._bits_of = (sent_max, info_bits_int(self.dim, sent_max))
        self.bits = self._bits_of[1]
        self.clipped = clipped
        st["steps_by_wire"][self._wire_slot[level]] += 1
        seen = st["max_abs_q"]
        if sent_max > float(seen):
            seen[...] = sent_max
        return ints

    def _speculate(self, level: int, k: int):
        """The rounded integers summed in the speculative dtype of ``level`` with the header; with
        ``auto``, redone wider if a rank overflowed, and the next step's level chosen. Returns (level,
        summed integers, clipped count, this rank's max |Q|)."""
        st, n, q = self.state, self.n, self.quant
        summed, ints, clipped, m = send_speculative(self.comm, q, self._buffer, level, self.bounds, self.first,
                                                    self.auto)
        if summed[NON_FINITE] > 0:
            self.fail(k, not q.finite)
        if not self.auto:
            return level, ints, clipped, m
        if summed[OVER] > 0:
            level, ints, clipped = resend_wider(self.comm, q, self._buffer, self.bounds, m, self._max)
            st["redone_steps"] += 1
            st["level"][...] = level
            st["fit_streak"][...] = 0
        elif summed[FITS_SMALLER] == n:
            streak = st["fit_streak"]
            streak += 1
            if streak >= SHRINK_AFTER:
                st["level"][...] = level - 1
                streak[...] = 0
        else:
            st["fit_streak"][...] = 0
        return level, ints, clipped, m

    def summary(self):
        st = self.state
        buf = np.array([float(st["max_abs_q"])])
        self.comm.allreduce_max(buf, count=False)
        return {
            "steps_by_wire": {name: int(c) for name, c in zip(WIRE_NAMES, st["steps_by_wire"]) if c},
            "max_abs_q": float(buf[0]),
            "redone_steps": int(st["redone_steps"]),
            "wire_dtype_next": str(self.dtypes[int(st["level"])]),
            "kernel": self.opts["kernel"],
        }
