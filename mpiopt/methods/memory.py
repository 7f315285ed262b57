"""Error-feedback memories: what a method keeps between its gradient and its compressor.

* ``none``: the compressor gets the gradient g; the step is x -= lr * mean_i C(g_i).
* ``residual`` (EF-SGD, Karimireddy et al., 2019): p = lr g + e, the compressor gets p, e = p - C(p)
  with this rank's own decoded C(p); the step is x -= mean_i C(p_i) (lr is inside p).
* ``dgc`` (Deep Gradient Compression, Lin et al., 2018): local gradient clipping to ``clip_norm``,
  momentum correction u = m u + g, v += u; the compressor gets v; momentum factor masking clears u and
  v exactly where the compressor sent coordinates; the step is x -= lr * mean_i C(v_i).

A memory's arrays are part of the method's state record (prefixed ``memory/``).
"""

import math
from typing import Any, Dict, Tuple

import numpy as np

from mpiopt.compressors.base import Option, bad_option, is_number, positive


class Memory:
    """No memory: the base class, and the ``none`` memory."""

    name = "none"
    options: Tuple[Option, ...] = ()
    lr_inside = False
    """True when the compressed vector already includes the step size (then x -= mean)."""
    needs_local = False
    """True when ``update`` reads this rank's own decoded C(p)."""

    def __init__(self, dim: int, opts: Dict[str, Any]):
        self.opts = opts
        self.state: Dict[str, np.ndarray] = {}

    def lr_factor(self) -> float:
        """What the method's default step size is multiplied by."""
        return 1.0

    def check(self, comp) -> None:
        """Refuse a compressor this memory cannot work with."""

    def prepare(self, g: np.ndarray, lr: float) -> np.ndarray:
        return g

    def update(self, p: np.ndarray, local: np.ndarray, comp) -> None:
        """After the exchange: keep what the compressor left out."""


class ResidualMemory(Memory):
    """EF-SGD's error feedback: p = lr g + e, e = p - C(p)."""

    name = "residual"
    lr_inside = True
    needs_local = True

    def __init__(self, dim, opts):
        super().__init__(dim, opts)
        self.state = {"e": np.zeros(dim)}
        self._p = np.empty(dim)

    def prepare(self, g, lr):
        p = np.multiply(g, lr, out=self._p)
        p += self.state["e"]
        return p

    def update(self, p, local, comp):
        np.subtract(p, local, out=self.state["e"])


class DGCMemory(Memory):
    """DGC's momentum correction with factor masking and local gradient clipping."""

    name = "dgc"
    options = (
        Option("momentum", 0.9, float, "momentum factor (dgc: momentum correction; sgd-type methods: "
               "heavy ball after decoding)", valid=lambda m: is_number(m) and 0 <= m < 1, rule="in [0, 1)"),
        Option("clip_norm", None, float, "dgc: clip each rank's stochastic gradient to this norm",
               valid=positive, rule="a positive number"),
    )

    def __init__(self, dim, opts):
        super().__init__(dim, opts)
        self.state = {"u": np.zeros(dim), "v": np.zeros(dim)}
        self.momentum = float(opts["momentum"])
        self.clip = None if opts["clip_norm"] is None else float(opts["clip_norm"])

    def lr_factor(self):
        """Momentum multiplies the effective step by 1 / (1 - m)."""
        return 1.0 - self.momentum

    def check(self, comp):
        if not hasattr(comp, "sent_indices"):
            raise bad_option(f"the dgc memory masks the coordinates a sparse compressor sent; compressor "
                             f"'{comp.name}' sends no index list (use dgc or topk)")

    def prepare(self, g, lr):
        if self.clip is not None:
            norm = math.sqrt(float(np.dot(g, g)))
            if norm > self.clip:
                g *= self.clip / norm
        u, v = self.state["u"], self.state["v"]
        u *= self.momentum
        u += g
        v += u
        return v

    def update(self, p, local, comp):
        sent = comp.sent_indices
        self.state["v"][sent] = 0.0
        self.state["u"][sent] = 0.0


MEMORIES = {cls.name: cls for cls in (Memory, ResidualMemory, DGCMemory)}
