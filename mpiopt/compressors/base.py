"""What every compressor shares: declared options, the registry, and the exchange templates.

A compressor's one job is ``exchange(v, k, x, lr, out_mean, out_local=None)``: communicate this rank's
vector v = v_i, write the mean over ranks of the decoded C(v_i) into ``out_mean`` (bitwise identical
on every rank) and, when asked, this rank's own decoded C(v_i) into ``out_local`` (what DIANA adds to
its shift h_i and error feedback subtracts). ``x`` is the current iterate and ``lr`` the current step
size (the int compressor's adaptive alpha reads both), ``k`` the iteration (it keys the rounding
noise). After each exchange ``bits`` and ``clipped`` hold that exchange's information bits and
clipped coordinates. A compressor talks to the network only through its
:class:`~mpiopt.comm.Communicator`, and keeps all memory that must survive a checkpoint in ``state``
(arrays updated in place); everything else is scratch. Float sums over ranks are taken in *worker*
order (the shard id, not the comm rank), so reordering the ranks changes nothing.

A compressor declares its ``options`` (:class:`Option`: default, type, check, help; the CLI's flags
and ``mpiopt run --help`` are generated from them), whether it is ``unbiased`` and its ``omega``
(E||C(v) - v||^2 <= omega ||v||^2), and the ``collective`` it needs. :func:`register` adds a class
to the registry by its ``name``; ``mpiopt run --compressor`` offers every registered name.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Type

import numpy as np

from mpiopt.comm import Communicator
from mpiopt.errors import InputError
from mpiopt.kernels import CPU_KERNELS, make_quantizer, warm_up
from mpiopt.kernels.numpy import apply_step
from mpiopt.naming import arg, did_you_mean, spelled

FailFn = Callable[[int, bool], None]
"""fail(k, local_bad): stop every rank because a value at iteration k was not finite."""
COLLECTIVES = ("allreduce_int", "allreduce_float", "allgather", "alltoall")


def bad_option(message: str) -> InputError:
    """An option error every rank raises together (so it is reported once and no rank hangs)."""
    return InputError(message, collective=True)


@dataclass(frozen=True)
class Option:
    """One option of a compressor, memory or method: its default, CLI type, check and help."""

    name: str
    default: Any
    kind: type
    help: str
    choices: Optional[Tuple[Any, ...]] = None
    valid: Optional[Callable[[Any], bool]] = None
    rule: str = ""
    """What a valid value is, for the error message (e.g. 'a positive number')."""
    cli: bool = True
    """False for options only the Python API can give (e.g. arrays)."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> None:
        """Raise a collective InputError naming the flag when ``value`` is not allowed."""
        if value is None and self.default is None:
            return
        if self.choices is not None and value not in self.choices:
            raise bad_option(f"{arg(self.name)} must be one of {', '.join(map(str, self.choices))}, got {value!r}"
                             f"{did_you_mean(value, map(str, self.choices))}")
        if self.valid is not None and not _safely(self.valid, value):
            raise bad_option(f"{arg(self.name)} must be {self.rule}, got {value!r}")


def _safely(test: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(test(value))
    except (TypeError, ValueError):
        return False


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def positive(v: Any) -> bool:
    return is_number(v) and v > 0


def positive_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


def fraction(v: Any) -> bool:
    """In (0, 1]."""
    return is_number(v) and 0 < v <= 1


FLOAT_DTYPE = Option("float_dtype", "float64", str, "float type on the wire", choices=("float32", "float64"))
KERNEL = Option("kernel", None, str, "quantizer kernel (default: numba when installed, else numpy; "
                "MPIOPT_KERNEL overrides the default)", choices=CPU_KERNELS)


def user_options(options) -> str:
    """The options a user may give, for a message: the command line's flags or Python's names,
    without the internal ones (``cli=False``: arrays other parts of mpiopt pass)."""
    return spelled(sorted({o.name for o in options if o.cli})) or "no options"


def resolve_options(owner: str, options: Tuple[Option, ...], given: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults filled in and each value checked; unknown names refused, naming the known ones."""
    known = {o.name for o in options}
    unknown = sorted(set(given) - known)
    if unknown:
        raise bad_option(f"{owner} does not take option(s) {spelled(unknown)}; it takes: {user_options(options)}")
    resolved = {o.name: given.get(o.name, o.default) for o in options}
    for o in options:
        o.check(resolved[o.name])
    return resolved


class Compressor:
    """Base class; subclasses set ``name``, ``options``, ``unbiased``, ``collective`` and implement
    ``exchange`` (or one of the templates' hooks: :class:`GatherCompressor`, ``SparseCompressor``).

    The contract, on every rank of ``comm``: one instance per rank, built with the same ``dim``,
    ``seed`` and options everywhere (the method builds it; ``worker`` is this rank's shard id, the
    same as ``comm.rank`` unless ranks were reordered). Every rank calls the same methods in the same
    order (each call may run collectives), and whatever decides a collective's size or type must be
    computed from data all ranks share, or agreed on by a collective, never from this rank's vector
    alone. Arrays come from ``self.xp`` (numpy, or CuPy on a GPU). A failure that only this rank
    sees (a non-finite value) goes through ``self.fail(k, local_bad)``, which every rank must call
    together once a collective has shown the problem (see :class:`GatherCompressor`), so no rank is
    left waiting.
    """

    name: ClassVar[str] = ""
    """The registry name (``--compressor NAME``, ``compressor="NAME"``)."""
    options: ClassVar[Tuple[Option, ...]] = ()
    """The options it takes; each becomes a ``mpiopt run`` flag and a keyword of ``minimize``."""
    unbiased: ClassVar[bool] = True
    """E C(v) = v; DIANA and VR-DIANA take only unbiased compressors, biased ones go with ef-sgd."""
    collective: ClassVar[str] = "allreduce_float"
    """The collective its exchange needs: ``allreduce_int``, ``allreduce_float`` or ``allgather``."""

    def __init__(self, comm: Communicator, dim: int, *, seed: int, worker: int, fail: FailFn, xp: Any = np,
                 **opts: Any):
        self.comm, self.dim, self.seed, self.worker, self.fail, self.xp = comm, dim, seed, worker, fail, xp
        self.n = comm.size
        self.opts = self.resolve(opts, comm, dim)
        self.state: Dict[str, Any] = {}
        self.bits = 0
        self.clipped = 0
        self._one_segment: Optional[np.ndarray] = None
        """The numba shift kernels' one (position, coordinate, count, block) row, once they are used."""

    @classmethod
    def resolve(cls, given: Dict[str, Any], comm: Communicator, dim: Optional[int] = None) -> Dict[str, Any]:
        """The options in force: defaults filled in (the CPU kernel by the vector's length ``dim``,
        see :func:`mpiopt.kernels.cpu_kernel`), each checked, then the cross-option ``check``."""
        opts = resolve_options(f"compressor '{cls.name}'", cls.options, given)
        if "kernel" in opts and opts["kernel"] is None:
            from mpiopt.kernels import cpu_kernel

            opts["kernel"] = cpu_kernel(size=dim)
        cls.check(opts, comm)
        return opts

    @classmethod
    def check(cls, opts: Dict[str, Any], comm: Communicator) -> None:
        """Raise a collective InputError (:func:`bad_option`), saying what to do, for options that do
        not work together (each option alone is already checked by its :class:`Option`). Runs on
        every rank with the same ``opts``, before any buffer exists."""

    @classmethod
    def omega(cls, dim: int, opts: Dict[str, Any]) -> float:
        """Relative variance bound of an unbiased compressor, E||C(v) - v||^2 <= omega ||v||^2 (0 when it
        has only an additive one). It sets the default step size (divided by 1 + 2 omega / n) and
        DIANA's shift step 1 / (1 + omega); unused for biased compressors."""
        return 0.0

    @classmethod
    def describe(cls, opts: Dict[str, Any]) -> Dict[str, Any]:
        """Facts for the trace's config beside the options (JSON values; filled before any buffer exists)."""
        return {}

    def quantizer(self, size: int, rounding: str = "random", **placement: Any):
        """The counter-based rounding kernel of this compressor's array module and ``kernel`` option
        (``placement``: ``blocks``, ``layout``, see :func:`mpiopt.kernels.cpu_quantizer`)."""
        return make_quantizer(self.xp, self.opts.get("kernel"), size, self.seed, self.worker, self.n, rounding,
                              **placement)

    def prepare(self, x: np.ndarray) -> None:
        """Compile whatever the first exchange would compile (called once, on every rank, before the
        timed loop; ``x`` is the starting point). Must not communicate or change ``state``. Here: the
        kernel of the ``kernel`` option, for compressors that take one."""
        if self.opts.get("kernel"):
            warm_up(self.opts["kernel"])

    def iterate_changed(self) -> None:
        """x was written outside the method's steps (a callback): forget what was derived from it
        between steps. Here: nothing is."""

    def exchange(self, v, k: int, x, lr: float, out_mean, out_local=None) -> None:
        """Communicate this rank's ``v`` and write mean_i C(v_i) into ``out_mean``; every rank calls it.

        ``v``: this rank's vector, shape ``(dim,)``, float64 (read it; it is the method's buffer and
        may be overwritten after the call). ``k``: the iteration (0-based; key any randomness on
        (seed, worker, k, coordinate), e.g. with :meth:`quantizer`, so that reruns and resumes give the
        same bits). ``x``: the current iterate and ``lr`` the current step size, identical on all
        ranks (read-only; the int compressor's alpha uses them). ``out_mean``: shape ``(dim,)``, to be
        filled with the mean over ranks of the decoded messages, **bitwise identical on every rank**
        (sum floats in worker order, :func:`sum_rows`, or sum integers). ``out_local``: when not
        None, this rank's own decoded C(v_i) (DIANA's shift and error feedback read it).

        After the call ``self.bits`` holds the information bits this rank's message carried in this
        exchange (what the trace's ``info_bits`` adds up; wire bytes are counted by the communicator)
        and ``self.clipped`` the number of this rank's coordinates clipped to fit the wire (0 for
        compressors that never clip). A non-finite ``v`` must not become a silent NaN: find it from
        what the collective returned and call ``self.fail(k, this_rank_was_bad)`` on every rank.
        """
        raise NotImplementedError

    def shifted_exchange(self, g, h_local, k: int, x, lr: float, delta, out_mean, out_local, error=None) -> None:
        """DIANA's exchange: ``exchange`` of Delta_i = g - h_local (written into ``delta``, x's shape and
        dtype) with ``out_mean`` and ``out_local``. ``g`` is an array, or the L-SVRG estimator's terms
        (a, b, c) for g = (a - b) + c, whose ``a`` may be overwritten. With ``error`` (DIANA's feedback,
        this rank's carried compression error e_i, x's shape and dtype) Delta_i = g - (h_local - e_i),
        and e_i <- Delta_i - C(Delta_i) (here, or in :meth:`shift_update` where a fused pass decodes
        C(Delta_i) there). :meth:`shift_update` follows, with the same ``error``. With the numba
        kernel Delta_i is one compiled pass (:mod:`mpiopt.kernels.shift_numba`)."""
        kernels = self._shift_kernels()
        if kernels is not None:
            ga, gb, gc = g if isinstance(g, tuple) else (g, g, g)
            kernels.shift_delta(ga, gb, gc, h_local, self._one_segment, delta, self._one_peak, isinstance(g, tuple),
                                h_local if error is None else error, error is not None)
        else:
            if isinstance(g, tuple):
                g, b, c = g
                g -= b
                g += c
            shift = h_local if error is None else self.xp.subtract(h_local, error, out=delta)
            self.xp.subtract(g, shift, out=delta)
        self.exchange(delta, k, x, lr, out_mean, out_local)
        if error is not None:
            self.xp.subtract(delta, out_local, out=error)

    def shift_update(self, h_local, h, x, lr: float, a: float, mean, local, scratch, error=None) -> None:
        """DIANA's update after :meth:`shifted_exchange`: g = h + mean, h_local += a local, h += a mean,
        x -= lr g (``scratch``: x's shape and dtype; ``mean`` and ``local`` may be overwritten), the
        numpy operations or, with the numba kernel, one compiled pass with their bits. ``error``: the
        feedback's e_i of :meth:`shifted_exchange`, which has updated it already here."""
        kernels = self._shift_kernels()
        if kernels is not None:
            t = h.dtype.type
            kernels.shift_update_decoded(mean, local, h_local, h, x, t(lr), t(a))
            return
        g = self.xp.add(h, mean, out=scratch)
        if a != 1.0:
            mean *= a
            local *= a
        h_local += local
        h += mean
        g *= lr
        x -= g

    def _shift_kernels(self):
        """:mod:`mpiopt.kernels.shift_numba` when this compressor runs the numba kernel, else None."""
        if self.xp is not np or self.opts.get("kernel") != "numba":
            return None
        if self._one_segment is None:
            self._one_segment = np.array([[0, 0, self.dim, 0]], dtype=np.int64)
            self._one_peak = np.empty(1)
        from mpiopt.kernels import shift_numba

        return shift_numba

    def exchange_update(self, v, k: int, x, lr: float, mean) -> None:
        """An SGD step with this exchange: x -= lr * mean_i C(v_i), in place. Here (and in the int
        compressor, which decodes straight into x) bit for bit ``exchange`` then ``x -= lr * mean``;
        ``none`` overrides it with gradient descent's own x -= sum * (lr / n) in the wire dtype, the
        rounding every stored gd/sgd trajectory has. ``mean`` (x's shape and dtype) is scratch."""
        self.exchange(v, k, x, lr, mean)
        apply_step(x, lr, mean)

    def summary(self) -> Dict[str, Any]:
        """Statistics for the trace's ``wire`` record after the run (JSON values; collective: every
        rank calls it once, so it may reduce over ranks)."""
        return {}


REGISTRY: Dict[str, Type[Compressor]] = {}


def register(cls: Type[Compressor]) -> Type[Compressor]:
    """Add a compressor class to the registry under its ``name`` (usable as a class decorator).

    ``minimize(..., compressor=NAME)`` finds it once the module that registers it is imported;
    ``mpiopt run`` imports such modules with ``--plugin`` or an ``mpiopt.plugins`` entry point
    (:mod:`mpiopt.plugins`). A name taken by another class is refused."""
    if not cls.name or not isinstance(cls.name, str):
        raise ValueError(f"{cls.__name__} needs a non-empty string 'name' to be registered")
    if cls.collective not in COLLECTIVES:
        raise ValueError(f"{cls.__name__}.collective must be one of {COLLECTIVES}, got {cls.collective!r}")
    known = REGISTRY.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"a compressor named {cls.name!r} is registered already ({known.__module__}.{known.__name__})")
    REGISTRY[cls.name] = cls
    return cls


def compressor_class(name: str) -> Type[Compressor]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise bad_option(f"unknown compressor {name!r}{did_you_mean(name, REGISTRY)}; choose one of: "
                         f"{', '.join(REGISTRY)}") from None


def all_options() -> Dict[str, Option]:
    """Every registered compressor's options by name (the first declaration of a shared name)."""
    merged: Dict[str, Option] = {}
    for cls in REGISTRY.values():
        for o in cls.options:
            merged.setdefault(o.name, o)
    return merged


# ---- helpers the templates and several compressors share ---------------------------------------

def worker_order(comm: Communicator, worker: int) -> List[int]:
    """Comm ranks listed in worker (shard id) order; one uncounted Allgather at setup."""
    ids = np.empty(comm.size, dtype=np.int64)
    comm.allgather(np.array([worker], dtype=np.int64), ids, count=False)
    return [int(r) for r in np.argsort(ids, kind="stable")]


def sum_rows(rows, order: List[int], out):
    """Sum of ``rows[r]`` over r in ``order``, left to right (the same bits on every rank)."""
    out[...] = rows[order[0]]
    for r in order[1:]:
        out += rows[r]
    return out


def all_finite(a) -> bool:
    """Whether every value of ``a`` is finite: a sum is finite only if they all are (one pass, no
    boolean temporary); only a non-finite sum, which may be an overflow, is checked value by value."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(a.sum())
    return math.isfinite(total) or bool(np.isfinite(a).all())


def info_bits_int(d: int, max_abs: float) -> int:
    """d * (1 + ceil(log2(max|Q| + 1))): sign plus magnitude bits of the largest integer sent."""
    return d * (1 + math.ceil(math.log2(max_abs + 1.0)))


class GatherCompressor(Compressor):
    """Template of compressors whose messages go by Allgather: each rank encodes a fixed-size message,
    every rank decodes all n messages and takes their mean in worker order.

    Subclasses call ``setup_gather`` in their constructor and implement ``encode`` (fill
    ``self.send``; return whether v was finite; the message must tell a non-finite v apart),
    ``decode_rows`` (all messages into ``vals``, one row per rank; False when any message reports a
    non-finite v) and ``message_bits``. The template's ``exchange`` does the rest: one Allgather,
    the non-finite check every rank makes from the same messages, the mean in worker order, this
    rank's own row as ``out_local``, ``bits`` from ``message_bits`` and ``clipped = 0``.
    """

    collective = "allgather"

    def setup_gather(self, dtype, items: int, vals_dtype=np.float64) -> None:
        """Allocate the message buffers (call it from ``__init__``, on every rank with the same
        arguments): ``self.send`` (``items`` of ``dtype``: this rank's message, zeroed),
        ``self.recv`` (n x items: every rank's message, row r from comm rank r), ``self.vals``
        (n x dim of ``vals_dtype``: the decoded rows) and ``self.order`` (the comm ranks in worker
        order, for the sum). One uncounted Allgather (the worker ids)."""
        xp = self.xp
        self.send = xp.zeros(items, dtype=dtype)
        self.recv = xp.empty((self.n, items), dtype=dtype)
        self.vals = xp.empty((self.n, self.dim), dtype=vals_dtype)
        self.order = worker_order(self.comm, self.worker)

    def encode(self, v, k: int) -> bool:
        """Write this rank's message for ``v`` (shape ``(dim,)``, float64) at iteration ``k`` into
        ``self.send``, in place, all ``items`` of it (the size is fixed: Allgather sends the same
        count from every rank). Return whether ``v`` was finite; when it was not, the message must
        say so (e.g. a NaN scale) so that every rank's ``decode_rows`` sees it."""
        raise NotImplementedError

    def decode_rows(self, recv, vals) -> bool:
        """Decode every rank's message: row r of ``recv`` (n x items, comm rank r's message) into row
        r of ``vals`` (n x dim), C(v_r) as a vector. The same bytes on every rank give the same
        rows, so the mean is identical everywhere. Return False when any message reports a
        non-finite v (every rank then calls ``fail`` together)."""
        raise NotImplementedError

    def message_bits(self) -> int:
        """The information bits of one rank's message (``bits`` after each exchange), e.g. d sign
        bits plus 64 for a float64 scale; padding that carries nothing is not counted."""
        raise NotImplementedError

    def decode_mean(self, recv, out_mean, out_local) -> bool:
        """The mean of every rank's decoded message in worker order into ``out_mean`` and, when not
        None, this rank's own into ``out_local``, by ``decode_rows`` and ``sum_rows``; False when a
        message reports a non-finite v. A subclass may fuse it (the same bits)."""
        if not self.decode_rows(recv, self.vals):
            return False
        sum_rows(self.vals, self.order, out_mean)
        out_mean *= 1.0 / self.n
        if out_local is not None:
            out_local[...] = self.vals[self.comm.rank]
        return True

    def exchange(self, v, k, x, lr, out_mean, out_local=None):
        self.clipped = 0
        finite = self.encode(v, k)
        self.comm.allgather(self.send, self.recv)
        if not self.decode_mean(self.recv, out_mean, out_local):
            self.fail(k, not finite)
        self.bits = self.message_bits()
