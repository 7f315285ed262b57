"""Importing the torch entry points does not import mpi4py (which initializes MPI): a torchrun worker
needs no MPI runtime. Each import runs in a fresh interpreter, which reports sys.modules."""

import subprocess
import sys

import pytest

pytest.importorskip("torch")


def loaded_after(statement: str) -> set:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import mpiopt.torch.hooks", "import mpiopt.torch", "import mpiopt",
                                       "from mpiopt.torch.comm import TorchCommunicator"])
def test_no_mpi4py(statement):
    loaded = loaded_after(statement)
    assert "mpi4py" not in loaded and "mpiopt.run" not in loaded, sorted(m for m in loaded if "mpi" in m)


def test_lazy_names_still_there():
    """The lazily imported names are the runner's and the optimizers' own, loaded when asked for."""
    loaded = loaded_after("import mpiopt, mpiopt.torch\nassert mpiopt.minimize.__module__ == 'mpiopt.run'\n"
                          "assert mpiopt.torch.IntSGD.__module__ == 'mpiopt.torch.optim'")
    assert {"mpiopt.run", "mpiopt.torch.optim"} <= set(loaded)


def test_gathers_on_a_torch_without_all_gather_single():
    """setup.cfg allows torch>=2.5, and ``dist.all_gather_single`` exists only from torch 2.13: with it
    removed (as on torch 2.5 to 2.12) TorchCommunicator's allgather and allgatherv still work (one gloo rank).

    The script exits with ``os._exit`` once its checks passed, as tests/mpi/_torch_common.finish does:
    torch's C++ teardown at interpreter exit can abort a finished process ("terminate called without an
    active exception", SIGABRT; seen once in CI), which says nothing about the gather."""
    code = """
import os, tempfile, numpy as np, torch.distributed as dist
if hasattr(dist, "all_gather_single"):
    del dist.all_gather_single
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
from mpiopt.torch.comm import TorchCommunicator
comm = TorchCommunicator()
out = np.zeros(3)
comm.allgather(np.array([1.0, 2.0, 3.0]), out)
outv = np.zeros(2, dtype=np.int64)
comm.allgatherv(np.array([7, 8]), outv, np.array([2]))
assert out.tolist() == [1.0, 2.0, 3.0] and outv.tolist() == [7, 8], (out, outv)
dist.destroy_process_group()
print("gathered", flush=True)
os._exit(0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "gathered" in out.stdout, out.stderr


def test_allreduce_options_on_a_torch_without_async_op(monkeypatch):
    """torch 2.5, the oldest setup.cfg allows, has no ``AllreduceOptions.asyncOp`` (its all-reduce
    blocks without it): TorchCommunicator's options are built with the fields that exist."""
    import torch.distributed as dist

    from mpiopt.torch import comm

    class Options:  # AllreduceOptions as torch 2.5 has it: setting an unknown field raises
        __slots__ = ("reduceOp", "timeout")

    monkeypatch.setattr(comm, "AllreduceOptions", Options)
    opts = comm._allreduce_options(dist.ReduceOp.MAX)
    assert opts.reduceOp == dist.ReduceOp.MAX and not hasattr(opts, "asyncOp")
