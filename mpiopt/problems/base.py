"""The Problem protocol: what a method needs from one worker's local objective f_i.

Any object with these members is a problem; nothing has to inherit from this class. The global
objective is f = (1/n) sum_i f_i over the n ranks, so every rank holds an equal share of the weight.

``minimize`` wraps a problem that is not one of mpiopt's own classes in :class:`CheckedProblem`, so a
``grad`` that returns a new array instead of filling ``out`` still gives the right answer.
"""

from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np

from mpiopt.errors import InputError


@runtime_checkable
class Problem(Protocol):
    """One worker's local objective f_i on its own shard of data.

    Required members: ``dim``, ``n_samples``, ``loss``, ``grad``, ``stochastic_grad``, ``smoothness``.
    Optional members, used when present: ``loss_and_grad`` (one pass for f_i and its gradient; the
    runner's evaluation calls it instead of ``loss`` + ``grad``) and ``sample_smoothness`` (the
    largest per-sample constant max_j L_ij; the default step size of l-svrg, vr-diana and vr-intdiana
    reads it for minibatches; without it they use ``smoothness()`` in its place, which is exact only
    for a full batch and gives a larger step than the theory's for small ones: define it, or pass lr).

    Shapes and dtypes: ``x`` is a float64 vector of shape ``(dim,)``, the same on every rank; do not
    modify it. ``idx`` is an int64 vector of sample indices in ``range(n_samples)`` (drawn with
    replacement, length = the batch size). ``out`` is a float64 vector of shape ``(dim,)``.

    ``out=`` semantics: when ``out`` is given, write the gradient into it and return it (returning
    None also works). Returning a different array is accepted too (``minimize`` copies it into
    ``out``, after checking its shape), at the cost of one allocation per call. When ``out`` is None,
    return a new array. Gradients of the samples ``idx`` are averaged over them (as is ``loss`` over
    the shard), and the regularizer is included in every one of them.

    Running it: ``mpiopt.minimize(problem, method, ...)`` on every rank, each with its own problem.
    ``x_star`` (shape ``(dim,)``) fills the trace's ``dist_sq`` column and makes ``tol`` a bound on
    ||x - x*||^2 (else on ||grad f||^2); ``f_star`` fills ``f_gap``; ``callback(k, x)`` runs after
    every iteration on every rank and stops the run by returning True. The result's
    ``trace["history"]`` holds one list per column (``iteration``, ``loss``, ``f_gap``, ``dist_sq``,
    ``grad_norm_sq``, ``wire_bytes``, ``info_bits``, ``clipped``, ``seconds``), one entry per logged
    iteration. ``mpiopt.load_problem(data_dir)`` gives a rank's shard written by ``mpiopt preprocess``.
    """

    dim: int
    """Number of coordinates d of the iterate x (the same on every rank; ``minimize`` checks it)."""

    n_samples: int
    """Number of samples on this worker; minibatch indices are drawn from range(n_samples)."""

    def loss(self, x: np.ndarray) -> float:
        """f_i(x), a Python float."""

    def grad(self, x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The full local gradient of f_i at x, written into ``out`` when given."""

    def stochastic_grad(self, x: np.ndarray, idx: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The gradient of the samples ``idx`` only (average over them, plus the regularizer)."""

    def smoothness(self) -> float:
        """L_i, a Lipschitz constant of grad f_i (the default step sizes are built from it; unused
        when ``minimize`` is given both ``L`` and ``L_max``)."""


class CheckedProblem:
    """A user's problem as the methods need it: every gradient lands in the ``out`` they pass.

    The methods keep their buffers and ignore what ``grad`` returns, so a problem that returns a new
    array would leave a buffer stale and the run wrong without a word. This adapter copies such an
    array into ``out`` (after checking its shape); a problem that fills ``out`` costs one call
    layer and no allocation. Every other member is the wrapped problem's own.
    """

    def __init__(self, problem: Any):
        self.problem = problem
        self.dim = int(problem.dim)
        if hasattr(problem, "loss_and_grad"):
            self.loss_and_grad = self._loss_and_grad

    def __getattr__(self, name: str) -> Any:
        if name == "problem":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.problem, name)

    def _into(self, g: Any, out: Optional[np.ndarray], member: str) -> np.ndarray:
        """``g`` as the result of a call that was asked to fill ``out``."""
        if out is None:
            return g
        if g is None or g is out:
            return out
        shape = np.shape(g)
        if shape != out.shape:
            raise InputError(f"{type(self.problem).__name__}.{member} returned an array of shape {shape}, "
                             f"expected ({self.dim},) (the problem's dim)")
        np.copyto(out, g)
        return out

    def grad(self, x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        return self._into(self.problem.grad(x, out=out), out, "grad")

    def stochastic_grad(self, x: np.ndarray, idx: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        return self._into(self.problem.stochastic_grad(x, idx, out=out), out, "stochastic_grad")

    def _loss_and_grad(self, x: np.ndarray, out: np.ndarray) -> float:
        value = self.problem.loss_and_grad(x, out)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"{type(self.problem).__name__}.loss_and_grad(x, out) must return f_i(x) as a "
                             f"number and write the gradient into out; it returned {type(value).__name__}") from None


def checked(problem: Any) -> Any:
    """``problem`` itself when it is one of mpiopt's problem classes, else a :class:`CheckedProblem`."""
    if type(problem).__module__.startswith("mpiopt.problems."):
        return problem
    return CheckedProblem(problem)
