"""One module per ``mpiopt`` subcommand, each with ``register(subparsers)`` that sets ``handler``."""
