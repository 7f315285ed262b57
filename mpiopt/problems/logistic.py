"""l2-regularized logistic regression on one worker's shard (scipy.sparse CSR or dense rows).

f_i(x) = (1/m) sum_j log(1 + exp(-b_j a_j^T x)) + (l2/2) ||x||^2 with labels b_j in {-1, +1}.
Computed with log-add-exp and expit so that no margin overflows exp, and with buffers allocated
once so the full gradient, the hot call of GD and of every VR reset, allocates nothing.
"""

from typing import Optional

import numpy as np
import scipy.sparse as sp
from scipy.special import expit


class LogisticProblem:
    """The local logistic objective of one worker; satisfies :class:`mpiopt.problems.Problem`."""

    def __init__(self, A, b: np.ndarray, l2: float, smoothness: Optional[float] = None):
        self.A = sp.csr_matrix(A, dtype=np.float64) if sp.issparse(A) else np.ascontiguousarray(A, np.float64)
        self.b = np.ascontiguousarray(b, dtype=np.float64)
        if self.A.shape[0] != self.b.shape[0]:
            raise ValueError(f"A has {self.A.shape[0]} rows but b has {self.b.shape[0]} labels")
        self.l2 = float(l2)
        self.n_samples, self.dim = self.A.shape
        self._AT = self.A.T.tocsr() if sp.issparse(self.A) else self.A.T
        self._margin = np.empty(self.n_samples)
        self._weight = np.empty(self.n_samples)
        self._L = smoothness

    def _margins(self, x: np.ndarray) -> np.ndarray:
        return np.multiply(self.A @ x, self.b, out=self._margin)

    def _grad_from_margins(self, z: np.ndarray, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        w = self._weight
        np.negative(z, out=w)
        expit(w, out=w)
        w *= self.b
        w *= -1.0 / self.n_samples
        out[...] = self._AT @ w
        out += self.l2 * x
        return out

    def loss(self, x: np.ndarray) -> float:
        z = self._margins(x)
        return float(np.mean(np.logaddexp(0.0, -z)) + 0.5 * self.l2 * np.dot(x, x))

    def grad(self, x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        if out is None:
            out = np.empty(self.dim)
        return self._grad_from_margins(self._margins(x), x, out)

    def stochastic_grad(self, x: np.ndarray, idx: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        if out is None:
            out = np.empty(self.dim)
        rows = self.A[idx]
        b = self.b[idx]
        w = -b * expit(-b * (rows @ x))
        out[...] = rows.T @ w
        out *= 1.0 / len(idx)
        out += self.l2 * x
        return out

    def loss_and_grad(self, x: np.ndarray, out: np.ndarray) -> float:
        """f_i(x) and its gradient (into ``out``) sharing one pass over the margins."""
        z = self._margins(x)
        value = float(np.mean(np.logaddexp(0.0, -z)) + 0.5 * self.l2 * np.dot(x, x))
        self._grad_from_margins(z, x, out)
        return value

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """The dense d x d Hessian (for Newton's method on small d)."""
        s = expit(self.A @ x * self.b)
        D = s * (1.0 - s) / self.n_samples
        AD = self.A.multiply(D[:, None]) if sp.issparse(self.A) else self.A * D[:, None]
        H = np.asarray((self._AT @ AD).todense() if sp.issparse(AD) else self._AT @ AD)
        H[np.diag_indices_from(H)] += self.l2
        return H

    def hessp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Hessian-vector product, for Newton-CG when d is too large for a dense Hessian."""
        s = expit(self.A @ x * self.b)
        return self._AT @ (s * (1.0 - s) * (self.A @ v)) / self.n_samples + self.l2 * v

    def smoothness(self) -> float:
        """L_i = sigma_max(A_i)^2 / (4 m) + l2, the standard bound for the logistic loss."""
        if self._L is None:
            self._L = 0.25 * spectral_norm_sq(self.A) / self.n_samples + self.l2
        return self._L

    def sample_smoothness(self) -> float:
        """max_j L_ij = max_j ||a_j||^2 / 4 + l2, the largest smoothness constant of one sample's loss
        (for the expected smoothness of minibatches in the variance-reduced methods' step sizes)."""
        A = self.A
        sq = np.asarray(A.multiply(A).sum(axis=1)).ravel() if sp.issparse(A) else np.einsum("ij,ij->i", A, A)
        return 0.25 * float(sq.max(initial=0.0)) + self.l2


def spectral_norm_sq(A) -> float:
    """sigma_max(A)^2: exact eigenvalue of A^T A for small d, Lanczos (svds) otherwise."""
    m, d = A.shape
    if min(m, d) == 0:
        return 0.0
    if min(m, d) <= 2000:
        G = A @ A.T if m < d else A.T @ A
        G = G.toarray() if sp.issparse(G) else G
        return float(np.linalg.eigvalsh(G)[-1])
    from scipy.sparse.linalg import svds

    s = svds(A, k=1, return_singular_vectors=False, random_state=0)
    return float(s[0] ** 2)
