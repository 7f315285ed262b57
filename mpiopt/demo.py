"""The embedded default dataset of ``make demo``: scikit-learn's bundled breast-cancer data.

It ships inside an installed dependency, so the demo needs no network; it is written as a LIBSVM
file so that the demo goes through the same loading, validation and sharding as any real dataset.
"""

import sys
from pathlib import Path

from sklearn.datasets import dump_svmlight_file, load_breast_cancer


def write_breast_cancer(path) -> Path:
    """Write the 569 x 30 breast-cancer set (labels 0/1) as a LIBSVM file at ``path``.

    Its raw features span six orders of magnitude (areas in the thousands, ratios near 0.01), so
    each column is standardized first; otherwise unit-norm rows would be ruled by one feature and
    the demo's problem would be needlessly ill-conditioned.
    """
    data = load_breast_cancer()
    features = (data.data - data.data.mean(axis=0)) / data.data.std(axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dump_svmlight_file(features, data.target, str(path), zero_based=False)
    return path


if __name__ == "__main__":
    out = write_breast_cancer(sys.argv[1] if len(sys.argv) > 1 else "demo-out/breast_cancer.svm")
    print(f"wrote {out} (scikit-learn's breast-cancer data, 569 rows, 30 standardized features)")
