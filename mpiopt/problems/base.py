"""The Problem protocol: what a method needs from one worker's local objective f_i.

Any object with these members is a problem; nothing has to inherit from this class. The global
objective is f = (1/n) sum_i f_i over the n ranks, so every rank holds an equal share of the weight.
"""

from typing import Optional, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Problem(Protocol):
    """One worker's local objective f_i on its own shard of data."""

    dim: int
    """Number of coordinates d of the iterate x."""

    n_samples: int
    """Number of samples on this worker; minibatch indices are drawn from range(n_samples)."""

    def loss(self, x: np.ndarray) -> float:
        """f_i(x)."""

    def grad(self, x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The full local gradient, written into ``out`` when given."""

    def stochastic_grad(self, x: np.ndarray, idx: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The gradient of the samples ``idx`` only (average over them, plus the regularizer)."""

    def smoothness(self) -> float:
        """L_i, a Lipschitz constant of grad f_i."""
