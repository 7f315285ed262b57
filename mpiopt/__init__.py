"""mpiopt: communication-compressed distributed optimization over MPI.

Integer methods (IntSGD, IntDIANA, VR-IntDIANA) send only integers through an MPI integer Allreduce;
the baselines the field compares against run over the same communicator and trace format.

``minimize``, ``load_problem`` and ``OptimizeResult`` are imported on first use (PEP 562): the runner
imports mpi4py, which initializes MPI, so ``import mpiopt.torch.hooks`` in a torchrun worker does not.
"""

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

_LAZY = {"minimize": "mpiopt.run", "OptimizeResult": "mpiopt.run", "load_problem": "mpiopt.problems.shards"}
"""Public names and the module each is imported from when first asked for."""

__all__ = ["minimize", "load_problem", "OptimizeResult", "__version__"]


def __getattr__(name: str) -> Any:
    """A lazily imported public name, or a submodule (``mpiopt.run`` after ``import mpiopt``, as when
    this package imported the runner itself)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
