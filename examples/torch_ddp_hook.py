"""DistributedDataParallel with mpiopt's IntSGD communication hook, launched by torchrun (or srun).

    torchrun --standalone --nproc_per_node 2 examples/torch_ddp_hook.py --epochs 4
    srun -n 2 bash -c 'RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS MASTER_ADDR=$(scontrol show hostnames \
        "$SLURM_JOB_NODELIST" | head -n 1) MASTER_PORT=29500 python examples/torch_ddp_hook.py'

A small MLP on scikit-learn's digits, CPU over gloo. torch.distributed reads RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT from the environment (torchrun sets them; under srun, set them from
Slurm's variables as above); DDP's buckets go through ``intsgd_hook``, which sums integers. Rank 0
prints the test accuracy; every rank checks that all ranks hold the same parameters (a hash of
them, gathered) and the script exits 1 when they differ.
"""

import argparse
import gc
import hashlib
import sys

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from mpiopt.torch.hooks import IntSGDState, intsgd_hook


def parameter_digest(model: torch.nn.Module) -> str:
    sha = hashlib.sha256()
    for p in model.parameters():
        sha.update(p.detach().numpy().tobytes())
    return sha.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="minibatch per rank")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # rank and world size from torchrun's environment
    rank, size = dist.get_rank(), dist.get_world_size()

    digits = load_digits()
    X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, torch.tensor(digits.target), test_size=0.2,
                                                        random_state=0)
    train = TensorDataset(X_train, y_train)
    sampler = DistributedSampler(train, num_replicas=size, rank=rank, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(train, batch_size=args.batch, sampler=sampler, drop_last=True)

    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.register_comm_hook(IntSGDState(process_group=None, optimizer=opt, wire_dtype="auto", seed=0), intsgd_hook)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()  # the hook sums integers
            opt.step()

    with torch.no_grad():
        accuracy = float((model(X_test).argmax(dim=1) == y_test).float().mean())
    digests = [None] * size
    dist.all_gather_object(digests, parameter_digest(model.module))
    same = len(set(digests)) == 1
    if rank == 0:
        print(f"test accuracy {100 * accuracy:.2f} % after {args.epochs} epochs on {size} ranks")
        print(f"parameters identical on all ranks: {same}")
    # DDP and the hook's state hold the process group: with them gone, destroying it joins gloo's
    # threads here. Left to interpreter exit, a gloo thread still releasing the last collective's
    # tensors there needs the GIL and aborts the process ("terminate called without an active exception").
    del model, opt
    gc.collect()
    dist.destroy_process_group()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
