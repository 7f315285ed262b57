"""Smoke tests of the speed benchmarks: tiny dims, shared memory only, real mpiexec; the JSON schema.

The network test bed itself needs root and minutes, so only its pure parts are tested here (rate
parsing, the MPMD command line, the refusal to run without permission).
"""

import json
import sys

import pytest
from _bench import BENCH, mpiexec_or_skip, run_benchmark

sys.path.insert(0, str(BENCH))

import allreduce_step  # noqa: E402
import convex_panel  # noqa: E402
import netbed  # noqa: E402
from mpiopt.kernels import cpu_kernel  # noqa: E402
from mpiopt.kernels import numba as numba_kernel  # noqa: E402


def test_allreduce_step_writes_the_contracted_json(tmp_path):
    mpiexec_or_skip()
    out = tmp_path / "step.json"
    proc = run_benchmark([BENCH / "allreduce_step.py", "--dims", "1000", "2e3", "--ranks", "2", "--net", "shm",
                 "--json", out, "--seconds", "0.1", "--rounds", "2", "--max-steps", "3"])
    res = json.loads(out.read_text())
    assert isinstance(res["machine"], dict) and res["machine"]["cores"] >= 1
    rows = res["results"]
    assert {r["method"] for r in rows} == {"intsgd", "sgd", "fp16", "bf16", "raw-allreduce"}
    for r in rows:
        for key in ("method", "dtype", "dim", "ranks", "net", "seconds_per_step"):
            assert key in r, (key, r)
        assert r["dim"] in (1000, 2000) and r["ranks"] == 2 and r["net"] == "shm"
        assert r["seconds_per_step"] > 0 and r["steps"] >= 2
    raw = {r["dtype"] for r in rows if r["method"] == "raw-allreduce"}
    assert raw == {"int8", "float16", "float32", "float64"}
    assert {r["dtype"] for r in rows if r["method"] == "sgd"} == {"float32", "float64"}
    ints = [r for r in rows if r["method"] == "intsgd"]
    assert ints and all(r["dtype"] == "auto" and r["wire_dtype"] == "int8" for r in ints)
    assert {r["kernel"] for r in ints} == ({"numba", "numpy"} if numba_kernel.AVAILABLE else {"numpy"})
    assert {r["alpha_mode"] for r in ints} == ({"constant", "adaptive"} if numba_kernel.AVAILABLE else {"constant"})
    assert res["ratios"] and all(q["speedup_vs_sgd_float32"] > 0 and q["speedup_vs_fp16"] > 0 for q in res["ratios"])
    assert {r["impl"] for r in rows if r["method"] == "fp16"} == {"package", "allgather"}
    halves = res["half_ratios"]
    assert {(q["method"], q["impl"]) for q in halves} == {("fp16", "package"), ("fp16", "allgather"), ("bf16", "package")}
    assert all(q["speedup_vs_sgd_float32"] > 0 for q in halves) and len(halves) == 3 * 2  # 2 dims
    assert all(r["bytes_per_rank"] == 2 * 2 * -(-r["dim"] // 2) for r in rows if r["method"] == "bf16")
    assert "vs sgd f32" in proc.stdout and "16-bit float steps" in proc.stdout  # the ratio tables


def test_step_overhead_writes_its_json(a5a_path, tmp_path):
    """VR-IntDIANA's step against its floor, on 2 ranks for a few tiny blocks: the script runs the
    package's method (the int compressor, the L-SVRG reset coin) and writes its JSON."""
    mpiexec_or_skip()
    from mpiopt.data import load_libsvm, preprocess

    X, y = load_libsvm(a5a_path, n_features=123)
    preprocess(X, y, 2, 5e-4, tmp_path / "shards", dataset="a5a", source_sha256=None)
    out = tmp_path / "overhead.json"
    run_benchmark([BENCH / "step_overhead.py", "--ranks", 2, "--blocks", 2, "--steps", 5, "--data", tmp_path / "shards",
          "--out", out])
    res = json.loads(out.read_text())
    assert res["method"] == "vr-intdiana" and res["ranks"] == 2 and res["steps_per_block"] == 5
    assert 0 < res["reset_probability"] <= 1 and res["ratio"] > 0
    assert set(res["ms_per_iteration"]) == {"method", "floor", "floor_with_resets", "floor_plus_max_allreduce"}
    # the default's exponent rule: int8 at every step
    steps = res["wire"]["steps_by_wire"]
    assert res["wire"]["compressor"] == "int" and set(steps) == {"int8"} and steps["int8"] >= 20
    assert res["wire"]["kernel"] == cpu_kernel(size=123)  # the default for a5a's 123 coordinates


def test_convex_benchmark_writes_traces_summary_and_figures_and_rebuilds_them(libsvm_dir, tmp_path):
    mpiexec_or_skip()
    out = tmp_path / "convex"
    common = ["--datasets", "a5a", "--data-dir", libsvm_dir, "--ranks", 2, "--seeds", 2, "--iters", 60,
              "--methods", "vr-intdiana", "l-svrg", "--out", out, "--shards-dir", tmp_path / "shards"]
    proc = run_benchmark([BENCH / "convex.py", *common])
    assert "| vr-intdiana |" in proc.stdout and "| l-svrg |" in proc.stdout
    summary = json.loads((out / "a5a" / "summary.json").read_text())
    assert [m["method"] for m in summary["methods"]] == ["vr-intdiana", "l-svrg"]
    trace = json.loads((out / "a5a" / "vr-intdiana-seed1.json").read_text())
    assert summary["iters"] == 60 and summary["seeds"] == 2 and summary["batch"] == trace["config"]["batch"] == 160
    assert trace["label"] == "vr-intdiana" and trace["n_ranks"] == 2 and trace["config"]["iters"] == 60
    assert trace["wire"]["steps_by_wire"] == {"int8": 60}  # the default: int8 at every step, the first too
    for suffix in ("png", "pdf"):
        (out / f"a5a.{suffix}").unlink()
    md = (out / "a5a" / "summary.md").read_text()
    run_benchmark([BENCH / "convex.py", *common, "--no-run"])
    assert (out / "a5a.png").stat().st_size > 10_000 and (out / "a5a.pdf").exists()
    assert (out / "a5a" / "summary.md").read_text() == md


def test_readme_sections_are_generated_from_json(tmp_path):
    step = {"machine": {"date": "now", "cpu": "cpu", "cores": 2, "loadavg": [0.1, 0.2, 0.3]},
            "results": [{"method": m, "dtype": dt, "dim": 1000, "ranks": 2, "net": "shm", "seconds_per_step": s,
                         **extra}
                        for m, dt, s, extra in (("intsgd", "auto", 1e-4, {"kernel": "numba", "impl": "package"}),
                                                ("sgd", "float32", 2e-4, {"impl": "lean"}),
                                                ("raw-allreduce", "int8", 5e-5, {}))]}
    step["ratios"] = allreduce_step.ratios(step["results"])
    assert step["ratios"][0]["speedup_vs_sgd_float32"] == pytest.approx(2.0)
    assert step["ratios"][0]["slowdown_vs_raw_int8"] == pytest.approx(2.0)
    path = tmp_path / "allreduce_step_x.json"
    path.write_text(json.dumps(step))
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nhand-written text\n")
    allreduce_step.update_readme([path], readme)
    allreduce_step.update_readme([path], readme)  # idempotent: replaced, not appended twice
    text = readme.read_text()
    assert text.count(allreduce_step.BEGIN) == 1 and "hand-written text" in text
    assert "| shm | 2 | 1e+03 | numba package | - | 2.00x |" in text


def test_kernels_benchmark_writes_json(tmp_path):
    out = tmp_path / "kernels.json"
    run_benchmark([BENCH / "kernels.py", "--dims", "1000", "--reps", "2", "--json", out])
    res = json.loads(out.read_text())
    ops = {(r["op"], r["kernel"]) for r in res["results"]}
    assert ("memcpy", "numpy.copyto") in ops and ("quantize", "numpy") in ops and ("decode", "numpy") in ops
    for r in res["results"]:
        assert r["seconds"] > 0 and r["gb_per_s_input"] > 0
        if r["op"] != "memcpy":
            assert r["fraction_of_memcpy"] > 0


def test_rss_benchmark_reports_each_ranks_peak_with_and_without_numba(a5a_path, tmp_path):
    mpiexec_or_skip()
    pytest.importorskip("numba")
    out = tmp_path / "rss.json"
    run_benchmark([BENCH / "rss.py", "--ranks", 1, 2, "--iters", 20, "--libsvm", a5a_path, "--json", out])
    res = json.loads(out.read_text())
    assert [(r["ranks"], r["kernel_option"]) for r in res["runs"]] == [(1, "default"), (1, "numba"), (2, "default"),
                                                                      (2, "numba")]
    for r in res["runs"]:
        assert len(r["peak_rss_mb"]) == r["ranks"] and r["max_mb"] == max(r["peak_rss_mb"]) > 0
        assert r["kernel"] == ("numpy" if r["kernel_option"] == "default" else "numba")
    assert res["import_peak_mb"]["import numba"] > res["import_peak_mb"]["import numpy"] > 0


def test_the_beds_size_sweep_reports_time_over_the_wires_ideal():
    """netbed.py check --sweep: a message's ideal is bytes / rate, an Allreduce's the ring's 2 (n - 1) / n
    of the buffer a rank; below 1 a size crossed faster than the wire allows (a token bucket's burst)."""
    assert netbed.SWEEP_BYTES[0] == 4096 and netbed.SWEEP_BYTES[-1] == 64 * 2 ** 20
    rows = netbed.sweep_ratios([{"bytes": 125_000, "message_seconds": 0.0005, "allreduce_seconds": 0.003}], 4, 1e9)
    (r,) = rows
    assert r["message_ideal_seconds"] == 0.001 and r["message_ratio"] == 0.5
    assert r["allreduce_ideal_seconds"] == 0.0015 and r["allreduce_ratio"] == 2.0
    table = netbed.sweep_table("1gbit", 4, rows).splitlines()
    assert table[0].startswith("| 1gbit, 4 ranks: bytes") and table[2] == "| 125,000 | 0.500 | 0.50 | 3.000 | 2.00 |"
    source = netbed.sweep_program([4096], 2, 0.0)
    compile(source, "sweep", "exec")
    assert "c.Send(buf, dest=1)" in source and "Allreduce(MPI.IN_PLACE, buf)" in source


def test_rate_parsing():
    assert netbed.rate_bits("1gbit") == 1e9
    assert netbed.rate_bits("10gbit") == 1e10
    assert netbed.rate_bits("500mbit") == 5e8
    with pytest.raises(netbed.NetBedError, match="rate"):
        netbed.rate_bits("fast")


@pytest.mark.parametrize("rate,gso,burst", [("1gbit", 32768, 37500), ("10gbit", 65536, 375000),
                                             ("100mbit", 2048, 5048)])
def test_the_bucket_is_0_3_ms_of_the_rate_and_holds_one_gso_packet(rate, gso, burst):
    """No message after a pause may cross faster than bytes / rate: the bucket is kept to about the
    0.3 ms a message takes to start, and the veths' GSO packets shrink to fit it on slow links."""
    bed = netbed.NetBed(4, rate)
    assert bed.gso_max_size() == gso
    tbf = bed._tbf()
    assert tbf[tbf.index("burst") + 1] == str(burst)
    assert bed.describe()["gso_max_size"] == gso
    assert "mpi_env" in bed.describe() and bed.describe(mpi_env=False) == \
        {k: v for k, v in bed.describe().items() if k != "mpi_env"}  # gloo jobs' records leave it out


def test_mpmd_command_runs_each_rank_in_its_namespace():
    bed = netbed.NetBed(3, "1gbit")
    cmd = bed.mpmd("mpiexec", ["python", "w.py"])
    assert cmd[0] == "mpiexec" and cmd.count(":") == 2
    for r in range(3):
        assert f"{netbed.PREFIX}r{r}" in cmd
    assert bed.env()["MPIR_CVAR_NOLOCAL"] == "1" and bed.env()["FI_PROVIDER"] == "tcp"
    assert netbed.ring_seconds(4, 40_000_000, 1e9) == pytest.approx(0.48)


def test_network_run_without_permission_fails_loudly(monkeypatch, capsys, tmp_path):
    def refuse():
        raise netbed.NetBedError("network namespaces need root (test)")

    monkeypatch.setattr(netbed, "preflight", refuse)
    rc = allreduce_step.main(["--dims", "1000", "--ranks", "2", "--net", "1gbit", "--json", str(tmp_path / "x.json")])
    assert rc != 0
    assert "need root" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_torch_allreduce_compares_doubling_with_the_ring(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "ta.json"
    run_benchmark([BENCH / "torch_allreduce.py", "--ranks", "3", "--sizes", "64", "4096", "--calls", "3",
                   "--turns", "2", "--json", out])
    res = json.loads(out.read_text())
    assert (res["ranks"], res["calls"], res["turns"]) == (3, 3, 2)
    assert [r["bytes"] for r in res["results"]] == [64, 4096]
    for r in res["results"]:
        assert set(r) == {"bytes", "doubling_seconds", "ring_seconds", "doubling_cpu_seconds", "ring_cpu_seconds",
                          "doubling_vs_ring"}
        assert r["doubling_seconds"] > 0 and r["ring_seconds"] > 0
        assert r["doubling_vs_ring"] == pytest.approx(r["doubling_seconds"] / r["ring_seconds"])


def test_convex_panel_runs_each_problem_with_each_alpha_rule_and_writes_its_table(tmp_path):
    mpiexec_or_skip()
    out = tmp_path / "panel.json"
    run_benchmark([BENCH / "convex_panel.py", "--problems", "synthetic", "--l2", 1e-3, "--ranks", 2, "--iters", 300,
                   "--tol", 1e-4, "--work", tmp_path / "work", "--json", out], timeout=600)
    record = json.loads(out.read_text())
    (case,) = record["cases"]
    assert case["problem"] == "synthetic" and case["ranks"] == 2 and case["batch"] == 50  # 1000 rows a worker / 20
    assert set(case["runs"]) == {"l-svrg", "vr-intdiana", "vr-intdiana paper", "vr-intdiana paper feedback",
                                 "vr-intdiana fill"}
    lsvrg = case["runs"]["l-svrg"]
    assert lsvrg["status"] == "converged" and lsvrg["iterations"] == lsvrg["to"]["0.0001"]
    assert lsvrg["bytes_per_rank"] == 8 * 50 * lsvrg["iterations"]  # float64, d = 50
    for label in ("vr-intdiana", "vr-intdiana paper", "vr-intdiana paper feedback", "vr-intdiana fill"):
        run, ratio = case["runs"][label], case["ratios"][label]
        assert ratio["iterations_x"] == run["to"]["0.0001"] / lsvrg["to"]["0.0001"]
        assert ratio["bytes_fewer_x"] == lsvrg["bytes_to"]["0.0001"] / run["bytes_to"]["0.0001"] > 1
    assert case["ratios"]["level"] == 1e-4
    row = next(line for line in convex_panel.table([record]).splitlines() if line.startswith("| synthetic"))
    assert row.split(" | ")[3:5] == ["0.0001", f"{lsvrg['iterations']:,}"] and len(row.split(" | ")) == 16
    # --only reruns one column into the same JSON and keeps the others (a different l-svrg would show)
    case["runs"]["l-svrg"]["iterations_run"] = -1
    out.write_text(json.dumps(record))
    run_benchmark([BENCH / "convex_panel.py", "--problems", "synthetic", "--l2", 1e-3, "--ranks", 2, "--iters", 300,
                   "--tol", 1e-4, "--work", tmp_path / "work", "--json", out, "--only", "vr-intdiana"], timeout=600)
    rerun = json.loads(out.read_text())
    (again,) = rerun["cases"]
    assert again["rerun"] == ["vr-intdiana"] and again["runs"]["l-svrg"]["iterations_run"] == -1
    assert again["runs"]["vr-intdiana"] == case["runs"]["vr-intdiana"]  # the same seed: the same run
    assert "Columns rerun alone (`--only`): vr-intdiana" in convex_panel.table([rerun])
    run_benchmark([BENCH / "convex_panel.py", "--problems", "synthetic", "--l2", 1e-3, "--ranks", 2, "--iters", 300,
                   "--tol", 1e-4, "--work", tmp_path / "work", "--json", out, "--only", "vr-intdiana paper"],
                  timeout=600)
    assert json.loads(out.read_text())["cases"][0]["rerun"] == ["vr-intdiana", "vr-intdiana paper"]  # both kept
    with pytest.raises(SystemExit, match="no run of l-svrg, vr-intdiana paper, vr-intdiana paper feedback, vr-intdiana fill for synthetic"):
        convex_panel.main(["--problems", "synthetic", "--l2", "1e-4", "--ranks", "2", "--work", str(tmp_path / "work"),
                           "--json", str(out), "--only", "vr-intdiana"])


def test_iteration_profile_splits_each_methods_step_into_its_parts(tmp_path):
    """Two ranks, three timed iterations on a small d = 1e6 problem: every method's parts (gradients,
    collectives, kernels, the rest) add up to its step, and the fused kernels are the ones timed."""
    pytest.importorskip("numba")
    mpiexec_or_skip()
    out = tmp_path / "profile.json"
    run_benchmark([BENCH / "iteration_profile.py", "--ranks", "2", "--iters", "3", "--sparse-rows", "3000",
                   "--shards-dir", tmp_path / "shards", "--json", out])
    res = json.loads(out.read_text())
    assert res["ranks"] == 2 and res["dim"] == 1_000_000 and res["iters"] == 3
    rows = {m["method"]: m for m in res["methods"]}
    assert list(rows) == ["l-svrg float32", "vr-intdiana", "vr-diana nat"]
    for m in rows.values():
        assert m["step_ms"] > 0 and m["vs_lsvrg_float32"] > 0
        assert sum(m["parts"].values()) == pytest.approx(m["step_ms"])
    assert {"int kernel: shift_delta", "int kernel: shift_update", "int kernel: round"} <= set(rows["vr-intdiana"]["parts"])
    assert {"nat: encode", "nat: decode_mean"} <= set(rows["vr-diana nat"]["parts"])
    assert "MPI: allreduce_float" in rows["l-svrg float32"]["parts"]


def test_ddp_break_even_maps_the_hooks_step_against_fp16_and_fp32(tmp_path):
    """One shared-memory cell of a tiny model: the JSON's schema, speed-ups that are the ratios of the
    hooks' step times, and the figure; the MLP's width gives about the asked parameter count."""
    pytest.importorskip("torch")
    import ddp_break_even

    for params in (1e5, 1e6, 1e7):
        w = ddp_break_even.width_for(params)
        assert abs((5 * (w * w + w) + 10 * w + 10) / params - 1) < 0.01  # 5 w x w layers, one w x 10
    out = tmp_path / "dbe.json"
    run_benchmark([BENCH / "ddp_break_even.py", "--params", "2e4", "--nets", "shm", "--ranks", "2", "--steps", "1",
                   "--json", out])
    res = json.loads(out.read_text())
    (c,) = res["cells"]
    assert c["net"] == "shm" and c["ranks"] == 2 and 15_000 < c["parameters"] < 25_000
    assert set(c["seconds"]) >= {"none", "fp32", "fp16", "intsgd overlapped", "intsgd synchronous"}
    assert c["speedup_vs_fp16"] == pytest.approx(c["seconds"]["fp16"] / c["seconds"]["intsgd overlapped"])
    assert c["speedup_vs_fp32"] == pytest.approx(c["seconds"]["fp32"] / c["seconds"]["intsgd overlapped"])
    assert out.with_suffix(".png").stat().st_size > 0


def test_hook_engine_times_the_hooks_exchange_against_a_copy(tmp_path):
    """A tiny model on one gloo rank: every rule and kernel asked for is timed beside the copy, and the
    JSON's ratios are the step times' over the copy's."""
    pytest.importorskip("torch")
    out = tmp_path / "hook_engine.json"
    kernels = ["numba", "numpy"] if numba_kernel.AVAILABLE else ["numpy"]
    run_benchmark([BENCH / "hook_engine.py", "--params", "2e4", "--buckets", "2", "--reps", "2", "--inner", "1",
                   "--kernels", *kernels, "--json", out])
    res = json.loads(out.read_text())
    rows = {r["variant"]: r for r in res["results"]}
    assert set(rows) == {"copy"} | {f"intsgd {rule} {k}" for rule in ("paper", "exponent") for k in kernels}
    assert res["parameters"] == 20_000 and res["buckets"] == 2
    for r in rows.values():
        assert r["seconds_per_step"] > 0
        assert r["over_copy"] == pytest.approx(r["seconds_per_step"] / rows["copy"]["seconds_per_step"])
