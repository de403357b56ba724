"""Where a run's work goes: this one process, the processes torchrun started, or ones spawned here.

``torchrun`` sets WORLD_SIZE in every process it starts, each of which runs the whole command; a
plain command given ``nproc_per_node`` > 1 spawns that many processes through
``ignite.distributed.Parallel``. Protection and training choose the same way, so they share it.
"""
import os

import ignite.distributed as idist
import torch


def torchrun_world_size():
    """The WORLD_SIZE torchrun set (1 when the command was not started by a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def under_launcher():
    return torchrun_world_size() > 1


def world_size(nproc_per_node=None):
    """How many processes the run will have: torchrun's, else ``nproc_per_node`` (at least 1)."""
    return torchrun_world_size() if under_launcher() else max(1, nproc_per_node or 1)


def default_backend(device):
    """nccl for a CUDA run on a machine that has CUDA, else gloo."""
    return "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"


def launch(work, *args, nproc_per_node=None, backend=None, device="auto"):
    """``work(local_rank, *args)`` here, in each torchrun process, or in ``nproc_per_node`` spawned ones.

    Returns ``work``'s result when the run has one process, else None (the processes write their results).
    """
    if world_size(nproc_per_node) == 1:
        return work(0, *args)
    spawn = None if under_launcher() else nproc_per_node
    with idist.Parallel(backend=backend or default_backend(device), nproc_per_node=spawn) as parallel:
        parallel.run(work, *args)
    return None
