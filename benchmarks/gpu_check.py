"""Every GPU check of mpiopt in one script (one or more GPUs, a few minutes): ``python benchmarks/gpu_check.py --json OUT``.

Preflight first: a CUDA device (torch), NVRTC (CuPy compiles a kernel), NCCL (torch.distributed) and
MPI (mpi4py and an mpiexec). Without a CUDA device or NVRTC no check can run: the script prints one
line naming everything missing and exits with code 2. Without NCCL the DDP checks run over gloo
with CUDA tensors; without MPI the MPI check is skipped (its reason recorded); the checks that use
torch.distributed never import mpi4py.

Checks, each one entry of OUT's ``checks`` list (``name``, ``status``: pass / fail / skip, its figures):

* ``integers``: the CuPy quantizer's integers equal the numpy reference quantizer's for 1e3 .. 1e8
  elements, float16 / float32 / float64 input, one alpha and one alpha per block;
* ``throughput``: quantizing (``round`` + ``pack`` into int8: 9 bytes moved per float32 element)
  vs a device-to-device copy of the same input (8 bytes per element); goal copy time / quantize
  time >= 0.70;
* ``hook_overlap``: 2 ranks (torch.multiprocessing; NCCL with >= 2 GPUs, else gloo with CUDA
  tensors, the ranks sharing the GPU), an MLP of 8 layers in >= 8 DDP buckets: step seconds with
  no communication, DDP's fp32 all-reduce, torch's fp16 hook and ``intsgd_hook``, and each hook's
  exposed communication (its step minus the step without communication); passes when intsgd's
  replicas are bit-identical and its loss finite;
* ``resnet18_hooks``: the same for ResNet-18 on CIFAR-shaped random data (torchvision's when it is
  installed, else the CIFAR ResNet-18 built here from torch.nn) with the fp32, fp16 and intsgd hooks;
* ``mpi_resnet18``: ``mpiexec -n 2`` ranks sharing the GPU, each training ResNet-18 with
  :class:`mpiopt.torch.IntSGD` on ``cuda:<rank mod GPUs>`` without ``set_device``; parameters
  bit-identical on all ranks (``cuda_aware`` records whether MPI took the device buffers).

A failing check makes the exit code 1; all passing (or skipped) gives 0.
"""

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SIZES = tuple(10 ** e for e in range(3, 9))
DTYPES = ("float16", "float32", "float64")
THROUGHPUT_GOAL = 0.70
REQUIRED = ("CUDA device", "NVRTC")
"""Without these no check can run (exit 2)."""


def preflight() -> Dict[str, Optional[str]]:
    """For each of CUDA device, NVRTC, NCCL and MPI: None when usable here, else why not."""
    found: Dict[str, Optional[str]] = {}
    try:
        import torch
    except ImportError:
        torch = None
    found["CUDA device"] = ("torch is not installed" if torch is None else
                            None if torch.cuda.is_available() else "torch sees no CUDA device")
    try:
        import cupy

        cupy.RawKernel('extern "C" __global__ void mpiopt_probe(int* x) { x[0] = 1; }', "mpiopt_probe").compile()
        found["NVRTC"] = None
    except ImportError:
        found["NVRTC"] = "CuPy is not installed (pip install mpiopt[gpu])"
    except Exception as exc:  # a CUDA or NVRTC error without a usable toolkit or device
        found["NVRTC"] = f"CuPy cannot compile a kernel ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if torch is None:
        found["NCCL"] = "torch is not installed"
    else:
        import torch.distributed as dist

        found["NCCL"] = None if dist.is_available() and dist.is_nccl_available() else "torch has no NCCL backend"
    found["MPI"] = _mpi_missing()
    return found


def _mpi_missing() -> Optional[str]:
    try:
        import importlib.util

        if importlib.util.find_spec("mpi4py") is None:
            return "mpi4py is not installed"
        from mpiopt.launch import mpiexec_path

        mpiexec_path()
    except (FileNotFoundError, ImportError) as exc:
        return f"no mpiexec ({exc})"
    return None


def missing_line(found: Dict[str, Optional[str]]) -> str:
    """The one line printed when a required item is missing: every missing item with its reason."""
    missing = "; ".join(f"{name}: {why}" for name, why in found.items() if why)
    return f"gpu_check: cannot run (missing {missing}); no GPU check was run"


# ---- checks -----------------------------------------------------------------------------------

def check_integers() -> Dict[str, Any]:
    import cupy

    from mpiopt.kernels.cupy import Quantizer as CupyQuantizer
    from mpiopt.kernels.numpy import Quantizer as NumpyQuantizer  # the reference (numba takes no float16)

    cases = []
    for size in SIZES:
        rng = np.random.default_rng(size)
        base = rng.standard_normal(size) * 3.0
        starts = np.array([0, size // 3, size // 2])
        block_alphas = np.array([7.5, 30.0, 0.25])
        for dtype in DTYPES:
            v = base.astype(dtype)
            for per_block in (False, True):
                alpha = np.repeat(block_alphas, np.diff(np.append(starts, size))) if per_block else 7.5
                cpu = NumpyQuantizer(size, seed=11, worker=2, n_ranks=4)
                cpu.round(v, alpha, 5)
                want = np.empty(size, dtype=np.int32)
                cpu.pack(want)
                gpu = CupyQuantizer(size, seed=11, worker=2, n_ranks=4, blocks=starts)
                gpu.round(cupy.asarray(v), block_alphas if per_block else alpha, 5)
                got = cupy.empty(size, dtype=np.int32)
                gpu.pack(got)
                cases.append({"size": size, "dtype": dtype, "alpha": "per block" if per_block else "one",
                              "differing": int((cupy.asnumpy(got) != want).sum())})
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
            "copy_over_quantize": ratio, "goal": THROUGHPUT_GOAL, "bytes_per_element": {"quantize": 9, "copy": 8},
            "quantize_gb_per_s": 9 * size / t_quant / 1e9, "copy_gb_per_s": 8 * size / t_copy / 1e9,
            "quantizer_device_bytes": q.device_bytes}


def mlp(width: int = 1024, layers: int = 8):
    import torch.nn as nn

    mods: List[Any] = []
    for _ in range(layers - 1):
        mods += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(width, 10))


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


def model_of(kind: str):
    """(model, input shape, description) of ``kind``: 'mlp' or 'resnet18' (torchvision's if installed)."""
    if kind == "mlp":
        return mlp(), (1024,), "MLP 1024x8"
    try:
        import torchvision

        return torchvision.models.resnet18(num_classes=10), (3, 32, 32), "torchvision resnet18"
    except ImportError:
        return resnet18(), (3, 32, 32), "resnet18 built from torch.nn (torchvision is not installed)"


def _no_communication(state, bucket):
    """A hook that communicates nothing (each rank keeps its own gradient): the step without
    communication that each hook's exposed communication is measured against."""
    import torch

    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def ddp_worker(rank: int, world: int, port: int, backend: str, kind: str, hooks: List[str], steps: int,
               out: str) -> None:
    """One rank of the DDP checks: each hook's model trained ``steps`` timed steps after 3 warm-up steps."""
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from mpiopt.torch.hooks import IntSGDState, intsgd_hook

    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)  # DDP with NCCL needs it; the mpiopt side takes the device from the tensors
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results: Dict[str, Any] = {}
    try:
        gen = torch.Generator(device=device).manual_seed(1 + rank)
        for hook in hooks:
            torch.manual_seed(0)
            model, shape, described = model_of(kind)
            ddp = torch.nn.parallel.DistributedDataParallel(model.to(device), device_ids=[device.index],
                                                            bucket_cap_mb=1)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
            state = None
            if hook == "none":
                ddp.register_comm_hook(None, _no_communication)
            elif hook == "fp16":
                ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
            elif hook == "intsgd":
                state = IntSGDState(None, opt, wire_dtype="auto", seed=0)
                ddp.register_comm_hook(state, intsgd_hook)
            losses, times = [], []
            for k in range(steps + 3):
                x = torch.randn(32, *shape, device=device, generator=gen)
                y = torch.randint(0, 10, (32,), device=device, generator=gen)
                torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(ddp(x), y)
                loss.backward()
                opt.step()
                torch.cuda.synchronize(device)
                if k >= 3:
                    times.append(time.perf_counter() - t0)
                    losses.append(float(loss))
            flat = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()]).cpu().numpy()
            digests: List[Any] = [None] * world
            dist.all_gather_object(digests, hashlib.sha256(flat.tobytes()).hexdigest())
            results[hook] = {"step_seconds": float(np.median(times)), "loss_first": losses[0], "loss_last": losses[-1],
                             "finite": bool(np.isfinite(losses).all()), "identical_on_all_ranks": len(set(digests)) == 1,
                             **({"stats": state.stats()} if state is not None else {})}
            results["model"] = described
            results["parameters"] = int(flat.size)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(results))


def ddp_report(results: Dict[str, Any]) -> Dict[str, Any]:
    """Pass/fail and figures of a DDP check from rank 0's results: intsgd's replicas identical and its
    loss finite; each hook's exposed communication = its step minus the step without communication."""
    base = results.get("none", {}).get("step_seconds")
    hooks = {h: r for h, r in results.items() if isinstance(r, dict)}
    for h, r in hooks.items():
        if base is not None and h != "none":
            r["exposed_communication_seconds"] = r["step_seconds"] - base
    intsgd = hooks.get("intsgd", {})
    return {"ok": bool(intsgd.get("identical_on_all_ranks")) and bool(intsgd.get("finite")), **results}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_ddp(kind: str, hooks: List[str], found: Dict[str, Optional[str]], steps: int = 20) -> Dict[str, Any]:
    import torch
    import torch.multiprocessing as mp

    backend = "nccl" if found["NCCL"] is None and torch.cuda.device_count() >= 2 else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.json")
        mp.spawn(ddp_worker, args=(2, free_port(), backend, kind, hooks, steps, out), nprocs=2, join=True)
        results = json.loads(Path(out).read_text())
    report = ddp_report(results)
    report["backend"] = backend
    report["gpus"] = torch.cuda.device_count()
    return report


def mpi_worker(out: str, steps: int = 30) -> None:
    """One rank of ``check_mpi_resnet18`` (run under mpiexec): IntSGD on cuda:<rank mod GPUs>, no set_device."""
    import torch
    from mpi4py import MPI

    import mpiopt.torch as mt

    comm = MPI.COMM_WORLD
    device = torch.device("cuda", comm.Get_rank() % torch.cuda.device_count())
    torch.manual_seed(0)
    model = resnet18().to(device)
    opt = mt.IntSGD(model.parameters(), lr=0.05, momentum=0.9, wire_dtype="auto", seed=0)
    gen = torch.Generator(device=device).manual_seed(1 + comm.Get_rank())
    t0 = time.perf_counter()
    for _ in range(steps):
        x = torch.randn(32, 3, 32, 32, device=device, generator=gen)
        y = torch.randint(0, 10, (32,), device=device, generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    torch.cuda.synchronize(device)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu().numpy()
    digests = comm.allgather(hashlib.sha256(flat.tobytes()).hexdigest())
    if comm.Get_rank() == 0:
        Path(out).write_text(json.dumps({"ok": len(set(digests)) == 1, "steps": steps,
                                         "seconds": time.perf_counter() - t0,
                                         "identical_on_all_ranks": len(set(digests)) == 1,
                                         "wire_bytes": opt.wire_bytes, "clipped": opt.clipped,
                                         "cuda_aware": bool(getattr(opt.comm, "cuda_aware", False))}))


def check_mpi_resnet18(found: Dict[str, Optional[str]]) -> Dict[str, Any]:
    if found["MPI"] is not None:
        return {"skip": f"MPI: {found['MPI']}"}
    from mpiopt.launch import mpi_env, mpiexec_path

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mpi.json"
        cmd = [mpiexec_path(), "-n", "2", sys.executable, str(Path(__file__).resolve()), "--mpi-worker", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=mpi_env(2))
        if res.returncode != 0 or not out.is_file():
            return {"ok": False, "exit_code": res.returncode, "output": (res.stdout + res.stderr)[-3000:]}
        return json.loads(out.read_text())


def run_checks(checks: Dict[str, Callable[[], Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Each check in turn: its figures with ``name``, ``status`` (pass / fail / skip) and ``seconds``;
    an exception is that check's failure (recorded with its message), never the end of the run."""
    report = []
    for name, check in checks.items():
        t0 = time.perf_counter()
        try:
            figures = check()
        except Exception as exc:  # record it and go on to the next check
            figures = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        status = "skip" if "skip" in figures else ("pass" if figures.pop("ok") else "fail")
        entry = {"name": name, "status": status, "seconds": round(time.perf_counter() - t0, 2), **figures}
        report.append(entry)
        print(f"{name}: {status} ({entry['seconds']} s)", flush=True)
    return report


def write_report(path: Path, found: Dict[str, Optional[str]], checks: List[Dict[str, Any]], device: str) -> int:
    """OUT's JSON (device, preflight, checks); the exit code: 1 when a check failed, else 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": device, "preflight": {k: v or "ok" for k, v in found.items()},
                                "checks": checks}, indent=1))
    return 1 if any(c["status"] == "fail" for c in checks) else 0


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
    found = preflight()
    if any(found[name] for name in REQUIRED):
        print(missing_line(found))
        return 2
    checks = {
        "integers": check_integers,
        "throughput": check_throughput,
        "hook_overlap": lambda: check_ddp("mlp", ["none", "fp32", "fp16", "intsgd"], found),
        "resnet18_hooks": lambda: check_ddp("resnet18", ["none", "fp32", "fp16", "intsgd"], found),
        "mpi_resnet18": lambda: check_mpi_resnet18(found),
    }
    import torch

    return write_report(Path(args.json), found, run_checks(checks), torch.cuda.get_device_name(0))


if __name__ == "__main__":
    sys.exit(main())
