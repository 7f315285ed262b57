"""How a message names an argument: ``--tol`` under ``mpiopt run``, ``tol=`` from Python.

The same checks serve both front-ends, so a message asks :func:`arg` for the argument's name instead
of spelling a flag: the command line's handler runs inside :func:`command_line`, and everything else
(``mpiopt.minimize``, the torch optimizers) gets the Python keyword. :func:`did_you_mean` adds the
closest known name to an "unknown name" message.
"""

import contextvars
import difflib
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

_CLI = contextvars.ContextVar("mpiopt_command_line", default=False)

_UNSET = object()


@contextmanager
def command_line() -> Iterator[None]:
    """While active, :func:`arg` spells arguments as the command line's flags."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def on_command_line() -> bool:
    """Whether the running code was called by ``mpiopt run`` (else by Python)."""
    return _CLI.get()


def arg(name: str, value: Any = _UNSET) -> str:
    """``--tol`` / ``--tol 1e-10`` on the command line, ``tol=`` / ``tol=1e-10`` from Python.

    ``name`` is the Python keyword (``wire_dtype``); its flag replaces ``_`` by ``-``. A value is
    written with ``:g`` for floats, ``repr`` for strings in Python and ``str`` on the command line.
    """
    if on_command_line():
        flag = "--" + name.replace("_", "-")
        return flag if value is _UNSET else f"{flag} {_shown(value, quote=False)}"
    return f"{name}=" if value is _UNSET else f"{name}={_shown(value, quote=True)}"


def spelled(names: Iterable[str]) -> str:
    """Names as a list for a message: ``--wire-dtype, --alpha`` on the command line, ``wire_dtype,
    alpha`` from Python."""
    if on_command_line():
        return ", ".join("--" + n.replace("_", "-") for n in names)
    return ", ".join(names)


def _shown(value: Any, quote: bool) -> str:
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, str) and quote:
        return repr(value)
    return str(value)


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
