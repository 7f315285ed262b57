"""mpiopt: communication-compressed distributed optimization over MPI.

Integer methods (IntSGD, IntDIANA, VR-IntDIANA) send only integers through an MPI integer Allreduce;
the baselines the field compares against run over the same communicator and trace format.
"""

__version__ = "0.1.0"

from mpiopt.problems.shards import load_problem  # noqa: E402
from mpiopt.run import OptimizeResult, minimize  # noqa: E402

__all__ = ["minimize", "load_problem", "OptimizeResult", "__version__"]
