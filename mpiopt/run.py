"""The runner and the Python entry point ``mpiopt.minimize``.

``minimize(problem, method=...)`` follows ``scipy.optimize.minimize``: one function, methods by name,
and a result object that holds everything a user needs (x, status, trace). It runs in one process
or, under ``mpiexec``, on every rank of the communicator (SPMD), each rank with its own ``problem``.
"""

import sys
import time
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

from mpiopt.checkpoint import Checkpointer
from mpiopt.comm import Communicator, as_communicator, library_version
from mpiopt.errors import InputError
from mpiopt.failfast import abort_on_error, agree_or_raise
from mpiopt.methods import Context, Method, make_method, method_recipe
from mpiopt.naming import arg
from mpiopt.problems.base import Problem, checked
from mpiopt.state import capture, restore
from mpiopt.trace import Trace, environment

RNG_KEYS = ("sample_rng", "shared_rng")
CLIP_WARN_RATE = 0.01
"""Fraction of coordinates clipped (over the run so far) above which the run warns, once."""
DIVERGE_FACTOR = 100.0
"""A logged loss above DIVERGE_FACTOR * |f(x0)| + DIVERGE_MARGIN (or not finite) stops the run as diverged."""
DIVERGE_MARGIN = 1.0


class OptimizeResult(dict):
    """The outcome of :func:`minimize`; keys are also attributes (``res.x``, ``res.status``).

    Keys: ``x`` (final iterate), ``status`` ('converged', 'max_iter', 'callback' or 'diverged'),
    ``success`` (status is 'converged'), ``message`` (the status in words), ``nit`` (iterations done),
    ``fun`` (global f at the last logged point), ``trace`` (the JSON record, see :func:`minimize`).
    """

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.items() if k != "trace"}
        return "OptimizeResult(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def context_rngs(ctx: Context) -> Dict[str, np.random.Generator]:
    """The context's random streams by name: what a state record saves and restores."""
    return {key: getattr(ctx, key) for key in RNG_KEYS}


def make_context(problem: Problem, comm: Communicator, seed: int, lr, batch, L, L_max,
                 worker: Optional[int] = None) -> Context:
    """Seeded streams and global smoothness constants, identical on every rank where they must be."""
    worker = comm.rank if worker is None else worker
    if not 0 <= worker < comm.size:
        raise InputError(f"worker must be in [0, {comm.size}), got {worker}", collective=True)
    streams = np.random.SeedSequence(seed).spawn(comm.size + 1)
    if L is None or L_max is None:
        local = np.array([problem.smoothness()])
        total = comm.allreduce_float(local.copy(), count=False)[0]
        L = total / comm.size if L is None else L
        L_max = comm.allreduce_max(local, count=False)[0] if L_max is None else L_max
    return Context(
        problem=problem,
        comm=comm,
        seed=seed,
        worker=worker,
        L=float(L),
        L_max=float(L_max),
        lr=lr,
        batch=batch,
        sample_rng=np.random.Generator(np.random.PCG64(streams[worker])),
        shared_rng=np.random.Generator(np.random.PCG64(streams[comm.size])),
    )


class Runner:
    """The optimization loop: steps, logging, stopping, checkpoints, progress on rank 0."""

    def __init__(self, method: Method, ctx: Context, trace: Trace, *, iters: int, tol: Optional[float],
                 x_star, f_star, log_every: int, progress: bool, checkpointer: Optional[Checkpointer],
                 checkpoint_every: Optional[int], callback: Optional[Callable[[int, np.ndarray], Any]] = None):
        self.method, self.ctx, self.trace = method, ctx, trace
        self.iters, self.tol, self.log_every = iters, tol, log_every
        self.x_star = None if x_star is None else np.asarray(x_star, dtype=np.float64)
        self.f_star = f_star
        self.progress = progress and ctx.comm.rank == 0
        self.checkpointer, self.checkpoint_every = checkpointer, checkpoint_every
        self.callback = callback
        self._eval = np.empty(ctx.problem.dim + 2)
        self.seconds = 0.0
        self.warnings: List[str] = []
        self.message = ""
        """Why the run stopped, in words (set by :meth:`run`)."""

    def evaluate(self, x: np.ndarray, k: int) -> Dict[str, Optional[float]]:
        """Global f, ||grad f||^2, clipped coordinates over all ranks (one uncounted float Allreduce)
        and ||x - x*||^2, recorded in the trace."""
        buf = self._eval
        problem, n = self.ctx.problem, self.ctx.comm.size
        grad = buf[2:]
        if hasattr(problem, "loss_and_grad"):
            buf[0] = problem.loss_and_grad(x, grad)
        else:
            buf[0] = problem.loss(x)
            problem.grad(x, out=grad)
        buf[1] = self.method.clipped
        self.ctx.comm.allreduce_float(buf, count=False)
        grad /= n
        row = {
            "iteration": k,
            "loss": buf[0] / n,
            "f_gap": None if self.f_star is None else buf[0] / n - self.f_star,
            "grad_norm_sq": float(np.dot(grad, grad)),
            "dist_sq": self.dist_sq(x),
            "wire_bytes": self.ctx.comm.bytes_sent,
            "info_bits": self.method.info_bits,
            "clipped": int(buf[1]),
            "seconds": self.seconds,
        }
        self.trace.record(**row)
        self._warn_if_clipping(k, int(buf[1]))
        return row

    def _warn_if_clipping(self, k: int, clipped: int) -> None:
        """Clipping biases an integer method: say so once, on rank 0, and in the trace."""
        rate = clipped / max(1, k * self.ctx.problem.dim * self.ctx.comm.size)
        if rate <= CLIP_WARN_RATE or self.warnings:
            return
        self.warn(f"{100 * rate:.1f}% of the coordinates sent so far were clipped to fit the wire dtype "
                  f"(iteration {k}); {self.method.clip_advice()}")

    def warn(self, message: str) -> None:
        """A warning in the trace and, on rank 0, one ``mpiopt: warning:`` line on stderr."""
        self.warnings.append(message)
        if self.ctx.comm.rank == 0:
            sys.stderr.write(f"mpiopt: warning: {message}\n")

    def dist_sq(self, x: np.ndarray) -> Optional[float]:
        if self.x_star is None:
            return None
        diff = x - self.x_star
        return float(np.dot(diff, diff))

    def converged(self, x: np.ndarray, row: Optional[Dict[str, Any]]) -> bool:
        """--tol on ||x - x*||^2 every iteration when x* is known, else on ||grad f||^2 at logged rows."""
        if self.tol is None:
            return False
        if self.x_star is not None:
            return self.dist_sq(x) <= self.tol
        return row is not None and row["grad_norm_sq"] <= self.tol

    def diverged(self, row: Optional[Dict[str, Any]]) -> bool:
        """True when a logged global loss is not finite or far above the first one (same on every rank:
        the loss is the Allreduce's sum). A step size that is too large shows here long before NaN."""
        if row is None:
            return False
        start, loss = self.trace.history["loss"][0], row["loss"]
        if start is None or (np.isfinite(loss) and loss <= DIVERGE_FACTOR * abs(start) + DIVERGE_MARGIN):
            return False  # start None: f(x0) was not finite, nothing to compare with
        self.message = (f"diverged: the loss grew from {start:.6g} at iteration 0 to {loss:.6g} at iteration "
                        f"{row['iteration']} (more than {DIVERGE_FACTOR:g} times its start); try a smaller step "
                        f"size ({arg('lr')})")
        return True

    def run(self, x: np.ndarray, start: int) -> str:
        """Iterate from ``start`` (0, or a checkpoint's iteration) to ``iters``; return the status."""
        bar = self._progress_bar(start)
        status = "max_iter"
        schedule = self.method.schedule
        if start == 0:
            self.evaluate(x, 0)
        for k in range(start, self.iters):
            if schedule is not None:
                self.method.lr = self.method.lr_at(k)
            t0 = time.perf_counter()
            self.method.step(x, k)
            self.seconds += time.perf_counter() - t0
            done = k + 1
            logged = done % self.log_every == 0 or done == self.iters
            row = self.evaluate(x, done) if logged else None
            if self.diverged(row):
                status = "diverged"
            elif self.converged(x, row):
                status = "converged"
            elif self.callback is not None:
                stop = self.callback(done, x)
                self.method.iterate_changed()  # it may have written x
                if stop:
                    status = "callback"
            if status != "max_iter" and row is None:
                row = self.evaluate(x, done)
            if bar is not None:
                bar.update(1)
                if row is not None:
                    bar.set_postfix_str(self._postfix(row), refresh=False)
            if self.checkpointer is not None and done % self.checkpoint_every == 0:
                self.save_checkpoint(x, done)
            if status != "max_iter":
                break
        if bar is not None:
            bar.close()
        self._explain(status, x)
        return status

    def _explain(self, status: str, x: np.ndarray) -> None:
        """Set :attr:`message`; warn when a tolerance was asked for and not reached."""
        if status == "converged":
            measure = "||x - x*||^2" if self.x_star is not None else "||grad f||^2"
            self.message = f"converged: {measure} <= {self.tol:g}"
        elif status == "callback":
            self.message = "stopped by the callback"
        elif status == "max_iter":
            self.message = f"reached the iteration limit ({self.iters})"
            if self.tol is not None:
                measure, value = (("||x - x*||^2", self.dist_sq(x)) if self.x_star is not None
                                  else ("||grad f||^2", self.trace.last("grad_norm_sq")))
                self.warn(f"{arg('tol', self.tol)} not reached in {self.iters} iterations ({measure} = {value:.3e} "
                          f"at the end); raise {arg('iters')}, or check the step size ({arg('lr')})")

    def _progress_bar(self, start: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.iters, initial=start, desc=self.method.name, mininterval=0.5, unit="it")

    @staticmethod
    def _postfix(row: Dict[str, Any]) -> str:
        shown = [(k, row[k]) for k in ("dist_sq", "f_gap", "grad_norm_sq") if row.get(k) is not None][:2]
        return " ".join(f"{k}={v:.3e}" for k, v in shown)

    def save_checkpoint(self, x: np.ndarray, k: int) -> None:
        record = capture(self.method, context_rngs(self.ctx), self.ctx.comm)
        arrays = {"x": x, **{f"state/{n}": v for n, v in record.pop("arrays").items()}}
        info = {**record, "seconds": self.seconds,
                "history": self.trace.history if self.ctx.comm.rank == 0 else None}
        self.checkpointer.save(k, arrays, info)

    def restore(self, saved: Dict[str, Any], x: np.ndarray) -> int:
        """Load a checkpoint into x, the method's state record and the counters; return its iteration."""
        arrays, info = saved["arrays"], saved["info"]
        x[...] = arrays["x"]
        record = {**info, "arrays": {n[len("state/"):]: v for n, v in arrays.items() if n.startswith("state/")}}
        restore(record, self.method, context_rngs(self.ctx), self.ctx.comm)
        self.seconds = info["seconds"]
        if info.get("history") is not None:
            self.trace.restore(info["history"])
        return saved["iteration"]


def minimize(problem: Problem, method: str = "gd", comm=None, x0: Optional[np.ndarray] = None, *,
             iters: int = 1000, tol: Optional[float] = None,
             lr: Union[None, float, Callable[[int], float]] = None,
             batch: Optional[int] = None, seed: int = 0, x_star=None, f_star: Optional[float] = None,
             L: Optional[float] = None, L_max: Optional[float] = None, log_every: Optional[int] = None,
             progress: bool = False, checkpoint_dir=None, checkpoint_every: Optional[int] = None,
             resume: bool = False, header: Optional[Dict[str, Any]] = None,
             callback: Optional[Callable[[int, np.ndarray], Any]] = None, worker: Optional[int] = None,
             **options: Any) -> OptimizeResult:
    """Minimize f = (1/n) sum_i f_i over the ranks of ``comm``; rank i passes its own ``problem`` f_i.

    ``method`` is a name from ``mpiopt.methods.METHODS``; ``options`` are that method's options
    (e.g. ``wire_dtype='auto'``). ``x_star``/``f_star`` enable the ``dist_sq``/``f_gap`` columns and
    ``tol`` stops once ||x - x*||^2 <= tol (else ||grad f||^2 <= tol at a logged iteration). ``L``
    and ``L_max`` (global and largest local smoothness) are computed from the problems when omitted.
    ``lr`` is the step size: a number, a schedule (a callable k -> step size of iteration k = 0, 1,
    ..., as torch's ``LambdaLR`` takes a function of the epoch; it must give every rank the same
    value), or None for the method's theory value.
    ``worker`` names the shard this rank holds when ranks were reordered (default: the comm rank).
    ``callback(k, x)`` runs after each iteration k (1-based); a true return value stops the run
    with status 'callback'. Every rank returns the same result; the trace is complete on every rank.

    The problem is checked against the :class:`~mpiopt.problems.base.Problem` protocol first (the
    members the run needs; missing ones are named, on every rank). A problem that is not one of
    mpiopt's own classes is wrapped in :class:`mpiopt.problems.base.CheckedProblem` (gradients
    returned as new arrays still reach the methods' buffers), and every rank's ``dim`` is checked to
    agree. A logged loss that is not finite or above 100 |f(x0)| + 1 stops the run with status
    'diverged'; a ``tol`` not reached within ``iters`` is warned about (stderr on rank 0,
    ``trace["warnings"]``).

    Under ``mpiexec`` an exception that only some ranks raise (the problem's ``grad`` failing on one
    rank, a callback raising) would leave the other ranks waiting in their next collective: the
    failing rank instead prints its traceback, prefixed by its rank, and ends every rank with
    MPI_Abort (exit code 1; 2 for mpiopt's own input errors). Errors every rank raises together
    (bad arguments, a non-finite gradient, different dims) are raised on every rank as usual.
    """
    comm = as_communicator(comm)
    with abort_on_error(comm):
        return _minimize(problem, method, comm, x0, iters=iters, tol=tol, lr=lr, batch=batch, seed=seed,
                         x_star=x_star, f_star=f_star, L=L, L_max=L_max, log_every=log_every, progress=progress,
                         checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
                         header=header, callback=callback, worker=worker, **options)


def _minimize(problem: Problem, method: str, comm: Communicator, x0: Optional[np.ndarray], *, iters: int,
              tol: Optional[float], lr, batch: Optional[int], seed: int, x_star, f_star: Optional[float],
              L: Optional[float], L_max: Optional[float], log_every: Optional[int], progress: bool,
              checkpoint_dir, checkpoint_every: Optional[int], resume: bool, header: Optional[Dict[str, Any]],
              callback: Optional[Callable[[int, np.ndarray], Any]], worker: Optional[int],
              **options: Any) -> OptimizeResult:
    """:func:`minimize`'s body, on a Communicator, inside its abort-on-error guard."""
    if iters < 0:
        raise InputError(f"{arg('iters')} must be >= 0, got {iters}", collective=True)
    if tol is not None and not tol > 0:
        raise InputError(f"{arg('tol')} must be a positive number, got {tol}", collective=True)
    check_protocol(problem, method, comm, needs_smoothness=L is None or L_max is None)
    check_same_dim(problem, comm)
    problem = checked(problem)
    x_star = check_x_star(x_star, problem.dim)
    ctx = make_context(problem, comm, seed, lr, batch, L, L_max, worker)
    meth = make_method(method, ctx, **options)
    x = np.zeros(problem.dim) if x0 is None else np.array(x0, dtype=np.float64)
    if x.shape != (problem.dim,):
        raise InputError(f"x0 has shape {x.shape}, expected ({problem.dim},)", collective=True)
    log_every = log_every or max(1, iters // 1000)
    config = {**meth.config(), "seed": seed, "iters": iters, "tol": tol,
              "log_every": log_every, "L": ctx.L, "L_max": ctx.L_max}
    if meth.schedule is not None:
        config["lr_schedule"] = getattr(meth.schedule, "__qualname__", type(meth.schedule).__name__)
    trace = Trace({"method": meth.name, "n_ranks": comm.size, "seed": seed, **(header or {}), "config": config,
                   "env": environment(library_version(), comm.size)})
    checkpointer = None
    if checkpoint_dir is not None:
        if not checkpoint_every or checkpoint_every < 1:
            raise InputError(f"{arg('checkpoint_dir')} needs {arg('checkpoint_every')} K with K >= 1",
                             collective=True)
        fingerprint = {"method": meth.name, "n_ranks": comm.size, "dim": problem.dim,
                       "dataset": (header or {}).get("dataset"),
                       **{k: v for k, v in config.items() if k not in ("iters", "tol", "log_every", "kernel")}}
        checkpointer = Checkpointer(checkpoint_dir, comm, fingerprint, resume=resume)
    runner = Runner(meth, ctx, trace, iters=iters, tol=tol, x_star=x_star, f_star=f_star, log_every=log_every,
                    progress=progress, checkpointer=checkpointer, checkpoint_every=checkpoint_every,
                    callback=callback)
    meth.start(x)
    t0 = time.perf_counter()
    meth.prepare(x)
    compile_seconds = time.perf_counter() - t0
    start = 0
    if resume and checkpointer is not None:
        saved = checkpointer.load_latest()
        if saved is not None:
            start = runner.restore(saved, x)
    try:
        status = runner.run(x, start)
    finally:
        if checkpointer is not None:
            checkpointer.close()
    nit = trace.last("iteration") if status != "max_iter" else max(iters, start)
    record = trace.to_dict(x, status, iterations=nit, resumed_from=start or None, seconds_total=runner.seconds,
                           compile_seconds=compile_seconds,
                           warnings=runner.warnings, **meth.summary())
    record["peak_rss_mb"] = ranks_peak_rss_mb(comm)
    return OptimizeResult(x=x, status=status, success=status == "converged", message=runner.message, nit=nit,
                          fun=trace.last("loss"), trace=record)


def peak_rss_mb() -> Optional[float]:
    """This process's peak resident memory so far, in MB (None where the OS does not say): Linux's
    VmHWM, which starts afresh at exec (getrusage's ru_maxrss keeps the peak of the process that
    forked it), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3  # macOS counts bytes, Linux KB


def ranks_peak_rss_mb(comm: Communicator) -> Optional[List[float]]:
    """Every rank's peak resident memory (MB, in rank order), by one small Allgather after the run (not
    counted as wire bytes); None where the OS does not say."""
    mine = peak_rss_mb()
    every = comm.allgather(np.array([-1.0 if mine is None else mine]), np.empty(comm.size), count=False)
    return None if (every < 0).any() else [round(float(v), 1) for v in every]


PROTOCOL = (("dim", False), ("n_samples", False), ("loss", True), ("grad", True), ("stochastic_grad", True),
            ("smoothness", True))
"""The Problem protocol's required members, and whether each is a method (called) or a value."""


def check_protocol(problem: Any, method: str, comm: Communicator, needs_smoothness: bool) -> None:
    """Refuse, before the first collective of the run, a problem that lacks a member the run calls.

    ``stochastic_grad`` is not needed by the full-gradient methods, ``smoothness`` not when both
    ``L`` and ``L_max`` are given. Every rank's finding is shared (one small control message), so
    a problem missing a member on one rank only is the same error, naming that rank, on all.
    """
    full = method_recipe(method).estimator == "full"
    needed = [(name, call) for name, call in PROTOCOL
              if not (name == "stochastic_grad" and full) and not (name == "smoothness" and not needs_smoothness)]
    missing = [name + ("()" if call else "") for name, call in needed
               if not hasattr(problem, name) or (call and not callable(getattr(problem, name)))]
    error = None
    if missing:
        error = InputError(f"the problem ({type(problem).__name__}) lacks {', '.join(missing)}, which method "
                           f"{method!r} needs; a problem has dim, n_samples, loss(x), grad(x, out=None), "
                           f"stochastic_grad(x, idx, out=None) and smoothness() (see help(mpiopt.problems.Problem))")
    agree_or_raise(comm, error)


def check_same_dim(problem: Problem, comm: Communicator) -> None:
    """Every rank's problem must have the same ``dim`` (one small Allgather); else a message that
    names the ranks, raised on every rank, instead of a crash inside MPI at the first collective."""
    dims = comm.allgather(np.array([problem.dim], dtype=np.int64), np.empty(comm.size, dtype=np.int64),
                          count=False)
    if (dims == dims[0]).all():
        return
    groups = {int(d): np.flatnonzero(dims == d).tolist() for d in np.unique(dims)}
    found = "; ".join(f"dim {d} on rank(s) {ranks}" for d, ranks in groups.items())
    raise InputError(f"the ranks' problems disagree on dim: {found}. Every rank's problem must have the same "
                     f"number of coordinates (each rank holds its own samples of one model)", collective=True)


def check_x_star(x_star, dim: int) -> Optional[np.ndarray]:
    """``x_star`` as a float64 vector of shape (dim,), or a clear error."""
    if x_star is None:
        return None
    x_star = np.asarray(x_star, dtype=np.float64)
    if x_star.shape != (dim,):
        raise InputError(f"x_star has shape {x_star.shape}, expected ({dim},) (the problem's dim)", collective=True)
    return x_star
