"""Compressors: how a method's per-rank vectors v_i travel, and what every rank gets back.

A compressor's one job is ``exchange(v, k, x, out_mean, out_local=None)``: communicate this rank's
vector v = v_i, write the mean over ranks of the decoded C(v_i) into ``out_mean`` (bitwise identical
on every rank) and, when asked, this rank's own decoded C(v_i) into ``out_local`` (what DIANA adds to
its shift h_i). ``x`` is the current iterate (the int compressor's adaptive alpha reads it), ``k`` the
iteration (it keys the rounding noise). After each exchange, ``bits`` and ``clipped`` hold that
exchange's information bits and clipped coordinates; the method adds them to its counters.

All memory that must survive a checkpoint is in ``state`` (numpy arrays updated in place; the
method merges it into its own state record); everything else is scratch. Sums of floats are taken
in *worker* order (the shard id, not the comm rank), so that reordering the ranks changes nothing.

==========  ===================================================================  ===============
name        what goes on the wire per step                                        omega
==========  ===================================================================  ===============
none        float64 (or float32) Allreduce(SUM) of v                              0
int         Int(alpha v) in one integer Allreduce(SUM); alpha of IntSGD (Alg. 1/2) 0 (additive)
hint        1-element float MAX Allreduce, then b-bit Int(alpha v) Allreduce       0 (additive)
nat         Allgather of one uint8 per coordinate (sign + power-of-two offset)     1/8
qsgd        Allgather of the norm (float64) + one signed level per coordinate      min(d/s^2, sqrt(d)/s)
==========  ===================================================================  ===============

``omega`` is the relative variance bound E||C(v) - v||^2 <= omega ||v||^2 of the unbiased
compressors; the int and hint compressors have an additive rounding variance instead (<= d / (4
alpha^2)), which adaptive alpha keeps O(eta^2) (IntSGD, Mishchenko et al., ICLR 2022).
"""

import math
from typing import Any, Callable, ClassVar, Dict, List, Optional

import numpy as np

from mpiopt.comm import Communicator
from mpiopt.errors import InputError
from mpiopt.kernels import cpu_quantizer
from mpiopt.kernels.numpy import Quantizer, apply_step, float_below, int_bound
from mpiopt.methods.base import all_finite

INT_DTYPES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))
WIRE_DTYPES = ("int8", "int16", "int32", "int64", "auto")
WIRE_NAMES = ("float64",) + tuple(str(t) for t in INT_DTYPES)
"""Index of ``steps_by_wire``: 0 = a float step, 1 + l = integer level l."""
HEADER = 3
"""Slots summed with the int compressor's integers: [ranks over the bound, ranks that would fit the
next smaller dtype with a bit to spare, ranks with non-finite values]."""
OVER, FITS_SMALLER, NON_FINITE = 0, 1, 2
SHRINK_AFTER = 16
"""Steps in a row that every rank must fit the smaller dtype before ``auto`` speculates on it."""

FailFn = Callable[[int, bool], None]


def _bad_option(msg: str) -> InputError:
    return InputError(msg, collective=True)


def quantizer(size: int, seed: int, worker: int, n_ranks: int, rounding: str = "random") -> Quantizer:
    """The quantizer every compressor uses: numba's when installed, else numpy's (``MPIOPT_KERNEL``
    forces one; see :mod:`mpiopt.kernels`). Both give the same integers."""
    return cpu_quantizer(size, seed, worker, n_ranks, rounding)


def kernel_name(quant) -> str:
    """Which kernel a quantizer is (``numba`` or ``numpy``), for the trace."""
    return type(quant).__module__.rsplit(".", 1)[-1]


def worker_order(comm: Communicator, worker: int) -> List[int]:
    """Comm ranks listed in worker (shard id) order; one uncounted Allgather at setup."""
    ids = np.empty(comm.size, dtype=np.int64)
    comm.allgather(np.array([worker], dtype=np.int64), ids, count=False)
    return [int(r) for r in np.argsort(ids, kind="stable")]


def sum_rows(rows: np.ndarray, order: List[int], out: np.ndarray) -> np.ndarray:
    """Sum of ``rows[r]`` over r in ``order``, left to right (the same bits on every rank)."""
    np.copyto(out, rows[order[0]])
    for r in order[1:]:
        out += rows[r]
    return out


def info_bits_int(d: int, max_abs: float) -> int:
    """d * (1 + ceil(log2(max|Q| + 1))): sign plus magnitude bits of the largest integer sent."""
    return d * (1 + math.ceil(math.log2(max_abs + 1.0)))


class Compressor:
    """Base class; subclasses set ``name``, ``OPTIONS`` and implement ``exchange``."""

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[Dict[str, Any]] = {}

    def __init__(self, comm: Communicator, dim: int, *, seed: int, worker: int, lr: float, fail: FailFn,
                 **opts: Any):
        self.comm, self.dim, self.seed, self.worker, self.lr, self.fail = comm, dim, seed, worker, lr, fail
        self.n = comm.size
        self.opts = {**self.OPTIONS, **opts}
        self.validate(self.opts, self.n)
        self.state: Dict[str, np.ndarray] = {}
        self.bits = 0
        self.clipped = 0

    @classmethod
    def validate(cls, opts: Dict[str, Any], n: int) -> None:
        """Raise a collective InputError, saying what to do, for options this compressor cannot use."""

    @classmethod
    def omega(cls, dim: int, opts: Dict[str, Any]) -> float:
        """Relative variance bound of the compressor (0 when it has none or only an additive one)."""
        return 0.0

    @classmethod
    def describe(cls, opts: Dict[str, Any]) -> Dict[str, Any]:
        """Facts for the trace's config (filled before any buffer exists)."""
        return {}

    def exchange(self, v: np.ndarray, k: int, x: np.ndarray, out_mean: np.ndarray,
                 out_local: Optional[np.ndarray] = None) -> None:
        raise NotImplementedError

    def exchange_update(self, v: np.ndarray, k: int, x: np.ndarray, lr: float, mean: np.ndarray) -> None:
        """An SGD step with this exchange: x -= lr * mean_i C(v_i), in place, bit for bit ``exchange``
        then ``x -= lr * mean``. ``mean`` (x's shape and dtype) is scratch. Compressors that can decode
        straight into x override it."""
        self.exchange(v, k, x, mean)
        apply_step(x, lr, mean)

    def summary(self) -> Dict[str, Any]:
        """Statistics for the trace after the run (collective: every rank calls it)."""
        return {}


class NoCompression(Compressor):
    """Full precision: one float Allreduce(SUM) of v."""

    name = "none"
    OPTIONS = {"float_dtype": "float64"}

    @classmethod
    def validate(cls, opts, n):
        if opts["float_dtype"] not in ("float32", "float64"):
            raise _bad_option(f"--float-dtype must be float32 or float64, got {opts['float_dtype']!r}")

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        self._wire = np.empty(dim, dtype=np.dtype(self.opts["float_dtype"]))
        self._local = np.empty_like(self._wire)
        self._bits = 8 * self._wire.itemsize * dim

    def exchange(self, v, k, x, out_mean, out_local=None):
        wire = self._wire
        np.copyto(wire, v, casting="same_kind")
        self.comm.allreduce_float(wire)
        if not all_finite(wire):
            self.fail(k, not all_finite(v))
        np.multiply(wire, 1.0 / self.n, out=out_mean)
        if out_local is not None:
            if wire.dtype == np.float64:
                np.copyto(out_local, v)
            else:
                np.copyto(self._local, v, casting="same_kind")
                np.copyto(out_local, self._local)
        self.bits, self.clipped = self._bits, 0


def block_layout(d: int, block_size: Optional[int], starts) -> np.ndarray:
    """The first coordinate of each alpha block: ``starts`` as given (e.g. one block per layer),
    else chunks of ``block_size``, else one block of all d coordinates."""
    if starts is None:
        return np.arange(0, d, block_size if block_size else max(d, 1), dtype=np.intp)
    starts = np.asarray(starts, dtype=np.intp)
    if starts.ndim != 1 or not starts.size or starts[0] != 0 or (np.diff(starts) <= 0).any() or starts[-1] >= d:
        raise _bad_option(f"block_starts must ascend strictly from 0 below d = {d}, got {starts.tolist()}")
    return starts


class IntCompressor(Compressor):
    """IntSGD's compressor: Q_i = Int(alpha v_i), S = Allreduce(SUM) of the Q_i, mean = S / (n alpha).

    alpha (Alg. 1): r_k = beta r_{k-1} + (1 - beta) ||x^k - x^{k-1}||^2 (r starts at the first
    ||x^1 - x^0||^2, as in the reference code) and alpha_k = eta sqrt(d) / sqrt(2 n r_k + eta^2 eps^2);
    with ``block_size`` (Alg. 2) per block l of d_l coordinates:
    alpha_l = eta sqrt(d_l) / sqrt(2 n r_l + eta^2 (d_l / d) eps^2). Every input is identical on all
    ranks, so alpha is too, and it is never sent. The first step has no x^{k-1}: unless ``alpha0`` is
    given it sends v in float64 (an Allgather summed in worker order, so it is exact and independent
    of the rank order). ``alpha='constant'`` uses ``alpha0`` throughout.

    ``wire_dtype='auto'`` costs one collective per step in the common case: the integers go out in a
    speculative dtype (int8 first, then the dtype chosen last step) with three header slots summed
    with them: [ranks whose max|Q_i| exceeds floor(M / n), ranks whose max fits the next smaller
    dtype, ranks with non-finite values]. If any rank overflowed, all ranks see it and redo the step:
    a 1-element MAX Allreduce of max|Q_i| and the sum again in the smallest dtype with n max <= M,
    so nothing is clipped and the sum is exact. When every rank has fitted the next smaller dtype with
    a bit to spare (max|Q_i| <= floor(M' / n) // 2) for ``SHRINK_AFTER`` steps in a row, the next
    step speculates on it (the margin and the streak keep a dtype from being left and re-entered every
    other step, each re-entry costing a redo). Fixed dtypes clip to floor(M / n) and count the clipped coordinates.
    """

    name = "int"
    OPTIONS = {"wire_dtype": "auto", "rounding": "random", "alpha": "adaptive", "alpha0": None, "beta": 0.9,
               "eps": 1e-8, "block_size": None, "block_starts": None}

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        o, d, n = self.opts, dim, self.n
        self.auto = o["wire_dtype"] == "auto"
        self.bounds = [int_bound(t, n) for t in INT_DTYPES]
        first = min(lv for lv, b in enumerate(self.bounds) if b >= 1)
        start_level = first if self.auto else INT_DTYPES.index(np.dtype(o["wire_dtype"]))
        self.quant = quantizer(d, self.seed, self.worker, n, o["rounding"])
        self._bufs: List[Optional[tuple]] = [None] * len(INT_DTYPES)
        self.starts = block_layout(d, o["block_size"], o["block_starts"])
        nb = len(self.starts)
        sizes = np.diff(np.append(self.starts, d)).astype(np.float64)
        self._sqrt_dl = np.sqrt(sizes)
        self._eps_term = (o["eps"] ** 2) * sizes / max(d, 1)
        self._alpha_blocks = np.empty(nb)
        self._alpha_vec = np.empty(d) if nb > 1 else None
        self._sqrt_d = math.sqrt(d)
        self._lr2_eps2 = (self.lr * o["eps"]) ** 2
        self._block_of = np.repeat(np.arange(nb, dtype=np.intp), sizes.astype(np.intp))
        self._blocksq = np.empty(nb)
        self._diff = np.empty(d) if nb > 1 else None
        self._max = np.empty(1)
        self._order: Optional[List[int]] = None
        self.state = {
            "x_prev": np.zeros(d),
            "have_prev": np.zeros((), dtype=np.int8),
            "r": np.zeros(nb),
            "have_r": np.zeros((), dtype=np.int8),
            "level": np.array(start_level, dtype=np.int64),
            "max_abs_q": np.zeros(()),
            "steps_by_wire": np.zeros(len(WIRE_NAMES), dtype=np.int64),
            "redone_steps": np.zeros((), dtype=np.int64),
            "fit_streak": np.zeros((), dtype=np.int64),
        }

    @classmethod
    def validate(cls, o, n):
        if o["wire_dtype"] not in WIRE_DTYPES:
            raise _bad_option(f"--wire-dtype must be one of {', '.join(WIRE_DTYPES)}, got {o['wire_dtype']!r}")
        if o["wire_dtype"] != "auto" and int_bound(o["wire_dtype"], n) < 1:
            raise _bad_option(f"--wire-dtype {o['wire_dtype']} cannot carry a sum over {n} ranks without "
                              f"wrapping (its max is below {n}); use a wider dtype or auto")
        if o["rounding"] not in ("random", "deterministic"):
            raise _bad_option(f"--rounding must be random or deterministic, got {o['rounding']!r}")
        if o["alpha"] not in ("adaptive", "constant"):
            raise _bad_option(f"--alpha must be adaptive or constant, got {o['alpha']!r}")
        a0 = o["alpha0"]
        if a0 is not None and not (isinstance(a0, (int, float)) and math.isfinite(a0) and a0 > 0):
            raise _bad_option(f"--alpha0 must be a positive number, got {a0!r}")
        if o["alpha"] == "constant" and a0 is None:
            raise _bad_option("--alpha constant needs --alpha0 (the scaling factor to use at every step)")
        if not (isinstance(o["beta"], (int, float)) and 0 <= o["beta"] < 1):
            raise _bad_option(f"--beta must be in [0, 1), got {o['beta']!r}")
        if not (isinstance(o["eps"], (int, float)) and math.isfinite(o["eps"]) and o["eps"] > 0):
            raise _bad_option(f"--eps must be a positive number (it bounds alpha once x stops moving), "
                              f"got {o['eps']!r}")
        bs = o["block_size"]
        if bs is not None and not (isinstance(bs, (int, np.integer)) and bs >= 1):
            raise _bad_option(f"--block-size must be a positive integer, got {bs!r}")
        if bs is not None and o["block_starts"] is not None:
            raise _bad_option("give block_size (equal chunks) or block_starts (e.g. one block per layer), not both")

    @classmethod
    def describe(cls, opts):
        o = {**cls.OPTIONS, **opts}
        if o["alpha"] == "constant":
            first = "int (constant alpha0)"
        elif o["alpha0"] is not None:
            first = "int (alpha0)"
        else:
            first = "float64 (no x^{k-1} yet: Allgather of v, summed in worker order)"
        return {"first_step": first}

    def _buffer(self, level: int):
        """(whole buffer, its d integers, its header) for ``level``, allocated on first use."""
        views = self._bufs[level]
        if views is None:
            buf = np.zeros(self.dim + HEADER, dtype=INT_DTYPES[level])
            views = self._bufs[level] = (buf, buf[:self.dim], buf[self.dim:])
        return views

    def _next_alpha(self, x: np.ndarray):
        """This step's alpha (a float, or a per-coordinate array with blocks; None: send floats),
        remembering x as x^{k-1} for the next step."""
        st, o = self.state, self.opts
        if o["alpha"] == "constant":
            return float(o["alpha0"])
        if not st["have_prev"]:
            np.copyto(st["x_prev"], x)
            st["have_prev"][...] = 1
            return None if o["alpha0"] is None else float(o["alpha0"])
        r = st["r"]
        if self._alpha_vec is None:  # one block: Python floats, the same IEEE operations
            sq = self.quant.step_squares_sum(x, st["x_prev"])  # ||x^k - x^{k-1}||^2; x_prev <- x
            if st["have_r"]:
                sq = o["beta"] * float(r[0]) + (1.0 - o["beta"]) * sq
            else:
                st["have_r"][...] = 1
            r[0] = sq
            return self.lr * self._sqrt_d / math.sqrt(2.0 * self.n * sq + self._lr2_eps2)
        diff = self.quant.step_squares(x, st["x_prev"], self._diff)  # (x^k - x^{k-1})^2; x_prev <- x
        sq = np.add.reduceat(diff, self.starts, out=self._blocksq)
        if st["have_r"]:
            r *= o["beta"]
            r += (1.0 - o["beta"]) * sq
        else:
            r[...] = sq
            st["have_r"][...] = 1
        lr = self.lr
        a = self._alpha_blocks
        np.multiply(r, 2.0 * self.n, out=a)
        a += (lr * lr) * self._eps_term
        np.sqrt(a, out=a)
        np.divide(self._sqrt_dl, a, out=a)
        a *= lr
        return np.take(a, self._block_of, out=self._alpha_vec)

    def _float_step(self, v, k, out_mean, out_local):
        if self._order is None:
            self._order = worker_order(self.comm, self.worker)
            self._rows = np.empty((self.n, self.dim))
        v64 = np.ascontiguousarray(v, dtype=np.float64)
        self.comm.allgather(v64, self._rows)
        sum_rows(self._rows, self._order, out_mean)
        if not all_finite(out_mean):
            self.fail(k, not all_finite(v))
        out_mean *= 1.0 / self.n
        if out_local is not None:
            np.copyto(out_local, v)
        self.bits, self.clipped = 64 * self.dim, 0
        self.state["steps_by_wire"][0] += 1

    def exchange(self, v, k, x, out_mean, out_local=None):
        alpha = self._next_alpha(x)
        if alpha is None:
            self._float_step(v, k, out_mean, out_local)
            return
        ints = self._sum_ints(v, k, alpha, round_into_wire=out_local is None)
        self.quant.decode(ints, alpha, self.n, out_mean)
        if out_local is not None:
            self.quant.decode_local(alpha, out_local)

    def exchange_update(self, v, k, x, lr, mean):
        alpha = self._next_alpha(x)
        if alpha is None:
            self._float_step(v, k, mean, None)
            apply_step(x, lr, mean)
            return
        self.quant.decode_update(self._sum_ints(v, k, alpha, round_into_wire=True), alpha, self.n, lr, x)

    def _sum_ints(self, v: np.ndarray, k: int, alpha, round_into_wire: bool) -> np.ndarray:
        """Int(alpha v) summed over ranks (exact with ``auto``: redone in a wider dtype if a rank
        overflowed); returns the integer sum and updates the counters. ``round_into_wire``: the
        quantizer may round straight into an int8 wire buffer (nothing needs this rank's own values
        afterwards, which would cost a second pass)."""
        st, n, q = self.state, self.n, self.quant
        level = int(st["level"])
        bound = self.bounds[level]
        buf, ints, hdr = self._buffer(level)
        q.round(v, alpha, k, into=ints if round_into_wire and ints.dtype == np.int8 else None)
        m = q.max_abs
        clipped = q.pack(ints, bound)
        hdr[OVER] = m > bound
        hdr[FITS_SMALLER] = self.auto and level > 0 and m <= self.bounds[level - 1] // 2
        hdr[NON_FINITE] = not q.finite
        self.comm.allreduce_int(buf)
        summed = hdr.tolist()
        if summed[NON_FINITE] > 0:
            self.fail(k, not q.finite)
        if self.auto:
            if summed[OVER] > 0:
                self._max[0] = m
                big = float(self.comm.allreduce_max(self._max)[0])
                fits = [lv for lv, b in enumerate(self.bounds) if big <= b]
                level = fits[0] if fits else len(INT_DTYPES) - 1
                ints = self._buffer(level)[1]
                clipped = q.pack(ints, self.bounds[level])
                self.comm.allreduce_int(ints)
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
        sent_max = min(m, self.bounds[level])
        self.bits = info_bits_int(self.dim, sent_max)
        self.clipped = clipped
        st["steps_by_wire"][1 + level] += 1
        seen = st["max_abs_q"]
        if sent_max > seen:
            seen[...] = sent_max
        return ints

    def summary(self):
        st = self.state
        buf = np.array([float(st["max_abs_q"])])
        self.comm.allreduce_max(buf, count=False)
        return {
            "steps_by_wire": {name: int(c) for name, c in zip(WIRE_NAMES, st["steps_by_wire"]) if c},
            "max_abs_q": float(buf[0]),
            "redone_steps": int(st["redone_steps"]),
            "wire_dtype_next": str(INT_DTYPES[int(st["level"])]),
            "kernel": kernel_name(self.quant),
        }


class HintCompressor(Compressor):
    """HintSGD's compressor (the SwitchML heuristic): a 1-element MAX Allreduce of max_i ||v_i||_inf,
    e = ceil(log2 of it), alpha = floor((2^(b-1) - 1) / n) / 2^e, then b-bit Int(alpha v_i) summed.

    We floor (2^(b-1) - 1) / n before dividing by 2^e (SwitchML does not), so |alpha v_i| <= floor(M / n)
    exactly and even randomized rounding can never wrap the sum; ``rounding='random'`` keeps it
    unbiased, which DIANA needs.
    """

    name = "hint"
    OPTIONS = {"bits": 32, "rounding": "random"}

    @classmethod
    def validate(cls, opts, n):
        bits = opts["bits"]
        if bits not in (8, 16, 32, 64):
            raise _bad_option(f"--bits must be 8, 16, 32 or 64 for the hint compressor, got {bits!r}")
        if opts["rounding"] not in ("random", "deterministic"):
            raise _bad_option(f"--rounding must be random or deterministic, got {opts['rounding']!r}")
        if int_bound(f"int{bits}", n) < 1:
            raise _bad_option(f"--bits {bits} cannot carry a sum over {n} ranks; use more bits")

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        bits, n = self.opts["bits"], self.n
        self.dtype = np.dtype(f"int{bits}")
        self.bound = int_bound(self.dtype, n)
        self.quant = quantizer(dim, self.seed, self.worker, n, self.opts["rounding"])
        self._buf = np.empty(dim, dtype=self.dtype)
        self._abs = np.empty(dim)
        self._max = np.empty(1)
        self.state = {"max_abs_q": np.zeros(())}

    def exchange(self, v, k, x, out_mean, out_local=None):
        local = float(np.abs(v, out=self._abs).max()) if self.dim else 0.0
        local_bad = not math.isfinite(local)
        self._max[0] = math.inf if local_bad else local
        big = float(self.comm.allreduce_max(self._max)[0])
        if not math.isfinite(big):
            self.fail(k, local_bad)
        alpha = 1.0
        if big > 0:
            mant, e = math.frexp(big)
            e = e - 1 if mant == 0.5 else e
            alpha = math.ldexp(float_below(self.bound), -e)
            if not math.isfinite(alpha):
                alpha = 1.0
        q = self.quant
        q.round(v, alpha, k)
        self.clipped = q.pack(self._buf, self.bound)
        self.comm.allreduce_int(self._buf)
        q.decode(self._buf, alpha, self.n, out_mean)
        if out_local is not None:
            q.decode_local(alpha, out_local)
        sent = min(q.max_abs, self.bound)
        self.bits = info_bits_int(self.dim, sent) + 64
        if sent > self.state["max_abs_q"]:
            self.state["max_abs_q"][...] = sent

    def summary(self):
        buf = np.array([float(self.state["max_abs_q"])])
        self.comm.allreduce_max(buf, count=False)
        return {"wire_dtype": str(self.dtype), "max_abs_q": float(buf[0]), "kernel": kernel_name(self.quant)}


class _GatherCompressor(Compressor):
    """Shared by nat and qsgd: codes + a small header per rank, Allgather, decode all, mean in worker order."""

    def _setup_gather(self, code_dtype, header_items: int) -> None:
        self._send = np.zeros(self.dim + header_items, dtype=code_dtype)
        self._recv = np.empty((self.n, self.dim + header_items), dtype=code_dtype)
        self._vals = np.empty((self.n, self.dim))
        self._order = worker_order(self.comm, self.worker)

    def _finish(self, out_mean, out_local):
        sum_rows(self._vals, self._order, out_mean)
        out_mean *= 1.0 / self.n
        if out_local is not None:
            np.copyto(out_local, self._vals[self.comm.rank])


class NatCompressor(_GatherCompressor):
    """Natural compression (Horvath et al., 2019): each coordinate rounded, without bias, to a signed
    power of two: |v| in [2^a, 2^(a+1)) becomes 2^(a+1) with probability |v| / 2^a - 1, else 2^a.

    Wire format per rank: one uint8 per coordinate (bit 7: sign; bits 0-6: offset o in 0..126 of the
    exponent below the rank's top exponent E, value 2^(E - o); 127: zero) and a 4-byte header (E as
    int16, a non-finite flag, a pad byte), sent by Allgather. Magnitudes below s = 2^(E - 126) --
    2^-126 of the largest -- are rounded without bias between 0 and s. 8 bits per coordinate
    (the paper's format uses 9: sign + a float32 exponent).
    """

    name = "nat"
    OPTIONS: ClassVar[Dict[str, Any]] = {}
    ZERO = 127
    SPAN = 126

    @classmethod
    def omega(cls, dim, opts):
        return 1.0 / 8.0

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        self._setup_gather(np.uint8, 4)
        self.quant = quantizer(dim, self.seed, self.worker, self.n)
        d = dim
        self._a = np.empty(d)
        self._mant = np.empty(d)
        self._exp = np.empty(d, dtype=np.int32)
        self._p = np.empty(d)
        self._up = np.empty(d, dtype=bool)
        self._mask = np.empty(d, dtype=bool)
        self._code = np.empty(d, dtype=np.int32)
        self._rexp = np.empty((self.n, d), dtype=np.int32)
        self._rmask = np.empty((self.n, d), dtype=bool)

    def _encode(self, v: np.ndarray, k: int) -> bool:
        a = np.abs(v, out=self._a)
        finite = all_finite(a)
        if not finite:
            np.nan_to_num(a, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        mant, ex = np.frexp(a, out=(self._mant, self._exp))
        top = int(ex.max()) if self.dim and a.max() > 0 else 0
        u = self.quant.noise(k)
        p = np.multiply(mant, 2.0, out=self._p)
        p -= 1.0
        up = np.less(u, p, out=self._up)
        code = np.subtract(top + 1, ex, out=self._code)   # offset of the lower power 2^(ex-1)
        code -= up
        tiny = np.less_equal(ex, top - self.SPAN, out=self._mask)
        if tiny.any():
            np.ldexp(a, -(top - self.SPAN), out=p)
            np.less(u, p, out=up)
            np.copyto(code, self.SPAN, where=tiny & up)
            np.copyto(code, self.ZERO, where=tiny & ~up)
        np.copyto(code, self.ZERO, where=np.equal(a, 0.0, out=self._mask))
        np.add(code, 128, out=code, where=np.signbit(v) & (code != self.ZERO))
        send = self._send
        np.copyto(send[:self.dim], code, casting="unsafe")
        send[self.dim:self.dim + 2].view(np.int16)[0] = top
        send[self.dim + 2] = 0 if finite else 1
        return finite

    def exchange(self, v, k, x, out_mean, out_local=None):
        finite = self._encode(v, k)
        recv = self.comm.allgather(self._send, self._recv)
        d = self.dim
        if recv[:, d + 2].any():
            self.fail(k, not finite)
        tops = recv[:, d:d + 2].copy().view(np.int16).astype(np.int32)  # (n, 1), tiny
        codes = recv[:, :d]
        e = np.bitwise_and(codes, 127, out=self._rexp, casting="unsafe")
        zero = np.equal(e, self.ZERO, out=self._rmask)
        np.subtract(tops, e, out=e)
        vals = np.ldexp(1.0, e, out=self._vals)
        vals[zero] = 0.0
        np.negative(vals, out=vals, where=codes >= 128)
        self._finish(out_mean, out_local)
        self.bits, self.clipped = 8 * d + 16, 0


class QSGDCompressor(_GatherCompressor):
    """QSGD (Alistarh et al., 2017) with s levels: v -> ||v||_2 sign(v_j) xi_j / s, xi_j = Int(s |v_j| / ||v||_2)
    with randomized rounding (unbiased). Wire format per rank: the signed levels as int8 (s <= 127)
    or int16 (s <= 32767) and the norm as a float64 in the header, by Allgather.
    """

    name = "qsgd"
    OPTIONS = {"levels": 127}

    @classmethod
    def validate(cls, opts, n):
        s = opts["levels"]
        if not (isinstance(s, (int, np.integer)) and 1 <= s <= 32767):
            raise _bad_option(f"--levels must be an integer in [1, 32767] for qsgd, got {s!r}")

    @classmethod
    def omega(cls, dim, opts):
        s = {**cls.OPTIONS, **opts}["levels"]
        return min(dim / s ** 2, math.sqrt(dim) / s)

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        s = self.opts["levels"]
        self.s = int(s)
        self.dtype = np.dtype(np.int8 if s <= 127 else np.int16)
        self._hdr = 8 // self.dtype.itemsize
        self._setup_gather(self.dtype, self._hdr)
        self.quant = quantizer(dim, self.seed, self.worker, self.n)
        self._a = np.empty(dim)
        self._signed = np.empty(dim)
        self._norms = np.empty((self.n, 1))

    def exchange(self, v, k, x, out_mean, out_local=None):
        d, q, s = self.dim, self.quant, self.s
        a = np.abs(v, out=self._a)
        norm = float(np.sqrt(np.dot(a, a))) if d else 0.0
        finite = math.isfinite(norm)
        scale = s / norm if finite and norm > 0 else 1.0
        if not finite:
            a[...] = 0.0
        q.round(a, scale, k)
        levels = q.rounded  # Int(s |v_j| / ||v||) in [0, s] (s + 1 only by a rounding slip); read-only
        self.clipped = 0
        if q.max_abs > s:
            self.clipped = int(np.count_nonzero(levels > s))
            levels = np.minimum(levels, s, out=self._signed)
        signed = np.copysign(levels, v, out=self._signed)
        np.copyto(self._send[:d], signed, casting="unsafe")
        self._send[d:].view(np.float64)[0] = norm if finite and norm > 0 else (0.0 if finite else math.nan)
        recv = self.comm.allgather(self._send, self._recv)
        norms = np.ascontiguousarray(recv[:, d:]).view(np.float64)
        if not np.isfinite(norms).all():
            self.fail(k, not finite)
        np.multiply(norms, 1.0 / s, out=self._norms)
        np.multiply(recv[:, :d], self._norms, out=self._vals)
        self._finish(out_mean, out_local)
        self.bits = info_bits_int(d, s) + 64


COMPRESSORS: Dict[str, type] = {c.name: c for c in (NoCompression, IntCompressor, HintCompressor, NatCompressor,
                                                    QSGDCompressor)}


def all_options() -> Dict[str, Any]:
    """Union of every compressor's options with their defaults (what ``diana`` accepts)."""
    merged: Dict[str, Any] = {}
    for cls in COMPRESSORS.values():
        merged.update(cls.OPTIONS)
    return merged


def compressor_class(name: str) -> type:
    try:
        return COMPRESSORS[name]
    except KeyError:
        raise _bad_option(f"unknown compressor {name!r}; choose one of: {', '.join(COMPRESSORS)}") from None


def check_options(name: str, given: Dict[str, Any], method: str) -> None:
    """Refuse options the chosen compressor does not use, naming the ones it does."""
    cls = compressor_class(name)
    foreign = sorted(set(given) & (set(all_options()) - set(cls.OPTIONS)))
    if foreign:
        takes = ", ".join(sorted(cls.OPTIONS)) or "no compressor options"
        raise _bad_option(f"method '{method}' with compressor {name} does not use option(s) {', '.join(foreign)}; "
                          f"it takes: {takes}")
