"""Loading the shards that ``mpiopt preprocess`` wrote, from Python as ``mpiopt run`` does.

    problem, meta = mpiopt.load_problem("data/a5a-4")          # under mpiexec -n 4
    res = mpiopt.minimize(problem, "vr-intdiana", batch=80, x_star=meta["x_star"],
                          f_star=meta["f_star"], L=meta["L"], L_max=max(meta["L_workers"]))
"""

from typing import Any, Dict, Tuple

from mpiopt.errors import InputError
from mpiopt.failfast import agree_or_raise
from mpiopt.problems.logistic import LogisticProblem


def load_problem(data_dir: str, comm=None) -> Tuple[LogisticProblem, Dict[str, Any]]:
    """This rank's :class:`LogisticProblem` (shard ``rank`` of ``data_dir``) and the folder's meta.json.

    ``comm``: None (COMM_WORLD), an mpi4py communicator or a :class:`mpiopt.comm.Communicator`; its
    size must equal the number of shards. ``meta`` holds ``dataset``, ``n_samples``, ``n_features``,
    ``l2``, ``L`` (global smoothness), ``L_workers`` (one per shard), ``f_star`` and ``x_star`` (a list),
    the values ``mpiopt run`` passes to :func:`mpiopt.minimize`. Any rank's failure (missing shard,
    wrong rank count, checksum) raises the same :class:`InputError` on every rank, and so do ranks
    that read different meta.json files (hosts holding different preprocessings at the same path:
    each rank's shard would match its own copy, and the run would mix problems without a word).
    """
    from mpiopt.comm import as_communicator
    from mpiopt.data import load_shard

    comm = as_communicator(comm)
    problem, meta, error = None, None, None
    try:
        A, b, meta = load_shard(data_dir, comm.rank, comm.size)
        problem = LogisticProblem(A, b, meta["l2"], smoothness=meta["L_workers"][comm.rank])
    except InputError as exc:
        error = exc
    agree_or_raise(comm, error)
    same_meta_or_raise(comm, data_dir, meta["meta_sha256"])
    return problem, meta


def same_meta_or_raise(comm, data_dir: str, seal: str) -> None:
    """Raise the same InputError on every rank unless every rank's meta.json has the same ``meta_sha256``."""
    seals = comm.allgather_object(seal)
    if len(set(seals)) == 1:
        return
    groups: Dict[str, list] = {}
    for rank, found in enumerate(seals):
        groups.setdefault(found, []).append(rank)
    found = "; ".join(f"rank(s) {ranks} {found[:12]}..." for found, ranks in groups.items())
    raise InputError(f"the ranks read different {data_dir}/meta.json files (meta_sha256: {found}): every host must "
                     "hold the same preprocessed folder; copy it from one place (or put it on a shared file "
                     "system)", collective=True)
