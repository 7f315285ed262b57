"""What the benchmarks share: their MPI jobs, the machine's description, their JSON and README output.

A benchmark is its model and its table. It gives the argv each rank runs; :func:`run_mpi` starts the
job (a plain ``mpiexec -n R`` here, or one rank per namespace of netbed.py's emulated network) with
mpiopt's launch settings for that many ranks, in a process group of its own, so that a failure, a
timeout or a signal here ends every rank; :func:`mpiopt_run` is the ``mpiopt run`` job most convex
benchmarks time, returning its trace. Variants measured side by side take turns: :func:`interleaved`
times each once per repetition in a rotating order (a burst of load from elsewhere on the machine hits
all alike), :func:`mean_seconds` makes a timer of a call repeated often enough to time.
:func:`machine_info` describes the machine for the JSON that :func:`write_json` writes, and
:func:`replace_section` rewrites a script's generated section of benchmarks/README.md.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from mpiopt import launch  # noqa: E402

SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "NUMBA_NUM_THREADS": "1"}
"""Each rank computes on one thread (the ranks already share the cores)."""


# ----------------------------------------------------------------------------------------------
# MPI jobs

def mpiexec_path() -> str:
    """mpiopt's mpiexec lookup (the venv's MPICH first); without one the benchmark cannot run."""
    try:
        return launch.mpiexec_path()
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None


def run_mpi(ranks: int, argv: Sequence[object], *, extra_env: Optional[Dict[str, str]] = None,
            timeout: Optional[float] = None, bed=None, quiet: bool = False) -> None:
    """Run ``argv`` (its words as strings) on ``ranks`` ranks: ``mpiexec -n R ARGV`` here, or one rank
    per namespace of ``bed`` (a ``netbed.NetBed``, its environment added), with the launch settings
    for R ranks and then ``extra_env``. ``quiet``: the ranks' standard output is dropped and their standard error kept
    for the error message. A non-zero exit or a timeout raises SystemExit naming the command."""
    import netbed

    env, argv = launch.mpi_env(ranks, extra_env), [str(a) for a in argv]
    if bed is None:
        cmd = [mpiexec_path(), "-n", str(ranks), *argv]
    else:
        cmd, env = bed.mpmd(mpiexec_path(), argv), {**env, **bed.env()}
    with tempfile.TemporaryFile(mode="w+") as err:
        try:
            rc = netbed.run_in_group(cmd, env, timeout, stdout=subprocess.DEVNULL if quiet else None,
                                     stderr=err if quiet else None)
        except subprocess.TimeoutExpired:
            rc = f"timed out after {timeout} s"
        if rc != 0:
            err.seek(0)
            tail = err.read()[-3000:]
            raise SystemExit(f"{' '.join(map(str, cmd))}\nfailed (exit {rc})" + (f":\n{tail}" if tail else ""))


def mpiopt_run(ranks: int, options: Sequence[object], *, out: Optional[Path] = None,
               extra_env: Optional[Dict[str, str]] = None, timeout: Optional[float] = None, bed=None) -> Dict[str, Any]:
    """``mpiopt run OPTIONS --no-progress --out TRACE`` on ``ranks`` ranks (:func:`run_mpi`, quiet) and
    the trace it wrote (at ``out``, else in a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="mpiopt-run-") as tmp:
        trace = Path(out) if out is not None else Path(tmp) / "trace.json"
        run_mpi(ranks, [sys.executable, "-m", "mpiopt", "run", *options, "--no-progress", "--out", trace],
                extra_env=extra_env, timeout=timeout, bed=bed, quiet=True)
        return json.loads(trace.read_text())


# ----------------------------------------------------------------------------------------------
# the machine

def _first_line(cmd: Sequence[str]) -> Optional[str]:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _proc_field(path: str, prefix: str) -> Optional[str]:
    """The value after ``:`` of the first line of ``path`` that starts with ``prefix`` (None if none)."""
    try:
        for line in open(path):
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def machine_info() -> Dict[str, object]:
    """What ran the benchmark: CPU, cores, memory, OS, versions, load."""
    mem = _proc_field("/proc/meminfo", "MemTotal")
    flags = set((_proc_field("/proc/cpuinfo", "flags") or "").split())
    mpichversion = Path(sys.executable).parent / "mpichversion"
    return {
        "hostname": platform.node(),
        "cpu": _proc_field("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "simd": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512dq", "neon", "sve")),
        "memory_gib": round(int(mem.split()[0]) / 2 ** 20, 1) if mem else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "mpi4py": _version("mpi4py"),
        "mpi_library": _first_line([str(mpichversion)]) if mpichversion.exists() else None,
        "loadavg": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ----------------------------------------------------------------------------------------------
# timing

def interleaved(timers: Sequence[Callable[[], float]], reps: int) -> List[List[float]]:
    """``reps`` measurements of each timer (what it returns, seconds), every timer once per repetition,
    the order rotated by one each repetition so that no variant always runs first or after the same one."""
    times: List[List[float]] = [[] for _ in timers]
    order = list(range(len(timers)))
    for rep in range(reps):
        shift = rep % max(1, len(order))
        for i in order[shift:] + order[:shift]:
            times[i].append(timers[i]())
    return times


def mean_seconds(fn: Callable[[], object], inner: Optional[int] = None, target: float = 2e-3) -> Callable[[], float]:
    """A timer for :func:`interleaved`: the mean seconds of one call of ``fn`` over ``inner`` calls in a
    row (default: as many as last about ``target`` seconds, from one call timed after a warm-up call)."""
    if inner is None:
        fn()
        t = time.perf_counter()
        fn()
        inner = max(1, int(target / max(time.perf_counter() - t, 1e-7)))

    def timer() -> float:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner

    return timer


# ----------------------------------------------------------------------------------------------
# output

def write_json(path: Path, record: Any) -> None:
    """``record`` as indented JSON at ``path`` (its folder made if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def replace_section(text: str, begin: str, end: str, body: str) -> str:
    """Put ``body`` between the ``begin`` and ``end`` marker lines (appending them when absent)."""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        return pre + block + post
    return text.rstrip() + "\n\n" + block + "\n"


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)
