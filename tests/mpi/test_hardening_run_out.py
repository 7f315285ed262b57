"""``mpiopt run --out`` is checked before any data is loaded: never a directory, never inside --data."""

import hashlib
import shutil

from mpilaunch import own_stderr, run_mpi


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_out_inside_the_data_folder_is_refused_before_the_run(a5a_for, tmp_path):
    data = shutil.copytree(a5a_for(2), tmp_path / "data")
    before = _digest(data)
    res = run_mpi(2, ["run", "--data", data, "--method", "gd", "--iters", 5, "--no-progress",
                      "--out", data / "meta.json"], timeout=60)
    assert res.returncode == 2
    assert own_stderr(res) == (f"mpiopt: error: --out '{data}/meta.json' is inside the data folder '{data}', which a run "
                          f"never writes to; choose a path outside it (e.g. under results/)\n")
    ckpt = run_mpi(2, ["run", "--data", data, "--method", "gd", "--iters", 5, "--no-progress", "--checkpoint-every",
                       1, "--checkpoint-dir", data / "ckpt", "--out", tmp_path / "t.json"], timeout=60)
    assert ckpt.returncode == 2 and ckpt.stderr.startswith(f"mpiopt: error: --checkpoint-dir '{data}/ckpt' is inside")
    assert _digest(data) == before and not (tmp_path / "t.json").exists()


def test_out_that_is_a_directory_is_refused_before_loading_data(tmp_path):
    res = run_mpi(2, ["run", "--data", tmp_path / "nowhere", "--method", "gd", "--out", tmp_path], timeout=60)
    assert res.returncode == 2
    assert own_stderr(res) == (f"mpiopt: error: --out '{tmp_path}' is a directory; give the trace's file name, e.g. "
                          f"--out '{tmp_path}/run.json'\n")
