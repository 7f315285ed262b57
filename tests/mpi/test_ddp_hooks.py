"""DDP + mpiopt's intsgd_hook on sklearn's digits, over real gloo jobs of 2 and 4 processes.

What each check compares is spelled out in ``_ddp_hook_checks.py``: IntSGD's integers whatever the
buckets, a bit-identical resume (also across DDP's bucket rebuild, another bucket_cap_mb, a pickled
state), alpha from IntSGD's own iterate under momentum and Adam, lr = 0, float16/bfloat16, a
GradScaler's skipped step, gradient accumulation, DDP's options, a forced overflow inside overlapped
buckets, and backward not waiting for the sums.
"""

from pathlib import Path

import pytest

from torchlaunch import run_torch

pytest.importorskip("torch")
pytest.importorskip("sklearn")
HERE = Path(__file__).resolve().parent
CHECKS = ("ok same-as-IntSGD identical", "ok buckets", "ok messages", "ok one-parameter-bucket", "ok resume",
          "ok ddp-options", "ok optimizers momentum",
          "ok optimizers adam", "ok lr-zero", "ok exponent", "ok low-precision", "ok grad-scaler", "ok accumulation",
          "ok overflow", "ok overlap", "ok int16", "ok nat", "ok empty-layer", "ok group-lr")


@pytest.mark.parametrize("n", [2, 4])
def test_intsgd_hook_on_digits(n):
    res = run_torch(n, HERE / "_ddp_hook_checks.py", timeout=600)
    assert res.returncode == 0, res.stdout
    for check in CHECKS:
        assert res.stdout.count(f"] {check}") == n, f"{check!r} not reported by every rank:\n{res.stdout}"
