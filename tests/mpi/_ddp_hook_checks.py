"""Helper of test_ddp_hooks.py: DDP + intsgd_hook on sklearn's digits over a real gloo job.

    (torchlaunch, n ranks) python _ddp_hook_checks.py

Every check asserts on every rank (a failed assert exits non-zero) and prints one ``ok`` line. Where
a check needs the exact mean of the ranks' gradients, a hook wrapper sums the bucket's local gradient
over a second gloo group (so its collectives never interleave with the hook's) and asserts that every
coordinate the hook returns is within 1/alpha of it (each rank's rounding error is below 1): a wrong
mean fails, not only ranks that disagree.

* ``same-as-IntSGD``: DDP + intsgd_hook (one bucket, reordered by DDP's rebuild) against
  :class:`mpiopt.torch.IntSGD` on a copy of the model, same minibatches, seed and LR schedule: every
  integer buffer handed to ``allreduce_int`` / ``allreduce_max`` is equal once the hook's coordinates
  are put in the optimizer's order, and so are the final parameters. (The DDP run applies
  p <- p - (lr * g) in float64, IntSGD's arithmetic: torch.optim.SGD's fused multiply-add differs in
  the last bit, and the gradients, hence the integers, would follow.)
* ``buckets``: the same run in several buckets (bucket_cap_mb tiny), overlapped or synchronous, gives
  the one-bucket run's parameters bit for bit: the hook's state does not depend on DDP's bucketing.
* ``messages``: ``buckets_per_message`` 2 and 3 (overlapped or not; the exponent rule under Adam too)
  give the one-bucket-a-message run's parameters bit for bit with fewer collectives; a non-finite
  gradient fails every bucket of its message on every rank; 0 is refused.
* ``one-parameter-bucket``: a layer alone in its bucket (no bias) takes Alg. 2's alpha of that layer
  (it used to raise TypeError at the second step: one block went down the one-block model's path);
  the run ends on :class:`mpiopt.torch.IntSGD`'s parameters bit for bit.
* ``resume``: a multi-bucket run saved after 4 steps (torch.save / torch.load(weights_only=True)) and
  resumed in a fresh DDP model (whose first step has DDP's pre-rebuild buckets) equals the straight
  8-step run bit for bit; so does a resume under another bucket_cap_mb and one from a pickled state;
  a state of another world size is refused.
* ``optimizers``: under momentum 0.9 and Adam, each step's alpha equals, bit for bit, Alg. 2's alpha
  of IntSGD's own iterate x~ <- x~ - lr * mean, which the check tracks from the gradients DDP hands
  back (not the parameters' movement).
* ``lr-zero``: a schedule that reaches lr 0, and a param group frozen at lr 0: no error, no
  NaN, every mean within 1/alpha of the exact one.
* ``low-precision``: float16 and bfloat16 models train with ranks identical and each mean within
  1/alpha plus the dtype's rounding of the exact one.
* ``grad-scaler``: with a GradScaler (scale 2^10) and rank 0's loss made infinite at step 3, the
  scaler skips that step, the hook's state does not advance, the wire stays int8, and the final
  parameters equal, bit for bit, those of the unscaled run that simply leaves step 3 out.
* ``accumulation``: two micro-batches per step with ``no_sync`` give the same bits under two bucket
  sizes (and exact means); without ``no_sync`` every backward is an IntSGD step and the wire stays
  narrow (never int64).
* ``ddp-options``: ``static_graph=True``, ``gradient_as_bucket_view=True`` and
  ``find_unused_parameters=True`` each give the default run's parameters bit for bit.
* ``overflow``: a multi-bucket, overlapped run spikes rank 0's loss by 1e5 at step 4: the step is
  redone in int32 (never int16, which gloo cannot sum), nothing is clipped, every mean is exact to 1/alpha.
* ``overlap``: rank 1 enters backward 2 s late; on rank 0 autograd reaches the first layer before the
  exchange of the first bucket (the last layers') has completed; with ``overlap=False`` only after it.
* ``exponent``: ``alpha='exponent'`` under Adam in several buckets: at every step each layer's alpha
  puts the largest |g| over the ranks in (bound / 2, bound], the wire stays int8 (never redone), every
  mean is within 1/alpha of the exact one; ``alpha='fill'`` is refused with the reason, and so is ``alpha0`` beside 'exponent'.
* ``int16``, ``nat``, ``empty-layer``, ``group-lr`` as before: int16 refused on gloo; the nat
  compressor through compressor_hook; a zero-size parameter gets no alpha block; param groups with
  different lr give each layer its own lr, and ``block='bucket'`` refuses them.
"""

import hashlib
import io
import pickle
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits

import mpiopt.torch
from _torch_common import finish, init_gloo
from mpiopt.compressors.alpha import adaptive_alpha, block_constants
from mpiopt.compressors.integer import WIRE_NAMES
from mpiopt.errors import InputError
from mpiopt.torch.comm import TorchCommunicator
from mpiopt.torch.hooks import CompressorState, IntSGDState, compressor_hook, intsgd_hook

STEPS, BATCH, SEED = 8, 24, 5
TINY_BUCKETS = 0.0005
"""bucket_cap_mb that splits the digits MLP into several buckets (DDP's first one is capped apart)."""
CHECK_GROUP = None
"""A second gloo group for the checks' own collectives (set in main)."""


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


def model(dtype=torch.float64, first_bias=True):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32, bias=first_bias), torch.nn.ReLU(),
                               torch.nn.Linear(32, 10)).to(dtype)


def batch(X, y, k):
    idx = torch.arange(k * BATCH, (k + 1) * BATCH) % len(y)
    return X[idx], y[idx]


def flat(m) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def same_on_all_ranks(m, k: int) -> None:
    digest = hashlib.sha256(flat(m).float().numpy().tobytes()).hexdigest()
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, digest)
    assert len(set(seen)) == 1, f"parameters differ between ranks after step {k}"


def sgd_update(params, lr):
    """p <- p - (lr * g) in the parameters' dtype: IntSGD's arithmetic."""
    with torch.no_grad():
        for p in params:
            p.sub_(p.grad * lr)


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
        sgd_update(ddp.parameters(), lr)
        same_on_all_ranks(ddp.module, k)
        if on_step is not None:
            on_step(k)


def hooked(comm=None, hook=intsgd_hook, cap=25.0, ddp_options=None, make_opt=None, **options):
    ddp = torch.nn.parallel.DistributedDataParallel(model(), bucket_cap_mb=cap, **(ddp_options or {}))
    opt = torch.optim.SGD(ddp.parameters(), lr=lr_at(0)) if make_opt is None else make_opt(ddp.parameters())
    state = IntSGDState(None, opt, wire_dtype="auto", seed=SEED, comm=comm, **options)
    ddp.register_comm_hook(state, hook)
    return ddp, state


def alpha_at_positions(state, index: int) -> np.ndarray:
    """The alpha of each position of bucket ``index``'s buffer at its last exchange."""
    eng = state.engine
    plan = eng._buckets[index].plan
    out = np.zeros(plan.dim)
    for (p, _, n, _), g in zip(plan.rows.tolist(), plan.row_blocks.tolist()):
        out[p:p + n] = eng.alpha_blocks[g]
    return out


def checked_hook(worst, rel=0.0):
    """intsgd_hook, then: every coordinate of the mean within 1/alpha (+ ``rel`` |exact|, the dtype's
    rounding) of the exact mean over ranks (summed in float64 over CHECK_GROUP); appends the worst
    normalized error of each bucket exchange to ``worst``."""
    n = dist.get_world_size()

    def hook(state, bucket):
        local = bucket.buffer().detach().double().clone()
        index = bucket.index()

        def check(fut):
            out = fut.value()
            exact = local.clone()
            dist.all_reduce(exact, group=CHECK_GROUP)
            exact /= n
            alpha = torch.from_numpy(alpha_at_positions(state, index))
            err = (out.double() - exact).abs()
            allowed = (1.0 + rel) / alpha + rel * exact.abs()
            worst.append(float((err / allowed).max()) if err.numel() else 0.0)
            return out

        return intsgd_hook(state, bucket).then(check)

    return hook


def in_optimizer_order(sent: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """A bucket's integer buffer (then its header) with each coordinate moved to its global place."""
    out = sent.copy()
    out[coords] = sent[:coords.size]
    return out


def intsgd_run(net, comm, X, y):
    """``net`` trained STEPS steps by :class:`mpiopt.torch.IntSGD` over ``comm`` (the hook runs' minibatches,
    seed and LR schedule); returns the optimizer."""
    opt = mpiopt.torch.IntSGD(net.parameters(), comm, lr=lr_at(0), seed=SEED, wire_dtype="auto")
    for k in range(STEPS):
        opt.param_groups[0]["lr"] = lr_at(k)
        opt.zero_grad()
        xb, yb = batch(X, y, k)
        F.cross_entropy(net(xb), yb).backward()
        opt.step()
    return opt


def same_as_intsgd(X, y):
    ddp, state = hooked(RecordingCommunicator())
    coords = []
    ddp_steps(ddp, state, X, y, range(STEPS), on_step=lambda k: coords.append(state.engine._buckets[0].plan.coords))
    assert len(state.engine._buckets) == 1
    assert not np.array_equal(coords[-1], coords[0]), "DDP's rebuilt bucket should reorder the layers"
    plain = model()
    rec_b = RecordingCommunicator()
    opt = intsgd_run(plain, rec_b, X, y)
    sent_a, sent_b = state.comm.sent, rec_b.sent
    assert len(sent_a) == len(sent_b) == STEPS + 1, (len(sent_a), len(sent_b))
    layers = len(list(plain.parameters()))
    assert sent_a[0].dtype == np.int32 and sent_a[0].shape == (layers,)  # the first step's exponents (gloo: no int16)
    assert all(a.dtype == np.int8 for a in sent_a[1:])
    for k, (a, b) in enumerate(zip(sent_a, sent_b)):
        a = in_optimizer_order(a, coords[k - 1]) if k else a
        assert a.dtype == b.dtype and np.array_equal(a, b), f"step {k}: the hook sent other values than IntSGD"
    assert torch.equal(flat(ddp.module), flat(plain)), "final parameters differ from IntSGD's"
    assert state.bytes_sent == rec_b.bytes_sent and state.info_bits == opt.info_bits
    print("ok same-as-IntSGD identical", state.stats())
    return flat(ddp.module)


def messages(X, y, final_a):
    """``buckets_per_message``: 2 and 3 buckets a message (the digits MLP makes 2 buckets: a message of
    3 closes at the step's last bucket), overlapped or not, train the one-bucket run's parameters bit
    for bit with fewer collectives; so does the exponent rule under Adam (against its
    run of one bucket a message); a non-finite gradient in a message of several buckets fails every
    bucket's future on every rank (DDP raises it from backward) and the next step fails the same way,
    no rank left waiting; a count below 1 is refused."""
    calls = {}
    for per in (1, 2, 3):
        for overlapped in (True, False):
            ddp, state = hooked(RecordingCommunicator(), cap=TINY_BUCKETS, overlap=overlapped, buckets_per_message=per)
            ddp_steps(ddp, state, X, y, range(STEPS))
            assert torch.equal(flat(ddp.module), final_a), f"{per} buckets a message (overlap={overlapped}) " \
                                                           "trained other parameters than one bucket"
            calls[per] = len(state.comm.sent)
    assert len(state.engine._buckets) == 1 and calls[1] > calls[2] == calls[3], (calls, state.engine._buckets.keys())
    adam = {}
    for per in (1, 4):
        ddp, state = hooked(cap=TINY_BUCKETS, alpha="exponent", buckets_per_message=per,
                            make_opt=lambda ps: torch.optim.Adam(ps, lr=1e-3))
        for k in range(STEPS):
            state.optimizer.zero_grad()
            xb, yb = batch(X, y, k)
            F.cross_entropy(ddp(xb), yb).backward()
            state.optimizer.step()
            same_on_all_ranks(ddp.module, k)
        adam[per] = flat(ddp.module)
    assert torch.equal(adam[1], adam[4]), "the exponent rule trained other parameters in messages of 4 buckets"
    ddp, state = hooked(cap=TINY_BUCKETS, buckets_per_message=4)
    for k in range(2):
        xb, yb = batch(X, y, k)
        loss = F.cross_entropy(ddp(xb), yb)
        if dist.get_rank() == 0:
            loss = loss * float("inf")
        try:
            loss.backward()
        except Exception as exc:  # DDP re-raises the hook's error from backward
            assert "non-finite gradient" in str(exc), exc
        else:
            raise AssertionError(f"a non-finite gradient in a message of 4 buckets did not fail step {k}")
    try:
        hooked(buckets_per_message=0)
    except ValueError as exc:
        assert "buckets_per_message" in str(exc), exc
    else:
        raise AssertionError("buckets_per_message=0 was taken")
    print("ok messages", calls)


def one_parameter_bucket(X, y):
    """The first layer without its bias, alone in its bucket (a bucket of one alpha block in a model of
    several): its alpha is Alg. 2's for that layer, the run ends on IntSGD's parameters bit for bit."""
    ddp = torch.nn.parallel.DistributedDataParallel(model(first_bias=False), bucket_cap_mb=TINY_BUCKETS)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr_at(0))
    state = IntSGDState(None, opt, wire_dtype="auto", seed=SEED)
    ddp.register_comm_hook(state, intsgd_hook)
    ddp_steps(ddp, state, X, y, range(STEPS))
    alone = [b for b in state.engine._buckets.values() if b.plan.blocks.size == 1]
    assert alone and state.engine.layout.n_blocks > 1, [b.plan.blocks for b in state.engine._buckets.values()]
    plain = model(first_bias=False)
    intsgd_run(plain, TorchCommunicator(), X, y)
    assert torch.equal(flat(ddp.module), flat(plain)), "a one-parameter bucket trained other parameters than IntSGD"
    print("ok one-parameter-bucket", len(state.engine._buckets))


def buckets(X, y, final_a):
    for overlap in (True, False):
        ddp, state = hooked(cap=TINY_BUCKETS, overlap=overlap)
        ddp_steps(ddp, state, X, y, range(STEPS))
        assert len(state.engine._buckets) > 1, len(state.engine._buckets)
        assert torch.equal(flat(ddp.module), final_a), f"{len(state.engine._buckets)} buckets (overlap={overlap}) " \
                                                       "trained other parameters than one bucket"
    print("ok buckets", len(state.engine._buckets))


def resume(X, y, final_a):
    ddp, state = hooked(cap=TINY_BUCKETS)
    ddp_steps(ddp, state, X, y, range(4))
    blob = io.BytesIO()
    torch.save({"model": ddp.module.state_dict(), "hook": state.state_dict()}, blob)
    pickled = pickle.dumps(state)
    for how in ("state_dict", "other buckets", "pickle"):
        blob.seek(0)
        saved = torch.load(blob, weights_only=True)
        net = model()
        net.load_state_dict(saved["model"])
        ddp2 = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=25.0 if how == "other buckets"
                                                         else TINY_BUCKETS)
        opt2 = torch.optim.SGD(ddp2.parameters(), lr=lr_at(4))
        if how == "pickle":
            state2 = pickle.loads(pickled)
            state2.attach(opt2)
        else:
            state2 = IntSGDState(None, opt2, wire_dtype="auto", seed=SEED)
            state2.load_state_dict(saved["hook"])
        ddp2.register_comm_hook(state2, intsgd_hook)
        ddp_steps(ddp2, state2, X, y, range(4, STEPS))
        assert torch.equal(flat(ddp2.module), final_a), f"resumed run ({how}) differs from the uninterrupted one"
    other = dict(saved["hook"], n_ranks=dist.get_world_size() + 1)
    try:
        state2.load_state_dict(other)
    except ValueError as exc:
        assert "n_ranks" in str(exc) and "world size" in str(exc), exc
    else:
        raise AssertionError("a hook state of another world size was accepted")
    print("ok resume")


def reference_alpha(opt_factory, X, y):
    """Under the optimizer ``opt_factory`` makes, the hook's alpha at every step equals Alg. 2's alpha of
    x~ <- x~ - lr * mean, tracked here from the means DDP hands back."""
    ddp, state = hooked(make_opt=opt_factory, alpha="paper")  # Adam's default is 'exponent'
    opt = state.optimizer
    params = list(ddp.parameters())
    x = [p.detach().double().clone().numpy() for p in params]
    sizes = np.array([p.numel() for p in params], dtype=np.float64)
    consts = block_constants(sizes, 1e-8)
    r, n, lr = np.zeros(len(params)), dist.get_world_size(), opt.param_groups[0]["lr"]
    for k in range(STEPS):
        opt.zero_grad()
        xb, yb = batch(X, y, k)
        F.cross_entropy(ddp(xb), yb).backward()
        if k:
            want = adaptive_alpha(lr, r, sizes, n, 1e-8, constants=consts)
            assert np.array_equal(state.engine.alpha_blocks, want), (k, state.engine.alpha_blocks, want)
        sq = np.empty(len(params))
        for i, p in enumerate(params):
            nxt = x[i] - p.grad.double().numpy().reshape(x[i].shape) * lr
            d = (nxt - x[i]).reshape(-1)
            sq[i] = np.add.reduceat(d * d, [0])[0]
            x[i] = nxt
        r = sq if k == 0 else 0.9 * r + (1.0 - 0.9) * sq
        opt.step()
        same_on_all_ranks(ddp.module, k)
    return state


def optimizers(X, y):
    for name, make in (("momentum", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
                       ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-3))):
        state = reference_alpha(make, X, y)
        print("ok optimizers", name, state.stats())


def lr_zero(X, y):
    worst = []
    net = model()
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD([{"params": list(net[0].parameters())}, {"params": list(net[2].parameters()), "lr": 0.0}],
                          lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1.0 - k / 3))  # reaches 0 at step 3
    state = IntSGDState(None, opt, seed=SEED)
    ddp.register_comm_hook(state, checked_hook(worst))
    lrs = []
    for k in range(5):
        opt.zero_grad()
        xb, yb = batch(X, y, k)
        F.cross_entropy(ddp(xb), yb).backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters()), f"non-finite mean at step {k}"
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        same_on_all_ranks(net, k)
    assert 0.0 in lrs and len(worst) == 5 and max(worst) < 1.0, (lrs, worst)
    print("ok lr-zero", lrs, max(worst))


def low_precision(X, y):
    for dtype, rel in ((torch.float16, 2.0 ** -11), (torch.bfloat16, 2.0 ** -8)):
        worst = []
        ddp = torch.nn.parallel.DistributedDataParallel(model(dtype))
        state = IntSGDState(None, torch.optim.SGD(ddp.parameters(), lr=lr_at(0)), seed=SEED)
        ddp.register_comm_hook(state, checked_hook(worst, rel))
        for k in range(3):
            ddp.zero_grad()
            xb, yb = batch(X, y, k)
            F.cross_entropy(ddp(xb.to(dtype)).float(), yb).backward()
            sgd_update(ddp.parameters(), lr_at(k))
            same_on_all_ranks(ddp.module, k)
        assert len(worst) == 3 and max(worst) <= 1.0, (dtype, worst)
    print("ok low-precision")


def grad_scaler(X, y):
    finals, states = [], []
    for scaled in (False, True):
        net = model()
        ddp = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=TINY_BUCKETS)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1000) if scaled else None
        state = IntSGDState(None, opt, seed=SEED, grad_scaler=scaler)
        ddp.register_comm_hook(state, intsgd_hook)
        for k in range(6):
            if k == 3 and not scaled:
                continue  # the unscaled run leaves out the step the scaled one skips
            opt.zero_grad()
            xb, yb = batch(X, y, k)
            loss = F.cross_entropy(ddp(xb), yb)
            if k == 3 and dist.get_rank() == 0:
                loss = loss * float("inf")
            if scaled:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            same_on_all_ranks(net, k)
        finals.append(flat(net))
        states.append(state)
    plain, scaled_state = states
    assert scaled_state.skipped_steps == 1 and scaled_state.engine.k == plain.engine.k == 5, \
        (scaled_state.stats(), scaled_state.engine.k, plain.engine.k)
    assert scaled_state.max_abs_q == plain.max_abs_q, (scaled_state.max_abs_q, plain.max_abs_q)
    assert torch.equal(*finals), "the scaled run (overflow step skipped) differs from the unscaled run without it"
    print("ok grad-scaler", scaled_state.stats())


def accumulation(X, y):
    finals = []
    for cap in (TINY_BUCKETS, 25.0):
        worst = []
        ddp, state = hooked(cap=cap, hook=checked_hook(worst))
        for k in range(4):
            ddp.zero_grad()
            xa, ya = batch(X, y, 2 * k)
            with ddp.no_sync():
                F.cross_entropy(ddp(xa), ya).backward()
            xb, yb = batch(X, y, 2 * k + 1)
            F.cross_entropy(ddp(xb), yb).backward()
            sgd_update(ddp.parameters(), lr_at(k))
            same_on_all_ranks(ddp.module, k)
        assert max(worst) < 1.0, worst
        finals.append(flat(ddp.module))
    assert torch.equal(*finals), "no_sync accumulation depends on the buckets"
    ddp, state = hooked()
    for k in range(6):  # without no_sync: every backward is a step of the hook
        ddp.zero_grad()
        for m in range(2):
            xb, yb = batch(X, y, 2 * k + m)
            F.cross_entropy(ddp(xb), yb).backward()
        sgd_update(ddp.parameters(), lr_at(k))
        same_on_all_ranks(ddp.module, k)
    wires = dict(zip(("float64", "int8", "int16", "int32", "int64"), state.engine.state["steps_by_wire"].tolist()))
    assert wires["int64"] == 0 and wires["int8"] >= 10, wires
    print("ok accumulation", wires)


def ddp_options(X, y, final_a):
    for opts in ({"static_graph": True}, {"gradient_as_bucket_view": True}, {"find_unused_parameters": True}):
        ddp, state = hooked(ddp_options=opts)
        ddp_steps(ddp, state, X, y, range(STEPS))
        assert torch.equal(flat(ddp.module), final_a), f"DDP with {opts} trained other parameters"
    print("ok ddp-options")


def overflow(X, y):
    n = dist.get_world_size()
    worst = []
    ddp, state = hooked(hook=checked_hook(worst), cap=TINY_BUCKETS)
    ddp_steps(ddp, state, X, y, range(STEPS), spike_at=4)
    wires = dict(zip(("float64", "int8", "int16", "int32", "int64"), state.engine.state["steps_by_wire"].tolist()))
    assert state.redone_steps >= 1 and wires["int32"] and not wires["int16"], (state.stats(), wires)
    biggest = torch.tensor([state.max_abs_q])
    dist.all_reduce(biggest, op=dist.ReduceOp.MAX)
    assert state.clipped == 0 and float(biggest) > 2 ** 15 / n, (state.stats(), float(biggest))  # past int16 too
    assert len(worst) >= STEPS and max(worst) < 1.0, worst
    print("ok overflow", wires, state.stats())


def overlap(X, y):
    """Rank 1 enters backward 2 s late: rank 0's autograd reaches the first layer before its first
    bucket (the last layers', ready first) has been exchanged -- unless ``overlap=False``."""
    order = {}
    for overlapped in (True, False):
        events = []
        net = model()
        ddp = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=TINY_BUCKETS)
        state = IntSGDState(None, torch.optim.SGD(ddp.parameters(), lr=0.1), seed=SEED, overlap=overlapped)

        def hook(st, bucket, events=events):
            index = bucket.index()

            def done(fut):
                events.append(("bucket", index))
                return fut.value()

            return intsgd_hook(st, bucket).then(done)

        ddp.register_comm_hook(state, hook)
        net[0].weight.register_hook(lambda g, events=events: events.append(("first layer", None)))
        for k in range(2):  # step 1 runs in DDP's rebuilt buckets
            events.clear()
            xb, yb = batch(X, y, k)
            loss = F.cross_entropy(ddp(xb), yb)
            if dist.get_rank() == 1:
                time.sleep(2.0)
            loss.backward()
        assert len(state.engine._buckets) > 1
        order[overlapped] = [e[0] for e in events]
    if dist.get_rank() == 0:
        assert order[True][0] == "first layer", order[True]
        assert order[False][0] == "bucket", order[False]
    print("ok overlap", order[True][:3])


def exponent(X, y):
    worst, tops = [], []
    inner = checked_hook(worst)
    bound = 127 // dist.get_world_size()

    def hook(state, bucket):
        local = bucket.buffer().detach().double().abs()
        index = bucket.index()

        def filled(fut):
            out = fut.value()
            dist.all_reduce(local, op=dist.ReduceOp.MAX, group=CHECK_GROUP)
            alpha = alpha_at_positions(state, index)
            for p, _, n, _ in state.engine._buckets[index].plan.rows.tolist():
                tops.append(float((alpha[p:p + n] * local[p:p + n].numpy()).max()) / bound)
            return out

        return inner(state, bucket).then(filled)

    ddp, state = hooked(hook=hook, cap=TINY_BUCKETS, alpha="exponent",
                        make_opt=lambda ps: torch.optim.Adam(ps, lr=1e-3))
    ddp_steps(ddp, state, X, y, range(STEPS))
    layers = len(list(ddp.module.parameters()))
    assert len(tops) == STEPS * layers and 0.5 < min(tops) and max(tops) <= 1.0, (min(tops), max(tops))
    assert max(worst) < 1.0 and state.redone_steps == 0 and bound // 2 <= state.max_abs_q <= bound, state.stats()
    assert set(state.engine.state["steps_by_wire"].nonzero()[0]) == {WIRE_NAMES.index("int8")}
    try:
        hooked(alpha="fill")
    except InputError as exc:
        assert "use 'exponent'" in str(exc), exc
    else:
        raise AssertionError("alpha='fill' was taken by the hook")
    try:
        hooked(alpha="exponent", alpha0=1.0)
    except InputError as exc:
        assert "takes no alpha0" in str(exc), exc
    else:
        raise AssertionError("alpha0 was taken beside alpha='exponent' by the hook")
    print("ok exponent", min(tops), max(worst))


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
        sgd_update(ddp.parameters(), lr_at(k))
        same_on_all_ranks(net, k)
    assert state.engine.alpha_blocks.size == 4 and (state.engine.alpha_blocks > 0).all(), state.engine.alpha_blocks
    print("ok empty-layer", state.stats())


def group_step_sizes(X, y):
    """Param groups with different lr: each layer's alpha is Alg. 2's with its own group's lr (equal,
    bit for bit, to adaptive_alpha of the state's r and those step sizes), ranks stay identical;
    one alpha per bucket refuses to run with an InputError that names block='layer'."""
    net = model()
    first, second = list(net[0].parameters()), list(net[2].parameters())
    lrs = (0.2, 0.02)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD([{"params": first, "lr": lrs[0]}, {"params": second, "lr": lrs[1]}])
    state = IntSGDState(None, opt, seed=SEED)
    ddp.register_comm_hook(state, intsgd_hook)
    eng = state.engine
    for k in range(4):
        ddp.zero_grad()
        xb, yb = batch(X, y, k)
        r_before = eng.state["r"].copy()
        F.cross_entropy(ddp(xb), yb).backward()
        with torch.no_grad():
            for group in opt.param_groups:
                for p in group["params"]:
                    p.sub_(p.grad * group["lr"])
        same_on_all_ranks(net, k)
    per_block = np.array([lrs[0], lrs[0], lrs[1], lrs[1]])
    sizes = eng.layout.block_sizes
    want = adaptive_alpha(per_block, r_before, sizes, dist.get_world_size(), 1e-8,
                          constants=block_constants(sizes, 1e-8))
    assert np.array_equal(eng.alpha_blocks, want), (eng.alpha_blocks, want)
    ddp = torch.nn.parallel.DistributedDataParallel(model())
    opt = torch.optim.SGD([{"params": list(ddp.module[0].parameters()), "lr": lrs[0]},
                           {"params": list(ddp.module[2].parameters()), "lr": lrs[1]}])
    ddp.register_comm_hook(IntSGDState(None, opt, seed=SEED, block="bucket"), intsgd_hook)
    for _ in range(2):  # the first step's alpha needs no lr; the second refuses
        try:
            F.cross_entropy(ddp(X[:BATCH]), y[:BATCH]).backward()
        except Exception as exc:  # DDP re-raises the hook's error from backward
            assert "block='layer'" in str(exc), exc
            break
    else:
        raise AssertionError("one alpha per bucket ran with two different step sizes")
    print("ok group-lr", eng.alpha_blocks.tolist())


if __name__ == "__main__":
    init_gloo()
    CHECK_GROUP = dist.new_group(backend="gloo")
    X, y = shard()
    final = same_as_intsgd(X, y)
    buckets(X, y, final)
    messages(X, y, final)
    one_parameter_bucket(X, y)
    resume(X, y, final)
    ddp_options(X, y, final)
    optimizers(X, y)
    lr_zero(X, y)
    exponent(X, y)
    low_precision(X, y)
    grad_scaler(X, y)
    accumulation(X, y)
    overflow(X, y)
    overlap(X, y)
    int16_refused()
    other_compressor(X, y)
    empty_layer(X, y)
    group_step_sizes(X, y)
    finish()
