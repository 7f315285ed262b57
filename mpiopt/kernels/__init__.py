"""Quantizer kernels: Int(alpha * v) with counter-based rounding noise, and its decoding.

``mpiopt.kernels.numpy`` is the reference implementation (CPU, numpy). A CuPy kernel must follow
the same contract and reproduce its noise and integers bit for bit; the exact formula is in
``mpiopt.kernels.numpy``'s docstring.
"""

from mpiopt.kernels.numpy import ROUNDINGS, Quantizer, int_bound, stream_key, uniform

__all__ = ["ROUNDINGS", "Quantizer", "int_bound", "stream_key", "uniform"]
