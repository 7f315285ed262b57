"""Peak resident memory of one rank of ``mpiopt run`` (issue 24, memory): VR-IntDIANA on a5a at 1 and
12 ranks, with the default kernel (numpy at a5a's 123 coordinates: numba is never imported) and with
``--kernel numba`` (numba imported and its cached kernels loaded), each rank's peak from the trace's
``peak_rss_mb``; plus what importing numba alone costs a fresh interpreter. One JSON under
benchmarks/results/.

    python benchmarks/rss.py [--ranks 1 12] [--iters 500] [--json benchmarks/results/rss.json]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import mpiopt_run, write_json  # noqa: E402
from mpiopt import launch  # noqa: E402
from mpiopt.data import load_libsvm, preprocess  # noqa: E402

KERNELS = {"default": [], "numba": ["--kernel", "numba"]}


def rank_peaks(shards: Path, ranks: int, iters: int, extra, out: Path):
    """Each rank's peak resident MB in one ``mpiopt run`` of VR-IntDIANA (batch 16)."""
    trace = mpiopt_run(ranks, ["--data", shards, "--method", "vr-intdiana", "--iters", iters, "--batch", 16, *extra],
                       out=out, timeout=900)
    return trace["peak_rss_mb"], trace["config"].get("kernel")


PEAK = ("print(next(int(line.split()[1]) / 1e3 for line in open('/proc/self/status') "
        "if line.startswith('VmHWM:')))")
"""Prints the interpreter's peak resident MB (Linux's VmHWM), importing nothing."""


def import_peak_mb(statement: str) -> float:
    """Peak resident MB of a fresh interpreter that runs ``statement``."""
    code = f"{statement}\n{PEAK}"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=300).stdout.split()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 12])
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--libsvm", type=Path, default=REPO.parent / "shared" / "data" / "libsvm" / "a5a")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "rss.json")
    args = ap.parse_args(argv)
    X, y = load_libsvm(args.libsvm, n_features=123)
    runs = []
    with tempfile.TemporaryDirectory(prefix="rss-") as tmp:
        for ranks in args.ranks:
            shards = Path(tmp) / f"a5a-{ranks}"
            preprocess(X, y, ranks, 5e-4, shards, dataset="a5a", source_sha256=None)
            for name, extra in KERNELS.items():
                peaks, kernel = rank_peaks(shards, ranks, args.iters, extra, Path(tmp) / f"{name}-{ranks}.json")
                runs.append({"ranks": ranks, "kernel_option": name, "kernel": kernel, "peak_rss_mb": peaks,
                             "max_mb": max(peaks), "total_mb": round(sum(peaks), 1)})
                print(f"{ranks:3d} ranks, kernel {kernel:6s} ({name}): peak per rank max {max(peaks):6.1f} MB, "
                      f"all ranks {sum(peaks):7.1f} MB", flush=True)
    imports = {s: import_peak_mb(s) for s in ("pass", "import numpy", "import mpiopt.commands.run", "import numba",
                                              "from mpiopt.kernels.numba import warm_up; warm_up()")}
    for statement, mb in imports.items():
        print(f"fresh interpreter after {statement!r}: {mb:.1f} MB")
    record = {"dataset": "a5a", "method": "vr-intdiana", "iters": args.iters, "runs": runs,
              "import_peak_mb": imports, "library": launch.mpi_library(), "python": sys.version.split()[0]}
    write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
