"""Exceptions that separate a user's mistake (exit code 2) from a run that failed (exit code 1).

The CLI turns both into one ``mpiopt: error: ...`` line on stderr, without a traceback, so every
message must say what was wrong (file, line, option) and what to do about it. :func:`quoted`
shortens the user's input a message repeats; :func:`exit_on_terminate` lets SIGTERM clean up as
Ctrl-C does.
"""

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

QUOTE_LIMIT = 200
"""Characters of user input a message repeats; a 30 MB token must not become a 30 MB message."""


class MpioptError(Exception):
    """Base class of every error mpiopt raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, collective: bool = False):
        super().__init__(message)
        self.collective = collective
        """True when every rank raises this error at the same point, so no rank needs aborting."""


class InputError(MpioptError):
    """Bad input from the user: a malformed file, a missing shard, an invalid option value."""

    exit_code = 2


class RunError(MpioptError):
    """A run that started correctly and then failed (non-finite values, a failed rank)."""

    exit_code = 1


def quoted(text: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(str(text))`` for a message, cut to ``limit`` characters with the full length added."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


@contextmanager
def exit_on_terminate() -> Iterator[None]:
    """While active, SIGTERM raises SystemExit(143) in the main thread, so ``except BaseException``
    and ``finally`` blocks remove partial files as they do on Ctrl-C; the old handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
