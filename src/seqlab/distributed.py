"""Data-parallel training through PyTorch DDP, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m seqlab.cli train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE;
the Trainer then joins the process group (gloo on CPU, NCCL on GPU), wraps the task's loss of
the model in ``DistributedDataParallel`` and gives each process its slice of every global
batch. Gradients are averaged across processes, so N processes with equal slices take the same
steps as one process on the whole batch.

Every decision that depends on something a process measures for itself (its clock, a
validation loss, whether a file could be written) is taken by the first process and shared
(``decide_on_main``, ``sum_and_main_clock``): processes that decided on their own clocks
would disagree about when time is up, and one would wait forever for the other.

A script of one's own under torchrun ends its process group, then calls ``end_worker(0)``, as
the ``seqlab`` command does.
"""

from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from seqlab.errors import ConfigError, TrainingError


@dataclass
class ProcessGroup:
    """This process's place in the job: ``rank`` of ``world_size``, and its device."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool       # whether this object initialised the process group (and must end it)
    wrapped: list[Any] = field(default_factory=list)     # the DDP modules made here

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def decide_on_main(self, decide: Callable[[], Any]) -> Any:
        """``decide()`` on the first process, its result returned on every process. An
        exception there is raised on every process (so none waits for the others forever)."""
        if self.world_size == 1:
            return decide()
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload = [("result", decide())]
            except Exception as error:      # shared, then raised everywhere
                payload = [("error", error)]
        dist.broadcast_object_list(payload, src=0)
        kind, value = payload[0]
        if kind == "error":
            raise value if isinstance(value, Exception) else TrainingError(str(value))
        return value

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order, on every process."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def sum_and_main_clock(self, value: float, clock: float) -> tuple[float, float]:
        """The sum of ``value`` over the processes and the first process's ``clock``, in one
        collective."""
        if self.world_size == 1:
            return value, clock
        shared = torch.tensor([value, clock if self.is_main else 0.0], dtype=torch.float64, device=self.device)
        dist.all_reduce(shared)
        return shared[0].item(), shared[1].item()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` under ``DistributedDataParallel`` when there are several processes."""
        if self.world_size == 1:
            return module
        wrapped = DistributedDataParallel(module)
        self.wrapped.append(wrapped)
        return wrapped

    def close(self, clean: bool = True) -> None:
        """Release the DDP modules, then, after a clean finish, wait for every process and end
        the group (gloo's threads must not outlive it: a process that exits with them running
        aborts). After an error nothing waits for the others, which may have stopped."""
        self.wrapped.clear()
        gc.collect()                   # DDP's reducer, in a reference cycle, holds gloo work
        if self.owns_group and dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()


def join(device: str = "auto") -> ProcessGroup:
    """Join the process group described by torchrun's environment, or run alone without one.

    Raises:
        ConfigError: a CUDA device was asked for and there is none.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} but this machine has no CUDA device; use --device cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps but this machine has no Apple GPU; use --device cpu or auto")
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        chosen = torch.device("cuda", local_rank) if world_size > 1 else torch.device(
            "cuda" if device == "auto" else device)
    else:
        chosen = torch.device("mps" if device == "mps" else "cpu")
    if world_size == 1:
        return ProcessGroup(0, 1, chosen, owns_group=False)
    owns = not dist.is_initialized()
    if owns:
        if use_cuda:
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), chosen, owns_group=owns)


def end_worker(code: int) -> None:
    """End a process of a torchrun job now, with ``code``, skipping the interpreter's teardown.

    Everything the job writes is written and closed by then, and the process group has been
    ended. What remains is the interpreter's teardown, during which gloo (PyTorch 2.13) now and
    then aborts the process ("terminate called without an active exception", SIGABRT, about one
    launch in a hundred here, after the run was saved), and torchrun reports the whole job as
    failed. Skipping the teardown keeps a finished job's exit code true.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
