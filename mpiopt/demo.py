"""``make demo``'s two steps outside ``mpiopt run``: its dataset, and the sentence that reads its result.

    python -m mpiopt.demo data demo-out/breast_cancer.svm
    python -m mpiopt.demo compare demo-out/gd.json demo-out/l-svrg.json demo-out/vr-intdiana.json

``data`` writes scikit-learn's bundled breast-cancer data as a LIBSVM file: it ships inside an
installed dependency, so the demo needs no network, and as a LIBSVM file it goes through the same
loading, validation and sharding as any real dataset. ``compare`` prints a table of the traces in
the unit of the figure's middle panel (bits sent per rank) and one sentence comparing the last two
traces' bits at an accuracy both reached; when one run ended much further from the optimum than
the other, the sentence says which run did not reach what, instead of calling it the same accuracy.
"""

import math
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


SAME_ACCURACY = 2.0
"""Two final errors within this factor count as "the same accuracy" in ``compare``'s sentence."""


def _final(trace: Dict, column: str) -> Optional[float]:
    value = trace["history"][column][-1]
    return value if value is not None and math.isfinite(value) else None


def comparison(traces: List[Dict]) -> List[str]:
    """The table (one row per trace) and the sentence comparing the last trace with the one before."""
    column, label = error_column(traces)
    base, ours = traces[-2], traces[-1]
    finals = [_final(t, column) for t in (base, ours)]
    target = max(finals) if None not in finals else None  # an accuracy both reached (or None)
    lines = [f"{'method':12s} {'iterations':>10s} {'final ' + label:>22s} {'bits sent per rank':>19s} "
             f"{'bits to ' + ('-' if target is None else format(target, '.1e')):>16s}"]
    for t in traces:
        reach = None if target is None else bits_to_reach(t, column, target)
        final = _final(t, column)
        lines.append(f"{t['method']:12s} {t['iterations']:10d} {'-' if final is None else format(final, '.3e'):>22s} "
                     f"{t['history']['wire_bytes'][-1] * BITS_PER_BYTE:19,d} "
                     f"{'-' if reach is None else format(reach, ','):>16s}")
    lines.append(verdict(base, ours, column, label, finals))
    return lines


def verdict(base: Dict, ours: Dict, column: str, label: str, finals: List[Optional[float]]) -> str:
    """One sentence: the ratio of bits at an accuracy both runs reached, and which run did not reach
    the other's accuracy when their final errors differ by more than :data:`SAME_ACCURACY`."""
    names = (base["method"], ours["method"])
    for trace, final in zip((base, ours), finals):
        if final is None:
            return (f"{trace['method']} ended without a finite {label} (status {trace['status']}); no ratio of "
                    f"bits is given.")
    target = max(finals)
    ratio = bits_to_reach(base, column, target) / bits_to_reach(ours, column, target)
    sent = (f"{names[1]} sent {ratio:.1f}x fewer bits than {names[0]}" if ratio >= 1
            else f"{names[1]} sent {1 / ratio:.1f}x more bits than {names[0]}")
    if target <= SAME_ACCURACY * min(finals):
        return (f"{sent} to reach the same accuracy ({label} <= {target:.1e}), as the middle panel of the "
                f"figure shows.")
    better, worse = (0, 1) if finals[0] < finals[1] else (1, 0)
    short = (base, ours)[worse]
    return (f"{sent} to reach {label} <= {target:.1e}, where {names[worse]} ended; {names[better]} went on to "
            f"{finals[better]:.1e}, which {names[worse]} did not reach in its {short['iterations']} iterations "
            f"(status {short['status']}), so the runs are compared only down to {target:.1e}.")


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
