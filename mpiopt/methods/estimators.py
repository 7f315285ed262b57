"""Gradient estimators: what each rank hands to the compressor as its g_i.

* ``full``: the full local gradient grad f_i(x) (GD).
* ``minibatch``: grad f_i(x; xi) on a minibatch drawn with replacement from this rank's stream; the
  full local gradient when ``--batch`` equals the shard size.
* ``l-svrg``: the loopless SVRG estimator g_i = grad f_i(x; xi) - grad f_i(w; xi) + grad f_i(w)
  (Kovalev et al., ALT 2020): after each step's exchange one coin from the generator shared by all
  ranks sets w <- x (the iterate the step started from) with probability p (default batch / shard
  size), and every rank recomputes its full local gradient at w. Its state (w, u = grad f_i(w)) is
  part of the method's record.
"""

import numpy as np


def sample_smoothness(problem, fallback: float) -> float:
    """max_j L_ij over this rank's samples: ``problem.sample_smoothness()`` when the problem has it,
    else its L_i, else ``fallback`` (exact for b = m only; pass ``lr`` for problems without them)."""
    fn = getattr(problem, "sample_smoothness", None)
    return float(fn()) if fn is not None else local_smoothness(problem, fallback)


def local_smoothness(problem, fallback: float) -> float:
    """L_i: ``problem.smoothness()`` when the problem has it, else ``fallback`` (e.g. the given L_max)."""
    fn = getattr(problem, "smoothness", None)
    return float(fn()) if fn is not None else fallback


def batch_smoothness(ctx, batch: int) -> float:
    """L_b = max_i [(1 - 1/b) L_i + L_i,max / b]  (collective: one MAX Allreduce).

    The expected smoothness of one rank's b-minibatch drawn with replacement, as our sampler draws
    it (Gower et al., "SGD: general analysis and improved rates", ICML 2019), with L_i,max the
    largest per-sample constant (``problem.sample_smoothness()``; L_i in its place when the problem
    has none). A problem without ``smoothness()`` uses the given L_max.
    """
    problem, b = ctx.problem, batch
    L_i = local_smoothness(problem, ctx.L_max)
    local = np.array([(1.0 - 1.0 / b) * L_i + sample_smoothness(problem, L_i) / b])
    return float(ctx.comm.allreduce_max(local, count=False)[0])


def sgd_step_size(ctx, batch: int, omega: float = 0.0) -> float:
    """eta = 1 / (2 (L + L_b / n)) / (1 + 2 omega / n)  (collective).

    The minibatch SGD step of Gower et al. (ICML 2019, Prop. 3.8 and Thm. 3.1: eta <= 1 / (2 L_exp))
    for the mean of n independent b-minibatch gradients, whose expected smoothness is
    L_exp = L + L_b / n (:func:`batch_smoothness`): large batches and many ranks approach the
    deterministic 1 / (2L), a single sample on few ranks is held by the per-sample constants. The
    compressor's relative variance omega divides it by (1 + 2 omega / n), as in the analyses of
    compressed SGD and DIANA (omega = 0 for none, int and hint, and for the biased compressors).
    """
    return 1.0 / (2.0 * (ctx.L + batch_smoothness(ctx, batch) / ctx.comm.size)) / (1.0 + 2.0 * omega / ctx.comm.size)


def vr_step_size(ctx, batch: int, omega: float = 0.0) -> float:
    """eta = 1 / (2 (L + 3 L_b / (2n) + 3 L_b / (16n))) / (1 + 2 omega / n)  (collective).

    L_b is :func:`batch_smoothness`. The formula is the strongly convex step size of the reference
    code of the IntSGD paper (github.com/bokunwang1/intsgd, logistic_regression/algorithms/VR-IntDIANA.py;
    it uses the without-replacement L_b, which differs by O(1/m)), and that code uses the same step
    size for L-SVRG, VR-NatDIANA and VR-HintDIANA so that the methods differ only in what they send;
    we do the same (omega = 0 for none, int and hint).
    """
    Lb, n = batch_smoothness(ctx, batch), ctx.comm.size
    base = 1.0 / (2.0 * (ctx.L + 3.0 * Lb / (2.0 * n) + 3.0 * Lb / (16.0 * n)))
    return base / (1.0 + 2.0 * omega / n)


class LooplessSVRG:
    """The L-SVRG estimator's state (w, u = grad f_i(w)) and its reset coin."""

    def __init__(self, method, x: np.ndarray, p: float):
        self.problem, self.method, self.p = method.ctx.problem, method, p
        self.shared_rng = method.ctx.shared_rng
        self.state = {"w": x.copy(), "u": self.problem.grad(x, out=np.empty_like(x))}
        self._gx = np.empty_like(x)
        self._gw = np.empty_like(x)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """g_i = grad f_i(x; xi) - grad f_i(w; xi) + grad f_i(w), into a scratch buffer."""
        gx, gw, u = self.terms(x)
        gx -= gw
        gx += u
        return gx

    def terms(self, x: np.ndarray):
        """(grad f_i(x; xi), grad f_i(w; xi), grad f_i(w)): g_i before its two additions, for a
        compressor that adds them in its own pass (the first two in scratch buffers)."""
        idx = self.method.sample()
        gx = self.problem.stochastic_grad(x, idx, out=self._gx)
        gw = self.problem.stochastic_grad(self.state["w"], idx, out=self._gw)
        return gx, gw, self.state["u"]

    def maybe_reset(self, x: np.ndarray) -> None:
        """One shared coin per step (identical on every rank); on success w <- x, u <- grad f_i(w)."""
        if self.shared_rng.random() < self.p:
            w = self.state["w"]
            np.copyto(w, x)
            self.problem.grad(w, out=self.state["u"])
