"""A seeded sparse binary classification problem in the shape of news20 / url / kdd, written as LIBSVM.

Text and click-log data have a few very frequent features and a long tail of rare ones; the model
vector is long (d = 1e6 here) while each row touches only a few dozen coordinates. That shape is
what makes communication dominate a distributed step: every rank's gradient is dense in the
frequent coordinates and the whole d-vector crosses the network each step. This generator draws:

* feature frequencies by a power law: row features are drawn with P(j) proportional to (j + 1)^-a
  (``--exponent``, 1.1 by default: a Zipf-like head, as in bag-of-words data), ``--nnz`` distinct
  features a row;
* values: tf-idf-like positive weights, log(1 + count) * idf(j) with idf from the same power law,
  so rare features weigh more (rows are scaled to unit norm later by ``mpiopt preprocess``);
* labels from a planted sparse model w (Gaussian on every feature), y = sign(<w, x> + noise), with
  ``--flip`` of the labels flipped, so the problem is not separable.

The same ``--seed`` writes the same bytes.

    python benchmarks/sparse_problem.py --out data/sparse-1e6.svm [--rows 50000] [--dim 1000000] [--nnz 60]
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp

DIM = 1_000_000
ROWS = 50_000
NNZ = 60


def feature_probabilities(dim: int, exponent: float) -> np.ndarray:
    """P(j) proportional to (j + 1)^-exponent, j = 0 .. dim - 1 (feature 0 the most frequent)."""
    p = np.arange(1, dim + 1, dtype=np.float64) ** -exponent
    return p / p.sum()


def draw_features(rng: np.random.Generator, rows: int, nnz: int, cdf: np.ndarray) -> np.ndarray:
    """``rows`` x ``nnz`` distinct feature indices a row, each row sorted, drawn from ``cdf``.

    Draws twice as many as needed per row, drops repeats within a row and keeps ``nnz`` of the
    distinct ones chosen at random (so the head features are not favoured beyond their frequency)."""
    extra = 2 * nnz
    draws = np.searchsorted(cdf, rng.random((rows, extra)), side="right").clip(max=cdf.size - 1)
    draws.sort(axis=1)
    repeat = np.zeros_like(draws, dtype=bool)
    repeat[:, 1:] = draws[:, 1:] == draws[:, :-1]
    keys = rng.random(draws.shape)
    keys[repeat] = np.inf
    keep = np.argsort(keys, axis=1)[:, :nnz]
    chosen = np.take_along_axis(draws, keep, axis=1)
    if np.isinf(np.take_along_axis(keys, keep, axis=1)).any():
        raise ValueError(f"fewer than {nnz} distinct features in a row of {extra} draws: lower --exponent or --nnz")
    chosen.sort(axis=1)
    return chosen


def generate(rows: int = ROWS, dim: int = DIM, nnz: int = NNZ, exponent: float = 1.1, flip: float = 0.05,
             seed: int = 0) -> Tuple[sp.csr_matrix, np.ndarray]:
    """The matrix (CSR, float64, ``nnz`` entries a row) and labels in {-1, +1}; see the module docstring."""
    rng = np.random.default_rng(seed)
    prob = feature_probabilities(dim, exponent)
    cols = draw_features(rng, rows, nnz, np.cumsum(prob))
    counts = rng.geometric(0.6, size=cols.shape)
    idf = np.log(1.0 / (prob * 50.0)).clip(min=1.0)
    vals = np.log1p(counts) * idf[cols]
    X = sp.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, rows * nnz + 1, nnz)), shape=(rows, dim))
    w = rng.standard_normal(dim)
    margin = X @ w / np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    y = np.where(margin + 0.1 * rng.standard_normal(rows) >= 0, 1.0, -1.0)
    y[rng.random(rows) < flip] *= -1
    return X, y


def write_libsvm(X: sp.csr_matrix, y: np.ndarray, path: Path) -> None:
    """LIBSVM text: ``label idx:value ...`` with 1-based indices, values to 6 significant digits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w") as f:
        for i in range(X.shape[0]):
            lo, hi = X.indptr[i], X.indptr[i + 1]
            items = " ".join(f"{j + 1}:{v:.6g}" for j, v in zip(X.indices[lo:hi].tolist(), X.data[lo:hi].tolist()))
            f.write(f"{int(y[i]):+d} {items}\n")
    tmp.replace(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="LIBSVM file to write")
    p.add_argument("--rows", type=int, default=ROWS)
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument("--nnz", type=int, default=NNZ, help="distinct features a row")
    p.add_argument("--exponent", type=float, default=1.1, help="power law of the feature frequencies")
    p.add_argument("--flip", type=float, default=0.05, help="fraction of labels flipped")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.rows < 1 or args.dim < 2 or not 1 <= args.nnz <= args.dim // 4:
        p.error("need --rows >= 1, --dim >= 2 and 1 <= --nnz <= dim / 4")
    X, y = generate(args.rows, args.dim, args.nnz, args.exponent, args.flip, args.seed)
    write_libsvm(X, y, args.out)
    used = np.unique(X.indices).size
    print(f"wrote {args.out}: {args.rows} rows x {args.dim} features, {args.nnz} a row, {used} features used, "
          f"{(y > 0).mean():.2f} positive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
