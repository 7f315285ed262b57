"""Drop-in torch optimizers over mpiopt's compressors and methods, and DDP hooks (extra ``[torch]``).

This package is a face: the optimizers live in :mod:`mpiopt.torch.optim`, the DDP communication hooks
in :mod:`mpiopt.torch.hooks`, the torch.distributed Communicator in :mod:`mpiopt.torch.comm` and the
helpers they share in :mod:`mpiopt.torch.common`. Importing it (or :mod:`mpiopt.torch.hooks`) does not
import mpi4py: a torchrun worker needs no MPI runtime.

Each rank runs the same ordinary training loop on its own data; ``step()`` communicates::

    opt = mpiopt.torch.IntSGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for x, y in my_shard:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()              # one integer Allreduce; every rank applies the same update

==============  ===========  ==========================================================================
class           ``mpiopt run``  what crosses the wire each step
==============  ===========  ==========================================================================
``SGD``         sgd          the gradient, float Allreduce in the model's dtype (float32 for float32 models)
``IntSGD``      intsgd       Int(alpha g_i), one integer Allreduce; alpha per layer (``block='layer'``,
                             Alg. 2) or one scalar (``block=None``, Alg. 1)
``HintSGD``     hintsgd      1-float MAX Allreduce, then b-bit integers (SwitchML's scaling)
``NatSGD``      natsgd       one byte per coordinate (signed power of two), Allgather
``QSGD``        qsgd         norm + one signed level per coordinate, Allgather
``EFSignSGD``   ef-signsgd   bit-packed signs + one scale, Allgather, error feedback
``DGC``         dgc          sparse (index, value) pairs, Allgatherv, momentum correction
``PowerSGD``    powersgd     rank-r factors P, Q in two float Allreduces, error feedback
==============  ===========  ==========================================================================

The first five use the compressors of :mod:`mpiopt.compressors` unchanged: with g_i this
rank's gradient, each rank sends C(g_i + wd p) and receives the mean d = mean_i C(g_i + wd p),
bitwise the same on every rank. **Weight decay is added to the local gradient before compression**,
as in the IntSGD paper's ResNet experiments (``optimizer_wd_before_reduce`` in its reference code).
**Heavy-ball momentum is applied after decoding**, to d, on every rank: m = mu m + d, p -= lr m
(torch.optim.SGD's rule with dampening 0), so m is identical everywhere and never sent.

IntSGD's alpha reads the iterate's last move (r_k tracks ||x^k - x^{k-1}||^2). With momentum after
decoding, the parameters move by lr m, up to 1/(1 - mu) times the compressed vector, and an alpha
sized to that move would round most integers to zero. So alpha reads the *compression iterate*
x~ <- x~ - lr d: the IntSGD iterate without momentum, which moves by exactly the decoded vector (with
momentum 0 it is the parameter vector itself, so the optimizer equals mpiopt's numpy IntSGD).

The last three wrap the methods ``ef-signsgd``, ``dgc`` and ``powersgd`` of :mod:`mpiopt.methods`: the method
takes one step from x = 0 on the bucket's gradient (+ weight decay), and -x is its update, which
already includes lr. DGC's ``momentum`` is its own momentum correction (local, before sparsification)
and PowerSGD's its own momentum; EF-signSGD gets heavy-ball momentum on its decoded update.

All gradients live in one flat bucket (:class:`mpiopt.problems.torch.GradientBucket`); compressors
read it through a zero-copy numpy view. The optimizer takes one parameter group. ``comm=None`` means
``MPI.COMM_WORLD`` (one process without mpiexec). ``state_dict()`` holds this rank's whole state
(method record, momentum, x~, step, random streams, byte counters): save it per rank together with
the model, and ``load_state_dict`` resumes bit-identically.

Under ``torchrun`` pass ``comm=mpiopt.torch.comm.TorchCommunicator()`` (torch.distributed instead of
MPI). DDP users keep their DistributedDataParallel model and register a communication hook of
:mod:`mpiopt.torch.hooks` instead (``IntSGDState`` / ``intsgd_hook``).

CUDA models: ``SGD``, ``IntSGD``, ``HintSGD``, ``NatSGD`` and ``QSGD`` run on the GPU: the buckets
are CuPy views (DLPack, no copy), the compressor allocates through CuPy and rounds with the CuPy
quantizer (the same integers as numpy's for the same seed), and the integers go to NCCL
(``TorchCommunicator``) or to MPI through :class:`mpiopt.device_comm.DeviceCommunicator` (the
device buffer itself with CUDA-aware MPI, else one pinned host buffer). The last three wrap numpy
methods and refuse CUDA tensors. The GPU path needs a GPU to run: ``benchmarks/gpu_check.py``
exercises it; the CPU tests run the same code with numpy.
"""

from mpiopt.torch.optim import (DGC, OPTIMIZERS, SGD, DistributedOptimizer, EFSignSGD, HintSGD, IntSGD, NatSGD,
                                PowerSGD, QSGD)

__all__ = ["SGD", "IntSGD", "HintSGD", "NatSGD", "QSGD", "EFSignSGD", "DGC", "PowerSGD", "OPTIMIZERS",
           "DistributedOptimizer"]
