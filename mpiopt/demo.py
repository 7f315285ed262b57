"""``make demo``'s two steps outside ``mpiopt run``: its dataset, and the sentence that reads its result.

    python -m mpiopt.demo data demo-out/breast_cancer.svm
    python -m mpiopt.demo compare demo-out/gd.json demo-out/l-svrg.json demo-out/vr-intdiana.json

``data`` writes scikit-learn's bundled breast-cancer data as a LIBSVM file: it ships inside an
installed dependency, so the demo needs no network, and as a LIBSVM file it goes through the same
loading, validation and sharding as any real dataset. ``compare`` prints a table of the traces in
the unit of the figure's middle panel (bits sent per rank) and one line comparing the last two
traces' bits at the same accuracy, all computed from the traces just written.
"""

import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sklearn.datasets import dump_svmlight_file, load_breast_cancer

from mpiopt.plot import error_column, load_traces

BITS_PER_BYTE = 8


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


def bits_to_reach(trace: Dict, column: str, target: float) -> Optional[int]:
    """Bits sent per rank at the first logged row whose error is <= target (None if never)."""
    h = trace["history"]
    for err, sent in zip(h[column], h["wire_bytes"]):
        if err is not None and err <= target:
            return sent * BITS_PER_BYTE
    return None


def comparison(traces: List[Dict]) -> List[str]:
    """The table (one row per trace) and the sentence comparing the last trace with the one before."""
    column, label = error_column(traces)
    base, ours = traces[-2], traces[-1]
    target = max(base["history"][column][-1], ours["history"][column][-1])  # an accuracy both reached
    lines = [f"{'method':12s} {'iterations':>10s} {'final ' + label:>22s} {'bits sent per rank':>19s} "
             f"{'bits to ' + format(target, '.1e'):>16s}"]
    for t in traces:
        reach = bits_to_reach(t, column, target)
        lines.append(f"{t['method']:12s} {t['iterations']:10d} {t['history'][column][-1]:22.3e} "
                     f"{t['history']['wire_bytes'][-1] * BITS_PER_BYTE:19,d} "
                     f"{'-' if reach is None else format(reach, ','):>16s}")
    ratio = bits_to_reach(base, column, target) / bits_to_reach(ours, column, target)
    lines.append(f"{ours['method']} sent {ratio:.1f}x fewer bits than {base['method']} to reach the same accuracy "
                 f"({label} <= {target:.1e}), as the middle panel of the figure shows.")
    return lines


def main(argv: Sequence[str]) -> None:
    command, *paths = argv
    if command == "data":
        out = write_breast_cancer(paths[0] if paths else "demo-out/breast_cancer.svm")
        print(f"wrote {out} (scikit-learn's breast-cancer data, 569 rows, 30 standardized features)")
    elif command == "compare":
        print("\n".join(comparison(load_traces(paths))))
    else:
        sys.exit(f"usage: python -m mpiopt.demo data PATH | compare TRACE.json ... (got {command!r})")


if __name__ == "__main__":
    main(sys.argv[1:])
