"""An mpiopt.torch optimizer in an ordinary training loop: sampler, LR scheduler, per-rank checkpoints.

    mpiexec -n 4 python examples/torch_digits.py --epochs 6 --ckpt-dir ckpt/
    mpiexec -n 4 python examples/torch_digits.py --epochs 10 --ckpt-dir ckpt/   # resumes at epoch 6

A small MLP on scikit-learn's digits, CPU only. Each rank reads its part of every epoch through a
DistributedSampler (given num_replicas and rank from MPI: no torch.distributed process group
is needed), IntSGD.step() sends the gradients as integers in one Allreduce, and a StepLR
scheduler sets the step size, which IntSGD's alpha follows. At the end of every epoch each rank saves
its own checkpoint (model, optimizer, scheduler, epoch): the optimizer's state is per rank (its
random streams are keyed on the rank), so every rank must load its own file to resume bit-identically.

The model is *not* wrapped in DistributedDataParallel: DDP would all-reduce the float gradients in
backward, and the optimizer would then send them a second time.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import mpiopt.torch as mt


def datasets():
    digits = load_digits()
    X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    return TensorDataset(X_train, y_train), (X_test, y_test)


def evaluate(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(X).argmax(dim=1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8, help="train up to this epoch (resumed runs continue)")
    parser.add_argument("--ckpt-dir", default="ckpt-digits", help="one checkpoint file per rank goes here")
    parser.add_argument("--batch", type=int, default=32, help="minibatch per rank")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size

    torch.manual_seed(rank)  # different on purpose: the optimizer broadcasts rank 0's parameters
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = mt.IntSGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)  # build after model.to(...)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    train, (X_test, y_test) = datasets()
    sampler = DistributedSampler(train, num_replicas=size, rank=rank, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(train, batch_size=args.batch, sampler=sampler, drop_last=True)

    ckpt = Path(args.ckpt_dir) / f"rank{rank:03d}.pt"
    start = 0
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        start = saved["epoch"]
        if rank == 0:
            print(f"resumed from {ckpt.parent}/ at epoch {start}")

    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        total = 0.0
        for X, y in loader:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X), y)
            loss.backward()
            opt.step()
            total += loss.item()
        lr = opt.param_groups[0]["lr"]
        sched.step()
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch + 1}, ckpt)
        if rank == 0:
            print(f"epoch {epoch + 1:2d}  lr {lr:.3f}  train loss (rank 0) {total / len(loader):.4f}  "
                  f"test accuracy {evaluate(model, X_test, y_test):.3f}  wire bytes {opt.wire_bytes}")

    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
    same = all(np.array_equal(flat, other) for other in comm.allgather(flat))
    if rank == 0:
        print(f"parameters identical on all {size} ranks: {same}; checksum {float(np.abs(flat).sum()):.10f}")


if __name__ == "__main__":
    main()
