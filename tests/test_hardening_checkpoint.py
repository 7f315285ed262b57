"""Checkpointer in one process (comm of size 1): the checks at construction, the lock's lifetime."""

import subprocess
import sys

import numpy as np
import pytest

from mpiopt.checkpoint import Checkpointer
from mpiopt.comm import MPICommunicator
from mpiopt.errors import InputError

HOLD_LOCK = """
import sys, time
from mpiopt.checkpoint import Checkpointer
from mpiopt.comm import MPICommunicator

held = Checkpointer(sys.argv[1], MPICommunicator(), {}, resume=True)
print("locked", flush=True)
time.sleep(600)
"""


def _save(directory, fingerprint, *iterations):
    ckpt = Checkpointer(directory, MPICommunicator(), fingerprint, resume=False)
    for k in iterations:
        ckpt.save(k, {"x": np.full(3, float(k))}, {"k": k})
    ckpt.close()


def test_a_fresh_start_is_refused_at_construction(tmp_path):
    _save(tmp_path, {"method": "sgd"}, 10)
    with pytest.raises(InputError, match="already holds checkpoints of another run .*method='sgd', this run has "
                                         "method='gd'"):
        Checkpointer(tmp_path, MPICommunicator(), {"method": "gd"}, resume=False)
    resumed = Checkpointer(tmp_path, MPICommunicator(), {"method": "sgd"}, resume=True).load_latest()
    assert resumed["iteration"] == 10 and resumed["arrays"]["x"].tolist() == [10.0] * 3


def test_a_resumed_run_prunes_the_files_it_continues_and_keeps_two(tmp_path):
    _save(tmp_path, {"method": "sgd"}, 10, 20, 30)
    ckpt = Checkpointer(tmp_path, MPICommunicator(), {"method": "sgd"}, resume=True)
    assert ckpt.load_latest()["iteration"] == 30
    ckpt.save(40, {"x": np.zeros(3)}, {})
    assert sorted(p.name for p in tmp_path.glob("rank_*")) == ["rank_000_it000000030.npz", "rank_000_it000000040.npz"]
    assert not list(tmp_path.glob(".*tmp"))


def test_the_same_process_may_reopen_its_directory(tmp_path):
    first = Checkpointer(tmp_path, MPICommunicator(), {}, resume=True)
    second = Checkpointer(tmp_path, MPICommunicator(), {}, resume=True)
    assert second.load_latest() is None
    first.close()
    second.close()


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(InputError, match=rf"is in use by another run \(pid {holder.pid} on "):
        Checkpointer(tmp_path, MPICommunicator(), {}, resume=True)
    holder.kill()
    holder.wait(timeout=60)
    Checkpointer(tmp_path, MPICommunicator(), {}, resume=True).close()
