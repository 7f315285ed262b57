"""The trace: a plain JSON record of one run (config, environment, per-iteration history, result).

History is stored by column (``history["dist_sq"]`` is a list), which is what plotting and
comparison scripts read. Unknown values (f - f* without f*) are ``null``, never NaN, so the file is
strict JSON.
"""

import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict

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
    }


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
