"""Torch models as mpiopt Problems, and the flat buckets that hand their gradients to the kernels.

``GradientBucket`` flattens a model's parameters and gradients into one preallocated contiguous
tensor each: every ``param.data`` and every ``param.grad`` is a view into its bucket. Autograd then
accumulates straight into the gradient bucket, a compressor reads the whole model's gradient as one
array, and one vectorized op updates every parameter. ``blocks`` remembers each parameter tensor's
(offset, size), the layers of block alpha (IntSGD Alg. 2).

Hand-over is zero-copy: :func:`as_array` gives a numpy view of a CPU tensor and a CuPy view (DLPack)
of a CUDA tensor, sharing memory with the tensor.

``TorchProblem`` wraps a module, a loss and a dataset as a :class:`mpiopt.problems.Problem`, so the
numpy methods of ``mpiopt.minimize`` can train a network too. Its iterate x is a float64 host vector
(the Problem contract), so on a GPU model ``x`` and ``out`` cross the host boundary once per call;
the GPU hot path is the torch optimizer of :mod:`mpiopt.torch`, which never leaves the device.
"""

import math
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

Block = Tuple[int, int]


def as_array(tensor: torch.Tensor):
    """A numpy (CPU) or CuPy (CUDA) array sharing ``tensor``'s memory: no copy either way."""
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    if tensor.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(tensor)
    raise TypeError(f"no zero-copy array type for a tensor on {tensor.device}; use a CPU or CUDA tensor")


def array_module(device: torch.device):
    """numpy for CPU tensors, CuPy for CUDA tensors (the array module of :func:`as_array`'s views)."""
    if device.type == "cpu":
        return np
    if device.type == "cuda":
        try:
            import cupy
        except ImportError:
            raise ImportError("CUDA tensors need CuPy (pip install mpiopt[gpu]), which is not installed") from None
        return cupy
    raise TypeError(f"no array module for tensors on {device}; use CPU or CUDA tensors")


class GradientBucket:
    """One model's parameters and gradients, each in one contiguous tensor that the params view.

    ``params`` and ``grads`` are flat tensors of ``dim`` elements (the parameters' dtype and device);
    ``blocks[i] = (offset, size)`` locates parameter ``i`` (in the order given) in both. Parameters
    that do not require a gradient are left out; a tensor listed twice (tied weights) counts once.

    Build the bucket *after* moving the model to its device and dtype: ``model.to(...)`` replaces
    ``param.data`` and :meth:`bind` then refuses to go on (the bucket would silently stop training).
    """

    def __init__(self, params: Iterable[torch.Tensor]):
        unique: List[torch.Tensor] = []
        seen = set()
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"expected torch tensors (model.parameters()), got {type(p).__name__}")
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        if not unique:
            raise ValueError("no parameter requires a gradient: nothing to optimize")
        kinds = {(p.dtype, p.device) for p in unique}
        if len(kinds) > 1:
            raise ValueError("all parameters must share one dtype and device for one bucket, "
                             f"got {sorted(map(str, kinds))}")
        self.tensors: Tuple[torch.Tensor, ...] = tuple(unique)
        sizes = np.array([p.numel() for p in unique], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        self.blocks: Tuple[Block, ...] = tuple(zip(offsets.tolist(), sizes.tolist()))
        self.dim = int(sizes.sum())
        dtype, device = unique[0].dtype, unique[0].device
        self.params = torch.empty(self.dim, dtype=dtype, device=device)
        self.grads = torch.zeros(self.dim, dtype=dtype, device=device)
        self._param_ptrs = []
        self._grad_views = []
        with torch.no_grad():
            for p, (o, s) in zip(unique, self.blocks):
                view = self.params[o:o + s].view_as(p)
                view.copy_(p)
                p.data = view
                self._param_ptrs.append(view.data_ptr())
                self._grad_views.append(self.grads[o:o + s].view_as(p))
                p.grad = self._grad_views[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.params.dtype

    @property
    def device(self) -> torch.device:
        return self.params.device

    def bind(self) -> None:
        """Make sure every gradient lives in the bucket (call before reading ``grads``).

        A ``zero_grad(set_to_none=True)`` (torch's default) drops the views and the next backward
        allocates fresh gradients: those are copied into the bucket once and the views restored; a
        parameter that got no gradient reads as zero.
        """
        for p, view, ptr in zip(self.tensors, self._grad_views, self._param_ptrs):
            if p.data_ptr() != ptr:
                raise RuntimeError("a parameter no longer lives in its bucket (model.to()/.data was reassigned "
                                   "after the optimizer was built); build the optimizer after moving the model")
            g = p.grad
            if g is None:
                view.zero_()
                p.grad = view
            elif g.data_ptr() != view.data_ptr():
                view.copy_(g)
                p.grad = view

    def zero_grad(self) -> None:
        """Zero every gradient in one op, keeping the views (so autograd keeps accumulating in place)."""
        self.grads.zero_()

    def grad_array(self):
        """The gradient bucket as a numpy (CPU) or CuPy (CUDA) array sharing its memory."""
        return as_array(self.grads)

    def param_array(self):
        """The parameter bucket as a numpy (CPU) or CuPy (CUDA) array sharing its memory."""
        return as_array(self.params)


Data = Union[Dataset, DataLoader]


class TorchProblem:
    """One worker's f_i(x) = mean over its samples of ``loss_fn(model(inputs), target)``.

    ``data`` is this worker's shard: a Dataset (``TensorDataset`` minibatches are gathered by one
    vectorized index) or a DataLoader (its ``dataset`` serves minibatches, the loader itself the full
    passes of :meth:`loss` and :meth:`grad`). Each sample is ``(*inputs, target)``. ``loss_fn`` must
    average over the batch (``reduction='mean'``); full passes weight each batch by its size, so
    ``loss``/``grad`` are exact means whatever the batch split. The model's train/eval mode is left
    as the caller set it.

    ``smoothness()`` returns the ``smoothness`` given here, else NaN: a network's gradient Lipschitz
    constant is unknown, so pass an explicit ``lr`` (and ``L``/``L_max`` if a method needs them).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], data: Data, *,
                 eval_batch_size: int = 1024, smoothness: Optional[float] = None):
        self.model = model
        self.loss_fn = loss_fn
        self.loader = data if isinstance(data, DataLoader) else None
        self.dataset = data.dataset if isinstance(data, DataLoader) else data
        self.n_samples = len(self.dataset)
        if self.n_samples == 0:
            raise ValueError("the dataset of this worker is empty")
        self.eval_batch_size = int(eval_batch_size)
        self.bucket = GradientBucket(model.parameters())
        self.dim = self.bucket.dim
        self._L = math.nan if smoothness is None else float(smoothness)

    def smoothness(self) -> float:
        return self._L

    def set_params(self, x: np.ndarray) -> None:
        """Load the float64 vector x into the model's parameters (one vectorized copy and cast)."""
        if x.shape != (self.dim,):
            raise ValueError(f"x has shape {x.shape}, expected ({self.dim},)")
        with torch.no_grad():
            self.bucket.params.copy_(torch.from_numpy(np.ascontiguousarray(x)))

    def params(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The model's current parameters as a float64 vector (a starting point x0 for minimize)."""
        out = np.empty(self.dim) if out is None else out
        out[...] = self.bucket.params.detach().cpu().numpy()
        return out

    def _to_device(self, batch: Sequence) -> List[torch.Tensor]:
        device = self.bucket.device
        return [t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch]

    def _batch(self, idx: np.ndarray) -> List[torch.Tensor]:
        if isinstance(self.dataset, TensorDataset):
            index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
            return self._to_device([t[index] for t in self.dataset.tensors])
        return self._to_device(default_collate([self.dataset[int(i)] for i in idx]))

    def _full_passes(self) -> Iterator[List[torch.Tensor]]:
        if self.loader is not None:
            for batch in self.loader:
                yield self._to_device(batch)
            return
        for start in range(0, self.n_samples, self.eval_batch_size):
            yield self._batch(np.arange(start, min(start + self.eval_batch_size, self.n_samples)))

    def _loss(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(self.model(*batch[:-1]), batch[-1])

    def _write(self, out: Optional[np.ndarray]) -> np.ndarray:
        out = np.empty(self.dim) if out is None else out
        out[...] = self.bucket.grads.detach().cpu().numpy()
        return out

    def loss(self, x: np.ndarray) -> float:
        self.set_params(x)
        total = 0.0
        with torch.no_grad():
            for batch in self._full_passes():
                total += float(self._loss(batch)) * len(batch[-1])
        return total / self.n_samples

    def loss_and_grad(self, x: np.ndarray, out: np.ndarray) -> float:
        """f_i(x) and its full gradient (into ``out``) from one forward/backward pass over the shard."""
        self.set_params(x)
        self.bucket.zero_grad()
        total = 0.0
        for batch in self._full_passes():
            value = self._loss(batch) * (len(batch[-1]) / self.n_samples)
            value.backward()
            total += value.item()
        self.bucket.bind()
        self._write(out)
        return total

    def grad(self, x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        out = np.empty(self.dim) if out is None else out
        self.loss_and_grad(x, out)
        return out

    def stochastic_grad(self, x: np.ndarray, idx: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        self.set_params(x)
        self.bucket.zero_grad()
        self._loss(self._batch(idx)).backward()
        self.bucket.bind()
        return self._write(out)
