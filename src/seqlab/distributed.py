"""Data-parallel training through PyTorch DDP, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m seqlab.cli train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE;
the Trainer then joins the process group (gloo on CPU, NCCL on GPU), wraps the model in
``DistributedDataParallel`` and gives each process its slice of every global batch. Gradients
are averaged across processes, so N processes with equal slices take the same steps as one
process on the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the job: ``rank`` of ``world_size``, and its device."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool       # whether this object initialised the process group (and must end it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def join(device: str = "auto") -> ProcessGroup:
    """Join the process group described by torchrun's environment, or run alone without one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        chosen = torch.device("cuda", local_rank) if world_size > 1 else torch.device(
            "cuda" if device == "auto" else device)
    else:
        chosen = torch.device("cpu")
    if world_size == 1:
        return ProcessGroup(0, 1, chosen, owns_group=False)
    owns = not dist.is_initialized()
    if owns:
        if use_cuda:
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), chosen, owns_group=owns)
