"""``python -m mpiopt`` is the ``mpiopt`` command."""

import sys

from mpiopt.cli import main

sys.exit(main())
