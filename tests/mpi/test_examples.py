"""Every script in examples/ runs under real ``mpiexec -n 2`` (small iteration counts) and its output
makes sense: methods converge to the directly solved x*, accuracy is high, a resumed torch run ends
bitwise where the uninterrupted one does."""

import re
from pathlib import Path

import pytest

from mpilaunch import run_script

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args) -> str:
    res = run_script(2, EXAMPLES / name, *args, timeout=300)
    assert res.returncode == 0, f"{name} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_least_squares_every_method_reaches_the_direct_solution():
    out = run_example("least_squares.py")
    rows = re.findall(r"^(\S+)\s+converged\s+\d+\s+(\S+)", out, flags=re.M)
    assert [m for m, _ in rows] == ["gd", "l-svrg", "vr-diana", "vr-intdiana"], out
    assert all(float(dist) <= 1e-10 for _, dist in rows), out


def test_softmax_digits_reports_a_high_test_accuracy():
    out = run_example("softmax_digits.py", "--iters", "500", "--every", "250")
    accuracy = [float(a) for a in re.findall(r"test accuracy (\S+)", out)]
    assert len(accuracy) == 3 and accuracy[0] < 0.2 and accuracy[-1] > 0.85, out


def test_torch_digits_trains_and_resumes_bit_identically(tmp_path):
    pytest.importorskip("torch")
    straight = run_example("torch_digits.py", "--epochs", "3", "--ckpt-dir", tmp_path / "a")
    run_example("torch_digits.py", "--epochs", "2", "--ckpt-dir", tmp_path / "b")
    resumed = run_example("torch_digits.py", "--epochs", "3", "--ckpt-dir", tmp_path / "b")
    assert "resumed from" in resumed and "at epoch 2" in resumed, resumed
    assert float(re.findall(r"test accuracy (\S+)", straight)[-1]) > 0.85, straight
    checksum = re.compile(r"parameters identical on all 2 ranks: True; checksum (\S+)")
    assert checksum.search(straight).group(1) == checksum.search(resumed).group(1), (straight, resumed)
