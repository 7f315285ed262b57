"""The trace: a plain JSON record of one run (config, environment, per-iteration history, result).

History is stored by column (``history["dist_sq"]`` is a list), which is what plotting and
comparison scripts read. Unknown values (f - f* without f*) are ``null``, never NaN, so the file is
strict JSON.
"""

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

COLUMNS = ("iteration", "f_gap", "dist_sq", "grad_norm_sq", "loss", "wire_bytes", "info_bits", "clipped", "seconds")


def _clean(value):
    """JSON-safe: ints stay ints, non-finite floats become null."""
    if value is None or isinstance(value, (int, np.integer)):
        return None if value is None else int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def environment(mpi_library: str, n_ranks: int) -> Dict[str, Any]:
    """Versions and machine facts that decide whether two traces can be compared."""
    import mpi4py
    import scipy

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi_library": mpi_library,
        "n_ranks": n_ranks,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        **slurm_facts(),
    }


def slurm_facts() -> Dict[str, Optional[str]]:
    """Under Slurm (``SLURM_JOB_ID`` set): the job id and Slurm's version (``srun --version``, null
    where srun is not on PATH); nothing otherwise, so runs outside Slurm keep their keys."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    return {"slurm_job_id": job, "slurm_version": _slurm_version()}


def _slurm_version() -> Optional[str]:
    srun = shutil.which("srun")
    if srun is None:
        return None
    try:
        out = subprocess.run([srun, "--version"], capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out[-1] if out else None


class Trace:
    """Collects the header and the per-iteration rows of one run (kept on every rank, written by rank 0)."""

    def __init__(self, header: Dict[str, Any]):
        self.header = dict(header)
        self.history: Dict[str, list] = {c: [] for c in COLUMNS}

    def record(self, **row: Any) -> None:
        for column in COLUMNS:
            value = row.get(column)
            self.history[column].append(_clean(value))

    def last(self, column: str):
        values = self.history[column]
        return values[-1] if values else None

    def to_dict(self, x_final: np.ndarray, status: str, **extra: Any) -> Dict[str, Any]:
        return {**self.header, **extra, "status": status, "history": self.history, "x_final": x_final.tolist()}

    def restore(self, history: Dict[str, list]) -> None:
        """Continue a trace saved in a checkpoint."""
        self.history = {c: list(history.get(c, [])) for c in COLUMNS}


def write_json(path, record: Dict[str, Any]) -> None:
    """Write JSON atomically (temp file, fsync, rename): a reader never sees half a trace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
