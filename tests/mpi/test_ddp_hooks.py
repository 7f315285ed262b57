"""DDP + mpiopt's intsgd_hook on sklearn's digits, over real gloo jobs of 2 and 4 processes.

What each check compares is spelled out in ``_ddp_hook_checks.py``: the integers the hook sends equal
those of mpiopt.torch.IntSGD fed the same gradients (same seed, same alpha blocks, same LR
schedule); parameters are bit-identical on all ranks after every step; a resume from
``state_dict`` is bit-identical; a forced int8 overflow with ``auto`` is redone in int32 (never
clipped, never wrapped, never int16); ``wire_dtype='int16'`` is refused on gloo; the nat
compressor runs through compressor_hook.
"""

from pathlib import Path

import pytest

from torchlaunch import run_torch

pytest.importorskip("torch")
pytest.importorskip("sklearn")
HERE = Path(__file__).resolve().parent
CHECKS = ("ok same-as-IntSGD identical", "ok resume", "ok overflow", "ok int16", "ok nat", "ok empty-layer", "ok group-lr", "ok low-precision", "ok in-place")


@pytest.mark.parametrize("n", [2, 4])
def test_intsgd_hook_on_digits(n):
    res = run_torch(n, HERE / "_ddp_hook_checks.py", timeout=120)
    assert res.returncode == 0, res.stdout
    for check in CHECKS:
        assert res.stdout.count(f"] {check}") == n, f"{check!r} not reported by every rank:\n{res.stdout}"
