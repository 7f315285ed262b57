"""One thread per DDP hook state that runs its buckets' exchanges in the order the hook hands them over.

Why a thread (see docs/design.md, "DDP hooks: overlap"): DDP calls a communication hook on its
autograd thread as each bucket becomes ready, and waits for the returned futures only at the end of
backward. An exchange of the int compressor is a chain of collectives whose length depends on the
data (the exponent MAX of a first step, the integer sum, a redo in a wider dtype after an overflow).
Run in .then() callbacks of asynchronous collectives, a redo of bucket 1 would be launched from
whichever thread completes its sum, possibly after bucket 2's sum on one rank and before it on another:
the ranks would pair different collectives. One thread taking the exchanges first in, first out, runs
every collective of every bucket in the same order on every rank, with the compressors' exact
protocols unchanged, while backward goes on; the hook returns a future this thread completes.

After an exchange fails (a collective error such as a non-finite gradient without a GradScaler, or
an invalid setting: the same on every rank), every later exchange of the state fails with the same
error without touching the network, so no rank is left waiting in a collective the others skipped.
"""

import atexit
import queue
import threading
from typing import Any, Callable, Optional

import torch


class OrderedWorker:
    """A daemon thread running submitted calls one at a time, in submission order."""

    def __init__(self, name: str = "mpiopt-hook"):
        self.name = name
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self.failed: Optional[BaseException] = None
        """The first exception a call raised (then every later call fails with it)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> torch.futures.Future:
        """A Future completed with ``fn(*args)`` (or its exception) once the calls before it have run."""
        fut: torch.futures.Future = torch.futures.Future()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
            atexit.register(self.close)
        self._jobs.put((fn, args, fut))
        return fut

    def run_inline(self, fn: Callable[..., Any], *args: Any) -> torch.futures.Future:
        """A completed Future of ``fn(*args)`` run on the calling thread (the synchronous mode)."""
        fut: torch.futures.Future = torch.futures.Future()
        self._call(fn, args, fut)
        return fut

    def _call(self, fn, args, fut) -> None:
        if self.failed is not None:
            fut.set_exception(self.failed)
            return
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to whoever waits on the future (DDP re-raises it)
            self.failed = exc
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def close(self) -> None:
        """End the thread once the calls already submitted have run (at interpreter exit: a daemon
        thread still waiting in the queue while torch's C++ state is torn down can abort the process)."""
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, fut = job
            self._call(fn, args, fut)
