"""DIANA and VR-DIANA with any compressor (IntDIANA, VR-IntDIANA with the int one), and L-SVRG.

DIANA (Mishchenko et al., "Distributed learning with compressed gradient differences", 2019;
IntDIANA is Alg. 3 of the IntSGD paper, Mishchenko et al., ICLR 2022). Each rank keeps a shift h_i,
all keep h = mean_i h_i::

    Delta_i = g_i - h_i;   every rank gets mean_i C(Delta_i) and its own C(Delta_i)
    g = h + mean_i C(Delta_i);   h_i += a C(Delta_i);   h += a mean_i C(Delta_i);   x -= eta g

With the int compressor (a = 1) that is exactly Q_i = Int(alpha (g_i - h_i)); g = h + S / (n alpha);
h_i += Q_i / alpha; h += S / (n alpha). The shift step a is 1 for the none, int and hint compressors
and 1 / (1 + omega) for the unbiased compressors of relative variance omega (nat, qsgd), the value
of DIANA's theory. h stays the mean of the h_i (the same updates on every rank).

VR-DIANA (Horvath et al., "Stochastic distributed learning with gradient quantization and variance
reduction", 2019) uses the loopless SVRG estimator g_i = grad f_i(x; xi) - grad f_i(w; xi) + grad f_i(w)
(Kovalev et al., "Don't jump through hoops and remove those loops", ALT 2020): after each step's
exchange, one coin from the generator shared by all ranks sets w <- x (the iterate the step
started from) with probability p (default batch / shard size), and every rank recomputes its full
local gradient at w. L-SVRG is that estimator with a full-precision float Allreduce.

Step sizes: ``diana`` as SGD-type methods (see ``mpiopt.methods.intsgd``); ``vr-diana`` and
``l-svrg`` from :func:`mpiopt.methods.intsgd.vr_step_size` (one formula for both, as in the IntSGD
paper's experiments, so the comparison isolates the compression).
"""

from typing import Any, Dict

import numpy as np

from mpiopt.methods.compressors import all_options
from mpiopt.methods.intsgd import CompressedMethod, check_probability, vr_step_size


class _VarianceReduced:
    """The L-SVRG estimator's state (w, u = grad f_i(w)) and its reset coin; mixed into methods."""

    def vr_start(self, x: np.ndarray) -> None:
        self.p = self.reset_probability()
        self.state["w"] = x.copy()
        self.state["u"] = self.ctx.problem.grad(x, out=np.empty_like(x))
        self._gx = np.empty_like(x)
        self._gw = np.empty_like(x)

    def reset_probability(self) -> float:
        p = self.opts.get("p")
        return check_probability(self.batch / self.ctx.problem.n_samples if p is None else p)

    def vr_gradient(self, x: np.ndarray) -> np.ndarray:
        """g_i = grad f_i(x; xi) - grad f_i(w; xi) + grad f_i(w), into a scratch buffer."""
        problem, idx = self.ctx.problem, self.sample()
        gx = problem.stochastic_grad(x, idx, out=self._gx)
        gw = problem.stochastic_grad(self.state["w"], idx, out=self._gw)
        gx -= gw
        gx += self.state["u"]
        return gx

    def vr_maybe_reset(self, x: np.ndarray) -> None:
        """One shared coin per step (identical on every rank); on success w <- x, u <- grad f_i(w)."""
        if self.ctx.shared_rng.random() < self.p:
            w = self.state["w"]
            np.copyto(w, x)
            self.ctx.problem.grad(w, out=self.state["u"])


class DIANA(CompressedMethod):
    """DIANA with a minibatch gradient (the full local gradient when --batch is the shard size)."""

    name = "diana"
    OPTIONS = {"compressor": "none", **all_options()}
    variance_reduced = False

    def start(self, x: np.ndarray) -> None:
        super().start(x)
        self.shift_step = 1.0 / (1.0 + self.omega())
        self.state["h_local"] = np.zeros_like(x)
        self.state["h"] = np.zeros_like(x)
        self._g = np.empty_like(x)
        self._delta = np.empty_like(x)
        self._mean = np.empty_like(x)
        self._local = np.empty_like(x)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.local_gradient(x, self._g)

    def step(self, x: np.ndarray, k: int) -> None:
        g_i = self.gradient(x)
        h_i, h = self.state["h_local"], self.state["h"]
        delta = np.subtract(g_i, h_i, out=self._delta)
        mean, local = self._mean, self._local
        self.comp.exchange(delta, k, x, mean, local)
        self.count()
        g = np.add(h, mean, out=self._delta)
        if self.shift_step != 1.0:
            mean *= self.shift_step
            local *= self.shift_step
        h_i += local
        h += mean
        if self.variance_reduced:
            self.vr_maybe_reset(x)
        g *= self.lr
        x -= g


class VRDIANA(_VarianceReduced, DIANA):
    """VR-DIANA: DIANA with the L-SVRG estimator; ``p`` is the reset probability."""

    name = "vr-diana"
    OPTIONS = {**DIANA.OPTIONS, "p": None}
    variance_reduced = True

    def default_lr(self) -> float:
        return vr_step_size(self.ctx, self.batch, self.omega())

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "p": self.reset_probability()}

    def start(self, x: np.ndarray) -> None:
        super().start(x)
        self.vr_start(x)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.vr_gradient(x)


class LSVRG(_VarianceReduced, CompressedMethod):
    """Loopless SVRG over ranks: the VR estimator averaged by one float Allreduce (float64 default)."""

    name = "l-svrg"
    compressor = "none"
    OPTIONS = {"float_dtype": "float64", "p": None}

    def default_lr(self) -> float:
        return vr_step_size(self.ctx, self.batch, 0.0)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "p": self.reset_probability()}

    def start(self, x: np.ndarray) -> None:
        super().start(x)
        self.vr_start(x)
        self._mean = np.empty_like(x)

    def step(self, x: np.ndarray, k: int) -> None:
        g_i = self.vr_gradient(x)
        self.comp.exchange(g_i, k, x, self._mean)
        self.count()
        self.vr_maybe_reset(x)
        x -= self.lr * self._mean
