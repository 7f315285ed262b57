"""DDP communication hooks: IntSGD's integer sum (or any registered compressor) for DistributedDataParallel.

::

    from mpiopt.torch.hooks import IntSGDState, intsgd_hook
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)           # any optimizer
    state = IntSGDState(process_group=None, optimizer=opt, wire_dtype="auto", seed=0)
    ddp.register_comm_hook(state, intsgd_hook)

    # mixed precision: pass the scaler, so an overflow step is skipped and the scale stays off the wire
    state = IntSGDState(None, opt, grad_scaler=scaler)

    # any registered compressor (mpiopt.compressors): its options as keywords
    state = CompressorState(process_group=None, optimizer=opt, compressor="nat")
    ddp.register_comm_hook(state, compressor_hook)

**Overlap.** The hook hands the bucket to the state's worker thread (:mod:`mpiopt.torch.worker`) and
returns at once a Future that the thread completes with the averaged bucket; DDP waits for the futures
only at the end of backward, so the communication of a bucket runs while autograd computes the next
ones. The thread runs every bucket's whole exchange (quantize, the collectives including any redo,
decode) first in, first out: every rank runs the same collectives in the same order. ``overlap=False``
runs the exchange on the autograd thread instead (a completed Future; the synchronous hook).

**Messages** (``buckets_per_message=k``, :mod:`mpiopt.torch.messages`): k consecutive DDP buckets go
as one exchange (one integer sum, one exponent MAX), started when the last of them is ready; with
one alpha per layer (the default ``block``) the iterates are those of k = 1 bit for bit (with
``block='bucket'`` the message is the alpha block). An int8 message of k = 4 float32 buckets is as large as one
float bucket: the message size ``bucket_cap_mb`` sets for the float hooks, with a quarter of the round
trips, which is what a link or busy cores charge per message (``benchmarks/lm.py``). Default 1.

**IntSGD** (``IntSGDState``, the ``int`` compressor): the state is per parameter, in the optimizer's
order (:mod:`mpiopt.torch.intsgd_engine`): IntSGD's own iterate x~ <- x~ - lr * mean, r per alpha
block (``block='layer'``: one per parameter tensor, Alg. 2, the default; ``block='bucket'``: one per
bucket, Alg. 1, from the sum of its layers' r), one step counter keying the rounding noise on each
coordinate's global place. So alpha follows IntSGD's definition whatever the optimizer does (momentum,
Adam), the integers do not depend on DDP's buckets (with one alpha per layer they are
:class:`mpiopt.torch.IntSGD`'s, coordinate by coordinate), and :meth:`CompressorState.state_dict`
resumes bit for bit under any bucketing. Each block's alpha reads its param group's current lr (LR
schedules are followed); a block whose lr is 0 sends as on its first step (integers scaled by the largest
|g| over the ranks), so lr = 0 gives no NaN. float16 and bfloat16 buckets are widened exactly to float32
for the rounding and the mean is written back in the bucket's dtype. With ``grad_scaler`` (a
``torch.amp.GradScaler``) alpha is divided by the current scale (the integers are the unscaled
gradient's), and a step with a non-finite value on some rank leaves NaN in its buckets, for the scaler
to skip, and does not advance the state; without it, such a step raises a RunError on every rank.
Unless ``alpha`` (or ``alpha0``) is given, the rule follows the optimizer (:func:`default_alpha`):
the paper's under ``torch.optim.SGD``, ``'exponent'`` (each layer's largest |g| over the ranks fills
the dtype, one small MAX Allreduce of the exponents a bucket) under Adam and any other.
gloo and NCCL cannot sum int16: ``wire_dtype='int16'`` is refused there when the state is built, and
``auto`` climbs int8 -> int32 -> int64 (never clipped, never wrapped).

**Other compressors** (:mod:`mpiopt.torch.bucket_engine`): one compressor per DDP bucket, fed a
float64 copy in the optimizer's order.

The state exposes ``bytes_sent``, ``info_bits``, ``max_abs_q``, ``clipped``, ``redone_steps`` and
``skipped_steps``; it pickles without its process group (as torch's PowerSGDState): an unpickled
state is given its optimizer (and scaler) again with :meth:`CompressorState.attach`. The hooks run on
CPU tensors (gloo); CUDA buckets are refused for now.
"""

from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from mpiopt.comm import Communicator
from mpiopt.compressors import compressor_class
from mpiopt.compressors.integer import IntCompressor
from mpiopt.errors import InputError
from mpiopt.kernels import warm_up
from mpiopt.torch.bucket_engine import BucketEngine
from mpiopt.torch.comm import TorchCommunicator
from mpiopt.torch.common import check_identity, with_integer_first_step
from mpiopt.torch.intsgd_engine import IntSGDEngine
from mpiopt.torch.messages import Member, MessageGroups
from mpiopt.torch.worker import OrderedWorker

BLOCKS = ("layer", "bucket")


def default_alpha(optimizer: torch.optim.Optimizer) -> str:
    """The int compressor's alpha rule for a hook whose caller names none: the paper's (Alg. 2) under
    ``torch.optim.SGD``, whose update is linear in the mean gradient as IntSGD's analysis assumes, so
    rounding noise about the step's size averages out; ``'exponent'`` under any other optimizer. Adam
    and its kin divide each coordinate's update by its gradient's running RMS, which does not average
    that noise away (benchmarks/lm.py, AdamW: the paper's rule ends 2.61 % above fp32's perplexity,
    ``'exponent'`` 0.69 %; under momentum SGD both end within 0.1 point of fp32's accuracy)."""
    return "paper" if isinstance(optimizer, torch.optim.SGD) else "exponent"


def with_default_alpha(options: Dict[str, Any], optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The int compressor's options with :func:`default_alpha` filled in, unless ``alpha`` is given (not
    None) or ``alpha0`` is (the paper's rule's first alpha: that rule then)."""
    if options.get("alpha") is not None or options.get("alpha0") is not None:
        return options
    return {**options, "alpha": default_alpha(optimizer)}


class CompressorState:
    """The state of :func:`compressor_hook`: the process group, the optimizer (its parameters' order
    and step sizes), a compressor name with its options, and the engine doing the exchanges.

    ``block``: 'layer' (one alpha per parameter tensor) or 'bucket' (one per bucket), for the int
    compressor. ``comm``: a Communicator to use instead of ``TorchCommunicator(process_group)``.
    ``grad_scaler``: the GradScaler of a mixed-precision run (int compressor). ``overlap``: exchange on
    the worker thread (True) or on the autograd thread. ``buckets_per_message``: consecutive DDP buckets
    exchanged as one message (:mod:`mpiopt.torch.messages`; 1: each bucket alone). Bad options raise
    :class:`mpiopt.errors.InputError` here, on every rank (e.g. ``wire_dtype='int16'`` on gloo).
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None,
                 optimizer: Optional[torch.optim.Optimizer] = None, compressor: str = "int", *, seed: int = 0,
                 block: str = "layer", comm: Optional[Communicator] = None, grad_scaler: Any = None,
                 overlap: bool = True, buckets_per_message: int = 1, **options: Any):
        if optimizer is None:
            raise ValueError("the hook state needs the optimizer: alpha reads its step size at every step")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        self.process_group, self.seed, self.block, self.overlap = process_group, int(seed), block, bool(overlap)
        self.buckets_per_message = buckets_per_message
        self.cls = compressor_class(compressor)
        if issubclass(self.cls, IntCompressor):
            options = with_default_alpha(options, optimizer)
        elif grad_scaler is not None:
            raise InputError(f"grad_scaler is an option of the IntSGD hook, not of compressor '{compressor}'")
        self.compressor, self.options = compressor, options
        self._saved: Optional[Dict[str, Any]] = None
        self._build(optimizer, grad_scaler, comm)

    def _build(self, optimizer: torch.optim.Optimizer, grad_scaler: Any, comm: Optional[Communicator]) -> None:
        self.messages = MessageGroups(self.buckets_per_message)  # refuses a bad count before any collective
        self.optimizer, self.grad_scaler = optimizer, grad_scaler
        self.comm = TorchCommunicator(self.process_group) if comm is None else comm
        opts = self.cls.resolve(dict(self.options), self.comm)  # refuse bad options now, not inside backward
        if issubclass(self.cls, IntCompressor):
            self.engine: Any = IntSGDEngine(self.comm, optimizer, opts, self.seed, self.block, grad_scaler)
            warm_up(opts.get("kernel"))
        else:
            self.engine = BucketEngine(self.comm, optimizer, self.cls, self.options, self.seed)
        self.worker = OrderedWorker()

    def attach(self, optimizer: torch.optim.Optimizer, grad_scaler: Any = None,
               process_group: Optional[dist.ProcessGroup] = None) -> None:
        """Give an unpickled state its optimizer (and scaler, process group); its saved state is restored."""
        self.process_group = process_group
        self._build(optimizer, grad_scaler, None)
        if self._saved is not None:
            self.load_state_dict(self._saved)
            self._saved = None

    def run(self, bucket: dist.GradBucket) -> torch.futures.Future:
        """The Future of ``bucket``'s exchange, pending until its message's exchange is done (on the
        worker thread, or on this one with ``overlap=False`` when the bucket ends its message)."""
        if self.optimizer is None:
            raise InputError("this hook state was unpickled: give it its optimizer first (state.attach(optimizer))")
        return self.messages.add(bucket.index(), bucket.parameters(), bucket.buffer(), bucket.is_last(), self._start)

    def _start(self, members: List[Member]) -> torch.futures.Future:
        job = (self.messages.exchange, members, self._exchange)
        return self.worker.submit(*job) if self.overlap else self.worker.run_inline(*job)

    def _exchange(self, index: int, params, buf: torch.Tensor) -> torch.Tensor:
        return self.engine.exchange(self.engine.bucket(index, params, buf), buf)

    # ---- counters ----------------------------------------------------------------------------
    @property
    def bytes_sent(self) -> int:
        """Bytes this rank handed to the collectives so far."""
        return self.comm.bytes_sent

    @property
    def info_bits(self) -> int:
        """Information bits sent so far (int: d (1 + ceil(log2(max|Q| + 1))) per step and bucket)."""
        return int(self.engine.counters["info_bits"])

    @property
    def clipped(self) -> int:
        """Coordinates clipped to the wire dtype's bound so far (never, with ``auto``)."""
        return int(self.engine.counters["clipped"])

    @property
    def max_abs_q(self) -> float:
        """The largest |Q| this rank sent (integer compressors; 0 otherwise)."""
        return float(self.engine.counters["max_abs_q"])

    @property
    def redone_steps(self) -> int:
        """Bucket steps that ``auto`` redid in a wider dtype after an overflow."""
        return int(self.engine.counters["redone_steps"])

    @property
    def skipped_steps(self) -> int:
        """Steps a non-finite gradient (a GradScaler overflow) left without advancing the state."""
        return int(self.engine.counters["skipped_steps"])

    def stats(self) -> Dict[str, Any]:
        """The counters above as one dict (this rank's)."""
        return {"bytes_sent": self.bytes_sent, "info_bits": self.info_bits, "clipped": self.clipped,
                "max_abs_q": self.max_abs_q, "redone_steps": self.redone_steps, "skipped_steps": self.skipped_steps}

    # ---- checkpoints -------------------------------------------------------------------------
    def _identity(self) -> Dict[str, Any]:
        ident = {"compressor": self.cls.name, "n_ranks": self.comm.size, "rank": self.comm.rank, "seed": self.seed,
                 "block": self.block}
        if isinstance(self.engine, IntSGDEngine):
            ident["alpha"] = self.engine.opts["alpha"]
        return ident

    def state_dict(self) -> Dict[str, Any]:
        """This rank's hook state as tensors and plain values (IntSGD: per parameter, whatever the buckets)."""
        return {**self._identity(), **self.engine.record()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore a state saved on the same rank of a same-size job with the same compressor, seed,
        blocks and alpha rule (IntSGD: under any bucketing; other compressors: the same buckets). A
        state saved before the rule was recorded (it followed no optimizer then) is taken as it is."""
        mine = self._identity()
        if "alpha" not in state_dict:
            mine.pop("alpha", None)
        check_identity(state_dict, mine, "hook state does not match this hook (same world size, rank, compressor, "
                       "seed, block and alpha rule needed)")
        self.engine.restore(state_dict)

    def __getstate__(self) -> Dict[str, Any]:
        """The configuration and the state_dict, without the process group, the communicator, the worker
        thread, the optimizer or the scaler (as torch's PowerSGDState leaves out its process group)."""
        keep = ("seed", "block", "overlap", "buckets_per_message", "compressor", "options")
        return {**{k: self.__dict__[k] for k in keep}, "_saved": self.state_dict()}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update({"buckets_per_message": 1, **state})  # pickled before the option: one bucket each
        self.cls = compressor_class(self.compressor)
        self.process_group = self.optimizer = self.grad_scaler = None


class IntSGDState(CompressorState):
    """The state of :func:`intsgd_hook`: IntSGD's integers (the ``int`` compressor) with ``wire_dtype``
    ('auto' promotes instead of clipping) and the int compressor's other options as keywords
    (``rounding``, ``alpha``, ``alpha0``, ``first_step``, ``beta``, ``eps``, ``kernel``); ``alpha``
    defaults by the optimizer (:func:`default_alpha`: 'paper' under SGD, 'exponent' otherwise); the first
    step sends integers (``first_step='exponent'``) unless ``alpha0`` or ``first_step`` says otherwise."""

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None,
                 optimizer: Optional[torch.optim.Optimizer] = None, wire_dtype: str = "auto", seed: int = 0,
                 **options: Any):
        super().__init__(process_group, optimizer, "int", seed=seed, wire_dtype=wire_dtype,
                         **with_integer_first_step(options))


def compressor_hook(state: CompressorState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Replace the bucket's gradient by the mean over ranks of its compressed gradients (every rank
    gets the same bits); returns the pending Future of the exchange (module docstring)."""
    return state.run(bucket)


intsgd_hook = compressor_hook
"""The hook of :class:`IntSGDState` (the same function: the state names the compressor)."""
