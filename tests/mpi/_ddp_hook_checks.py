"""Helper of test_ddp_hooks.py: DDP + intsgd_hook on sklearn's digits over a real gloo job.

    (torchlaunch, n ranks) python _ddp_hook_checks.py

Every check asserts on every rank (a failed assert exits non-zero) and prints one ``ok`` line:

* ``same-as-IntSGD``: run A is DDP + intsgd_hook, run B is :class:`mpiopt.torch.IntSGD` on an
  identical copy of the model (no DDP). Both see the same per-rank minibatches, the same seed, the
  same LR schedule (lr changes at step 5) and one alpha block per layer; the model is one DDP bucket.
  What is compared: every integer buffer each rank hands to ``allreduce_int`` and ``allreduce_max``
  (the first step's exponents, one per layer; then int8 from the first step on, nothing in float),
  recorded by a communicator that copies the buffer before sending it, must be equal, step by step,
  between A and B, once A's integers are moved from their places in DDP's bucket (which DDP reorders
  after the first step) to their coordinates' places in the optimizer's order; so must the final
  parameters. To make the second
  comparison meaningful, A applies the update with IntSGD's arithmetic, p <- p - (lr * g), in
  float64: torch.optim.SGD fuses it into one multiply-add, whose last bit differs, and alpha reads
  the parameters' movement, so any one-bit difference would change later integers. (The optimizer
  given to the hook state is a torch.optim.SGD: the hook only reads its lr.)
* ``identical``: in runs A and C, the parameters are bit-identical on all ranks after every step.
* ``resume``: run C trains 4 steps, saves the model and the hook state (through torch.save /
  torch.load(weights_only=True)); a fresh DDP model and hook state load them and train 4 more
  steps; the parameters equal run A's after 8 steps, bit for bit.
* ``overflow``: run E spikes rank 0's loss by 1e5 at step 4 with wire_dtype='auto': the step is
  redone in int32 (never int16, which gloo cannot sum), nothing is clipped, and at every integer
  step the averaged gradient the hook returns is within 1/alpha of the exact float mean.
* ``int16``: IntSGDState(wire_dtype='int16') is refused on gloo with an InputError that says why.
* ``nat``: CompressorState(compressor='nat') + compressor_hook trains with ranks identical every
  step, sending one byte per coordinate (and nat's 4-byte header) per step.
* ``empty-layer``: a zero-size parameter gets no alpha block; ranks stay identical.
* ``group-lr``: param groups with different lr give each layer's alpha its own group's lr;
  ``block='bucket'`` refuses them.
* ``low-precision``: a float16 model trains with ranks identical; bfloat16 is refused, saying so.
* ``in-place``: with several buckets the numba kernel's in-place path trains the parameters of the
  numpy kernel's float64 copy path, bit for bit.
"""

import hashlib
import io

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits

import mpiopt.torch
from _torch_common import finish, init_gloo
from mpiopt.compressors.alpha import adaptive_alpha
from mpiopt.errors import InputError
from mpiopt.torch.comm import TorchCommunicator
from mpiopt.torch.hooks import CompressorState, IntSGDState, compressor_hook, intsgd_hook

STEPS, BATCH, SEED = 8, 24, 5


def lr_at(k: int) -> float:
    return 0.2 if k < 5 else 0.05


class RecordingCommunicator(TorchCommunicator):
    """A TorchCommunicator that keeps a copy of every integer buffer (and float gather) it sends."""

    def __init__(self):
        super().__init__()
        self.sent = []

    def allreduce_int(self, buf, count=True):
        self.sent.append(buf.copy())
        return super().allreduce_int(buf, count)

    def allreduce_max(self, buf, count=True):
        self.sent.append(buf.copy())
        return super().allreduce_max(buf, count)

    def allgather(self, sendbuf, recvbuf, count=True):
        if count:  # a float first step (uncounted set-up gathers are not compared)
            self.sent.append(sendbuf.copy())
        return super().allgather(sendbuf, recvbuf, count)


def shard():
    X, y = load_digits(return_X_y=True)
    r, n = dist.get_rank(), dist.get_world_size()
    return torch.from_numpy(X[r::n] / 16.0), torch.from_numpy(y[r::n])


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).double()


def batch(X, y, k):
    idx = torch.arange(k * BATCH, (k + 1) * BATCH) % len(y)
    return X[idx], y[idx]


def flat(m) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def same_on_all_ranks(m, k: int) -> None:
    digest = hashlib.sha256(flat(m).numpy().tobytes()).hexdigest()
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, digest)
    assert len(set(seen)) == 1, f"parameters differ between ranks after step {k}"


def ddp_steps(ddp, state, X, y, steps, spike_at=None, on_step=None):
    """Train ``ddp`` with the hook of ``state``: p <- p - (lr * g), in float64, as IntSGD does."""
    for k in steps:
        lr = lr_at(k)
        state.optimizer.param_groups[0]["lr"] = lr
        ddp.zero_grad()
        xb, yb = batch(X, y, k)
        loss = F.cross_entropy(ddp(xb), yb)
        if k == spike_at and dist.get_rank() == 0:
            loss = loss * 1e5
        loss.backward()
        with torch.no_grad():
            for p in ddp.parameters():
                p.sub_(p.grad * lr)
        same_on_all_ranks(ddp.module, k)
        if on_step is not None:
            on_step(k)


def hooked(comm=None, hook=intsgd_hook):
    ddp = torch.nn.parallel.DistributedDataParallel(model())
    opt = torch.optim.SGD(ddp.parameters(), lr=lr_at(0))
    state = IntSGDState(None, opt, wire_dtype="auto", seed=SEED, comm=comm)
    ddp.register_comm_hook(state, hook)
    return ddp, state


def in_optimizer_order(sent: np.ndarray, runs) -> np.ndarray:
    """A bucket's integer buffer (coordinates where the (position, coordinate, count) ``runs`` put
    them, then the header) with each coordinate moved to its place in the optimizer's order."""
    out = sent.copy()
    for pos, coord, count in runs:
        out[coord:coord + count] = sent[pos:pos + count]
    return out


def same_as_intsgd(X, y):
    ddp, state = hooked(RecordingCommunicator())
    runs = []
    ddp_steps(ddp, state, X, y, range(STEPS), on_step=lambda k: runs.append(list(state.buckets[0].plan.runs)))
    assert len(state.buckets) == 1
    assert runs[-1] != runs[0] == [(0, 0, state.buckets[0].plan.dim)], "DDP's rebuilt bucket should reorder the layers"
    plain = model()
    rec_b = RecordingCommunicator()
    opt = mpiopt.torch.IntSGD(plain.parameters(), rec_b, lr=lr_at(0), seed=SEED, wire_dtype="auto")
    for k in range(STEPS):
        opt.param_groups[0]["lr"] = lr_at(k)
        opt.zero_grad()
        xb, yb = batch(X, y, k)
        F.cross_entropy(plain(xb), yb).backward()
        opt.step()
    sent_a, sent_b = state.comm.sent, rec_b.sent
    assert len(sent_a) == len(sent_b) == STEPS + 1, (len(sent_a), len(sent_b))
    layers = len(list(plain.parameters()))
    assert sent_a[0].dtype == np.int64 and sent_a[0].shape == (layers,)  # the first step's exponents
    assert all(a.dtype == np.int8 for a in sent_a[1:])
    for k, (a, b) in enumerate(zip(sent_a, sent_b)):
        a = in_optimizer_order(a, runs[k - 1]) if k else a
        assert a.dtype == b.dtype and np.array_equal(a, b), f"step {k}: the hook sent other values than IntSGD"
    assert torch.equal(flat(ddp.module), flat(plain)), "final parameters differ from IntSGD's"
    assert state.bytes_sent == rec_b.bytes_sent and state.info_bits == opt.info_bits
    print("ok same-as-IntSGD identical", {k: v for k, v in state.stats().items()})
    return flat(ddp.module)


def resume(X, y, final_a):
    ddp, state = hooked()
    ddp_steps(ddp, state, X, y, range(4))
    blob = io.BytesIO()
    torch.save({"model": ddp.module.state_dict(), "hook": state.state_dict()}, blob)
    blob.seek(0)
    saved = torch.load(blob, weights_only=True)
    ddp2, state2 = hooked()
    ddp2.module.load_state_dict(saved["model"])
    state2.load_state_dict(saved["hook"])
    ddp_steps(ddp2, state2, X, y, range(4, STEPS))
    assert torch.equal(flat(ddp2.module), final_a), "resumed run differs from the uninterrupted one"
    print("ok resume")


def overflow(X, y):
    n = dist.get_world_size()
    worst = []

    def check_hook(st, bucket) -> torch.futures.Future[torch.Tensor]:
        local = bucket.buffer().clone()
        out = intsgd_hook(st, bucket).value()
        exact = local.clone()
        dist.all_reduce(exact)
        alpha = st.bucket(bucket).engine.comp.alpha_blocks
        if alpha.min() > 0:  # an integer step: the error is below 1/alpha per coordinate
            worst.append(float((out - exact / n).abs().max()) * float(alpha.min()))
        fut = torch.futures.Future()
        fut.set_result(out)
        return fut

    ddp, state = hooked(hook=check_hook)
    ddp_steps(ddp, state, X, y, range(STEPS), spike_at=4)
    wires = next(iter(state.buckets.values())).engine.comp.summary()["steps_by_wire"]
    assert state.redone_steps >= 1 and "int32" in wires and "int16" not in wires, (state.stats(), wires)
    biggest = torch.tensor([state.max_abs_q])
    dist.all_reduce(biggest, op=dist.ReduceOp.MAX)
    assert state.clipped == 0 and float(biggest) > 2 ** 15 / n, (state.stats(), float(biggest))  # past int16 too
    assert len(worst) == STEPS and max(worst) < 1.0, worst  # every step is an integer step
    print("ok overflow", wires, state.stats())


def int16_refused():
    opt = torch.optim.SGD(model().parameters(), lr=0.1)
    try:
        IntSGDState(None, opt, wire_dtype="int16")
    except InputError as exc:
        assert "cannot sum int16" in str(exc), exc
        print("ok int16", exc)
    else:
        raise AssertionError("wire_dtype='int16' was accepted on gloo")


def other_compressor(X, y):
    ddp = torch.nn.parallel.DistributedDataParallel(model())
    state = CompressorState(None, torch.optim.SGD(ddp.parameters(), lr=lr_at(0)), "nat", seed=SEED)
    ddp.register_comm_hook(state, compressor_hook)
    ddp_steps(ddp, state, X, y, range(3))
    d = flat(ddp.module).numel()
    assert state.bytes_sent == 3 * (d + 4), (state.bytes_sent, d)  # nat: d bytes + a 4-byte header
    print("ok nat", state.stats())


def empty_layer(X, y):
    """A model with a zero-size parameter: it gets no alpha block (it has no coordinates), the other
    layers one each, and training keeps every rank's parameters identical."""
    net = model()
    net.register_parameter("empty", torch.nn.Parameter(torch.zeros(0, dtype=torch.float64)))
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    state = IntSGDState(None, torch.optim.SGD(ddp.parameters(), lr=lr_at(0)), seed=SEED)
    ddp.register_comm_hook(state, intsgd_hook)
    for k in range(3):
        ddp.zero_grad()
        xb, yb = batch(X, y, k)
        (F.cross_entropy(ddp(xb), yb) + net.empty.sum()).backward()
        with torch.no_grad():
            for p in ddp.parameters():
                p.sub_(p.grad * lr_at(k))
        same_on_all_ranks(net, k)
    blocks = [b.engine.comp.alpha_blocks.size for b in state.buckets.values()]
    assert blocks == [4], blocks
    print("ok empty-layer", state.stats())


def group_step_sizes(X, y):
    """Param groups with different lr: each layer's alpha is Alg. 2's with its own group's lr (equal,
    bit for bit, to adaptive_alpha of the compressor's r and those step sizes), ranks stay identical;
    one alpha per bucket refuses to run with an InputError that names block='layer'."""
    net = model()
    first, second = list(net[0].parameters()), list(net[2].parameters())
    lrs = (0.2, 0.02)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD([{"params": first, "lr": lrs[0]}, {"params": second, "lr": lrs[1]}])
    state = IntSGDState(None, opt, seed=SEED)
    ddp.register_comm_hook(state, intsgd_hook)
    for k in range(4):
        ddp.zero_grad()
        xb, yb = batch(X, y, k)
        F.cross_entropy(ddp(xb), yb).backward()
        with torch.no_grad():
            for group in opt.param_groups:
                for p in group["params"]:
                    p.sub_(p.grad * group["lr"])
        same_on_all_ranks(net, k)
    comp = next(iter(state.buckets.values())).engine.comp
    per_block = np.array([lrs[0], lrs[0], lrs[1], lrs[1]])
    want = adaptive_alpha(per_block, comp.state["r"], comp.sizes, dist.get_world_size(), comp.opts["eps"])
    assert np.array_equal(comp.alpha_blocks, want), (comp.alpha_blocks, want)
    ddp = torch.nn.parallel.DistributedDataParallel(model())
    opt = torch.optim.SGD([{"params": list(ddp.module[0].parameters()), "lr": lrs[0]},
                           {"params": list(ddp.module[2].parameters()), "lr": lrs[1]}])
    ddp.register_comm_hook(IntSGDState(None, opt, seed=SEED, block="bucket"), intsgd_hook)
    try:
        F.cross_entropy(ddp(X[:BATCH]), y[:BATCH]).backward()
    except Exception as exc:  # DDP re-raises the hook's error from backward
        assert "block='layer'" in str(exc), exc
    else:
        raise AssertionError("one alpha per bucket ran with two different step sizes")
    print("ok group-lr", comp.alpha_blocks.tolist())


def in_place_is_the_copy_path(X, y):
    """Several buckets (a 300,000-parameter MLP, bucket_cap_mb=1), which DDP rebuilds after the first
    step: the numba kernel working in the buckets' buffers gives, bit for bit, the parameters of the
    numpy kernel's float64 copy path (n is a power of two here, so the two decodings agree)."""
    finals = []
    for kernel in ("numba", "numpy"):
        torch.manual_seed(0)
        wide = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                   torch.nn.ReLU(), torch.nn.Linear(512, 10)).double()
        ddp = torch.nn.parallel.DistributedDataParallel(wide, bucket_cap_mb=1)  # 2 buckets once rebuilt
        state = IntSGDState(None, torch.optim.SGD(ddp.parameters(), lr=lr_at(0)), seed=SEED, kernel=kernel)
        ddp.register_comm_hook(state, intsgd_hook)
        ddp_steps(ddp, state, X, y, range(6))
        assert len(state.buckets) > 1 and all(b.in_place == (kernel == "numba") for b in state.buckets.values()), \
            [(i, b.plan.dim, b.in_place) for i, b in state.buckets.items()]
        finals.append(flat(ddp.module))
    assert torch.equal(*finals), "in place and copied buckets trained different parameters"
    print("ok in-place", len(state.buckets), "buckets")


def low_precision(X, y):
    """A float16 model trains (its bucket is copied to float64 and back) with ranks identical every
    step; a bfloat16 one is refused with an InputError that says so."""
    for dtype in (torch.float16, torch.bfloat16):
        ddp = torch.nn.parallel.DistributedDataParallel(model().to(dtype))
        state = IntSGDState(None, torch.optim.SGD(ddp.parameters(), lr=lr_at(0)), seed=SEED)
        ddp.register_comm_hook(state, intsgd_hook)
        try:
            for k in range(3):
                ddp.zero_grad()
                xb, yb = batch(X, y, k)
                F.cross_entropy(ddp(xb.to(dtype)).float(), yb).backward()
                with torch.no_grad():
                    for p in ddp.parameters():
                        p.sub_(p.grad * lr_at(k))
                same_on_all_ranks(ddp.module, k)
        except Exception as exc:  # DDP re-raises the hook's error from backward
            assert dtype == torch.bfloat16 and "bfloat16" in str(exc), exc
        else:
            assert dtype == torch.float16, "a bfloat16 bucket was accepted"
            assert not next(iter(state.buckets.values())).in_place
    print("ok low-precision")


if __name__ == "__main__":
    init_gloo()
    X, y = shard()
    final = same_as_intsgd(X, y)
    resume(X, y, final)
    overflow(X, y)
    int16_refused()
    other_compressor(X, y)
    empty_layer(X, y)
    group_step_sizes(X, y)
    low_precision(X, y)
    in_place_is_the_copy_path(X, y)
    finish()
