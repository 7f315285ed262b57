"""Seconds per optimizer step: IntSGD (integers on the wire) vs float SGD vs the raw Allreduce alone.

    python benchmarks/allreduce_step.py --dims 1e5 2e5 5e5 1e6 1e7 --ranks 2 4 --net shm --json benchmarks/results/allreduce_step_shm.json
    python benchmarks/allreduce_step.py --dims 1e5 1e6 1e7 --ranks 4 --net 1gbit --json benchmarks/results/allreduce_step_1gbit.json
    python benchmarks/allreduce_step.py --readme    # rewrite this script's section of benchmarks/README.md from the JSON

``--variants`` picks which of the steps below are timed (names in ``VARIANTS``; default all).
It launches ``mpiexec`` itself. ``--net shm`` is a plain ``mpiexec -n R`` on this machine (MPICH moves
the bytes through shared memory); ``--net 1gbit`` / ``10gbit`` builds the namespace test bed of
``benchmarks/netbed.py`` (one network namespace per rank, links shaped with tc, MPI on TCP only),
checks with a raw float32 Allreduce that the traffic crosses the shaped links, runs the ranks there
and tears it down (root needed; without it the script says why and exits non-zero).

What one step is, per variant (the gradient itself is not computed: a fresh synthetic gradient,
Gaussian, different on every rank, is copied into the method's gradient buffer before each step,
untimed, then all ranks meet at a barrier, untimed, and the step is timed on every rank):

* ``intsgd`` (dtype ``auto``): the package's IntSGD step, ``IntCompressor.exchange_update`` --
  Int(alpha g) rounded straight into the preallocated int8 wire buffer with the ``wire_dtype='auto'``
  header, one ``Communicator.allreduce_int``, then x <- x - eta S / (n alpha) decoded straight into
  x. ``kernel`` says which quantizer the compressor ran (``numba``: the default when numba is
  installed; ``numpy``: the reference kernel; the same integers). alpha is the adaptive formula's
  value for this data (eta sqrt(d) / sqrt(2 n r + eta^2 eps^2) with r = ||eta mean_i g_i||^2),
  fixed (``alpha='constant'``, ``alpha_mode: constant``), so the integers fit int8 as in a real
  run; ``wire_dtype`` records what was sent. ``alpha_mode: adaptive`` (numba kernel) is the default
  IntSGD: the same step plus Alg. 1's alpha from ||x^k - x^{k-1}||^2 (one more pass over x and the
  float64 x^{k-1}), starting from that value.
* ``sgd`` (dtype float32 / float64): ``impl='package'`` is the package's float step
  (``NoCompression.exchange_update``: copy into the wire buffer, float Allreduce, finiteness check,
  x <- x - eta mean); ``impl='lean'`` is the least a float SGD step can do: the float Allreduce in
  place on the gradient buffer, then one BLAS axpy x <- x - (eta / n) S. The goals are checked
  against the lean step.
* ``fp16`` (dtype float16): the package's fp16 compressor step (``FP16Compressor.exchange_update``:
  v / n rounded to float16, its 16-bit words reduce-scattered by one Alltoall, each chunk summed in
  float32 in worker order and rounded to float16, one Allgather of the chunks, decoded, x <- x - eta
  mean), the cheapest float rival (what torch's ``fp16_compress_hook`` sends). ``impl='allgather'``
  times the other way to send fp16 without MPI's float16 sum (every rank's words by one Allgather,
  all n rows summed in float32 on every rank, the bf16 compressor's way before), with the same codec;
  ``raw-allreduce`` of float16 is MPICH's float16 Allreduce alone (a software sum, element by
  element: the package's fp16 step before it stopped using it).
* ``bf16`` (dtype bfloat16): the package's bf16 compressor step (``BF16Compressor.exchange_update``:
  the same reduce-scatter / all-gather pair on bfloat16 words).
* ``raw-allreduce`` (dtype int8 / float16 / float32 / float64): ``Communicator.allreduce_*`` of d values
  alone -- the floor of any step that sends them; int8 as the int compressor sums them
  (``mpiopt.compressors.lanes.sum_bounded``: as 64-bit words from 2^17 values on, on MPI).

Model, gradient and mean are float32 for ``intsgd`` and float32 SGD, float64 for float64 SGD.
Variants are interleaved step by step (each variant takes one step in turn, in a rotating order) so
they share the machine's noise; ``seconds_per_step`` is the median over steps of the slowest rank's
time. Output::

    {"machine": {...}, "netbed": {...} (network runs), "results": [{"method", "dtype", "dim", "ranks",
     "net", "seconds_per_step", "kernel" | "impl", "wire_dtype", "steps", "seconds_p10",
     "seconds_p90", "bytes_per_rank"}, ...], "ratios": [...], "half_ratios": [...], "goals": [...]}
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import SINGLE_THREAD_ENV, interleaved, machine_info, replace_section, run_mpi, shown, write_json  # noqa: E402

NETS = ("shm", "1gbit", "10gbit")
README = HERE / "README.md"
RESULTS = HERE / "results"


# ----------------------------------------------------------------------------------------------
# the MPI worker

class Variant:
    """One thing to time: ``refresh()`` (untimed: a fresh gradient) then ``step(k)`` (timed)."""

    def __init__(self, row: Dict[str, object], step: Callable[[int], None], refresh: Callable[[], None],
                 info: Optional[Callable[[], Dict[str, object]]] = None):
        self.row, self.step, self.refresh, self.info = row, step, refresh, info
        self.k = 0
        """The next step's number."""

    def timed_step(self, comm) -> float:
        """Seconds of the next step, after an untimed ``refresh()`` and a barrier (every rank starts it
        together)."""
        self.refresh()
        comm.barrier()
        t = time.perf_counter()
        self.step(self.k)
        self.k += 1
        return time.perf_counter() - t


def _axpy(dtype):
    import numpy as np
    from scipy.linalg import blas

    fn = blas.saxpy if np.dtype(dtype) == np.float32 else blas.daxpy

    def update(x, y, a):
        fn(y, x, a=a)  # x += a * y, in place (x is contiguous and of fn's dtype)

    return update


VARIANTS = ("intsgd-numba", "intsgd-numba-adaptive", "intsgd-numpy", "sgd-float32-package", "sgd-float32-lean",
            "sgd-float64-package", "sgd-float64-lean", "fp16-package", "fp16-allgather", "bf16-package", "raw-int8",
            "raw-float16", "raw-float32", "raw-float64")
"""Names ``--variants`` selects from (all by default; an IntSGD variant of a kernel not in --kernels is skipped)."""


def make_variants(d: int, comm, kernels: Sequence[str], seed: int,
                  wanted: Sequence[str] = VARIANTS) -> List[Variant]:
    """The ``wanted`` variants (see VARIANTS) at dimension ``d``, each with its own buffers."""
    import numpy as np

    from mpiopt.compressors.bf16 import BF16Compressor
    from mpiopt.compressors.fp16 import FP16Compressor
    from mpiopt.compressors.integer import WIRE_NAMES, IntCompressor
    from mpiopt.compressors.lanes import sum_bounded, wire_items
    from mpiopt.compressors.none import NoCompression
    from mpiopt.kernels import int_bound

    n, rank = comm.size, comm.rank
    lr = 0.1
    rng = np.random.default_rng([seed, rank, d])
    src32 = rng.standard_normal(d, dtype=np.float32)
    common = dict(seed=seed, worker=rank, fail=_fail)

    # alpha of IntSGD's adaptive formula for this data: r = ||x^k - x^{k-1}||^2 = ||eta mean_i g_i||^2.
    mean = src32.astype(np.float64)
    comm.allreduce_float(mean, count=False)
    mean /= n
    r = float(np.dot(mean, mean)) * lr * lr
    eps = next(o.default for o in IntCompressor.options if o.name == "eps")
    alpha = lr * math.sqrt(d) / math.sqrt(2 * n * r + lr * lr * eps * eps)
    del mean

    variants: List[Variant] = []
    base = {"dim": d, "ranks": n}

    def compressed(row, comp, dtype, src, info):
        g, x, m = (np.empty(d, dtype=dtype), np.zeros(d, dtype=dtype), np.empty(d, dtype=dtype))

        def step(k):
            comp.exchange_update(g, k, x, lr, m)

        variants.append(Variant({**base, **row}, step, lambda: np.copyto(g, src), info))

    for kernel in kernels:
        for alpha_mode in ("constant", "adaptive"):
            name = f"intsgd-{kernel}" + ("-adaptive" if alpha_mode == "adaptive" else "")
            if name not in wanted:
                continue
            comp = IntCompressor(comm, d, **common, wire_dtype="auto", alpha=alpha_mode, alpha0=alpha, kernel=kernel)

            def info(comp=comp):
                wires = {w: int(c) for w, c in zip(WIRE_NAMES, comp.state["steps_by_wire"]) if c}
                wire = max(wires, key=wires.get) if wires else None
                return {"wire_dtype": wire, "wire_steps": wires, "alpha": alpha,
                        "bytes_per_rank": (d + 3) * np.dtype(wire).itemsize if wire else None,
                        "max_abs_q": float(comp.state["max_abs_q"])}

            compressed({"method": "intsgd", "dtype": "auto", "kernel": kernel, "impl": "package",
                        "alpha_mode": alpha_mode}, comp, np.float32, src32, info)
    for name, cls, dtype in (("fp16", FP16Compressor, "float16"), ("bf16", BF16Compressor, "bfloat16")):
        if f"{name}-package" in wanted:
            comp = cls(comm, d, **common)
            compressed({"method": name, "dtype": dtype, "impl": "package"}, comp, np.float32, src32,
                       lambda comp=comp: {"bytes_per_rank": 2 * comp.n * comp.chunk})
    if "fp16-allgather" in wanted:
        variants.append(_fp16_allgather({**base, "method": "fp16", "dtype": "float16", "impl": "allgather"}, comm,
                                        src32, lr, common["worker"]))
    for dtype in (np.float32, np.float64):
        src = src32 if dtype == np.float32 else src32.astype(np.float64)
        name = np.dtype(dtype).name
        nbytes = {"bytes_per_rank": d * np.dtype(dtype).itemsize}
        if f"sgd-{name}-package" in wanted:
            compressed({"method": "sgd", "dtype": name, "impl": "package"},
                       NoCompression(comm, d, **common, float_dtype=name), dtype, src, lambda nbytes=nbytes: nbytes)
        if f"sgd-{name}-lean" in wanted:
            variants.append(_lean_sgd({**base, "method": "sgd", "dtype": name, "impl": "lean"}, comm, src, lr, nbytes))

    for dtype in (np.int8, np.float16, np.float32, np.float64):
        name = np.dtype(dtype).name
        if f"raw-{name}" not in wanted:
            continue
        ints = dtype == np.int8
        buf = np.zeros(wire_items(comm, 1, d) if ints else d, dtype=dtype)
        src = (np.clip(np.rint(src32), -1, 1).astype(np.int8) if ints else src32.astype(dtype))
        bound = int_bound(np.int8, n)
        reduce = (lambda buf: sum_bounded(comm, buf, d, bound)) if ints else comm.allreduce_float

        def step_raw(k, buf=buf, reduce=reduce):
            reduce(buf)

        variants.append(Variant({**base, "method": "raw-allreduce", "dtype": name}, step_raw,
                                lambda buf=buf, src=src: np.copyto(buf[:d], src),
                                lambda dtype=dtype: {"bytes_per_rank": d * np.dtype(dtype).itemsize}))
    return variants


def _fail(k, local_bad):
    raise RuntimeError(f"non-finite values at step {k} (this rank: {local_bad})")


def _lean_sgd(row: Dict[str, object], comm, src, lr: float, nbytes: Dict[str, int]) -> Variant:
    """The least a float SGD step can do: the float Allreduce in place, then one BLAS axpy."""
    import numpy as np

    update = _axpy(src.dtype)
    g, x = np.empty_like(src), np.zeros_like(src)

    def step(k):
        comm.allreduce_float(g)
        update(x, g, -lr / comm.size)

    return Variant(row, step, lambda: np.copyto(g, src), lambda: nbytes)


def _fp16_allgather(row: Dict[str, object], comm, src, lr: float, worker: int) -> Variant:
    """fp16 by Allgather: every rank's fp16(v / n) words, all n rows summed in float32 in worker order
    on every rank and rounded to fp16 (the fp16 compressor's codec), decoded, x <- x - eta mean."""
    import numpy as np

    from mpiopt.compressors.base import worker_order
    from mpiopt.kernels import cpu_kernel
    from mpiopt.kernels.half import WORD, codec
    from mpiopt.kernels.numpy import apply_step

    n, d = comm.size, src.size
    half = codec(np, cpu_kernel(), d, d)
    order = worker_order(comm, worker)
    send, rows, total = np.empty(d, dtype=WORD), np.empty((n, d), dtype=WORD), np.empty(d, dtype=WORD)
    g, x, mean = np.empty_like(src), np.zeros_like(src), np.empty_like(src)

    def step(k):
        half.encode(g, n, send)
        comm.allgather(send, rows)
        half.reduce(rows, order, total)
        half.decode(total, mean)
        apply_step(x, lr, mean)

    return Variant(row, step, lambda: np.copyto(g, src), lambda: {"bytes_per_rank": 2 * d})


def worker(args) -> int:
    import numpy as np
    from mpi4py import MPI

    from mpiopt.comm import MPICommunicator, library_version

    comm = MPICommunicator()
    if "numba" in args.kernels:
        from mpiopt.kernels.half import warm_up as half_warm_up
        from mpiopt.kernels.numba import warm_up
        warm_up()
        half_warm_up()
    rows = []
    t_start = time.perf_counter()
    for d in args.dims:
        variants = make_variants(d, comm, args.kernels, args.seed, args.variants)
        # warm-up (compilation, page faults) and a per-step estimate: the slowest variant sets the pace
        est = [[v.timed_step(comm) for _ in range(2)][-1] for v in variants]
        est_arr = np.array(est)
        comm.comm.Allreduce(MPI.IN_PLACE, est_arr, op=MPI.MAX)
        total_per_round = float(est_arr.sum()) + len(variants) * 1e-3
        steps = int(max(1, min(args.max_steps, args.seconds / args.rounds / max(total_per_round, 1e-9))))
        steps = comm.bcast(steps)
        # Interleaved step by step: every variant takes one step in turn (in a rotating order), so a
        # burst of load from elsewhere on the machine hits all of them alike.
        measured = interleaved([lambda v=v: v.timed_step(comm) for v in variants], args.rounds * steps)
        for v, ts in zip(variants, measured):
            times = np.array(ts)
            comm.comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)  # the slowest rank's time of each step
            row = dict(v.row)
            row["net"] = args.net
            row["seconds_per_step"] = float(np.median(times))
            row["seconds_p10"] = float(np.percentile(times, 10))
            row["seconds_p90"] = float(np.percentile(times, 90))
            row["steps"] = int(times.size)
            if v.info:
                row.update(v.info())
            rows.append(row)
        if comm.rank == 0:
            print(f"  d={d:.0e} ranks={comm.size} net={args.net}: {len(variants)} variants x {args.rounds * steps} "
                  f"steps, interleaved ({time.perf_counter() - t_start:.0f} s so far)", flush=True)
        del variants
    if comm.rank == 0:
        with open(args.worker_out, "w") as f:
            json.dump({"rows": rows, "mpi_library": library_version(), "mpi_vendor": list(MPI.get_vendor())}, f)
    return 0


# ----------------------------------------------------------------------------------------------
# the driver

def worker_argv(args, net: str, out: str) -> List[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", "--worker-out", out, "--net", net,
            "--dims", *[str(d) for d in args.dims], "--kernels", *args.kernels, "--seconds", str(args.seconds),
            "--rounds", str(args.rounds), "--max-steps", str(args.max_steps), "--seed", str(args.seed),
            "--variants", *args.variants]


def run_one(args, net: str, ranks: int) -> Dict[str, object]:
    """One mpiexec job: every dim and variant for ``ranks`` ranks on ``net``."""
    with tempfile.TemporaryDirectory(prefix="allreduce_step-") as tmp:
        out = os.path.join(tmp, "rows.json")
        argv = worker_argv(args, net, out)
        info: Dict[str, object] = {}
        print(f"{net}, {ranks} ranks: dims {', '.join(f'{d:.0e}' for d in args.dims)}", flush=True)
        if net == "shm":
            run_mpi(ranks, argv, extra_env=SINGLE_THREAD_ENV, timeout=args.timeout)
        else:
            import netbed
            with netbed.NetBed(ranks, net, delay_ms=args.delay_ms) as bed:
                check = netbed.check_links(bed)
                print(f"  link check: float32 Allreduce of {check['allreduce_bytes']} bytes took "
                      f"{check['median_seconds']:.3f} s ({check['ratio_to_link_bound']:.2f}x the link bound of "
                      f"{check['link_bound_seconds']:.3f} s); {check['nic_tx_bytes']} bytes crossed the NICs",
                      flush=True)
                before = bed.counters()
                run_mpi(ranks, argv, extra_env=SINGLE_THREAD_ENV, timeout=args.timeout, bed=bed)
                info = {**bed.describe(), "link_check": check,
                        "benchmark_nic_tx_bytes": netbed.nic_traffic(before, bed.counters())["nic_tx_bytes"]}
        with open(out) as f:
            got = json.load(f)
    return {"rows": got["rows"], "mpi_library": got["mpi_library"], "netbed": info}


def _find(rows, **want):
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def ratios(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Per (net, ranks, dim, kernel): IntSGD's speed-up over each baseline (baseline time / IntSGD time)."""
    out = []
    keys = sorted({(r["net"], r["ranks"], r["dim"]) for r in rows}, key=lambda k: (NETS.index(k[0]) if k[0] in NETS
                                                                                   else 9, k[1], k[2]))
    for net, ranks, dim in keys:
        sel = [r for r in rows if (r["net"], r["ranks"], r["dim"]) == (net, ranks, dim)]
        for r in sel:
            if r["method"] != "intsgd":
                continue
            t = r["seconds_per_step"]

            def over(**w):
                b = _find(sel, **w)
                return None if b is None else b["seconds_per_step"] / t

            out.append({
                "net": net, "ranks": ranks, "dim": dim, "kernel": r["kernel"], "impl": r["impl"],
                "alpha_mode": r.get("alpha_mode", "constant"),
                "wire_dtype": r.get("wire_dtype"),
                "intsgd_seconds": t,
                "speedup_vs_sgd_float32": over(method="sgd", dtype="float32", impl="lean"),
                "speedup_vs_sgd_float32_package": over(method="sgd", dtype="float32", impl="package"),
                "speedup_vs_sgd_float64": over(method="sgd", dtype="float64", impl="lean"),
                "speedup_vs_fp16": over(method="fp16", impl="package"),
                "slowdown_vs_raw_int8": (None if _find(sel, method="raw-allreduce", dtype="int8") is None
                                         else t / _find(sel, method="raw-allreduce", dtype="int8")["seconds_per_step"]),
                "speedup_vs_raw_float32": over(method="raw-allreduce", dtype="float32"),
            })
    return out


def half_ratios(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Per (net, ranks, dim): each fp16/bf16 step's speed-up over the float32 SGD steps (float32 time / its time)."""
    out = []
    for r in rows:
        if r["method"] not in ("fp16", "bf16"):
            continue
        sel = [q for q in rows if (q["net"], q["ranks"], q["dim"]) == (r["net"], r["ranks"], r["dim"])]
        t = r["seconds_per_step"]

        def over(**w):
            b = _find(sel, **w)
            return None if b is None else b["seconds_per_step"] / t

        out.append({"net": r["net"], "ranks": r["ranks"], "dim": r["dim"], "method": r["method"], "impl": r["impl"],
                    "seconds": t, "speedup_vs_sgd_float32": over(method="sgd", dtype="float32", impl="lean"),
                    "speedup_vs_sgd_float32_package": over(method="sgd", dtype="float32", impl="package")})
    return out


def half_goals(ratio_rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Issue 26's goals for the package's fp16 and bf16 steps, against the lean float32 SGD step."""
    out = []
    for q in ratio_rows:
        sp = q["speedup_vs_sgd_float32"]
        if q["impl"] != "package" or sp is None or q["dim"] != 10 ** 7 or q["ranks"] != 4:
            continue
        if q["net"] == "shm":
            out.append({"goal": f"shm, d=1e7, 4 ranks: {q['method']} step no slower than float32 SGD",
                        "intsgd": f"{q['method']} package", "net": q["net"], "ranks": 4, "dim": q["dim"],
                        "measured": f"{sp:.2f}x", "met": sp >= 1.0})
        if q["net"] == "1gbit":
            out.append({"goal": f"1gbit, d=1e7, 4 ranks: {q['method']} step >= 1.6x faster than float32 SGD",
                        "intsgd": f"{q['method']} package", "net": q["net"], "ranks": 4, "dim": q["dim"],
                        "measured": f"{sp:.2f}x", "met": sp >= 1.6})
    return out


def goals(ratio_rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """The issue's goals, checked for each IntSGD implementation on what this run measured."""
    out = []
    for q in ratio_rows:
        impl = f"{q['kernel']} {q['impl']}" + (", adaptive alpha" if q["alpha_mode"] == "adaptive" else "")
        sp, raw = q["speedup_vs_sgd_float32"], q["slowdown_vs_raw_int8"]
        if q["net"] == "shm" and 1e5 <= q["dim"] <= 1e7 and q["ranks"] in (2, 4) and sp is not None:
            out.append({"goal": "shm: IntSGD step never slower than a float32 SGD step (d 1e5..1e7, 2 and 4 ranks)",
                        "intsgd": impl, "net": q["net"], "ranks": q["ranks"], "dim": q["dim"],
                        "measured": f"{sp:.2f}x", "met": sp >= 1.0})
        if q["net"] == "shm" and q["dim"] == 10 ** 7 and q["ranks"] == 4:
            if sp is not None:
                out.append({"goal": "shm, d=1e7, 4 ranks: IntSGD >= 1.5x faster than float32 SGD", "intsgd": impl,
                            "net": q["net"], "ranks": 4, "dim": q["dim"], "measured": f"{sp:.2f}x", "met": sp >= 1.5})
            if raw is not None:
                out.append({"goal": "shm, d=1e7, 4 ranks: IntSGD within 2x of a raw int8 Allreduce", "intsgd": impl,
                            "net": q["net"], "ranks": 4, "dim": q["dim"], "measured": f"{raw:.2f}x", "met": raw <= 2.0})
        if q["net"] == "1gbit" and q["dim"] == 10 ** 7 and q["ranks"] == 4 and sp is not None:
            out.append({"goal": "1gbit, d=1e7, 4 ranks: IntSGD >= 3x faster than float32 SGD", "intsgd": impl,
                        "net": q["net"], "ranks": 4, "dim": q["dim"], "measured": f"{sp:.2f}x", "met": sp >= 3.0})
    return out


def goals_table(rows: List[Dict[str, object]]) -> str:
    if not rows:
        return ""
    lines = ["| goal | step | ranks | d | measured | met |", "|---|---|---:|---:|---:|---|"]
    for g in rows:
        lines.append(f"| {g['goal']} | {g['intsgd']} | {g['ranks']} | {g['dim']:.0e} | {g['measured']} | "
                     f"{'yes' if g['met'] else 'NO'} |")
    return "\n".join(lines)


def _fmt_ms(s: Optional[float]) -> str:
    return "-" if s is None else f"{s * 1e3:.2f}"


def _fmt_x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def table(result: Dict[str, object]) -> str:
    """Markdown: ms per step of every variant, and IntSGD's ratios."""
    rows = result["results"]
    cols = [("intsgd numba", dict(method="intsgd", kernel="numba", impl="package", alpha_mode="constant")),
            ("intsgd numba, adaptive alpha", dict(method="intsgd", kernel="numba", alpha_mode="adaptive")),
            ("intsgd numpy", dict(method="intsgd", kernel="numpy", impl="package", alpha_mode="constant")),
            ("sgd f32", dict(method="sgd", dtype="float32", impl="lean")),
            ("sgd f32 (pkg)", dict(method="sgd", dtype="float32", impl="package")),
            ("sgd f64", dict(method="sgd", dtype="float64", impl="lean")),
            ("sgd f64 (pkg)", dict(method="sgd", dtype="float64", impl="package")),
            ("fp16 (pkg)", dict(method="fp16", impl="package")),
            ("fp16 allgather", dict(method="fp16", impl="allgather")),
            ("bf16 (pkg)", dict(method="bf16")),
            ("raw int8", dict(method="raw-allreduce", dtype="int8")),
            ("raw f16", dict(method="raw-allreduce", dtype="float16")),
            ("raw f32", dict(method="raw-allreduce", dtype="float32")),
            ("raw f64", dict(method="raw-allreduce", dtype="float64"))]
    cols = [c for c in cols if any(_find([r], **c[1]) for r in rows)]
    lines = ["| net | ranks | d | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---:|---:|" + "---:|" * len(cols)]
    keys = sorted({(r["net"], r["ranks"], r["dim"]) for r in rows},
                  key=lambda k: (NETS.index(k[0]) if k[0] in NETS else 9, k[1], k[2]))
    for net, ranks, dim in keys:
        sel = [r for r in rows if (r["net"], r["ranks"], r["dim"]) == (net, ranks, dim)]
        cells = []
        for _, w in cols:
            r = _find(sel, **w)
            cells.append(_fmt_ms(r["seconds_per_step"] if r else None))
        lines.append(f"| {net} | {ranks} | {dim:.0e} | " + " | ".join(cells) + " |")
    lines += ["", "ms per step (median over steps of the slowest rank). IntSGD's ratios (speed-up = baseline time / "
              "IntSGD time; vs raw int8 = IntSGD time / raw int8 Allreduce time):", "",
              "| net | ranks | d | IntSGD | wire | vs sgd f32 | vs sgd f32 (pkg) | vs sgd f64 | vs fp16 (pkg) | vs raw int8 "
              "| vs raw f32 |", "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for q in result.get("ratios", []):
        how = f"{q['kernel']} {q['impl']}" + (", adaptive alpha" if q["alpha_mode"] == "adaptive" else "")
        lines.append(f"| {q['net']} | {q['ranks']} | {q['dim']:.0e} | {how} | {q['wire_dtype'] or '-'} | "
                     f"{_fmt_x(q['speedup_vs_sgd_float32'])} | {_fmt_x(q['speedup_vs_sgd_float32_package'])} | "
                     f"{_fmt_x(q['speedup_vs_sgd_float64'])} | {_fmt_x(q.get('speedup_vs_fp16'))} | "
                     f"{_fmt_x(q['slowdown_vs_raw_int8'])} | "
                     f"{_fmt_x(q['speedup_vs_raw_float32'])} |")
    halves = result.get("half_ratios", [])
    if halves:
        lines += ["", "16-bit float steps against float32 SGD (speed-up = float32 SGD time / this step's time):", "",
                  "| net | ranks | d | step | ms | vs sgd f32 | vs sgd f32 (pkg) |",
                  "|---|---:|---:|---|---:|---:|---:|"]
        for q in halves:
            lines.append(f"| {q['net']} | {q['ranks']} | {q['dim']:.0e} | {q['method']} {q['impl']} | "
                         f"{_fmt_ms(q['seconds'])} | {_fmt_x(q['speedup_vs_sgd_float32'])} | "
                         f"{_fmt_x(q['speedup_vs_sgd_float32_package'])} |")
    g = goals_table(result.get("goals", []))
    if g:
        lines += ["", "The issue's goals, on this run:", "", g]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# README section

BEGIN = "<!-- allreduce_step: generated by `python benchmarks/allreduce_step.py --readme`; do not edit by hand -->"
END = "<!-- allreduce_step: end -->"


def readme_body(files: Sequence[Path]) -> str:
    parts = []
    for path in files:
        res = json.loads(Path(path).read_text())
        m = res["machine"]
        parts.append(f"**`{shown(path)}`** -- {m.get('date')}, {m.get('cpu')}, {m.get('cores')} cores, "
                     f"{m.get('memory_gib')} GiB, {m.get('os')}, Python {m.get('python')}, numpy {m.get('numpy')}, "
                     f"numba {m.get('numba')}, {' '.join(str(m.get('mpi_library')).split())}; load average at start "
                     f"{', '.join(f'{x:.2f}' for x in m.get('loadavg', []))}.")
        for net, bed in (res.get("netbed") or {}).items():
            chk = bed.get("link_check", {})
            parts.append(f"Test bed `{net}`: {bed.get('kind')}; `{bed.get('tbf')}`. Link check: a float32 Allreduce "
                         f"of {chk.get('allreduce_bytes')} bytes over {bed.get('ranks')} ranks took "
                         f"{chk.get('median_seconds', float('nan')):.3f} s, "
                         f"{chk.get('ratio_to_link_bound', float('nan')):.2f}x the link bound "
                         f"({chk.get('link_bound_seconds', float('nan')):.3f} s); {chk.get('nic_tx_bytes')} bytes "
                         f"crossed the NICs (at least {chk.get('min_expected_tx_bytes', 0):.0f} needed).")
        parts.append("")
        parts.append(table(res))
        parts.append("")
    return "\n".join(parts)


def update_readme(files: Optional[Sequence[Path]] = None, readme: Path = README) -> None:
    files = sorted(files or RESULTS.glob("allreduce_step*.json"))
    if not files:
        raise SystemExit(f"no results to show: run the benchmark first (writes {RESULTS}/allreduce_step*.json)")
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    readme.write_text(replace_section(text, BEGIN, END, readme_body(files)))
    print(f"updated {shown(readme)} from {', '.join(shown(f) for f in files)}")


# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=float, nargs="+", default=[1e5, 1e6, 1e7], help="vector lengths d (1e7 is fine)")
    p.add_argument("--ranks", type=int, nargs="+", default=[4], help="number of MPI ranks (several: one job each)")
    p.add_argument("--net", nargs="+", default=["shm"], choices=NETS,
                   help="shm: plain mpiexec on this machine; 1gbit/10gbit: the namespace test bed (root)")
    p.add_argument("--json", type=Path, help="where to write the results")
    p.add_argument("--kernels", nargs="+", choices=("numba", "numpy"), default=None,
                   help="IntSGD quantizer kernels to time (default: numba when installed, and numpy)")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="about how long the timed steps of one dimension take, all variants together")
    p.add_argument("--rounds", type=int, default=10,
                   help="at least this many timed steps per variant (more at small d, within --seconds)")
    p.add_argument("--max-steps", type=int, default=40, help="most steps per variant per round")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="which steps to time (default: all)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per link on the test bed (netem)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600, help="seconds one mpiexec job may take")
    p.add_argument("--readme", action="store_true", help="rewrite this script's section of benchmarks/README.md "
                   "from benchmarks/results/allreduce_step*.json (or the --json file) and exit")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dims = [int(d) for d in args.dims]
    if any(d < 1 for d in args.dims):
        p.error("--dims must be positive")
    if args.kernels is None:
        try:
            from mpiopt.kernels.numba import AVAILABLE
        except ImportError:
            AVAILABLE = False
        args.kernels = (["numba"] if AVAILABLE else []) + ["numpy"]
    if args.worker:
        args.net = args.net[0]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.readme:
        update_readme([args.json] if args.json else None)
        return 0
    if not args.json:
        raise SystemExit("--json OUT is required")
    machine = machine_info()
    rows: List[Dict[str, object]] = []
    beds: Dict[str, object] = {}
    try:
        for net in args.net:
            for ranks in args.ranks:
                got = run_one(args, net, ranks)
                rows += got["rows"]
                machine["mpi_library"] = got["mpi_library"]
                if got["netbed"]:
                    beds[f"{net}/{ranks}"] = got["netbed"]
    except Exception as e:  # the network bed's errors included: say why, exit non-zero
        print(f"allreduce_step: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    machine["loadavg_end"] = list(os.getloadavg())
    result = {"machine": machine, "config": {"dims": args.dims, "ranks": args.ranks, "net": args.net,
                                             "kernels": args.kernels, "seconds": args.seconds,
                                             "rounds": args.rounds, "seed": args.seed},
              "results": rows, "ratios": ratios(rows), "half_ratios": half_ratios(rows)}
    result["goals"] = goals(result["ratios"]) + half_goals(result["half_ratios"])
    if beds:
        result["netbed"] = beds
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result)
    print()
    print(table(result))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
