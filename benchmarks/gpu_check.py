"""Every GPU check of mpiopt in one script (one GPU, a few minutes): ``python benchmarks/gpu_check.py --json OUT``.

Without a usable GPU (torch sees no CUDA device, or CuPy is missing) it prints one line saying so and
exits with code 2. With one it runs, and writes to OUT:

* ``integers``: the CuPy quantizer's integers equal the numpy reference quantizer's for
  1e3 .. 1e8 elements and float16 / float32 / float64 input (same seed, worker, step and alpha);
* ``throughput``: quantizing (round + cast to int8) vs a device-to-device copy of the same input
  bytes; the goal is copy time / quantize time >= 0.70;
* ``ddp_nccl``: DDP + ``intsgd_hook`` over NCCL in this one process (the digits CNN of
  ``benchmarks/deep.py`` on random inputs, 30 steps): it trains, nothing is clipped, the counters;
* ``mpi_resnet18``: ``mpiexec -n 4`` ranks sharing the GPU, each training a ResNet-18 on
  CIFAR-shaped random data for 50 steps with :class:`mpiopt.torch.IntSGD`; the parameters must be
  bit-identical on all ranks (the integers go through MPI: the device buffer with CUDA-aware MPI,
  else pinned host staging; ``cuda_aware`` records which).

Each check's failure is recorded in OUT and makes the exit code 1; all passing gives 0.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SIZES = tuple(10 ** e for e in range(3, 9))
DTYPES = ("float16", "float32", "float64")
THROUGHPUT_GOAL = 0.70


def no_gpu_reason() -> Optional[str]:
    """Why the GPU checks cannot run here, or None when torch sees a CUDA device and CuPy imports."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # ImportError, or a CUDA runtime error without a device
        return f"CuPy is not usable ({type(exc).__name__}: {exc})"
    return None


def check_integers() -> Dict[str, Any]:
    import cupy

    from mpiopt.kernels.cupy import Quantizer as CupyQuantizer
    from mpiopt.kernels.numpy import Quantizer as NumpyQuantizer  # the reference (numba takes no float16)

    cases = []
    for size in SIZES:
        rng = np.random.default_rng(size)
        base = rng.standard_normal(size) * 3.0
        alpha = 7.5
        for dtype in DTYPES:
            v = base.astype(dtype)
            cpu = NumpyQuantizer(size, seed=11, worker=2, n_ranks=4)
            cpu.round(v, alpha, 5)
            want = np.empty(size, dtype=np.int32)
            cpu.pack(want)
            gpu = CupyQuantizer(size, seed=11, worker=2, n_ranks=4)
            gpu.round(cupy.asarray(v), alpha, 5)
            got = cupy.empty(size, dtype=np.int32)
            gpu.pack(got)
            differ = int((cupy.asnumpy(got) != want).sum())
            cases.append({"size": size, "dtype": dtype, "differing": differ})
    return {"ok": all(c["differing"] == 0 for c in cases), "cases": cases}


def check_throughput(size: int = 1 << 26, reps: int = 20) -> Dict[str, Any]:
    import cupy

    from mpiopt.kernels.cupy import Quantizer as CupyQuantizer

    v = cupy.random.standard_normal(size, dtype=cupy.float32)
    copy = cupy.empty_like(v)
    wire = cupy.empty(size, dtype=cupy.int8)
    q = CupyQuantizer(size, seed=1, worker=0, n_ranks=4)

    def quantize(k: int) -> None:
        q.round(v, 3.0, k)
        q.pack(wire)

    def timed(fn: Callable[[int], None]) -> float:
        fn(0)
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for k in range(reps):
            fn(k)
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3 / reps

    t_quant = timed(quantize)
    t_copy = timed(lambda k: cupy.copyto(copy, v))
    ratio = t_copy / t_quant
    return {"ok": ratio >= THROUGHPUT_GOAL, "elements": size, "quantize_seconds": t_quant, "copy_seconds": t_copy,
            "copy_over_quantize": ratio, "goal": THROUGHPUT_GOAL}


def check_ddp_nccl(steps: int = 30) -> Dict[str, Any]:
    import torch
    import torch.distributed as dist

    from ddp_hooks import free_port
    from deep import make_model
    from mpiopt.torch.hooks import IntSGDState, intsgd_hook

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ddp = torch.nn.parallel.DistributedDataParallel(make_model("cnn", 0).cuda(), device_ids=[0])
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        state = IntSGDState(None, opt, wire_dtype="auto", seed=0)
        ddp.register_comm_hook(state, intsgd_hook)
        X = torch.randn(256, 1, 8, 8, device="cuda")
        y = torch.randint(0, 10, (256,), device="cuda")
        losses = []
        for k in range(steps):
            idx = torch.arange(k * 32, (k + 1) * 32, device="cuda") % 256
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(ddp(X[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(float(loss))
        finite = all(bool(torch.isfinite(p).all()) for p in ddp.parameters())
        stats = state.stats()
        return {"ok": finite and stats["clipped"] == 0 and losses[-1] < losses[0], "loss_first": losses[0],
                "loss_last": losses[-1], **stats}
    finally:
        dist.destroy_process_group()


def resnet18(classes: int = 10):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), as in the CIFAR experiments."""
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

        def forward(self, x):
            return nn.functional.relu(self.body(x) + self.skip(x))

    layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def mpi_worker(out: str, steps: int = 50) -> None:
    """One of the 4 MPI ranks of ``check_mpi_resnet18`` (run under mpiexec)."""
    import torch
    from mpi4py import MPI

    import mpiopt.torch as mt

    comm = MPI.COMM_WORLD
    torch.manual_seed(0)
    model = resnet18().cuda()
    opt = mt.IntSGD(model.parameters(), lr=0.05, momentum=0.9, wire_dtype="auto", seed=0)
    gen = torch.Generator(device="cuda").manual_seed(1 + comm.Get_rank())
    t0 = time.perf_counter()
    for _ in range(steps):
        x = torch.randn(32, 3, 32, 32, device="cuda", generator=gen)
        y = torch.randint(0, 10, (32,), device="cuda", generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    torch.cuda.synchronize()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu().numpy()
    digests = comm.allgather(hashlib.sha256(flat.tobytes()).hexdigest())
    if comm.Get_rank() == 0:
        Path(out).write_text(json.dumps({"ok": len(set(digests)) == 1, "status": "trained", "steps": steps,
                                         "seconds": time.perf_counter() - t0, "identical_on_all_ranks":
                                         len(set(digests)) == 1, "wire_bytes": opt.wire_bytes,
                                         "clipped": opt.clipped, "cuda_aware": bool(opt.comm.cuda_aware)}))


def check_mpi_resnet18(scratch: Path) -> Dict[str, Any]:
    from mpiopt.launch import mpi_env, mpiexec_path

    out = scratch.with_name(scratch.stem + "-mpi.json")
    cmd = [mpiexec_path(), "-n", "4", sys.executable, str(Path(__file__).resolve()), "--mpi-worker", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=mpi_env(4))
    if res.returncode != 0 or not out.is_file():
        return {"ok": False, "status": "failed", "exit_code": res.returncode, "output": (res.stdout + res.stderr)[-3000:]}
    result = json.loads(out.read_text())
    out.unlink()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="where to write the results")
    p.add_argument("--mpi-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mpi_worker:
        mpi_worker(args.mpi_worker)
        return 0
    if not args.json:
        p.error("--json OUT is required")
    reason = no_gpu_reason()
    if reason is not None:
        print(f"gpu_check: no GPU available ({reason}); no GPU check was run")
        return 2
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    checks = {"integers": check_integers, "throughput": check_throughput, "ddp_nccl": check_ddp_nccl,
              "mpi_resnet18": lambda: check_mpi_resnet18(out)}
    report: Dict[str, Any] = {}
    for name, check in checks.items():
        t0 = time.perf_counter()
        try:
            report[name] = check()
        except Exception as exc:  # record it and go on to the next check
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        report[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {'ok' if report[name]['ok'] else 'FAILED'} ({report[name]['seconds']} s)", flush=True)
    import torch

    report["device"] = torch.cuda.get_device_name(0)
    out.write_text(json.dumps(report, indent=1))
    return 0 if all(r["ok"] for r in report.values() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
