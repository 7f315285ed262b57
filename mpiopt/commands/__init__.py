"""One module per ``mpiopt`` subcommand, each with ``register(subparsers)`` that sets ``handler``."""


def plain(doc: str) -> str:
    """A module docstring as ``--help`` text: without the double backticks of its markup."""
    return doc.replace("``", "'")
