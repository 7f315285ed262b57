"""What every method shares: the run context, the step size, and the explicit state record.

A method keeps *all* of its memory (shifts h_i, reference point, error feedback, its compressor's
alpha and wire state, ...) in ``self.state``, a dict of arrays (scalars as 0-d arrays), and its
cumulative counters in ``info_bits`` and ``clipped``. Checkpoints and the torch optimizers'
``state_dict`` save that record (:mod:`mpiopt.state`), so a resumed run continues bit-identically,
as with optax's explicit states. Scratch buffers that are overwritten every step live outside it.
"""

from dataclasses import dataclass
import math
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from mpiopt.comm import Communicator
from mpiopt.errors import InputError, RunError
from mpiopt.naming import arg
from mpiopt.problems.base import Problem


def _positive_lr(value: Any, k: Optional[int]) -> float:
    """``value`` as a float step size, or an InputError naming the argument (and the iteration
    ``k`` for a schedule's value). A constant is the same on every rank (a collective error); a
    schedule's value might fail on one rank only, so that error is not collective and ``minimize``
    ends every rank with it."""
    try:
        lr = float(value)
    except (TypeError, ValueError):
        lr = math.nan
    if math.isfinite(lr) and lr > 0:
        return lr
    if k is None:
        raise InputError(f"step size must be a positive number or a schedule (a function of the iteration), "
                         f"got {arg('lr', value)}", collective=True)
    raise InputError(f"the step-size schedule {arg('lr')} returned {value!r} for iteration {k}; it must "
                     f"return a positive number")


@dataclass
class Context:
    """Everything a method may read about the run; identical on every rank except where noted."""

    problem: Problem
    comm: Communicator
    seed: int
    worker: int
    """Which shard this rank holds (its comm rank unless the communicator was reordered); rounding
    noise and minibatch sampling are keyed on it, so reordering ranks cannot change any iterate."""
    L: float
    """Smoothness of the global objective f = mean_i f_i."""
    L_max: float
    """max_i L_i over the ranks."""
    lr: Optional[float] = None
    """Step size given by the user; None means the method's theory default."""
    batch: Optional[int] = None
    """Minibatch size of stochastic methods; None means the method's default."""
    sample_rng: Optional[np.random.Generator] = None
    """This rank's own stream for minibatch sampling (differs across ranks)."""
    shared_rng: Optional[np.random.Generator] = None
    """A stream with the same seed on every rank, for coins all ranks must agree on."""


def flagged_ranks(comm: Communicator, local_bad: bool) -> List[int]:
    """The ranks whose ``local_bad`` is true (one uncounted Allgather; every rank must call it)."""
    flags = np.zeros(comm.size, dtype=np.int8)
    comm.allgather(np.array([int(local_bad)], dtype=np.int8), flags, count=False)
    return np.flatnonzero(flags).tolist()


class Method:
    """Base class of the optimization methods; ``step`` moves the shared iterate x in place.

    ``name`` is the name the user chose (an alias such as ``intdiana`` included), used in every
    message. ``info_bits`` and ``clipped`` are cumulative per-rank counters for the trace.
    """

    schedule: Optional[Callable[[int], float]] = None
    """The user's step-size schedule k -> lr (set by :meth:`init_lr`), read by the runner before
    each step; None for a constant step."""

    def __init__(self, ctx: Context, name: str):
        self.ctx = ctx
        self.name = name
        self.state: Dict[str, Any] = {}
        self.info_bits = 0
        self.clipped = 0

    def init_lr(self) -> None:
        """The step size: the user's number or schedule (``ctx.lr`` callable: :meth:`lr_at` gives
        each iteration's), else the method's theory value (needs the smoothness)."""
        ctx = self.ctx
        self.schedule = ctx.lr if callable(ctx.lr) else None
        if self.schedule is not None:
            self.lr = self.lr_at(0)
            return
        if ctx.lr is None and not (np.isfinite(ctx.L) and np.isfinite(ctx.L_max)):
            raise InputError(f"method '{self.name}' needs a step size: the problem's smoothness is unknown "
                             f"(smoothness() is not finite), so pass {arg('lr')}", collective=True)
        self.lr = _positive_lr(ctx.lr, None) if ctx.lr is not None else self.default_lr()
        if not np.isfinite(self.lr) or self.lr <= 0:
            raise InputError(f"the default step size is {self.lr}: the problem's smoothness constants must be "
                             f"positive numbers; pass {arg('lr')}", collective=True)

    def lr_at(self, k: int) -> float:
        """The schedule's step size for iteration k (0-based), checked to be a positive number."""
        return _positive_lr(self.schedule(k), k)

    @property
    def batch(self) -> int:
        m = self.ctx.problem.n_samples
        b = self.ctx.batch if self.ctx.batch is not None else max(1, m // 100)
        if not 1 <= b <= m:
            raise InputError(f"{arg('batch')} must be between 1 and the shard size {m}, got {b}", collective=True)
        return b

    def default_lr(self) -> float:
        """The step size of the theory for this method: 1/L of the global objective unless overridden."""
        return 1.0 / self.ctx.L

    def config(self) -> Dict[str, Any]:
        """The options actually in force, for the trace."""
        return {"lr": self.lr}

    def summary(self) -> Dict[str, Any]:
        """Run statistics for the trace (e.g. wire dtypes used), merged into its top level after the
        run; collective: every rank calls it once."""
        return {}

    def start(self, x: np.ndarray) -> None:
        """Allocate buffers and initialize the state at the starting point x."""

    def prepare(self, x: np.ndarray) -> None:
        """Compile kernels and warm up before the first timed step (after ``start``)."""

    def step(self, x: np.ndarray, k: int) -> None:
        """Advance x (identical on every rank) by one iteration, in place."""
        raise NotImplementedError

    def iterate_changed(self) -> None:
        """x was written outside :meth:`step` (the runner calls this after a callback, which may):
        forget whatever the method derived from x between steps."""

    def clip_advice(self) -> str:
        """What to do when coordinates were clipped to fit the wire (for the runner's warning)."""
        return "use --wire-dtype auto or a wider dtype"

    def sample(self) -> np.ndarray:
        """A minibatch of this rank's sample indices (with replacement, from this rank's stream)."""
        return self.ctx.sample_rng.integers(0, self.ctx.problem.n_samples, size=self.batch)

    def raise_non_finite(self, k: int, local_bad: bool) -> None:
        """Stop all ranks with a message naming the rank(s) whose values were not finite.

        Called by every rank once a reduction the step already does came back non-finite, so the
        extra gather here costs nothing on the happy path and no rank is left waiting.
        """
        ranks = flagged_ranks(self.ctx.comm, local_bad) or "unknown"
        raise RunError(
            f"non-finite gradient at iteration {k} on rank(s) {ranks}; lower {arg('lr')} or check the data "
            "(the last checkpoint, if any, is kept)",
            collective=True,
        )
