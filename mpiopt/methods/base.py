"""What every method shares: the run context, option checking, and the explicit state record.

A method keeps *all* of its memory (shifts h_i, reference point, alpha's running average, error
feedback, ...) in ``self.state``, a dict of numpy arrays (scalars as 0-d arrays). Checkpointing is
then "save the record" and a resumed run continues bit-identically, as with optax's explicit states.
Scratch buffers that are overwritten every step live outside the record.
"""

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

import numpy as np

from mpiopt.comm import Communicator
from mpiopt.errors import InputError, RunError
from mpiopt.problems.base import Problem


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


class Method:
    """Base class of the optimization methods; ``step`` moves the shared iterate x in place.

    Subclasses set ``name``, ``OPTIONS`` (option name -> default) and implement ``start`` and
    ``step``. ``info_bits`` and ``clipped`` are cumulative per-rank counters for the trace.
    """

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[Dict[str, Any]] = {}
    identical_iterates: ClassVar[bool] = True
    """True when every rank computes bit-identical iterates (so stopping tests need no vote)."""

    def __init__(self, ctx: Context, **options: Any):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            takes = ", ".join(sorted(self.OPTIONS)) or "no options"
            raise InputError(
                f"method '{self.name}' does not take option(s) {', '.join(unknown)}; it takes: {takes}",
                collective=True,
            )
        self.ctx = ctx
        self.opts: Dict[str, Any] = {**self.OPTIONS, **options}
        self.state: Dict[str, np.ndarray] = {}
        self.info_bits = 0
        self.clipped = 0
        if ctx.lr is None and not (np.isfinite(ctx.L) and np.isfinite(ctx.L_max)):
            raise InputError(f"method '{self.name}' needs a step size: the problem's smoothness is unknown "
                             "(smoothness() is not finite), so pass lr", collective=True)
        self.lr = float(ctx.lr) if ctx.lr is not None else self.default_lr()
        if not np.isfinite(self.lr) or self.lr <= 0:
            raise InputError(f"step size must be a positive number, got --lr {self.lr}", collective=True)

    @property
    def batch(self) -> int:
        m = self.ctx.problem.n_samples
        b = self.ctx.batch if self.ctx.batch is not None else max(1, m // 100)
        if not 1 <= b <= m:
            raise InputError(f"--batch must be between 1 and the shard size {m}, got {b}", collective=True)
        return b

    def default_lr(self) -> float:
        """The step size of the theory for this method: 1/L of the global objective unless overridden."""
        return 1.0 / self.ctx.L

    def config(self) -> Dict[str, Any]:
        """The options actually in force, for the trace."""
        return {"lr": self.lr, **self.opts}

    def summary(self) -> Dict[str, Any]:
        """Run statistics for the trace (e.g. wire dtypes used), merged into its top level after the
        run; collective: every rank calls it once."""
        return {}

    def start(self, x: np.ndarray) -> None:
        """Allocate buffers and initialize the state at the starting point x."""

    def step(self, x: np.ndarray, k: int) -> None:
        """Advance x (identical on every rank) by one iteration, in place."""
        raise NotImplementedError

    def sample(self) -> np.ndarray:
        """A minibatch of this rank's sample indices (with replacement, from this rank's stream)."""
        return self.ctx.sample_rng.integers(0, self.ctx.problem.n_samples, size=self.batch)

    def raise_non_finite(self, k: int, local_bad: bool) -> None:
        """Stop all ranks with a message naming the rank(s) whose values were not finite.

        Called by every rank once a reduction the step already does came back non-finite, so the
        extra gather here costs nothing on the happy path and no rank is left waiting.
        """
        flags = np.zeros(self.ctx.comm.size, dtype=np.int8)
        self.ctx.comm.allgather(np.array([int(local_bad)], dtype=np.int8), flags, count=False)
        ranks = np.flatnonzero(flags).tolist() or "unknown"
        raise RunError(
            f"non-finite gradient at iteration {k} on rank(s) {ranks}; lower --lr or check the data "
            "(the last checkpoint, if any, is kept)",
            collective=True,
        )


def all_finite(a: np.ndarray) -> bool:
    """Whether every value of ``a`` is finite: a sum is finite only if they all are (one pass, no
    boolean temporary); only a non-finite sum, which may be an overflow, is checked value by value."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(a)
    return bool(np.isfinite(total)) or bool(np.isfinite(a).all())


def float_dtype(name: str) -> np.dtype:
    """The float dtype named by ``--float-dtype``."""
    if name not in ("float32", "float64"):
        raise InputError(f"--float-dtype must be float32 or float64, got {name!r}", collective=True)
    return np.dtype(name)
