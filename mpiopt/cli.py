"""The ``mpiopt`` command: a thin dispatcher over the subcommands in :mod:`mpiopt.commands`.

A user's mistake becomes one ``mpiopt: error: ...`` line on stderr and exit code 2; a failed run
exits 1. Tracebacks are kept for bugs, not for bad input.
"""

import argparse
import sys
from typing import List, Optional

from mpiopt.commands import datasets, plot, preprocess, run
from mpiopt.errors import MpioptError

SUBCOMMANDS = (preprocess, run, plot, datasets)


def world_rank() -> int:
    """This process's rank in an MPI job (0 outside one); only rank 0 reports collective errors."""
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() else 0


class _Parser(argparse.ArgumentParser):
    """argparse with our error format: one line, prefixed, exit code 2."""

    def error(self, message: str):
        if world_rank() == 0:  # under mpiexec every rank parses the same arguments: report once
            sys.stderr.write(f"mpiopt: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mpiopt", description="Communication-compressed distributed optimization over MPI.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed command, turning mpiopt's errors into one line and an exit code."""
    try:
        return int(args.handler(args) or 0)
    except MpioptError as exc:
        if not exc.collective or world_rank() == 0:
            sys.stderr.write(f"mpiopt: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("mpiopt: error: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
