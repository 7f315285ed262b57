"""Finding ``mpiexec`` and the environment for jobs that start their own MPI runs (benchmarks, tests).

The ``[mpich]`` extra installs MPICH's mpiexec next to the Python that runs mpiopt, so that one is
preferred over whatever ``PATH`` holds: the ranks then load the same MPI library mpi4py was built for.
"""

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, Optional

OVERSUBSCRIBED = {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}
"""MPICH: a rank waiting in a collective yields its core, which matters when ranks outnumber cores."""


def mpiexec_path() -> str:
    """The mpiexec beside this Python (the venv's MPICH), else the first on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpiexec found: install an MPI runtime, e.g. pip install 'mpiopt[mpich]'")
    return found


def mpi_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This process's environment plus the oversubscription settings (unless already set) and ``extra``."""
    env = {**OVERSUBSCRIBED, **os.environ}
    env.update(extra or {})
    return env
