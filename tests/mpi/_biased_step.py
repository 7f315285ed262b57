"""``mpiexec -n N python _biased_step.py DATA STEPS OUT.json``: per-step identities of the biased
baselines over real MPI, checked on every rank against what the ranks actually exchanged.

For each method the local message is rebuilt from the method's state, summed over the ranks with
a separate (test-only) Allreduce, and compared with the move of the shared iterate x.
"""

import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _biased_common import check_same_on_all_ranks, local_problem  # noqa: E402
from mpiopt.comm import Communicator  # noqa: E402
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


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def efsign(comm, ctx, x, steps):
    m = make_method("ef-signsgd", ctx)
    m.start(x)
    out = {"e_exact": True, "scale_exact": True, "move_rel": 0.0}
    for k in range(steps):
        e_old, x_old = m.state["e"].copy(), x.copy()
        m.step(x, k)
        p = m.lr * ctx.problem.last + e_old
        scale = np.abs(p).sum() / p.size
        delta = scale * np.where(p >= 0, 1.0, -1.0)
        out["e_exact"] &= bool(np.array_equal(m.state["e"], p - delta))
        out["scale_exact"] &= bool(m._send[:8].view(np.float64)[0] == scale)
        out["move_rel"] = max(out["move_rel"], rel(x_old - x, mean_over_ranks(comm, delta)))
    return out


def dgc(comm, ctx, x, steps):
    m = make_method("dgc", ctx)
    m.start(x)
    out = {"masked": True, "values_exact": True, "rest_kept": True, "count_is_target": True, "move_rel": 0.0}
    for k in range(steps):
        u_old, v_old, x_old = m.state["u"].copy(), m.state["v"].copy(), x.copy()
        m.step(x, k)
        u_new = m.opts["momentum"] * u_old + ctx.problem.last
        v_new = v_old + u_new
        idx, val = m.last_sent()
        rest = np.ones(x.size, dtype=bool)
        rest[idx] = False
        out["masked"] &= bool((m.state["u"][idx] == 0).all() and (m.state["v"][idx] == 0).all())
        out["values_exact"] &= bool(np.array_equal(val, v_new[idx]))
        out["rest_kept"] &= bool(np.array_equal(m.state["u"][rest], u_new[rest])
                                 and np.array_equal(m.state["v"][rest], v_new[rest]))
        out["count_is_target"] &= bool(idx.size == m.count_at(k))
        sent = np.zeros(x.size)
        np.add.at(sent, idx, val)
        out["move_rel"] = max(out["move_rel"], rel(x_old - x, m.lr * mean_over_ranks(comm, sent)))
    return out


def powersgd(comm, ctx, x, steps):
    m = make_method("powersgd", ctx)
    m.start(x)
    rows, cols = m.shape
    out = {"e_rel": 0.0, "orthonormal_err": 0.0, "q_shared": True, "move_rel": 0.0}
    for k in range(steps):
        e_old, q_old, x_old = m.state["e"].copy(), m.state["q"].copy(), x.copy()
        m.step(x, k)
        M = e_old.copy()
        M[: x.size] += ctx.problem.last
        M = M.reshape(rows, cols)
        P = M @ q_old
        comm.Allreduce(MPI.IN_PLACE, P, op=MPI.SUM)
        Phat = np.linalg.qr(P)[0]
        local = Phat @ (M.T @ Phat).T
        out["e_rel"] = max(out["e_rel"], rel(m.state["e"], (M - local).ravel()))
        out["orthonormal_err"] = max(out["orthonormal_err"], float(np.abs(m._P.T @ m._P - np.eye(m.r)).max()))
        out["q_shared"] &= check_same_on_all_ranks(comm, m.state["q"].ravel())
        move = m.lr * mean_over_ranks(comm, local.ravel())[: x.size]
        out["move_rel"] = max(out["move_rel"], rel(x_old - x, move))
    return out


def main() -> None:
    data, steps, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    comm = MPI.COMM_WORLD
    problem = Recording(local_problem(data, comm.Get_rank(), comm.Get_size()))
    report = {}
    for name, fn in (("ef-signsgd", efsign), ("dgc", dgc), ("powersgd", powersgd)):
        ctx = make_context(problem, Communicator(comm), seed=3, lr=None, batch=8, L=None, L_max=None)
        x = np.zeros(problem.dim)
        res = fn(comm, ctx, x, steps)
        res["x_same_on_all_ranks"] = check_same_on_all_ranks(comm, x)
        flags = np.array([int(bool(v)) if isinstance(v, bool) else 0 for v in res.values()], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MIN)
        worst = {k: v for k, v in res.items() if not isinstance(v, bool)}
        vals = np.array(list(worst.values()), dtype=np.float64)
        comm.Allreduce(MPI.IN_PLACE, vals, op=MPI.MAX)
        report[name] = {**{k: bool(f) for k, f in zip(res, flags) if isinstance(res[k], bool)},
                        **dict(zip(worst, vals.tolist()))}
    if comm.Get_rank() == 0:
        Path(out_path).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
