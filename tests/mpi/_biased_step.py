"""``mpiexec -n N python _biased_step.py DATA STEPS OUT.json``: per-step identities of the biased
baselines over real MPI, checked on every rank against what the ranks actually exchanged.

For each method, on COMM_WORLD and on a communicator whose rank order is reversed (each process
keeping its shard: ``worker`` = its world rank), the local message is rebuilt from the method's
state and compared with the move of the shared iterate x. EF-signSGD's and DGC's decoded messages
are summed in worker order, so their move is rebuilt bit for bit from every rank's message
(gathered test-side, summed in worker order, times 1/n); PowerSGD's goes through MPI's float sums
and is compared with a test-only Allreduce.
"""

import itertools
import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _biased_common import check_same_on_all_ranks, local_problem  # noqa: E402
from mpiopt.comm import MPICommunicator  # noqa: E402
from mpiopt.methods import make_method  # noqa: E402
from mpiopt.run import make_context  # noqa: E402


class Recording:
    """The problem, remembering the last stochastic gradient it returned."""

    def __init__(self, problem):
        self.p = problem
        self.dim, self.n_samples = problem.dim, problem.n_samples
        self.last = None

    def smoothness(self):
        return self.p.smoothness()

    def loss(self, x):
        return self.p.loss(x)

    def grad(self, x, out=None):
        return self.p.grad(x, out)

    def stochastic_grad(self, x, idx, out=None):
        out = self.p.stochastic_grad(x, idx, out)
        self.last = out.copy()
        return out


def mean_over_ranks(comm, local):
    buf = np.ascontiguousarray(local, dtype=np.float64).copy()
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return buf / comm.Get_size()


def worker_order_mean(comm, worker, local):
    """The mean over ranks of ``local``, summed left to right in worker (shard id) order, as the
    compressors sum: rows gathered test-side, then (row_0 + row_1 + ...) * (1 / n)."""
    n = comm.Get_size()
    rows = np.empty((n, local.size))
    comm.Allgather(np.ascontiguousarray(local, dtype=np.float64), rows)
    ids = np.array(comm.allgather(worker))  # test-side control message only
    order = np.argsort(ids, kind="stable")
    total = rows[order[0]].copy()
    for r in order[1:]:
        total += rows[r]
    total *= 1.0 / n
    return total


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def efsign(comm, ctx, x, steps):
    m = make_method("ef-signsgd", ctx)
    m.start(x)
    out = {"e_exact": True, "scale_exact": True, "move_exact": True}
    for k in range(steps):
        e_old, x_old = m.state["memory/e"].copy(), x.copy()
        m.step(x, k)
        p = m.lr * ctx.problem.last + e_old
        scale = np.abs(p).sum() / p.size
        delta = scale * np.where(p >= 0, 1.0, -1.0)
        out["e_exact"] &= bool(np.array_equal(m.state["memory/e"], p - delta))
        out["scale_exact"] &= bool(m.comp.send[:8].view(np.float64)[0] == scale)
        out["move_exact"] &= bool(np.array_equal(x, x_old - worker_order_mean(comm, ctx.worker, delta)))
    return out


def dgc(comm, ctx, x, steps):
    m = make_method("dgc", ctx)
    m.start(x)
    out = {"masked": True, "rest_kept": True, "count_is_target": True, "move_exact": True}
    momentum = m.mem_opts["momentum"]
    for k in range(steps):
        u_old, v_old, x_old = m.state["memory/u"].copy(), m.state["memory/v"].copy(), x.copy()
        m.step(x, k)
        u_new = momentum * u_old + ctx.problem.last
        v_new = v_old + u_new
        idx = m.comp.sent_indices.copy()
        rest = np.ones(x.size, dtype=bool)
        rest[idx] = False
        u, v = m.state["memory/u"], m.state["memory/v"]
        out["masked"] &= bool((u[idx] == 0).all() and (v[idx] == 0).all())
        out["rest_kept"] &= bool(np.array_equal(u[rest], u_new[rest]) and np.array_equal(v[rest], v_new[rest]))
        out["count_is_target"] &= bool(idx.size == m.comp.count(k))
        # every rank's pairs (v_new at its sent indices; they repeat across ranks), summed in worker
        # order: the move must be exactly lr times that mean, so the values sent were exactly v_new's
        sent = np.zeros(x.size)
        sent[idx] = v_new[idx]
        out["move_exact"] &= bool(np.array_equal(x, x_old - worker_order_mean(comm, ctx.worker, sent) * m.lr))
    return out


def powersgd(comm, ctx, x, steps):
    m = make_method("powersgd", ctx)
    m.start(x)
    rows, cols = m.comp.shape
    out = {"e_rel": 0.0, "orthonormal_err": 0.0, "q_shared": True, "move_rel": 0.0}
    for k in range(steps):
        e_old, q_old, x_old = m.state["memory/e"].copy(), m.state["comp/q"].copy(), x.copy()
        m.step(x, k)
        p = m.lr * ctx.problem.last + e_old  # EF-SGD's p = lr g + e, zero-padded to the matrix
        M = np.zeros(rows * cols)
        M[: x.size] = p
        M = M.reshape(rows, cols)
        P = M @ q_old
        comm.Allreduce(MPI.IN_PLACE, P, op=MPI.SUM)
        Phat = np.linalg.qr(P)[0]
        local = (Phat @ (M.T @ Phat).T).ravel()[: x.size]
        out["e_rel"] = max(out["e_rel"], rel(m.state["memory/e"], p - local))
        out["orthonormal_err"] = max(out["orthonormal_err"],
                                     float(np.abs(m.comp._P.T @ m.comp._P - np.eye(m.comp.r)).max()))
        out["q_shared"] &= check_same_on_all_ranks(comm, m.state["comp/q"].ravel())
        move = mean_over_ranks(comm, local)  # lr is inside p
        out["move_rel"] = max(out["move_rel"], rel(x_old - x, move))
    return out


def main() -> None:
    data, steps, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    world = MPI.COMM_WORLD
    shard, size = world.Get_rank(), world.Get_size()
    problem = Recording(local_problem(data, shard, size))
    # the world order, and the ranks reversed with each process keeping its shard (worker = shard id)
    comms = {"world": world, "reversed": world.Split(0, key=size - 1 - shard)}
    report, finals = {}, {}
    for (name, fn), (variant, comm) in itertools.product(
            (("ef-signsgd", efsign), ("dgc", dgc), ("powersgd", powersgd)), comms.items()):
        ctx = make_context(problem, MPICommunicator(comm), seed=3, lr=None, batch=8, L=None, L_max=None,
                           worker=shard)
        x = np.zeros(problem.dim)
        res = fn(comm, ctx, x, steps)
        res["x_same_on_all_ranks"] = check_same_on_all_ranks(comm, x)
        finals[name, variant] = x
        if variant == "reversed" and name != "powersgd":  # (PowerSGD sums by MPI's float Allreduce)
            res["x_as_in_world_order"] = bool(np.array_equal(x, finals[name, "world"]))
        flags = np.array([int(bool(v)) if isinstance(v, bool) else 0 for v in res.values()], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MIN)
        worst = {k: v for k, v in res.items() if not isinstance(v, bool)}
        vals = np.array(list(worst.values()), dtype=np.float64)
        comm.Allreduce(MPI.IN_PLACE, vals, op=MPI.MAX)
        report[f"{name}|{variant}"] = {**{k: bool(f) for k, f in zip(res, flags) if isinstance(res[k], bool)},
                                       **dict(zip(worst, vals.tolist()))}
    if world.Get_rank() == 0:
        Path(out_path).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
