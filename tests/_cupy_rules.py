"""CuPy's rules on numpy: an array module for CPU tests that refuses what CuPy refuses.

Pass this module as ``xp`` (a compressor's ``xp=``, ``Quantizer(xp=...)``, ``DeviceCommunicator(xp=...)``)
and a numpy-only construct fails in ``make test`` instead of on a GPU. Arrays are numpy arrays
wrapped in :class:`ndarray`; what CuPy does differently from numpy is refused where mpiopt could
trip on it (sources: CuPy's "Differences between CuPy and NumPy" page, docs/source/user_guide/
difference.rst, and the ufunc class in cupy/_core/_kernel.pyx):

* ``ufunc.reduceat`` exists only for ``add``; ``reduce`` and ``accumulate`` only for ``add`` and
  ``multiply``; ``at`` only for ufuncs with a scatter op (add, subtract, maximum, minimum, bitwise
  and/or/xor) -- NotImplementedError, as CuPy's ``ufunc.reduceat`` raises (_kernel.pyx);
* ufuncs take CuPy arrays or scalars only: a numpy array or a list raises TypeError ("Universal
  Functions only work with CuPy array or scalar"); a ufunc takes ``out``, ``dtype`` and ``casting``
  and nothing else (``where=`` raises TypeError: _kernel.pyx's ``ufunc.__call__``);
* implicit conversion to numpy raises TypeError (``numpy.asarray(a)``, ``np.array(a)``): use
  ``asnumpy``/``.get()``; ``float()``, ``int()``, ``bool()``, ``.item()`` and ``.tolist()`` are allowed
  (they synchronize: each is counted in :data:`stats` as a host read);
* reductions return 0-d arrays, not numpy scalars ("Zero-dimensional array");
* no object or string dtypes ("Data types");
* ``copyto`` from a numpy array of more than one element raises ValueError (cupy/_manipulation/basic.py);
* casting NaN/inf (or a negative float to unsigned) to an integer type is undefined in C++ and
  differs from numpy ("Cast behavior from float to integer"): refused with ValueError;
* ``a[idx] = v`` with repeated integer indices stores an undefined value on CuPy ("Duplicate values
  in indices"): refused with ValueError.

Kernels: ``RawKernel(code, name)`` runs the numpy *twin* registered for that kernel name in
:data:`TWINS` (the CUDA source cannot run here); each twin computes what the CUDA source says, in
the same order where the order decides the bits (the fixed-order sums). A kernel without a twin is
refused. ``cuda.ExternalStream``/``cuda.Device`` contexts set the current stream and device; every
launch records them in ``stats.launches`` and ``Stream.synchronize`` counts in ``stats.syncs``;
``stats.unsynced`` counts the launches the host has not waited for (a synchronize or a blocking
read waits), so a test can check that MPI never reads device memory a kernel may still be writing.
"""

import contextlib
import types
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import numpy as np

from mpiopt.kernels import numpy as ref
from mpiopt.kernels.cupy import THREADS


@dataclass
class Stats:
    """What the code under test did that costs on a GPU."""

    host_reads: int = 0
    syncs: int = 0
    launches: List[Tuple[str, int, int]] = field(default_factory=list)
    """(kernel name, stream pointer, device) of each RawKernel launch."""
    unsynced: int = 0
    """Launches the host has not waited for yet (a synchronize or a blocking read waits for them):
    what MPI reads from device memory while this is not 0 may not be written yet on a GPU."""

    def reset(self) -> None:
        self.host_reads, self.syncs, self.launches, self.unsynced = 0, 0, [], 0


stats = Stats()
_OK_AT = {"add", "subtract", "maximum", "minimum", "bitwise_and", "bitwise_or", "bitwise_xor"}
_OK_REDUCE = {"add", "multiply"}
_UFUNC_KWARGS = {"out", "dtype", "casting"}
_METHODS = {"sum", "prod", "max", "min", "mean", "any", "all", "argmax", "argmin", "cumsum", "dot", "std", "var",
            "nonzero", "argsort", "clip", "round", "squeeze", "transpose", "take", "repeat", "argpartition"}
_NUMPY_IN = {"asarray", "array", "ascontiguousarray", "asnumpy", "copyto"}
"""Routines that take numpy arrays (host-to-device copies; copyto only from one element)."""


def _refuse_dtype(dtype) -> None:
    if dtype is not None and np.dtype(dtype).kind in "OSUV":
        raise TypeError(f"CuPy has no {np.dtype(dtype)} arrays (numeric dtypes only)")


def _host_read(blocking: bool = True) -> None:
    stats.host_reads += 1
    if blocking:
        stats.unsynced = 0


class ndarray:
    """A numpy array under CuPy's rules (see the module docstring)."""

    __slots__ = ("_a",)

    def __init__(self, a: np.ndarray):
        _refuse_dtype(a.dtype)
        self._a = a

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))

    def __repr__(self) -> str:
        return f"rules.ndarray({self._a!r})"

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield self[i]

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def __array_ufunc__(self, uf, method, *inputs, **kwargs):
        u = ufunc(uf)
        return u(*inputs, **kwargs) if method == "__call__" else getattr(u, method)(*inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        return _call_function(func.__name__, args, kwargs, func)

    # host reads (synchronizing on CuPy)
    def _scalar(self):
        if self._a.size != 1:
            raise TypeError("only size-1 arrays can be converted to Python scalars")
        _host_read()
        return self._a.reshape(()).item()

    def __float__(self) -> float:
        return float(self._scalar())

    def __int__(self) -> int:
        return int(self._scalar())

    def __bool__(self) -> bool:
        return bool(self._scalar())

    def item(self):
        return self._scalar()

    def tolist(self):
        _host_read()
        return self._a.tolist()

    def get(self, stream=None, out=None, blocking: bool = True):
        _host_read(blocking)
        if out is None:
            return self._a.copy()
        np.copyto(out, self._a)
        return out

    def set(self, arr: np.ndarray, stream=None) -> None:
        if not isinstance(arr, np.ndarray) or arr.shape != self._a.shape:
            raise ValueError(f"set() takes a numpy array of shape {self._a.shape}")
        self._a[...] = arr

    # indexing
    def __getitem__(self, key):
        return _wrap(np.asarray(self._a[_unwrap_index(key)]) if _is_scalar_key(key) else self._a[_unwrap_index(key)])

    def __setitem__(self, key, value) -> None:
        key = _unwrap_index(key)
        for k in key if isinstance(key, tuple) else (key,):
            if isinstance(k, np.ndarray) and k.dtype.kind in "iu" and len(np.unique(k)) != k.size:
                raise ValueError("repeated indices in a[idx] = v store an undefined value on CuPy")
        value = value._a if isinstance(value, ndarray) else value
        if isinstance(value, np.ndarray) or np.isscalar(value):
            _check_cast(np.asarray(value), self._a.dtype)
        self._a[key] = value

    # methods
    def copy(self, order: str = "C") -> "ndarray":
        return ndarray(self._a.copy(order))

    def astype(self, dtype, copy: bool = True, **kw) -> "ndarray":
        _refuse_dtype(dtype)
        _check_cast(self._a, np.dtype(dtype))
        return ndarray(self._a.astype(dtype, copy=copy, **kw))

    def reshape(self, *shape, **kw) -> "ndarray":
        return ndarray(self._a.reshape(*shape, **kw))

    def ravel(self) -> "ndarray":
        return ndarray(self._a.ravel())

    def view(self, dtype=None) -> "ndarray":
        return ndarray(self._a.view() if dtype is None else self._a.view(dtype))

    def fill(self, value) -> None:
        self._a.fill(value)

    def sort(self, axis: int = -1) -> None:
        """In place, as cupy.ndarray.sort (the function cupy.sort returns a sorted copy)."""
        self._a.sort(axis)

    def partition(self, kth: int, axis: int = -1) -> None:
        """In place, as cupy.ndarray.partition."""
        self._a.partition(kth, axis)

    def __getattr__(self, name: str):
        """The array methods that are numpy functions of the array (sum, max, ...), under the rules."""
        if name in _METHODS:
            return lambda *a, **k: _call_function(name, (self,) + a, k)
        raise AttributeError(f"rules.ndarray has no attribute {name!r}")


def _binary(name: str, reflected: bool = False, inplace: bool = False):
    def op(self, other):
        u = ufunc(getattr(np, name))
        if inplace:
            return u(self, other, out=self)
        return u(other, self) if reflected else u(self, other)
    return op


for _op, _uf in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
                 ("floordiv", "floor_divide"), ("mod", "remainder"), ("pow", "power"), ("and", "bitwise_and"),
                 ("or", "bitwise_or"), ("xor", "bitwise_xor"), ("lshift", "left_shift"), ("rshift", "right_shift"),
                 ("matmul", "matmul")):
    setattr(ndarray, f"__{_op}__", _binary(_uf))
    setattr(ndarray, f"__r{_op}__", _binary(_uf, reflected=True))
    setattr(ndarray, f"__i{_op}__", _binary(_uf, inplace=True))
for _op, _uf in (("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"), ("eq", "equal"),
                 ("ne", "not_equal")):
    setattr(ndarray, f"__{_op}__", _binary(_uf))
ndarray.__neg__ = lambda self: ufunc(np.negative)(self)
ndarray.__abs__ = lambda self: ufunc(np.absolute)(self)
ndarray.__invert__ = lambda self: ufunc(np.invert)(self)
ndarray.__hash__ = None


def _is_scalar_key(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return all(isinstance(k, (int, np.integer)) for k in keys)


def _unwrap_index(key):
    if isinstance(key, tuple):
        return tuple(_unwrap_index(k) for k in key)
    return key._a if isinstance(key, ndarray) else key


def _check_cast(src: np.ndarray, to: np.dtype) -> None:
    """Refuse the float-to-integer casts whose result C++ leaves undefined (CuPy differs from numpy)."""
    if src.dtype.kind == "f" and np.dtype(to).kind in "iu" and src.size:
        if not np.isfinite(src).all():
            raise ValueError(f"casting NaN/inf to {np.dtype(to)} differs on CuPy (undefined in C++)")
        if np.dtype(to).kind == "u" and (src < 0).any():
            raise ValueError(f"casting negative floats to {np.dtype(to)} differs on CuPy (undefined in C++)")


def _wrap(x):
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, tuple):
        return tuple(_wrap(e) for e in x)
    if isinstance(x, np.generic):  # reductions give 0-d arrays on CuPy
        return ndarray(np.asarray(x))
    return x


def _unwrap_arg(x, name: str, numpy_ok: bool):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and not numpy_ok:
        raise TypeError(f"Unsupported type {type(x)} in {name}: CuPy takes no numpy array here (copy it to "
                        "the device first)")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap_arg(e, name, numpy_ok) for e in x)
    return x


class ufunc:
    """A numpy ufunc under CuPy's ufunc rules."""

    def __init__(self, np_ufunc: np.ufunc):
        self._u = np_ufunc
        self.__name__ = np_ufunc.__name__
        self.nin, self.nout = np_ufunc.nin, np_ufunc.nout

    def _args(self, args):
        out = []
        for a in args:
            if isinstance(a, (list, tuple)):
                raise TypeError(f"Unsupported type {type(a)} in cupy.{self.__name__} (ufuncs take arrays or scalars)")
            out.append(_unwrap_arg(a, f"cupy.{self.__name__}", numpy_ok=False))
        return out

    def __call__(self, *args, **kwargs):
        extra = set(kwargs) - _UFUNC_KWARGS
        if extra:
            raise TypeError(f"Wrong arguments {sorted(extra)} for cupy.{self.__name__} (CuPy's ufuncs take out, "
                            "dtype and casting only)")
        _refuse_dtype(kwargs.get("dtype"))
        out = kwargs.pop("out", None)
        if out is not None:
            kwargs["out"] = tuple(self._args(out if isinstance(out, tuple) else (out,)))
        res = self._u(*self._args(args), **kwargs)
        if out is not None:
            return out
        return _wrap(res)

    def _method(self, method: str, allowed, *args, **kwargs):
        if self.__name__ not in allowed:
            raise NotImplementedError(f"`cupy_{self.__name__}.{method}` is not supported yet")
        args = [_unwrap_arg(a, f"cupy.{self.__name__}.{method}", numpy_ok=(i == 1 and method in ("reduceat", "at")))
                for i, a in enumerate(args)]
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = _unwrap_arg(out, method, numpy_ok=False)
        res = getattr(self._u, method)(*args, **kwargs)
        return out if out is not None else _wrap(res)

    def reduce(self, *args, **kwargs):
        return self._method("reduce", _OK_REDUCE, *args, **kwargs)

    def accumulate(self, *args, **kwargs):
        return self._method("accumulate", _OK_REDUCE, *args, **kwargs)

    def reduceat(self, *args, **kwargs):
        return self._method("reduceat", {"add"}, *args, **kwargs)

    def at(self, *args, **kwargs):
        return self._method("at", _OK_AT, *args, **kwargs)

    def outer(self, *args, **kwargs):
        return self._method("outer", {self.__name__}, *args, **kwargs)


def _call_function(name: str, args, kwargs, fn: Callable = None):
    _refuse_dtype(kwargs.get("dtype"))
    if name == "copyto":
        src = args[1] if len(args) > 1 else kwargs.get("src")
        if isinstance(src, np.ndarray) and src.size != 1:
            raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
        dst = args[0]
        casting = kwargs.get("casting", "same_kind")
        if isinstance(src, ndarray) and casting == "unsafe":
            _check_cast(src._a, dst.dtype)
    numpy_ok = name in _NUMPY_IN
    a = [_unwrap_arg(x, f"cupy.{name}", numpy_ok) for x in args]
    k = {key: _unwrap_arg(x, f"cupy.{name}", numpy_ok) for key, x in kwargs.items()}
    res = (getattr(np, name) if fn is None else fn)(*a, **k)
    if name == "copyto":
        return None
    return _wrap(res)


def asnumpy(a, stream=None, order: str = "C", out=None):
    """The host copy of a device array (explicit: counted as a host read)."""
    if isinstance(a, ndarray):
        _host_read()
        res = a._a.copy()
    else:
        res = np.asarray(a)
    if out is not None:
        np.copyto(out, res)
        return out
    return res


def asarray(a, dtype=None, order=None) -> ndarray:
    """A device array from a numpy array, a list or a device array (no copy when it is one already)."""
    _refuse_dtype(dtype)
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    host = np.asarray(a, dtype=dtype)
    _refuse_dtype(host.dtype)
    return ndarray(host.copy())


def array(a, dtype=None, copy: bool = True, order: str = "K", ndmin: int = 0) -> ndarray:
    if isinstance(a, ndarray):
        return ndarray(np.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    _refuse_dtype(dtype)
    return ndarray(np.array(a, dtype=dtype, order=order, ndmin=ndmin))


def empty_pinned(shape, dtype=np.float64) -> np.ndarray:
    """Host staging memory (pinned on CuPy: ``cupyx.empty_pinned``)."""
    return np.empty(shape, dtype=dtype)


def __getattr__(name: str):
    """Everything else of numpy: ufuncs under the ufunc rules, routines with their arguments checked,
    dtypes and constants as they are."""
    obj = getattr(np, name)
    if isinstance(obj, np.ufunc):
        return ufunc(obj)
    if isinstance(obj, type) or not callable(obj):
        return obj
    return lambda *args, **kwargs: _call_function(name, args, kwargs)


# ---- streams and devices ----------------------------------------------------------------------------

class Stream:
    """A CUDA stream: its pointer names it in ``stats.launches``; ``synchronize`` is counted."""

    def __init__(self, ptr: int = 0, device_id: int = -1):
        self.ptr, self.device_id = ptr, device_id

    def synchronize(self) -> None:
        stats.syncs += 1
        stats.unsynced = 0

    def __enter__(self) -> "Stream":
        _streams.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _streams.pop()


class Device:
    """``with Device(i):`` makes device i current."""

    def __init__(self, device: int = 0):
        self.id = int(device)

    def __enter__(self) -> "Device":
        _devices.append(self.id)
        return self

    def __exit__(self, *exc) -> None:
        _devices.pop()


_streams: List[Stream] = [Stream(0)]
_devices: List[int] = [0]
cuda = types.SimpleNamespace(Stream=Stream, ExternalStream=Stream, Device=Device,
                             get_current_stream=lambda: _streams[-1])


# ---- kernels: numpy twins of mpiopt/kernels/cupy.py's CUDA sources -----------------------------------

TWINS: Dict[str, Callable] = {}


def twin(kind: str):
    def register(fn: Callable) -> Callable:
        TWINS[kind] = fn
        return fn
    return register


class RawKernel:
    """``cupy.RawKernel``: runs the twin of its kernel name (``mpiopt_<kind>_<dtype>...``)."""

    def __init__(self, code: str, name: str, options=(), **kw):
        parts = name.split("_")[1:]
        while parts and parts[-1] in _DTYPE_NAMES:
            parts.pop()
        self.kind, self.name, self.code = "_".join(parts), name, code
        if self.kind not in TWINS:
            raise NotImplementedError(f"no numpy twin for kernel {name}: add one to tests/_cupy_rules.py")

    def __call__(self, grid, block, args, **kw) -> None:
        if tuple(block) != (THREADS,) and self.kind not in ("finish",):
            raise ValueError(f"{self.name}: the twins assume {THREADS} threads per block, got {block}")
        stats.launches.append((self.name, _streams[-1].ptr, _devices[-1]))
        stats.unsynced += 1
        TWINS[self.kind](*[a._a if isinstance(a, ndarray) else a for a in args])


_DTYPE_NAMES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64"}


def _alpha_vec(alphas, a0, mode, lo, hi, blk, size):
    """The alpha of every coordinate (the kernels' mpiopt_alpha)."""
    if mode == 0:
        return np.float64(a0)
    if mode == 2:
        return alphas
    return np.repeat(alphas[blk], hi - lo) if size else np.empty(0)


def _ints(v, alphas, a0, mode, lo, hi, blk, key, random):
    """Int(alpha v) as doubles (the kernels' mpiopt_int), every coordinate."""
    size = v.shape[0]
    t = np.multiply(v.astype(np.float64), _alpha_vec(alphas, a0, mode, lo, hi, blk, size))
    if random:
        u = np.empty(size)
        ref.uniform(int(key), ref.counters(size), u, np.empty(size, np.uint64), np.empty(size, np.uint64))
        return np.floor(t + u)
    return np.rint(t)


@twin("noise")
def _noise(key, size, out):
    ref.uniform(int(key), ref.counters(int(size)), out, np.empty(size, np.uint64), np.empty(size, np.uint64))


@twin("qmax")
def _qmax(v, alphas, a0, mode, lo, hi, blk, key, random, partial, counts):
    with np.errstate(invalid="ignore", over="ignore"):
        r = _ints(v, alphas, a0, mode, lo, hi, blk, key, random)
    for c in range(len(lo)):
        part = r[lo[c]:hi[c]]
        ok = np.isfinite(part)
        partial[c] = np.abs(part[ok]).max(initial=0.0)
        counts[c] = part.size - int(ok.sum())


@twin("finish")
def _finish(partial, counts, nc, out):
    out[0] = partial[:nc].max(initial=0.0)
    out[1] = float(counts[:nc].sum())


@twin("pack")
def _pack(v, alphas, a0, mode, lo, hi, blk, key, random, bound, fb, out, counts):
    with np.errstate(invalid="ignore", over="ignore"):
        r = _ints(v, alphas, a0, mode, lo, hi, blk, key, random)
    r[~np.isfinite(r)] = 0.0
    for c in range(len(lo)):
        counts[c] = int((np.abs(r[lo[c]:hi[c]]) > bound).sum())
    out[...] = np.clip(r, -fb, fb).astype(out.dtype)


@twin("values")
def _values(v, alphas, a0, mode, lo, hi, blk, key, random, fb, out):
    with np.errstate(invalid="ignore", over="ignore"):
        r = _ints(v, alphas, a0, mode, lo, hi, blk, key, random)
    r[~np.isfinite(r)] = 0.0
    out[...] = np.clip(r, -fb, fb)


@twin("local")
def _local(v, alphas, a0, mode, lo, hi, blk, key, random, fb, out):
    with np.errstate(invalid="ignore", over="ignore"):
        r = _ints(v, alphas, a0, mode, lo, hi, blk, key, random)
    r[~np.isfinite(r)] = 0.0
    out[...] = np.divide(np.clip(r, -fb, fb), _alpha_vec(alphas, a0, mode, lo, hi, blk, v.shape[0]))


def _decoded(s, alphas, a0, mode, lo, hi, blk, cn, inv_n, dtype):
    if mode == 0:
        return np.divide(s, cn).astype(dtype)
    q = np.divide(s, _alpha_vec(alphas, a0, mode, lo, hi, blk, s.shape[0])).astype(dtype)
    return q * dtype.type(inv_n)


@twin("decode")
def _decode(s, alphas, a0, mode, lo, hi, blk, cn, inv_n, out):
    out[...] = _decoded(s, alphas, a0, mode, lo, hi, blk, cn, inv_n, out.dtype)


@twin("decode_update")
def _decode_update(s, alphas, a0, mode, lo, hi, blk, cn, inv_n, lr, x):
    x -= _decoded(s, alphas, a0, mode, lo, hi, blk, cn, inv_n, x.dtype) * x.dtype.type(lr)


@twin("sqdiff")
def _sqdiff(x, x_prev, lo, hi, blk, partial):
    """Thread t of a chunk adds coordinates lo + t, lo + t + THREADS, ... in order; then the
    shared-memory tree: part[t] += part[t + w] for w = THREADS/2, ..., 1."""
    for c in range(len(lo)):
        xs = x[lo[c]:hi[c]].astype(np.float64)
        t = xs - x_prev[lo[c]:hi[c]]
        sq = t * t
        rows = -(-sq.size // THREADS)
        padded = np.zeros(rows * THREADS)
        padded[:sq.size] = sq
        acc = np.zeros(THREADS)
        for row in padded.reshape(rows, THREADS):
            acc = acc + row
        w = THREADS // 2
        while w:
            acc[:w] = acc[:w] + acc[w:2 * w]
            w //= 2
        partial[c] = acc[0]
        x_prev[lo[c]:hi[c]] = xs


@twin("absmax")
def _absmax(v, lo, hi, blk, partial):
    for c in range(len(lo)):
        a = np.abs(v[lo[c]:hi[c]].astype(np.float64))
        partial[c] = np.nan if np.isnan(a).any() else a.max(initial=0.0)


@twin("combine_sum")
def _combine_sum(partial, first, nb, out):
    for b in range(nb):
        acc = 0.0
        for c in range(first[b], first[b + 1]):
            acc += float(partial[c])
        out[b] = acc


@twin("combine_max")
def _combine_max(partial, first, nb, out):
    for b in range(nb):
        part = partial[first[b]:first[b + 1]]
        out[b] = np.nan if np.isnan(part).any() else part.max(initial=0.0)


class Window:
    """The figures of :data:`stats` over a ``counting()`` body: live inside it, frozen after it."""

    def __init__(self):
        self._frozen = None

    def __getattr__(self, name: str):
        return getattr(stats if self._frozen is None else self._frozen, name)


@contextlib.contextmanager
def counting():
    """``with counting() as seen:`` -- :data:`stats` reset on entry; ``seen`` keeps the body's figures."""
    stats.reset()
    seen = Window()
    try:
        yield seen
    finally:
        seen._frozen = Stats(stats.host_reads, stats.syncs, list(stats.launches), stats.unsynced)
