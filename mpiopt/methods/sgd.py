"""Full-precision baselines GD and SGD: the gradient average goes through one float Allreduce."""

import numpy as np

from mpiopt.methods.base import Method, all_finite, float_dtype


class GD(Method):
    """Gradient descent: x -= lr * mean_i grad f_i(x), exchanged in float64 (or float32)."""

    name = "gd"
    OPTIONS = {"float_dtype": "float64"}

    def start(self, x: np.ndarray) -> None:
        self._g = np.empty_like(x)
        self._wire = np.empty(x.shape, dtype=float_dtype(self.opts["float_dtype"]))
        self._bits = 8 * self._wire.itemsize * x.size

    def local_gradient(self, x: np.ndarray) -> np.ndarray:
        return self.ctx.problem.grad(x, out=self._g)

    def step(self, x: np.ndarray, k: int) -> None:
        g = self.local_gradient(x)
        wire = self._wire
        wire[...] = g
        self.ctx.comm.allreduce_float(wire)
        if not all_finite(wire):
            self.raise_non_finite(k, not all_finite(g))
        self.info_bits += self._bits
        wire *= self.lr / self.ctx.comm.size
        x -= wire


class SGD(GD):
    """Minibatch SGD: as GD with each rank's minibatch gradient."""

    name = "sgd"
    identical_iterates = True

    def default_lr(self) -> float:
        return 1.0 / (2.0 * self.ctx.L_max)

    def local_gradient(self, x: np.ndarray) -> np.ndarray:
        return self.ctx.problem.stochastic_grad(x, self.sample(), out=self._g)
