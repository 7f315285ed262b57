"""benchmarks/harness.py, the launch and timing the benchmarks share: real mpiexec jobs that fail,
time out or succeed, variants timed in turns, and the scripts whose only test this is (deep.py,
launch_yield.py, python_overhead.py) run tiny."""

import json
import os
import sys
import time

import pytest
from _bench import BENCH, mpiexec_or_skip, run_benchmark

sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import launch_yield  # noqa: E402


def test_a_failed_job_names_its_command_exit_code_and_standard_error():
    mpiexec_or_skip()
    code = "import sys; print('boom on a rank', file=sys.stderr); sys.exit(3)"
    with pytest.raises(SystemExit) as exc:
        harness.run_mpi(2, [sys.executable, "-c", code], quiet=True)
    msg = str(exc.value)
    assert "mpiexec" in msg and "-c" in msg and "boom on a rank" in msg and "exit" in msg


def test_a_job_past_its_timeout_is_ended_whole():
    mpiexec_or_skip()
    t0 = time.monotonic()
    with pytest.raises(SystemExit, match="timed out after 2"):
        harness.run_mpi(2, [sys.executable, "-c", "import time; time.sleep(120)"], timeout=2, quiet=True)
    assert time.monotonic() - t0 < 60


def test_mpiopt_run_returns_the_trace(a5a_path, tmp_path):
    mpiexec_or_skip()
    from mpiopt.data import load_libsvm, preprocess

    X, y = load_libsvm(a5a_path, n_features=123)
    preprocess(X, y, 2, 5e-4, tmp_path / "shards", dataset="a5a", source_sha256=None)
    trace = harness.mpiopt_run(2, ["--data", tmp_path / "shards", "--method", "intsgd", "--iters", 5, "--batch", 8])
    assert trace["iterations"] == 5 and trace["method"] == "intsgd" and trace["n_ranks"] == 2


def test_machine_info_and_write_json(tmp_path):
    info = harness.machine_info()
    assert info["cores"] >= 1 and info["python"] and len(info["loadavg"]) == 3
    harness.write_json(tmp_path / "new" / "out.json", {"machine": info})
    assert json.loads((tmp_path / "new" / "out.json").read_text())["machine"] == info


def test_deep_benchmark_runs_its_mpi_job(tmp_path):
    """deep.py on 2 ranks, one epoch of the CNN on digits with SGD: its job, JSON and table."""
    mpiexec_or_skip()
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "deep.json"
    run_benchmark([BENCH / "deep.py", "--ranks", "2", "--epochs", "1", "--datasets", "digits", "--methods", "sgd",
                   "--json", out], timeout=600)
    (row,) = json.loads(out.read_text())["results"]
    assert row["dataset"] == "digits" and row["method"] == "sgd" and 0 < row["test_accuracy"] <= 1


def test_launch_yield_times_both_launch_settings(a5a_path, tmp_path):
    mpiexec_or_skip()
    out = tmp_path / "yield.json"
    run_benchmark([BENCH / "launch_yield.py", "--ranks", "2", "--pairs", "1", "--iters", "20", "--libsvm", a5a_path,
                   "--json", out])
    res = json.loads(out.read_text())
    assert set(res["median_ms_per_iteration"]) == {"launcher", "forced_yield"} and res["forced_over_launcher"] > 0


def test_launch_yield_times_the_yield_off_where_ranks_outnumber_cores(a5a_path, tmp_path):
    """Beyond the cores the launchers set the yield, so the other choice timed is the same variable
    turned off, with busy loops beside the ranks when asked."""
    mpiexec_or_skip()
    from mpiopt import launch

    ranks = launch.cores() + 1
    if ranks > 12:
        pytest.skip(f"{ranks} ranks: more than the 12 the tests run")
    out = tmp_path / "yield.json"
    run_benchmark([BENCH / "launch_yield.py", "--ranks", ranks, "--pairs", "1", "--iters", "20", "--busy", "1",
                   "--libsvm", a5a_path, "--json", out])
    res = json.loads(out.read_text())
    assert set(res["median_ms_per_iteration"]) == {"launcher", "no_yield"} and res["no_yield_over_launcher"] > 0
    assert res["no_yield_settings"] == launch_yield.YIELD_OFF[res["library"]] and res["busy_loops"] == 1
    assert set(res["launcher_settings"]) & set(res["no_yield_settings"])


def test_interleaved_rotates_the_order_every_repetition():
    """Each timer runs once per repetition, a different one first each time, and its measurements come
    back in its own list."""
    calls = []

    def timer(i):
        def one():
            calls.append(i)
            return float(i) + len(calls) / 100
        return one

    times = harness.interleaved([timer(0), timer(1), timer(2)], 4)
    assert calls == [0, 1, 2, 1, 2, 0, 2, 0, 1, 0, 1, 2]
    assert [[int(t) for t in ts] for ts in times] == [[0] * 4, [1] * 4, [2] * 4]
    assert times[1] == [0.02 + 1, 0.04 + 1, 0.09 + 1, 0.11 + 1]


def test_mean_seconds_is_the_mean_of_its_calls():
    """A timer of ``inner`` calls gives one call's mean time; without ``inner`` it repeats a call until
    about ``target`` seconds have passed."""
    count = []

    def nap():
        count.append(1)
        time.sleep(0.002)

    one = harness.mean_seconds(nap, inner=3)()
    assert len(count) == 3 and 0.002 <= one < 0.05
    count.clear()
    timer = harness.mean_seconds(nap, target=0.02)
    assert 2 <= len(count) <= 3  # the warm-up call and the one that sizes the loop
    count.clear()
    assert 0.002 <= timer() < 0.05 and 2 <= len(count) <= 10


def test_python_overhead_times_every_method(tmp_path):
    out = tmp_path / "overhead.json"
    run_benchmark([BENCH / "python_overhead.py", "--steps", "50", "--repeats", "2", "--json", out])
    result = json.loads(out.read_text())
    us = result["us_per_step"]
    assert set(us) == {"sgd", "intsgd", "intdiana", "vr-intdiana", "l-svrg", "int exchange_update",
                       "none float32 exchange_update"}
    assert all(v > 0 for v in us.values())
    assert result["kernel"] == (os.environ.get("MPIOPT_KERNEL") or "numpy")  # d = 16: below numba's threshold
    assert result["over_sgd"]["sgd"] == 1.0 and result["over_sgd"]["intsgd"] == us["intsgd"] / us["sgd"]


def test_python_overhead_takes_the_kernel_asked_for(tmp_path):
    pytest.importorskip("numba")
    out = tmp_path / "overhead.json"
    run_benchmark([BENCH / "python_overhead.py", "--steps", "50", "--repeats", "2", "--kernel", "numba", "--json", out])
    assert json.loads(out.read_text())["kernel"] == "numba"
