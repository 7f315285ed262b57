"""Seconds of one VR-IntDIANA iteration against its floor: the collective and the gradients it needs.

The floor of an iteration is what no implementation of the method can avoid: the integer
Allreduce(SUM) of a buffer of the same dtype and length (d integers + the 3 header slots of
``wire_dtype=auto``) and the local gradients the method computes -- two minibatch gradients (at x and
at the reference point w) and, in ``floor_with_resets``, also the full local gradient at w on the
steps where the shared coin resets w (the same coins as the method's). Everything else -- rounding
noise, alpha, decode, shifts, the VR estimator, bookkeeping -- is our overhead.

Method iterations and floor iterations run in the same job, interleaved in rounds of blocks (method,
floor, floor with resets, floor with a MAX Allreduce; the order rotated each round by
``harness.interleaved``) so that they share the machine's noise; each block starts at a barrier and
its time is the slowest rank's. The ratio is the median over rounds of method / floor ms per
iteration (robust to load from other jobs on a shared machine); the medians of each kind are
reported too. Result: ``benchmarks/results/step_overhead.json``.

    python benchmarks/step_overhead.py [--ranks 12] [--blocks 12] [--steps 150] [--data DIR]

Without ``--data`` it preprocesses the shared a5a file (``../shared/data/libsvm/a5a`` beside the
checkout) for ``--ranks`` workers into a temporary folder, l2 = 5e-4, as in the IntSGD paper.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import interleaved, run_mpi, write_json  # noqa: E402
LIBSVM = REPO.parent / "shared" / "data" / "libsvm"
OUT = REPO / "benchmarks" / "results" / "step_overhead.json"

TRIED = [
    "all buffers preallocated; every hot numpy call writes with out=; no pickle, no per-step allocation of "
    "d-sized arrays (checked with tracemalloc in tests/test_kernels.py)",
    "wire_dtype=auto speculates on last step's dtype with 3 header slots summed with the integers: one "
    "collective per step; the cost of the alternative (a separate 1-element MAX Allreduce per step) is "
    "measured here as cost_of_a_separate_max_allreduce",
    "vr-intdiana's default alpha is exponent with the feedback (issue 24; fill before 2026-12-08, with the "
    "same exponents): its exponents need that separate MAX Allreduce every step, which took the ratio from "
    "1.18 (2026-11-30, the paper's rule) to 1.51-1.56 (2026-12-06; the code before fill's exponents decided "
    "the wire dtype: 1.52 in the same hour); --alpha paper keeps one collective a step; the feedback adds "
    "two subtractions over d a step (numpy kernel)",
    "one-block alpha with Python floats instead of 1-element numpy arrays: 6.8 -> 1.8 us per step "
    "(single-rank micro-benchmark, d = 123)",
    "cached views of the wire buffers and the (seed, worker) part of the noise key: about 1.5 us per step",
    "noise of 16 consecutive steps drawn in one set of the 11 uint64 numpy passes when d is small (same "
    "bits, u is a pure function of the step): ~6 -> ~1 us per step at d = 123; since 2026-12-06 up to 256 "
    "steps (16384 values) at once, their keys computed as an array too (IntSGD at d = 16: 38 -> 34 us a step)",
    "2026-12-08: the kernels' per-call Python trimmed (numba: layout facts cached, the noise key computed "
    "in the compiled round, the product check only from 4096 values; numpy: float factors as 0-d arrays): "
    "python_overhead.py at d = 16, vr-intdiana 25.8 -> 24.0 us a step with numpy, 25.1 -> 22.2 with numba",
    "remaining per-step overhead over the floor, single rank: about 25 us (ratio ~1.2-1.25; ~30 numpy "
    "calls on 123-vectors at ~0.4 us each plus Python) against ~100 us of floor (two minibatch "
    "gradients ~46 us each + sampling)",
    "the numba kernel (mpiopt/kernels/numba.py, same integers) is the default quantizer when numba is "
    "installed: rounding, max and cast in one compiled pass instead of ~15 numpy calls; 'wire.kernel' in this "
    "JSON says which kernel ran (MPIOPT_KERNEL=numpy python benchmarks/step_overhead.py times the other)",
    "under 12 ranks on 2 cores the iteration time is a multiple of the total CPU work (scheduling of "
    "oversubscribed ranks), so the ratio tracks the per-rank compute ratio; MPIR_CVAR_ENABLE_HEAVY_YIELD=1 "
    "halves absolute times on a loaded machine but leaves the ratio within the noise",
]


def launch(args: argparse.Namespace) -> int:
    """Outer process: preprocess if needed, then run this file under mpiexec."""
    with tempfile.TemporaryDirectory(prefix="step-overhead-") as tmp:
        data = args.data
        if data is None:
            from mpiopt.data import load_libsvm, preprocess

            path = LIBSVM / "a5a"
            if not path.is_file():
                sys.exit(f"a5a not found at {path}; pass --data DIR (a folder from 'mpiopt preprocess')")
            X, y = load_libsvm(path, n_features=123)
            data = str(Path(tmp) / f"a5a-{args.ranks}")
            preprocess(X, y, args.ranks, 5e-4, data, dataset="a5a", source_sha256=None)
        run_mpi(args.ranks, [sys.executable, __file__, "--inner", "--data", data, "--blocks", str(args.blocks),
                             "--steps", str(args.steps), "--batch", str(args.batch), "--out", str(args.out)])
        return 0


def measure(args: argparse.Namespace) -> None:
    """Inner process (one per rank)."""
    from mpi4py import MPI

    from mpiopt.comm import MPICommunicator, library_version
    from mpiopt.data import load_shard
    from mpiopt.methods import make_method
    from mpiopt.problems import LogisticProblem
    from mpiopt.run import make_context

    comm = MPICommunicator(MPI.COMM_WORLD)
    A, b, meta = load_shard(args.data, comm.rank, comm.size)
    problem = LogisticProblem(A, b, meta["l2"], smoothness=meta["L_workers"][comm.rank])
    batch = args.batch or max(1, meta["rows_per_worker"] // 20)
    ctx = make_context(problem, comm, 0, None, batch, meta["L"], max(meta["L_workers"]))
    method = make_method("vr-intdiana", ctx)
    x = np.zeros(problem.dim)
    method.start(x)
    k = 0
    for _ in range(20):  # leave the float first step and warm every buffer
        method.step(x, k)
        k += 1

    floor_buf = np.zeros(problem.dim + 3, dtype=np.int8)
    g1, g2, full = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    sample_rng = np.random.Generator(np.random.PCG64(1000 + ctx.worker))
    coin_rng = np.random.Generator(np.random.PCG64(7))
    p, m = method.vr.p, problem.n_samples

    def method_block(n: int) -> None:
        nonlocal k
        for _ in range(n):
            method.step(x, k)
            k += 1

    one = np.zeros(1)

    def floor_block(n: int, resets: bool, max_first: bool = False) -> None:
        w = method.state["w"]
        for _ in range(n):
            idx = sample_rng.integers(0, m, size=batch)
            problem.stochastic_grad(x, idx, out=g1)
            problem.stochastic_grad(w, idx, out=g2)
            if max_first:  # what a separate MAX Allreduce per step (the textbook 'auto') would add
                comm.allreduce_max(one, count=False)
            comm.allreduce_int(floor_buf, count=False)
            if resets and coin_rng.random() < p:
                problem.grad(w, out=full)

    def timer(fn, *a) -> Callable[[], float]:
        """Seconds per iteration of a block of ``fn``, started at a barrier, the slowest rank's."""
        def timed() -> float:
            comm.barrier()
            t0 = time.perf_counter()
            fn(*a)
            local = np.array([time.perf_counter() - t0])
            return float(comm.allreduce_max(local, count=False)[0]) / args.steps
        return timed

    kinds = {"method": timer(method_block, args.steps), "floor": timer(floor_block, args.steps, False),
             "floor_with_resets": timer(floor_block, args.steps, True),
             "floor_plus_max_allreduce": timer(floor_block, args.steps, False, True)}
    load_before = os.getloadavg()
    times = interleaved(list(kinds.values()), args.blocks)  # every rank takes the same order
    load_after = os.getloadavg()
    rows = {key: [t * 1e3 for t in ts] for key, ts in zip(kinds, times)}
    summary = method.summary()
    if comm.rank != 0:
        return
    med = {key: statistics.median(v) for key, v in rows.items()}
    paired = [a / b for a, b in zip(rows["method"], rows["floor"])]
    paired_resets = [a / b for a, b in zip(rows["method"], rows["floor_with_resets"])]
    paired_max = [a / b for a, b in zip(rows["floor_plus_max_allreduce"], rows["floor"])]
    result = {
        "benchmark": "step_overhead",
        "method": "vr-intdiana",
        "dataset": meta["dataset"],
        "n_features": meta["n_features"],
        "ranks": comm.size,
        "batch": batch,
        "reset_probability": p,
        "blocks": args.blocks,
        "steps_per_block": args.steps,
        "ms_per_iteration": med,
        "ratio": statistics.median(paired),
        "ratio_vs_floor_with_resets": statistics.median(paired_resets),
        "ratio_of_medians": med["method"] / med["floor"],
        "cost_of_a_separate_max_allreduce": statistics.median(paired_max),
        "ratio_definition": "median over blocks of (method ms/it) / (floor ms/it) of the same round of blocks",
        "load_average_before_after": [load_before, load_after],
        "target_ratio": 1.5,
        "blocks_ms": rows,
        "wire": summary.get("wire"),
        "wire_bytes_per_iteration": {"method": int(floor_buf.nbytes), "floor": int(floor_buf.nbytes)},
        "tried": TRIED,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__,
                    "mpi_library": library_version(),
                    "oversubscribed": comm.size > (os.cpu_count() or 1),
                    "mpich_cvars": {k: v for k, v in os.environ.items() if k.startswith("MPIR_CVAR_")}},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"{comm.size} ranks, d = {meta['n_features']}, batch {batch}: median ms/it VR-IntDIANA {med['method']:.3f}, "
          f"floor {med['floor']:.3f} (with reset gradients {med['floor_with_resets']:.3f}); "
          f"ratio {result['ratio']:.2f} (median of paired blocks; {result['ratio_vs_floor_with_resets']:.2f} "
          f"vs the floor with resets; target <= 1.5); a separate MAX Allreduce would cost "
          f"x{result['cost_of_a_separate_max_allreduce']:.2f}; written to {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=12, help="MPI ranks (default 12, oversubscribing if needed)")
    ap.add_argument("--blocks", type=int, default=16, help="rounds of blocks, interleaved (default 16)")
    ap.add_argument("--steps", type=int, default=150, help="iterations per block (default 150)")
    ap.add_argument("--batch", type=int, default=0, help="minibatch per rank (default: shard size // 20)")
    ap.add_argument("--data", help="a folder from 'mpiopt preprocess' for --ranks workers (default: a5a)")
    ap.add_argument("--out", default=str(OUT), help=f"result JSON (default {OUT.relative_to(REPO)})")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        measure(args)
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
