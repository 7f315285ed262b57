"""Multiclass logistic regression (softmax) on scikit-learn's digits, with a callback for accuracy.

    mpiexec -n 4 python examples/softmax_digits.py [--method vr-intdiana] [--iters 1500]

Each rank holds a contiguous slice of the training rows; every rank holds the same held-out rows, so
the callback, which every rank runs after every iteration on the same x, computes the same test
accuracy everywhere without communicating. The iterate x is the 10 x 65 weight matrix (64 pixels and
a bias) flattened, since mpiopt's iterates are vectors.
"""

import argparse
from typing import Dict, Optional

import numpy as np
from mpi4py import MPI
from scipy.special import log_softmax, softmax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import mpiopt

CLASSES = 10
L2 = 1e-3


class SoftmaxRegression:
    """f_i(W) = mean_j -log softmax(W x_j)[y_j] + (l2/2) ||W||^2 on this rank's rows; x = W.ravel()."""

    def __init__(self, X: np.ndarray, y: np.ndarray, l2: float):
        self.X = np.hstack([X, np.ones((len(X), 1))])  # the bias as a constant feature
        self.Y = np.eye(CLASSES)[y]
        self.l2 = l2
        self.n_samples = len(X)
        self.dim = CLASSES * self.X.shape[1]

    def _weights(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(CLASSES, self.X.shape[1])

    def loss(self, x: np.ndarray) -> float:
        logp = log_softmax(self.X @ self._weights(x).T, axis=1)
        return -float(np.sum(logp * self.Y)) / self.n_samples + 0.5 * self.l2 * float(x @ x)

    def _grad(self, X: np.ndarray, Y: np.ndarray, x: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
        P = softmax(X @ self._weights(x).T, axis=1)
        P -= Y
        g = (P.T @ X).ravel()
        g /= len(X)
        g += self.l2 * x
        if out is None:
            return g
        out[...] = g
        return out

    def grad(self, x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        return self._grad(self.X, self.Y, x, out)

    def stochastic_grad(self, x: np.ndarray, idx: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        return self._grad(self.X[idx], self.Y[idx], x, out)

    def smoothness(self) -> float:
        """L_i <= lambda_max(X^T X / m) / 2 + l2 (the softmax Hessian is at most I/2 per sample)."""
        return 0.5 * float(np.linalg.eigvalsh(self.X.T @ self.X / self.n_samples)[-1]) + self.l2

    def sample_smoothness(self) -> float:
        return 0.5 * float(np.einsum("ij,ij->i", self.X, self.X).max()) + self.l2

    def accuracy(self, x: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        scores = X @ self._weights(x)[:, :-1].T + self._weights(x)[:, -1]
        return float(np.mean(np.argmax(scores, axis=1) == y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="vr-intdiana")
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=250, help="test accuracy every this many iterations")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD

    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(digits.data / 16.0, digits.target, test_size=0.2,
                                                        random_state=0)
    rows = len(X_train) // comm.size  # equal shards; the last len % size rows are left out
    mine = slice(comm.rank * rows, (comm.rank + 1) * rows)
    problem = SoftmaxRegression(X_train[mine], y_train[mine], L2)

    accuracy: Dict[int, float] = {0: problem.accuracy(np.zeros(problem.dim), X_test, y_test)}

    def test_accuracy(k: int, x: np.ndarray) -> bool:
        if k % args.every == 0:
            accuracy[k] = problem.accuracy(x, X_test, y_test)
        return False  # True would stop the run (status 'callback')

    res = mpiopt.minimize(problem, args.method, iters=args.iters, batch=args.batch, callback=test_accuracy)
    if comm.rank == 0:
        print(f"softmax regression on digits: {comm.size} rank(s) x {rows} rows, {args.method}, batch {args.batch}")
        for k, acc in accuracy.items():
            print(f"iteration {k:5d}  test accuracy {acc:.3f}")
        h = res.trace["history"]
        print(f"status {res.status}, final loss {res.fun:.4f}, ||grad f||^2 {h['grad_norm_sq'][-1]:.2e}, "
              f"{h['wire_bytes'][-1]} bytes sent per rank")


if __name__ == "__main__":
    main()
