"""The ``mpiopt`` command: a thin dispatcher over the subcommands in :mod:`mpiopt.commands`.

A user's mistake becomes one ``mpiopt: error: ...`` line on stderr and exit code 2; a failed run
exits 1. Tracebacks are kept for bugs, not for bad input. ``mpiopt run`` imports its plugins
(:mod:`mpiopt.plugins`) before the parser is built, so their compressors are among its options.
"""

import argparse
import re
import sys
from typing import Optional, Sequence

from mpiopt import plugins
from mpiopt.commands import datasets, plot, preprocess, run
from mpiopt.errors import MpioptError
from mpiopt.naming import did_you_mean

SUBCOMMANDS = (preprocess, run, plot, datasets)


def world_rank() -> int:
    """This process's rank in an MPI job (0 outside one); only rank 0 reports collective errors."""
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() else 0


class _Parser(argparse.ArgumentParser):
    """argparse with our error format: one line, prefixed, exit code 2."""

    def error(self, message: str):
        if world_rank() == 0:  # under mpiexec every rank parses the same arguments: report once
            sys.stderr.write(f"mpiopt: error: {message}{_suggestion(message)} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _suggestion(message: str) -> str:
    """argparse's "invalid choice: 'X' (choose from 'a', 'b')" with the closest choice, if any."""
    found = re.search(r"invalid choice: '(.*?)' \(choose from (.*)\)", message)
    if found is None:
        return ""
    return did_you_mean(found.group(1), re.findall(r"'(.*?)'", found.group(2)))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mpiopt", description="Communication-compressed distributed optimization over MPI.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] == ["run"]:
        try:
            plugins.load_all(argv[1:])
        except MpioptError as exc:
            return _report(exc)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and (args.plugin or []) != plugins.requested(argv[1:]):
        parser.error("spell --plugin in full: it is read before the other options are built")
    return dispatch(args)


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed command, turning mpiopt's errors into one line and an exit code."""
    try:
        return int(args.handler(args) or 0)
    except MpioptError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        sys.stderr.write("mpiopt: error: interrupted\n")
        return 130


def _report(exc: MpioptError) -> int:
    """One ``mpiopt: error:`` line (once, from rank 0, for an error every rank raised); the exit code."""
    if not exc.collective or world_rank() == 0:
        sys.stderr.write(f"mpiopt: error: {exc}\n")
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
