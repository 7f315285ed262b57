"""Exceptions that separate a user's mistake (exit code 2) from a run that failed (exit code 1).

The CLI turns both into one ``mpiopt: error: ...`` line on stderr, without a traceback, so every
message must say what was wrong (file, line, option) and what to do about it.
"""


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
