"""Multi-process training on GPUs (NCCL) and on CPU-only machines (gloo).

Detectron2 v0.6's ``launch`` asserts CUDA in every worker, and its ``create_ddp_model`` pins
``device_ids`` to a GPU. These two functions keep Detectron2's signatures and behaviour where
CUDA exists and make the same calls work with CPU processes, so a training script can be
tested end to end on a laptop or a CPU CI runner.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import create_ddp_model as _d2_create_ddp_model
from detectron2.engine import launch as _d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from .. import compat

__all__ = ["DEFAULT_TIMEOUT", "create_ddp_model", "launch"]

logger = logging.getLogger(__name__)


def launch(main_func: Callable[..., Any], num_gpus_per_machine: int, num_machines: int = 1,
           machine_rank: int = 0, dist_url: str | None = None, args: Sequence[Any] = (),
           timeout: timedelta = DEFAULT_TIMEOUT) -> None:
    """Run ``main_func(*args)`` in every process of a (possibly single-process) job.

    Same arguments as ``detectron2.engine.launch``. With CUDA it is Detectron2's launcher
    (one NCCL process per GPU). Without CUDA, ``num_gpus_per_machine`` is the number of CPU
    processes to start on this machine; they join a gloo process group. ``dist_url="auto"``
    picks a free localhost port (single machine only). ``main_func`` and ``args`` must be
    picklable (a module-level function): the workers are started with ``spawn``.
    """
    if torch.cuda.is_available():
        _d2_launch(main_func, num_gpus_per_machine, num_machines=num_machines,
                   machine_rank=machine_rank, dist_url=dist_url, args=args, timeout=timeout)
        return
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(f"need at least one process per machine and one machine, got "
                         f"num_gpus_per_machine={num_gpus_per_machine}, "
                         f"num_machines={num_machines}")
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"machine_rank={machine_rank} is outside 0..{num_machines - 1}")
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' works on one machine only; "
                             "give every machine the same tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    if not dist_url:
        raise ValueError(f"{world_size} processes need a dist_url such as "
                         f"tcp://127.0.0.1:PORT, file:///shared/path or 'auto'")
    mp.start_processes(
        _cpu_worker, nprocs=num_gpus_per_machine, join=True, daemon=False,
        start_method="spawn",
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args),
              timeout))


def _free_port() -> int:
    """A localhost port that was free a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_worker(local_rank: int, main_func: Callable[..., Any], world_size: int,
                processes_per_machine: int, machine_rank: int, dist_url: str,
                args: tuple, timeout: timedelta) -> None:
    """One gloo process: join the group, set Detectron2's per-machine group, run the job."""
    global_rank = machine_rank * processes_per_machine + local_rank
    try:
        dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                                rank=global_rank, timeout=timeout)
    except Exception:
        logger.error(f"Could not join the process group at {dist_url}")
        raise
    try:
        # comm.get_local_rank()/get_local_size() read this group, as in Detectron2's worker.
        for machine in range(world_size // processes_per_machine):
            first = machine * processes_per_machine
            group = dist.new_group(list(range(first, first + processes_per_machine)))
            if machine == machine_rank:
                compat.set_local_process_group(group)
        comm.synchronize()
        main_func(*args)
    finally:
        compat.set_local_process_group(None)
        dist.destroy_process_group()


def create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """``detectron2.engine.create_ddp_model`` that also works for a model on the CPU.

    Returns the model itself in a single-process run. Otherwise wraps it in
    ``DistributedDataParallel``: a CUDA model gets ``device_ids=[local rank]`` as in
    Detectron2, a CPU model gets ``device_ids=None`` (DDP rejects device ids for CPU
    modules). Other keyword arguments (``broadcast_buffers``, ``fp16_compression``, ...)
    pass through.
    """
    on_cuda = any(param.is_cuda for param in model.parameters())
    if not on_cuda:
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)
