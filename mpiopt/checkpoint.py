"""Per-rank checkpoints of a run's whole state, written atomically, and their collective reload.

Each rank writes ``rank_XXX_itNNNNNNNNN.npz`` holding the iterate, the method's state record, its
random generators, counters and (rank 0) the trace so far, and keeps the newest two. A job killed in
the middle of a save leaves at worst a stray temp file, so on resume the ranks agree on the newest
iteration that *every* rank has saved and all restart from it.
"""

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from mpiopt.comm import Communicator
from mpiopt.errors import InputError

_NAME = re.compile(r"rank_(\d{3,})_it(\d{9})\.npz$")
KEEP = 2


class Checkpointer:
    """Saves and restores one rank's run state in ``directory``; ``fingerprint`` guards against mix-ups."""

    def __init__(self, directory, comm: Communicator, fingerprint: Dict[str, Any]):
        self.dir = Path(directory)
        self.comm = comm
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)

    def _path(self, k: int) -> Path:
        return self.dir / f"rank_{self.comm.rank:03d}_it{k:09d}.npz"

    def _saved_iterations(self):
        if not self.dir.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(2)) for m in found if m and int(m.group(1)) == self.comm.rank)

    def save(self, k: int, arrays: Dict[str, np.ndarray], info: Dict[str, Any]) -> None:
        """Write this rank's state after iteration k (temp file, fsync, rename), then prune old ones."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(k)
        tmp = path.with_name(f".{path.name}.tmp")
        payload = {f"a/{name}": value for name, value in arrays.items()}
        payload["info"] = np.array(json.dumps({**info, "fingerprint": self.fingerprint}))
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        for old in self._saved_iterations()[:-KEEP]:
            self._path(old).unlink(missing_ok=True)

    def load_latest(self) -> Optional[Dict[str, Any]]:
        """Collectively pick the newest iteration saved by all ranks and load this rank's copy.

        Returns None when no iteration is common to all ranks (a fresh start). A checkpoint written
        by another configuration is refused on every rank at once, so no rank is left waiting.
        """
        mine = self._saved_iterations()
        verdict = self._check_fingerprint(mine[-1]) if mine else None
        everyone = self.comm.comm.allgather((mine, verdict))
        problems = [f"rank {r}: {v}" for r, (_, v) in enumerate(everyone) if v]
        if problems:
            raise InputError(
                f"checkpoint in {self.dir} does not match this run ({problems[0]}); "
                "use another --checkpoint-dir or drop --resume",
                collective=True,
            )
        common = set(everyone[0][0]).intersection(*(set(its) for its, _ in everyone[1:]))
        if not common:
            return None
        k = max(common)
        with np.load(self._path(k), allow_pickle=False) as data:
            info = json.loads(str(data["info"]))
            arrays = {name[2:]: data[name] for name in data.files if name.startswith("a/")}
        return {"iteration": k, "arrays": arrays, "info": info}

    def _check_fingerprint(self, k: int) -> Optional[str]:
        try:
            with np.load(self._path(k), allow_pickle=False) as data:
                saved = json.loads(str(data["info"]))["fingerprint"]
        except Exception as exc:  # a corrupt file is a user-visible problem, not a crash
            return f"cannot read {self._path(k).name}: {exc}"
        if saved != self.fingerprint:
            diff = _first_difference(json.loads(saved), json.loads(self.fingerprint))
            return f"it was written for {diff}"
        return None


def _first_difference(saved: Dict[str, Any], current: Dict[str, Any]) -> str:
    """The most telling key that differs: method, dataset, ranks first, then options by name."""
    first = ("method", "dataset", "n_ranks", "dim")
    for key in (*first, *sorted(set(saved) | set(current) - set(first))):
        if saved.get(key) != current.get(key):
            return f"{key}={saved.get(key)!r}, this run has {key}={current.get(key)!r}"
    return "another configuration"
