"""SGD with a compressor: IntSGD, HintSGD, NatSGD and QSGD, and the plumbing DIANA shares.

Each rank computes its minibatch gradient g_i (its full local gradient when ``--batch`` equals its
shard size), the compressor delivers mean_i C(g_i) identically to every rank, and
x <- x - eta mean_i C(g_i). With the int compressor this is IntSGD (Mishchenko et al., "IntSGD:
Adaptive Floatless Compression of Stochastic Gradients", ICLR 2022, Alg. 1 and 2):
Q_i = Int(alpha g_i), S = sum_i Q_i by one integer Allreduce, x <- x - eta S / (n alpha).

Default step sizes ("of the theory"; ``--lr`` overrides them):

* SGD-type methods (intsgd, hintsgd, natsgd, qsgd, diana): eta = 1 / (2 L_max (1 + 2 omega / n)),
  our SGD's 1 / (2 L_max) -- the condition eta <= 1 / (2L) of the IntSGD theorems, with the largest
  local smoothness for minibatches -- divided by (1 + 2 omega / n): step-size conditions of the form
  eta <= 1 / (L (1 + c omega / n)) appear in the analyses of compressed SGD and DIANA with an
  unbiased compressor of relative variance omega (Mishchenko et al., 2019; Horvath et al., 2019);
  we take c = 2. omega = 0 for the int and hint compressors, whose rounding error is additive and
  kept O(eta^2) by alpha.
* Variance-reduced methods (l-svrg, vr-diana): see :func:`vr_step_size`.
"""

import math
from typing import Any, ClassVar, Dict, Optional

import numpy as np

from mpiopt.errors import InputError
from mpiopt.methods.base import Context, Method
from mpiopt.methods.compressors import (Compressor, HintCompressor, IntCompressor, NatCompressor, QSGDCompressor,
                                        all_options, check_options, compressor_class)


def sample_smoothness(problem) -> float:
    """max_j L_ij over this rank's samples: ``problem.sample_smoothness()`` when the problem has it,
    else L_i (exact for b = m only; pass ``--lr`` for problems without it)."""
    fn = getattr(problem, "sample_smoothness", None)
    return float(fn()) if fn is not None else float(problem.smoothness())


def vr_step_size(ctx: Context, batch: int, omega: float = 0.0) -> float:
    """eta = 1 / (2 (L + 3 L_b / (2n) + 3 L_b / (16n))) / (1 + 2 omega / n)  (collective).

    L_b = max_i [(1 - 1/b) L_i + L_i,max / b] is the expected smoothness of a b-minibatch drawn with
    replacement, as our sampler draws it (Gower et al., "SGD: general analysis and improved rates",
    ICML 2019), with L_i,max the largest per-sample constant (``problem.sample_smoothness()``). The
    formula is the strongly convex step size of the reference code of the IntSGD paper
    (github.com/bokunwang1/intsgd, logistic_regression/algorithms/VR-IntDIANA.py; it uses the
    without-replacement L_b, which differs by O(1/m)), and that code uses the same step size for
    L-SVRG, VR-NatDIANA and VR-HintDIANA so that the methods differ only in what they send; we do the
    same (omega = 0 for none, int and hint).
    """
    problem, comm = ctx.problem, ctx.comm
    b = batch
    local = np.array([(1.0 - 1.0 / b) * problem.smoothness() + sample_smoothness(problem) / b])
    Lb = float(comm.allreduce_max(local, count=False)[0])
    n = comm.size
    base = 1.0 / (2.0 * (ctx.L + 3.0 * Lb / (2.0 * n) + 3.0 * Lb / (16.0 * n)))
    return base / (1.0 + 2.0 * omega / n)


class CompressedMethod(Method):
    """A method whose per-step exchange goes through a :class:`Compressor`.

    Subclasses fix ``compressor`` (a name) or, when it is None, read it from the ``compressor``
    option; options of another compressor than the chosen one are refused.
    """

    compressor: ClassVar[Optional[str]] = None

    def __init__(self, ctx: Context, **options: Any):
        super().__init__(ctx, **options)
        check_options(self.compressor_name, options, self.name)
        self.comp_options()

    @property
    def compressor_name(self) -> str:
        return self.compressor or self.opts["compressor"]

    @property
    def comp_cls(self):
        return compressor_class(self.compressor_name)

    def comp_options(self) -> Dict[str, Any]:
        """The chosen compressor's options, validated (so a bad value fails before any step)."""
        opts = {k: self.opts[k] for k in self.comp_cls.OPTIONS}
        self.comp_cls.validate(opts, self.ctx.comm.size)
        return opts

    def omega(self) -> float:
        return self.comp_cls.omega(self.ctx.problem.dim, self.comp_options())

    def default_lr(self) -> float:
        return 1.0 / (2.0 * self.ctx.L_max * (1.0 + 2.0 * self.omega() / self.ctx.comm.size))

    def config(self) -> Dict[str, Any]:
        """The options in force: the method's own and its compressor's (not other compressors')."""
        unused = set(all_options()) - set(self.comp_cls.OPTIONS)
        mine = {k: v for k, v in super().config().items() if k not in unused}
        return {**mine, "compressor": self.compressor_name, "omega": self.omega(),
                **self.comp_cls.describe(self.comp_options())}

    def make_compressor(self) -> Compressor:
        ctx = self.ctx
        comp = self.comp_cls(ctx.comm, ctx.problem.dim, seed=ctx.seed, worker=ctx.worker, lr=self.lr,
                             fail=self.raise_non_finite, **self.comp_options())
        for key, value in comp.state.items():
            self.state[f"comp/{key}"] = value
        return comp

    def start(self, x: np.ndarray) -> None:
        m = self.ctx.problem.n_samples
        self.full_gradient = self.ctx.batch is not None and self.batch == m
        self.comp = self.make_compressor()

    def local_gradient(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The full local gradient when --batch is the shard size, else a minibatch gradient."""
        if self.full_gradient:
            return self.ctx.problem.grad(x, out=out)
        return self.ctx.problem.stochastic_grad(x, self.sample(), out=out)

    def count(self) -> None:
        self.info_bits += self.comp.bits
        self.clipped += self.comp.clipped

    def summary(self) -> Dict[str, Any]:
        return {"wire": {"compressor": self.compressor_name, **self.comp.summary()}}


class CompressedSGD(CompressedMethod):
    """x <- x - eta mean_i C(g_i) with the class's compressor."""

    def start(self, x: np.ndarray) -> None:
        super().start(x)
        self._g = np.empty_like(x)
        self._mean = np.empty_like(x)

    def step(self, x: np.ndarray, k: int) -> None:
        g = self.local_gradient(x, self._g)
        self.comp.exchange_update(g, k, x, self.lr, self._mean)
        self.count()


class IntSGD(CompressedSGD):
    """IntSGD: integers only on the wire (after the first step, see ``first_step`` in the config)."""

    name = "intsgd"
    compressor = "int"
    OPTIONS = dict(IntCompressor.OPTIONS)


class HintSGD(CompressedSGD):
    """HintSGD: SwitchML's heuristic scaling from a MAX Allreduce, b-bit integers."""

    name = "hintsgd"
    compressor = "hint"
    OPTIONS = dict(HintCompressor.OPTIONS)


class NatSGD(CompressedSGD):
    """SGD with natural compression (signed powers of two, Allgather)."""

    name = "natsgd"
    compressor = "nat"
    OPTIONS = dict(NatCompressor.OPTIONS)


class QSGD(CompressedSGD):
    """QSGD with s levels (Allgather of norm + levels)."""

    name = "qsgd"
    compressor = "qsgd"
    OPTIONS = dict(QSGDCompressor.OPTIONS)


def check_probability(p: Any) -> float:
    if not (isinstance(p, (int, float)) and math.isfinite(p) and 0 < p <= 1):
        raise InputError(f"--p (probability of a reference-point reset) must be in (0, 1], got {p!r}",
                         collective=True)
    return float(p)
