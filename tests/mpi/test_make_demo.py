"""``make demo`` runs again in the same checkout (issue 25: the second run stopped at preprocess's
refusal of a non-empty --out): two runs into one folder, the second ending with the first's table."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def make_demo(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(ROOT), "demo", f"DEMO={out}", "DEMO_ITERS=60"], capture_output=True,
                          text=True, timeout=600)


def test_make_demo_runs_twice_in_the_same_folder(tmp_path):
    if not (ROOT / ".venv" / ".installed").exists():
        pytest.skip("make demo needs the checkout's .venv (made by make venv / make test)")
    out = tmp_path / "demo-out"
    first = make_demo(out)
    assert first.returncode == 0, first.stdout + first.stderr
    second = make_demo(out)
    assert second.returncode == 0, second.stdout + second.stderr
    table = [line for line in first.stdout.splitlines() if "bits sent per rank" in line]
    assert len(table) == 1, first.stdout

    def compared(stdout: str):
        lines = stdout.splitlines()
        at = lines.index(table[0])
        return lines[at:at + 5]  # header, three runs, the sentence

    assert compared(second.stdout) == compared(first.stdout)
    assert compared(first.stdout)[4].startswith("vr-intdiana sent ")
