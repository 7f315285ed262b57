"""Compressors by name: how a method's per-rank vectors travel and what every rank gets back.

==========  =========================================================================  ==============
name        what goes on the wire per step                                              unbiased
==========  =========================================================================  ==============
none        float64 (or float32) Allreduce(SUM) of v                                    yes, omega 0
int         Int(alpha v) in one integer Allreduce(SUM); alpha of IntSGD (Alg. 1/2)       yes (additive)
hint        1-element float MAX Allreduce, then b-bit Int(alpha v) Allreduce             yes (additive)
nat         Allgather of one uint8 per coordinate (sign + power-of-two offset)           yes, omega 1/8
qsgd        Allgather of the norm (float64) + one signed level per coordinate            yes
fp16        float16 Allreduce of v / n                                                   no
bf16        Allgather of bfloat16 values, summed in float32 in worker order              no
sign        Allgather of one float64 scale + d sign bits                                 no
topk        Allgather of the k largest |v| as (int32 index, value) pairs                 no
dgc         DGC's sampled top-k threshold, (index, value) pairs by Allgatherv            no
powersgd    rank-r factors P, Q in two float Allreduces                                  no
==========  =========================================================================  ==============

Each compressor is one module below; the import list here is the registry of the built-in ones.
Register your own with :func:`register` (see ``examples/custom_compressor.py``).
"""

from mpiopt.compressors.base import (REGISTRY, Compressor, GatherCompressor, Option, all_options, compressor_class,
                                     register)
from mpiopt.compressors import none, integer, hint, nat, qsgd, sign, powersgd  # noqa: F401,E402 -- each registers one
from mpiopt.compressors import fp16, bf16, topk, dgc  # noqa: F401,E402 -- each registers one

__all__ = ["REGISTRY", "Compressor", "GatherCompressor", "Option", "all_options", "compressor_class", "register"]
