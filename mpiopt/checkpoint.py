"""Per-rank checkpoints of a run's whole state, written atomically, and their collective reload.

Each rank writes ``rank_XXX_itNNNNNNNNN.npz`` holding the iterate, the method's state record, its
random generators, counters and (rank 0) the trace so far, and keeps the newest two of the files
*this run* wrote (a resumed run adopts the files it resumed from). A job killed in the middle of a
save leaves at worst a stray temp file (its name carries the writer's pid, so two writers never
share one), so on resume the ranks agree on the newest iteration that *every* rank has saved and
can read, falling back to an older one when a file is damaged, and all restart from it.

A directory belongs to one run at a time: rank 0 holds a lock file in it (``LOCK``, naming its
holder) for as long as the run lasts, and a fresh start (no resume) refuses a directory that
already holds checkpoints, whoever wrote them. Every check is collective: all ranks raise the
same error together, so none is left waiting.
"""

import fcntl
import json
import os
import re
import secrets
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mpiopt.comm import Communicator
from mpiopt.errors import InputError, quoted

_NAME = re.compile(r"rank_(\d{3,})_it(\d{9})\.npz$")
KEEP = 2
LOCK_NAME = "LOCK"

_HELD: Dict[str, list] = {}
"""Locks this process holds: lock path -> [open file, users]. flock excludes even a second open file
of the same process, so a later Checkpointer of this process (a rerun before the first was garbage
collected) shares the lock instead of reporting itself as another run."""


class Checkpointer:
    """Saves and restores one rank's run state in ``directory``; ``fingerprint`` guards against mix-ups.

    ``resume`` says whether this run continues earlier checkpoints (True) or starts afresh (False):
    the directory is locked (by rank 0) and, for a fresh start, refused when it already holds
    checkpoints, here, collectively, before the first iteration.
    """

    def __init__(self, directory, comm: Communicator, fingerprint: Dict[str, Any], *, resume: bool):
        self.dir = Path(directory)
        self.comm = comm
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)
        self._mine: List[int] = []
        """Iterations of this rank's files that belong to this run: written by it, or resumed from."""
        self._release = None
        error = None
        if comm.rank == 0:
            try:
                lock = _acquire(self.dir)
                self._release = weakref.finalize(self, _release, lock)
            except InputError as exc:
                error = str(exc)
        self._raise_first(error or (None if resume else self._existing_checkpoints()))

    def close(self) -> None:
        """Give up the directory's lock (also done when the Checkpointer is garbage collected)."""
        if self._release is not None:
            self._release()

    def _raise_first(self, message: Optional[str]) -> None:
        """Share each rank's verdict and raise the first on every rank (releasing the lock first)."""
        verdicts = self.comm.allgather_object(message)
        first = next((v for v in verdicts if v), None)
        if first:
            self.close()
            raise InputError(first, collective=True)

    def _stop_all(self, message: str) -> None:
        """Raise ``message``, which every rank computed from the same gathered data, on every rank
        (releasing the lock first): no further exchange is needed."""
        self.close()
        raise InputError(message, collective=True)

    def _path(self, k: int, rank: Optional[int] = None) -> Path:
        return self.dir / f"rank_{self.comm.rank if rank is None else rank:03d}_it{k:09d}.npz"

    def _saved(self) -> List[Tuple[int, int]]:
        """(rank, iteration) of every checkpoint file in the directory, oldest first."""
        if not self.dir.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.dir.iterdir())
        return sorted((int(m.group(1)), int(m.group(2))) for m in found if m)

    def _saved_iterations(self) -> List[int]:
        return [k for rank, k in self._saved() if rank == self.comm.rank]

    def _existing_checkpoints(self) -> Optional[str]:
        """Why a fresh start must not use this directory (None when it holds no checkpoint)."""
        saved = self._saved()
        if not saved:
            return None
        rank, k = max(saved, key=lambda rk: (rk[1], rk[0]))
        try:
            owner = self._compare(_read_info(self._path(k, rank)))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is "damaged", on every rank alike
            owner = f"the newest, {self._path(k, rank).name}, is unreadable ({type(exc).__name__})"
        if owner is None:
            return (f"checkpoint directory {self.dir} already holds checkpoints of this configuration (up to "
                    f"iteration {k}); pass --resume to continue from them, or choose another --checkpoint-dir")
        return (f"checkpoint directory {self.dir} already holds checkpoints of another run ({owner}); choose "
                f"another --checkpoint-dir, or delete those files")

    def save(self, k: int, arrays: Dict[str, np.ndarray], info: Dict[str, Any]) -> None:
        """Write this rank's state after iteration k (temp file, fsync, rename), then prune the oldest
        files of this run beyond the newest ``KEEP``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(k)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        payload = {f"a/{name}": value for name, value in arrays.items()}
        payload["info"] = np.array(json.dumps({**info, "fingerprint": self.fingerprint}))
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._mine = sorted(set(self._mine) | {k})
        while len(self._mine) > KEEP:
            self._path(self._mine.pop(0)).unlink(missing_ok=True)

    def load_latest(self) -> Optional[Dict[str, Any]]:
        """Collectively pick the newest iteration that every rank saved and can read, and return this
        rank's copy: {"iteration", "arrays", "info"}.

        Returns None when no iteration is common to all ranks (a fresh start). A checkpoint written
        by another configuration is refused on every rank at once; a damaged one (truncated, corrupt)
        is skipped with a warning for the next older iteration that all ranks can read.
        """
        mine = self._saved_iterations()
        verdict = self._foreign(mine[-1]) if mine else None
        everyone = self.comm.allgather_object((mine, verdict))
        problems = [f"rank {r}: {v}" for r, (_, v) in enumerate(everyone) if v]
        if problems:
            self._stop_all(f"checkpoint in {self.dir} does not match this run ({problems[0]}); "
                           "use another --checkpoint-dir or drop --resume")
        common = set(everyone[0][0]).intersection(*(set(its) for its, _ in everyone[1:]))
        damage = None
        for k in sorted(common, reverse=True):
            saved, damaged = self._try_load(k)
            reports = [d for d in self.comm.allgather_object(damaged) if d]
            if not reports:
                self._adopt(mine, k)
                return saved
            damage = reports[0]
            if self.comm.rank == 0:
                sys.stderr.write(f"mpiopt: warning: the checkpoint of iteration {k} in {self.dir} is damaged "
                                 f"({damage}); trying an older one\n")
        if damage:
            self._stop_all(f"no intact checkpoint in {self.dir}: every iteration saved by all ranks is damaged "
                           f"({damage}); delete the directory to start afresh, or use another --checkpoint-dir")
        return None

    def _adopt(self, mine: List[int], k: int) -> None:
        """Continue the run that wrote this rank's files up to ``k``; its newer files, unusable as a
        set, go (the run writes those iterations again)."""
        for newer in (i for i in mine if i > k):
            self._path(newer).unlink(missing_ok=True)
        self._mine = [i for i in mine if i <= k]

    def _try_load(self, k: int) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        """(this rank's checkpoint k, None), or (None, what is wrong with the file)."""
        path = self._path(k)
        try:
            with np.load(path, allow_pickle=False) as data:
                info = json.loads(str(data["info"]))
                arrays = {name[2:]: data[name] for name in data.files if name.startswith("a/")}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is "damaged", on every rank alike
            return None, f"rank {self.comm.rank}: {path.name}: {type(exc).__name__}: {quoted(exc)}"
        return {"iteration": k, "arrays": arrays, "info": info}, None

    def _foreign(self, k: int) -> Optional[str]:
        """Why this rank's checkpoint k is another configuration's (None if it is this one's or
        unreadable: a damaged file is skipped later, not called foreign)."""
        try:
            info = _read_info(self._path(k))
        except Exception:  # noqa: BLE001 - judged by _try_load when its iteration comes up
            return None
        return self._compare(info)

    def _compare(self, info: Dict[str, Any]) -> Optional[str]:
        """None when ``info`` was written for this fingerprint, else what differs."""
        saved = info.get("fingerprint")
        if saved == self.fingerprint:
            return None
        try:
            return f"it was written for {_first_difference(json.loads(saved), json.loads(self.fingerprint))}"
        except (TypeError, ValueError):
            return "it has no readable fingerprint"


def _read_info(path: Path) -> Dict[str, Any]:
    """The JSON ``info`` record of one checkpoint file (its arrays are not read)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["info"]))


def _first_difference(saved: Dict[str, Any], current: Dict[str, Any]) -> str:
    """The most telling key that differs: method, dataset, ranks first, then options by name."""
    first = ("method", "dataset", "n_ranks", "dim")
    for key in (*first, *sorted(set(saved) | set(current) - set(first))):
        if saved.get(key) != current.get(key):
            return f"{key}={saved.get(key)!r}, this run has {key}={current.get(key)!r}"
    return "another configuration"


def _acquire(directory: Path) -> str:
    """Lock ``directory`` for this process (creating both if needed); returns the lock's path.

    The lock is an flock on ``directory/LOCK``, released by the kernel when the process ends, so a
    killed run never leaves a stale lock; the file names its holder for the error a second run sees.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = str((directory / LOCK_NAME).resolve())
        if path in _HELD:
            _HELD[path][1] += 1
            return path
        fh = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), "r+")
    except OSError as exc:
        raise InputError(f"cannot use {directory} for checkpoints ({exc.strerror}); choose another "
                         f"--checkpoint-dir") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = fh.read(400).strip() or "holder unknown"
        fh.close()
        raise InputError(f"checkpoint directory {directory} is in use by another run ({holder}); wait for it to "
                         f"finish, or choose another --checkpoint-dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
             f"{' '.join(sys.argv)[:300]}\n")
    fh.flush()
    _HELD[path] = [fh, 1]
    return path


def _release(path: str) -> None:
    """Drop one use of this process's lock ``path``; the last one closes the file, freeing the lock."""
    entry = _HELD.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        entry[0].close()
        del _HELD[path]
