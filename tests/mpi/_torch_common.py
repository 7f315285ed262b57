"""What the torch.distributed helper scripts share: joining the gloo job that torchlaunch.py starts."""

import torch
import torch.distributed as dist


def init_gloo() -> None:
    """Join the job described by RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, one thread per process."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
