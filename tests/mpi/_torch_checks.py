"""``mpiexec -n N python _torch_checks.py OUT.json``: the torch optimizers over real MPI, checked on
every rank; rank 0 writes a JSON report of named results (the AND / MAX over ranks).

* parity: mpiopt.torch.IntSGD (float64 model, no momentum) gives parameters bitwise equal to
  mpiopt's numpy IntSGD stepping on the same gradients (scalar alpha, and layer alpha on a model
  whose tensors all have the size of the numpy method's fixed blocks); with momentum and weight decay, equal to
  the documented rule written out with the int compressor;
* alpha: block='layer' keeps one alpha per parameter tensor, equal to Alg. 2's formula from the
  parameters' moves, the same on every rank; block=None keeps one (zeros before the first integer
  step), equal to Alg. 1's formula with the current step size under an LR schedule;
* resume: for every optimizer, k steps, state_dict (through torch.save), more steps == a new
  model/optimizer loaded from the state and stepped the same way (bitwise, wire bytes too);
* same: the parameters are bitwise identical on every rank after training;
* lr_zero: a schedule that reaches lr 0 gives finite means within 1/alpha of the exact one.
"""

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

import mpiopt.torch as mt
from mpiopt.comm import MPICommunicator
from mpiopt.compressors.integer import IntCompressor
from mpiopt.methods import make_method
from mpiopt.run import make_context

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
STEPS = 12
BATCH = 16


def model_for(kind: str, dtype=torch.float64) -> torch.nn.Module:
    """Same initial weights on every rank (seeded), like a broadcast from rank 0."""
    torch.manual_seed(42)
    if kind == "cnn":
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 8 * 8, 10))
    else:  # three bias-free 6x6 layers: every parameter tensor has 36 entries
        net = torch.nn.Sequential(torch.nn.Linear(6, 6, bias=False), torch.nn.Tanh(),
                                  torch.nn.Linear(6, 6, bias=False), torch.nn.Tanh(), torch.nn.Linear(6, 6, bias=False))
    return net.to(dtype)


def batches(kind: str, steps: int, dtype=torch.float64):
    """This rank's minibatches: different data on each rank, the same on every rerun."""
    gen = torch.Generator().manual_seed(1000 + RANK)
    shape, classes = ((1, 8, 8), 10) if kind == "cnn" else ((6,), 6)
    return [(torch.randn(BATCH, *shape, generator=gen, dtype=dtype), torch.randint(0, classes, (BATCH,), generator=gen))
            for _ in range(steps)]


def train(model, opt, data, record=None):
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if record is not None:
            record.append(opt.bucket.grads.detach().clone().numpy().astype(np.float64))
        opt.step()


def flat(model) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().astype(np.float64)


class Replay:
    """A Problem whose k-th stochastic gradient is the k-th recorded torch gradient."""

    n_samples = 1

    def __init__(self, grads):
        self.grads, self.dim, self.k = grads, grads[0].size, 0

    def smoothness(self):
        return math.nan

    def loss(self, x):
        return math.nan

    def grad(self, x, out=None):
        return self.stochastic_grad(x, None, out)

    def stochastic_grad(self, x, idx, out=None):
        out[...] = self.grads[self.k]
        self.k += 1
        return out


def numpy_path(method_name, grads, x0, lr, seed, **options) -> np.ndarray:
    """mpiopt's numpy method, stepping on the recorded gradients from x0."""
    ctx = make_context(Replay(grads), MPICommunicator(COMM), seed, lr, 1, math.nan, math.nan)
    method = make_method(method_name, ctx, **options)
    x = x0.copy()
    method.start(x)
    for k in range(len(grads)):
        method.step(x, k)
    return x


def parity(report):
    lr, seed = 0.05, 3
    cases = [
        ("intsgd-scalar-int8", "cnn", dict(block=None, wire_dtype="int8"), dict(wire_dtype="int8", first_step="exponent")),
        ("intsgd-scalar-auto", "cnn", dict(block=None, wire_dtype="auto", beta=0.0),
         dict(wire_dtype="auto", beta=0.0, first_step="exponent")),
        ("intsgd-scalar-float-first", "cnn", dict(block=None, first_step="float"), dict()),
        ("intsgd-layer-int16", "equal", dict(block="layer", wire_dtype="int16", alpha0=50.0),
         dict(wire_dtype="int16", alpha0=50.0, block_size=36)),
    ]
    for label, kind, torch_opts, numpy_opts in cases:
        model = model_for(kind)
        x0 = flat(model)
        opt = mt.IntSGD(model.parameters(), lr=lr, seed=seed, **torch_opts)
        grads = []
        train(model, opt, batches(kind, STEPS), grads)
        report[f"parity/{label}"] = bool(np.array_equal(flat(model), numpy_path("intsgd", grads, x0, lr, seed,
                                                                                **numpy_opts)))

    # momentum + weight decay: the rule of the module docstring, written out with the int compressor
    lr, mu, wd = 0.05, 0.9, 1e-3
    model = model_for("cnn")
    p = flat(model)
    opt = mt.IntSGD(model.parameters(), lr=lr, momentum=mu, weight_decay=wd, block=None, wire_dtype="int8", seed=seed)
    grads = []
    train(model, opt, batches("cnn", STEPS), grads)
    comp = IntCompressor(MPICommunicator(COMM), p.size, seed=seed, worker=RANK, fail=None, wire_dtype="int8",
                         first_step="exponent")
    xt, m, mean = p.copy(), np.zeros_like(p), np.empty_like(p)
    for k, g in enumerate(grads):
        comp.exchange(wd * p + g, k, xt, lr, mean)
        xt -= lr * mean
        m = mu * m + mean
        p = p - lr * m
    report["parity/intsgd-momentum-wd"] = bool(np.array_equal(flat(model), p))


def alpha(report):
    lr, eps = 0.05, 1e-8
    model = model_for("cnn")
    opt = mt.IntSGD(model.parameters(), lr=lr, block="layer", wire_dtype="int16", beta=0.0, eps=eps)
    sizes = np.array([p.numel() for p in model.parameters()], dtype=np.float64)
    ok, worst = True, 0.0
    prev = flat(model)
    data = batches("cnn", STEPS)
    for k, (x, y) in enumerate(data):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        now = flat(model)
        if k >= 1:  # alpha of step k is sized by the move of step k-1 (beta = 0)
            got = opt.alpha
            want = lr * np.sqrt(sizes) / np.sqrt(2 * SIZE * r + lr ** 2 * (sizes / sizes.sum()) * eps ** 2)
            ok &= got.shape == (len(sizes),)
            worst = max(worst, float(np.max(np.abs(got - want) / want)))
            same = np.empty((SIZE, got.size))
            COMM.Allgather(got, same)
            ok &= bool((same == same[0]).all())
        r = np.add.reduceat((now - prev) ** 2, np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp))
        prev = now
    report["alpha/per_layer_shared"] = bool(ok)
    report["alpha/distinct_layers"] = bool(np.unique(opt.alpha).size == len(sizes))
    report["alpha/max_rel_err"] = worst


def alpha_scalar_under_schedule(report):
    """block=None: one alpha (Alg. 1), defined (zeros) before the first integer step, and sized with
    the step size of the current step when an LR schedule changes it (the eps term included)."""
    lr0, eps = 0.05, 2.0
    model = model_for("cnn")
    opt = mt.IntSGD(model.parameters(), lr=lr0, block=None, wire_dtype="auto", beta=0.0, eps=eps)
    d = float(sum(p.numel() for p in model.parameters()))
    report["alpha/scalar_zero_before_first_step"] = bool(opt.alpha.shape == (1,) and (opt.alpha == 0).all())
    worst, stale_gap, ok = 0.0, 0.0, True
    prev = flat(model)
    for k, (x, y) in enumerate(batches("cnn", STEPS)):
        lr = lr0 * 0.7 ** k  # the schedule: a new step size at every step
        opt.param_groups[0]["lr"] = lr
        now = flat(model)  # x^k (momentum 0 and float64: the compression iterate is the parameters)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if k >= 1:
            r = float(np.sum((now - prev) ** 2))
            want = lr * math.sqrt(d) / math.sqrt(2 * SIZE * r + (lr * eps) ** 2)
            stale = lr * math.sqrt(d) / math.sqrt(2 * SIZE * r + (lr0 * eps) ** 2)
            got = opt.alpha
            ok &= got.shape == (1,)
            worst = max(worst, abs(float(got[0]) - want) / want)
            stale_gap = max(stale_gap, abs(stale - want) / want)
            same = np.empty((SIZE, 1))
            COMM.Allgather(got, same)
            ok &= bool((same == same[0]).all())
        prev = now
    report["alpha/scalar_shared"] = bool(ok)
    report["alpha/scalar_schedule_max_rel_err"] = worst
    report["alpha/scalar_schedule_stale_gap"] = -stale_gap  # MAX over ranks of -gap: the smallest gap


def lr_zero(report):
    """An LR schedule that reaches 0 (issue 21, item 4): the lr-0 steps send integers scaled by the
    largest |g| over the ranks, so the mean is finite and within 1/alpha of the exact mean; no error,
    and the parameters do not move."""
    model = model_for("cnn")
    opt = mt.IntSGD(model.parameters(), lr=0.05, wire_dtype="auto")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1.0 - k / 3))
    comp, means = opt.engine.comp, []
    exchange = comp.exchange

    def recorded(v, k, x, lr, out_mean, out_local=None):
        exchange(v, k, x, lr, out_mean, out_local)
        means.append(out_mean.copy())

    comp.exchange = recorded
    worst, zero_steps, still = 0.0, 0, True
    for x, y in batches("cnn", 6):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        exact = np.concatenate([p.grad.detach().reshape(-1).numpy() for p in model.parameters()]) / SIZE
        COMM.Allreduce(MPI.IN_PLACE, exact, op=MPI.SUM)
        before = flat(model)
        opt.step()
        if opt.param_groups[0]["lr"] == 0.0:
            zero_steps += 1
            worst = max(worst, float(np.max(np.abs(means[-1] - exact)) * opt.alpha.min()))
            still &= bool(np.array_equal(flat(model), before))
        sched.step()
    report["lr_zero/steps"] = bool(zero_steps == 3 and still)
    report["lr_zero/normalized_error"] = worst


OPTIONS = {"intsgd": dict(wire_dtype="int8"), "hintsgd": dict(bits=8), "qsgd": dict(levels=15),
           "dgc": dict(density=0.05, warmup_iters=4), "powersgd": dict(rank=2)}


def resume(report):
    k_first, k_more = 5, 6
    for name, cls in mt.OPTIMIZERS.items():
        data = batches("cnn", k_first + k_more, torch.float32)
        model = model_for("cnn", torch.float32)
        opt = cls(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, seed=7, **OPTIONS.get(name, {}))
        train(model, opt, data[:k_first])
        saved = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, saved)
        train(model, opt, data[k_first:])
        straight, straight_bytes = flat(model), opt.wire_bytes

        fresh = model_for("cnn", torch.float32)
        with torch.no_grad():  # scramble, so the restore has to do the work
            for p in fresh.parameters():
                p.mul_(-3.0)
        opt2 = cls(fresh.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3, seed=7, **OPTIONS.get(name, {}))
        saved.seek(0)
        state = torch.load(saved)
        fresh.load_state_dict(state["model"])
        opt2.load_state_dict(state["opt"])
        train(fresh, opt2, data[k_first:])
        report[f"resume/{name}"] = bool(np.array_equal(flat(fresh), straight) and opt2.wire_bytes == straight_bytes)
        got = flat(model)
        every = np.empty((SIZE, got.size))
        COMM.Allgather(got, every)
        report[f"same/{name}"] = bool((every == every[0]).all())
        report[f"moved/{name}"] = bool(not np.array_equal(got, flat(model_for("cnn", torch.float32))))


def reduce_report(report):
    """AND of the booleans and MAX of the numbers over the ranks."""
    out = {}
    for key in sorted(report):
        value = report[key]
        buf = np.array([float(value) if not isinstance(value, bool) else (0.0 if value else 1.0)])
        COMM.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)
        out[key] = (buf[0] == 0.0) if isinstance(value, bool) else float(buf[0])
    return out


def main() -> None:
    out_path = Path(sys.argv[1])
    report = {}
    parity(report)
    alpha(report)
    alpha_scalar_under_schedule(report)
    lr_zero(report)
    resume(report)
    final = reduce_report(report)
    if RANK == 0:
        out_path.write_text(json.dumps({"n_ranks": SIZE, **{k: bool(v) if isinstance(v, np.bool_) else v
                                                            for k, v in final.items()}}))


if __name__ == "__main__":
    main()
