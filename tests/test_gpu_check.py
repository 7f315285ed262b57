"""benchmarks/gpu_check.py without a GPU: the preflight's exit code 2 and one line naming what is
missing, and the JSON every run writes (each check's name, status and figures; a check that raises
is that check's failure, not the end of the run).

(Its GPU checks themselves need a CUDA device and CuPy; they have not run in this test suite.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCH / "gpu_check.py"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402


def test_without_a_gpu_it_exits_2_with_one_line_naming_what_is_missing(tmp_path):
    found = gpu_check.preflight()
    if not any(found[name] for name in gpu_check.REQUIRED):
        pytest.skip("a CUDA device and NVRTC are present: the script would run its checks")
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], capture_output=True, text=True,
                         timeout=300)
    lines = (res.stdout + res.stderr).splitlines()
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and lines[0].startswith("gpu_check: cannot run (missing "), lines
    for name, why in found.items():
        assert (f"{name}: {why}" in lines[0]) == bool(why), (name, lines[0])
    assert not out.exists()


def test_preflight_names_the_four_things_it_needs():
    found = gpu_check.preflight()
    assert list(found) == ["CUDA device", "NVRTC", "NCCL", "MPI"]
    assert all(why is None or isinstance(why, str) and why for why in found.values())
    line = gpu_check.missing_line({"CUDA device": "torch sees no CUDA device", "NVRTC": None, "NCCL": None,
                                   "MPI": "mpi4py is not installed"})
    assert line == ("gpu_check: cannot run (missing CUDA device: torch sees no CUDA device; MPI: mpi4py is not "
                    "installed); no GPU check was run")


def test_the_report_lists_each_check_with_its_status_and_figures(tmp_path, capsys):
    def passing():
        return {"ok": True, "copy_over_quantize": 0.8}

    def failing():
        raise RuntimeError("CUDA out of memory")

    checks = gpu_check.run_checks({"integers": passing, "throughput": failing,
                                   "mpi_resnet18": lambda: {"skip": "MPI: mpi4py is not installed"},
                                   "hook_overlap": lambda: {"ok": False, "identical_on_all_ranks": False}})
    out = tmp_path / "gpu.json"
    found = {"CUDA device": None, "NVRTC": None, "NCCL": "torch has no NCCL backend", "MPI": None}
    assert gpu_check.write_report(out, found, checks, "a test device") == 1
    report = json.loads(out.read_text())
    assert report["device"] == "a test device"
    assert report["preflight"] == {"CUDA device": "ok", "NVRTC": "ok", "NCCL": "torch has no NCCL backend", "MPI": "ok"}
    assert [(c["name"], c["status"]) for c in report["checks"]] == [
        ("integers", "pass"), ("throughput", "fail"), ("mpi_resnet18", "skip"), ("hook_overlap", "fail")]
    assert report["checks"][0]["copy_over_quantize"] == 0.8
    assert report["checks"][1]["error"] == "RuntimeError: CUDA out of memory"
    assert all(isinstance(c["seconds"], float) for c in report["checks"])
    assert capsys.readouterr().out.splitlines()[1].startswith("throughput: fail")
    assert gpu_check.write_report(out, found, checks[:1] + checks[2:3], "a test device") == 0


def test_ddp_report_passes_on_identical_intsgd_replicas_and_measures_exposed_communication():
    results = {"model": "MLP 1024x8", "none": {"step_seconds": 0.010}, "fp32": {"step_seconds": 0.016},
               "intsgd": {"step_seconds": 0.013, "identical_on_all_ranks": True, "finite": True}}
    report = gpu_check.ddp_report(results)
    assert report["ok"] and report["fp32"]["exposed_communication_seconds"] == pytest.approx(0.006)
    assert report["intsgd"]["exposed_communication_seconds"] == pytest.approx(0.003)
    results["intsgd"]["identical_on_all_ranks"] = False
    assert not gpu_check.ddp_report(results)["ok"]


def test_the_checks_models_build_from_torch_nn():
    torch = pytest.importorskip("torch")
    model = gpu_check.resnet18()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # ResNet-18, CIFAR stem, 10 classes
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert gpu_check.mlp()(torch.zeros(2, 1024)).shape == (2, 10)
