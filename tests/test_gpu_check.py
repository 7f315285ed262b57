"""benchmarks/gpu_check.py on a machine without a GPU: exit code 2 and one line that says so.

(Its checks themselves need a CUDA device and CuPy; they have not run in this test suite.)"""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_without_a_gpu_it_exits_2_with_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run its checks")
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], capture_output=True, text=True,
                         timeout=120)
    lines = (res.stdout + res.stderr).splitlines()
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU available"), lines
    assert not out.exists()
