"""The torch optimizers over mpiopt's compressors and methods (see :mod:`mpiopt.torch` for the table).

The runner (:mod:`mpiopt.run`, which imports mpi4py) is imported when an optimizer is built, so that
importing this module does not initialize MPI.
"""

import functools
import math
from typing import Any, Callable, ClassVar, Dict, Iterable, Optional

import numpy as np
import torch

from mpiopt.comm import Communicator, on_device
from mpiopt.compressors import compressor_class
from mpiopt.methods import make_method
from mpiopt.methods.base import Method
from mpiopt.problems.torch import GradientBucket, array_module
from mpiopt.state import capture, restore
from mpiopt.torch.common import (SUPPORTED_DTYPES, CompressorEngine, check_identity, layer_starts,
                                 non_finite_gradient, record_from_torch, record_to_torch, with_integer_first_step)


class _BucketProblem:
    """The Problem a wrapped method sees: its 'stochastic gradient' is this step's gradient vector.

    The network's objective is not available to the method (``loss`` is NaN, smoothness unknown);
    the optimizer sets ``v`` before each step.
    """

    n_samples = 1

    def __init__(self, dim: int, xp=np):
        self.dim = dim
        self.v = xp.zeros(dim)

    def smoothness(self) -> float:
        return math.nan

    def loss(self, x: np.ndarray) -> float:
        return math.nan

    def grad(self, x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        return self.stochastic_grad(x, np.zeros(1, dtype=np.intp), out)

    def stochastic_grad(self, x: np.ndarray, idx: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        if out is None:
            return self.v.copy()
        np.copyto(out, self.v)
        return out


class DistributedOptimizer(torch.optim.Optimizer):
    """Base of the mpiopt torch optimizers: bucket, weight decay, the exchange, momentum, state.

    Subclasses set ``method_name`` and implement :meth:`_build` (the engine doing the exchange: a
    compressor, or a whole mpiopt Method; it holds the state record) and :meth:`_direction` (write
    this step's move into ``self._move``).
    """

    method_name: ClassVar[str] = ""
    takes_cuda: ClassVar[bool] = True
    """Whether the optimizer runs on CUDA tensors (its exchange on CuPy arrays)."""

    def __init__(self, params: Iterable, comm=None, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 seed: int = 0, **options: Any):
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0.0):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} takes one parameter group (all parameters share lr, "
                             f"momentum and weight decay); got {len(self.param_groups)}")
        self.bucket = GradientBucket(self.param_groups[0]["params"])
        if self.bucket.device.type != "cpu" and not self.takes_cuda:
            raise ValueError(f"{type(self).__name__} runs on CPU tensors (it wraps the numpy method "
                             f"{self.method_name!r}); the model is on {self.bucket.device}: on a GPU use "
                             f"{', '.join(c.__name__ for c in OPTIMIZERS.values() if c.takes_cuda)}")
        self.xp = xp = array_module(self.bucket.device)
        if self.bucket.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{type(self).__name__} takes float16, float32 or float64 parameters, got "
                             f"{self.bucket.dtype}; convert the model first (model.float())")
        from mpiopt.run import as_communicator, make_context  # imports mpi4py: only when an optimizer is built

        self.comm: Communicator = as_communicator(comm) if xp is np else on_device(as_communicator(comm))
        self.comm.broadcast(self.bucket.param_array(), root=0)  # replicas start equal, as DDP makes them
        d = self.bucket.dim
        self.problem = _BucketProblem(d, xp)
        self.ctx = make_context(self.problem, self.comm, seed, lr, 1, math.nan, math.nan)
        self._grad = self.bucket.grad_array()
        self._param = self.bucket.param_array()
        self._move = xp.empty(d)
        """This step's move before momentum, float64, identical on every rank."""
        self._momentum = xp.zeros(d)
        self.k = 0
        self.engine = self._build(dict(options))
        self.engine.state["momentum"] = self._momentum

    # ---- what subclasses provide -------------------------------------------------------------
    def _build(self, options: Dict[str, Any]):
        raise NotImplementedError

    def _direction(self, lr: float) -> None:
        """Exchange ``self.problem.v`` (gradient + weight decay) and write the move into ``self._move``."""
        raise NotImplementedError

    # ---- the torch optimizer API -------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradient bucket in one op; the gradients stay views of it (``set_to_none`` is ignored)."""
        self.bucket.zero_grad()

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        """One collective step from the gradients in the bucket (every rank must call it together)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        lr, mu, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        self.bucket.bind()
        v = self.problem.v
        if wd:
            self.xp.multiply(self._param, np.float64(wd), out=v)
            v += self._grad
        else:
            self.xp.copyto(v, self._grad)
        self._direction(lr)
        self._apply(lr, mu)
        self.k += 1
        return loss

    def _with_momentum(self, mu: float):
        """This step's move with heavy-ball momentum after decoding: m = mu m + move, kept on every
        rank (so never sent); the move itself when ``mu`` is 0."""
        if not mu:
            return self._move
        m = self._momentum
        m *= mu
        m += self._move
        return m

    def _apply(self, lr: float, mu: float) -> None:
        """p -= lr (mu m + d) with m kept on every rank (heavy ball after decoding)."""
        self.xp.multiply(self._with_momentum(mu), np.float64(lr), out=self._move)
        self._param -= self._move  # computed in float64, cast to the parameters' dtype

    @property
    def wire_bytes(self) -> int:
        """Bytes this rank has handed to MPI so far (all collectives of the method)."""
        return self.comm.bytes_sent

    @property
    def info_bits(self) -> int:
        """Information bits this rank sent so far (the method's count, e.g. 1 + log2 of max|Q| per int)."""
        return self.engine.info_bits

    @property
    def clipped(self) -> int:
        """Coordinates clipped to the wire dtype's bound so far on this rank (integer methods)."""
        return self.engine.clipped

    def _identity(self) -> Dict[str, Any]:
        return {"method": self.method_name, "n_ranks": self.comm.size, "rank": self.comm.rank, "dim": self.bucket.dim}

    def state_dict(self) -> Dict[str, Any]:
        """This rank's optimizer state: hyper-parameters and the state record (:mod:`mpiopt.state`):
        the engine's arrays (method or compressor state, momentum, ...), step, streams, counters."""
        from mpiopt.run import context_rngs

        record = record_to_torch(capture(self.engine, context_rngs(self.ctx), self.comm))
        return {
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
            "mpiopt": {**self._identity(), "step": self.k, **record},
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore a state saved by the same optimizer class on the same rank of a same-size job."""
        from mpiopt.run import context_rngs

        saved = state_dict["mpiopt"]
        check_identity(saved, self._identity(), "optimizer state does not match this optimizer")
        restore(record_from_torch(saved), self.engine, context_rngs(self.ctx), self.comm)
        self.k = int(saved["step"])
        for group, hyper in zip(self.param_groups, state_dict["param_groups"]):
            group.update(hyper)


class _CompressorOptimizer(DistributedOptimizer):
    """Optimizers whose exchange is one mpiopt compressor: the move is d = mean_i C(g_i + wd p)."""

    compressor: ClassVar[str] = ""
    reads_iterate: ClassVar[bool] = False
    """True when the compressor's alpha reads the iterate (IntSGD): then x~ is kept."""

    def _build(self, options: Dict[str, Any]) -> CompressorEngine:
        ctx = self.ctx
        comp = compressor_class(self.compressor)(self.comm, self.bucket.dim, seed=ctx.seed, worker=ctx.worker,
                                                 fail=functools.partial(non_finite_gradient, self.comm), xp=self.xp,
                                                 **options)
        comp.prepare(self._param)
        engine = CompressorEngine(comp)
        if self.reads_iterate:
            self._iterate = engine.state["iterate"] = self._param.astype(np.float64)
            self._iterate_move = self.xp.empty(self.bucket.dim)
        return engine

    def _direction(self, lr: float) -> None:
        comp = self.engine.comp
        if self.reads_iterate:
            comp.exchange(self.problem.v, self.k, self._iterate, lr, self._move)
            self.xp.multiply(self._move, np.float64(lr), out=self._iterate_move)
            self._iterate -= self._iterate_move
        else:  # these compressors do not read the iterate
            comp.exchange(self.problem.v, self.k, None, lr, self._move)
        self.engine.count()


class SGD(_CompressorOptimizer):
    """Data-parallel SGD: the gradient averaged by one float Allreduce in the model's dtype."""

    method_name = "sgd"
    compressor = "none"

    def __init__(self, params: Iterable, comm=None, *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, seed: int = 0, float_dtype: Optional[str] = None):
        self._float_dtype = float_dtype
        super().__init__(params, comm, lr=lr, momentum=momentum, weight_decay=weight_decay, seed=seed)

    def _build(self, options: Dict[str, Any]) -> CompressorEngine:
        dtype = self._float_dtype or str(self.bucket.dtype).replace("torch.", "")
        return super()._build({**options, "float_dtype": dtype})


class IntSGD(_CompressorOptimizer):
    """IntSGD (Mishchenko et al., ICLR 2022): Int(alpha g_i) in one integer Allreduce per step.

    ``block='layer'``: one alpha per parameter tensor (Alg. 2); ``block=None``: one scalar alpha
    (Alg. 1). ``wire_dtype`` ('int8', 'int16', 'int32', 'int64' or 'auto'), ``rounding``, ``alpha``,
    ``alpha0``, ``first_step``, ``beta``, ``eps`` and ``kernel`` are the int compressor's options
    (:class:`mpiopt.compressors.integer.IntCompressor`). There is no previous move to size the first
    step's alpha by: here it defaults to ``first_step='exponent'`` (integers scaled by the largest
    |g| over the ranks, from one integer MAX Allreduce of an exponent per block), so every step sends
    integers; ``first_step='float'`` sends float64 instead, as ``mpiopt run`` does by default.
    Alpha follows the current ``lr`` of the parameter group at every step, so LR schedules are followed.
    """

    method_name = "intsgd"
    compressor = "int"
    reads_iterate = True

    def __init__(self, params: Iterable, comm=None, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 block: Optional[str] = "layer", seed: int = 0, **options: Any):
        if block not in ("layer", None):
            raise ValueError(f"block must be 'layer' (one alpha per parameter tensor) or None, got {block!r}")
        self.block = block
        super().__init__(params, comm, lr=lr, momentum=momentum, weight_decay=weight_decay, seed=seed,
                         **with_integer_first_step(options))

    def _build(self, options: Dict[str, Any]) -> CompressorEngine:
        if self.block == "layer":
            options["block_starts"] = layer_starts(self.bucket.blocks)
        return super()._build(options)

    @property
    def alpha(self) -> np.ndarray:
        """The alpha of the last step, per block (one per parameter tensor with ``block='layer'``,
        one value with ``block=None``); zeros before the first integer step."""
        return self.engine.comp.alpha_blocks.copy()


class HintSGD(_CompressorOptimizer):
    """HintSGD: SwitchML's scaling from a 1-float MAX Allreduce, then ``bits``-bit integers."""

    method_name = "hintsgd"
    compressor = "hint"


class NatSGD(_CompressorOptimizer):
    """SGD with natural compression: each coordinate an unbiased signed power of two (Allgather)."""

    method_name = "natsgd"
    compressor = "nat"


class QSGD(_CompressorOptimizer):
    """QSGD with ``levels`` levels per vector (Allgather of the norm and the signed levels)."""

    method_name = "qsgd"
    compressor = "qsgd"


class _MethodOptimizer(DistributedOptimizer):
    """Optimizers that wrap a whole mpiopt method: its step from x = 0 gives -update in x."""

    takes_cuda = False
    momentum_in_method: ClassVar[bool] = False
    """True when ``momentum`` is the method's own option (then no heavy ball is added on top)."""

    def _build(self, options: Dict[str, Any]) -> Method:
        if self.momentum_in_method:
            options["momentum"] = float(self.param_groups[0]["momentum"])
        method = make_method(self.method_name, self.ctx, **options)
        self._x = np.zeros(self.bucket.dim)
        method.start(self._x)
        method.prepare(self._x)
        return method

    def _direction(self, lr: float) -> None:
        x = self._x
        x[...] = 0.0
        self.engine.lr = lr
        self.engine.step(x, self.k)
        np.negative(x, out=self._move)

    def _apply(self, lr: float, mu: float) -> None:
        """p -= (mu m + u) for the method's update u (which already includes lr)."""
        move = self._with_momentum(0.0 if self.momentum_in_method else mu)
        np.subtract(self._param, move, out=self._param, casting="same_kind")


class EFSignSGD(_MethodOptimizer):
    """EF-signSGD: scaled bit-packed signs with error feedback; heavy-ball momentum on the decoded update."""

    method_name = "ef-signsgd"


class DGC(_MethodOptimizer):
    """Deep Gradient Compression: top-k sparsification with momentum correction (``momentum``),
    masking, optional ``clip_norm``, sparsity warm-up (``density``, ``warmup_iters``, ``warmup_density``)."""

    method_name = "dgc"
    momentum_in_method = True


class PowerSGD(_MethodOptimizer):
    """PowerSGD of rank ``rank`` over the flattened gradient, error feedback, its own ``momentum``."""

    method_name = "powersgd"
    momentum_in_method = True


OPTIMIZERS = {cls.method_name: cls for cls in (SGD, IntSGD, HintSGD, NatSGD, QSGD, EFSignSGD, DGC, PowerSGD)}
"""Optimizer classes by their ``mpiopt run`` method name."""
