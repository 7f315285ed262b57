"""One rank's failure ends the whole job promptly, with that rank's message, and no rank hangs.

Errors every rank raises together (``MpioptError.collective``) are reported once by rank 0 and each
rank exits normally with the error's code. Anything else happened on some ranks only: the others
would wait forever in their next collective, so the failing rank prints its message (or traceback)
prefixed by its rank and calls MPI_Abort, which makes mpiexec end every process.
"""

import os
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Iterator

from mpiopt.comm import Communicator
from mpiopt.errors import MpioptError


@contextmanager
def abort_on_error(comm: Communicator) -> Iterator[None]:
    """Run the body; on a one-rank failure print it with the rank and abort every rank."""
    try:
        yield
    except MpioptError as exc:
        if exc.collective or comm.size == 1:
            raise
        report_and_abort(comm, f"mpiopt: error: [rank {comm.rank}] {exc}\n", exc.exit_code)
    except Exception:
        if comm.size == 1:
            raise
        text = traceback.format_exc().rstrip("\n").splitlines()
        report = "".join(f"[rank {comm.rank}] {line}\n" for line in text)
        report_and_abort(comm, report + f"mpiopt: error: [rank {comm.rank}] {text[-1]}\n", 1)


FORWARD_GRACE_SECONDS = 0.3


def report_and_abort(comm: Communicator, report: str, code: int) -> None:
    """Write ``report`` to stderr in one piece, then abort every rank with ``code``.

    mpiexec forwards each rank's stderr through a pipe and stops reading it once the abort reaches
    it, so a report written in several pieces could lose its tail (seen in CI: the traceback came
    through, the summary line did not). One write, then a short pause for the forwarder, keeps it whole.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    data = report.encode("utf-8", "replace")
    while data:
        data = data[os.write(sys.stderr.fileno(), data):]
    time.sleep(FORWARD_GRACE_SECONDS)
    comm.abort(code)
    os._exit(code)  # MPICH's MPI_Abort can return before the launcher ends this process: never run on


def agree_or_raise(comm: Communicator, error: "MpioptError | None") -> None:
    """Share each rank's setup error (a small pickled control message) and raise the first on all.

    Used before the first collective of a run, for checks such as loading this rank's shard, so
    that a problem on one rank becomes one clear message and the same exit code on every rank.
    """
    errors = comm.allgather_object(None if error is None else (type(error), str(error)))
    for rank, found in enumerate(errors):
        if found is not None:
            cls, message = found
            raise cls(f"[rank {rank}] {message}" if comm.size > 1 else message, collective=True)
