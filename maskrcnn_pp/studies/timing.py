"""What every benchmark here shares: one interleaved timing loop, one way to run work in
fresh processes (for peak memory, and for side-by-side jobs), and the machine in words.

Candidates timed in one loop run interleaved (A, B, A, B, ...) in one process, so load on
the machine slows them alike and ratios stay comparable; a fresh (spawned) process measures
peak memory that is its own, not its parent's.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["sync", "interleaved_times", "run_spawned", "status_kib", "reset_peak_rss",
           "peak_rss_growth_mib", "machine_description"]


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_times(calls: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                      device: str = "cpu", progress: Callable[[str], None] | None = None
                      ) -> dict[str, list[float]]:
    """Seconds of each call over ``repeats`` rounds (A, B, A, B, ...), after ``warmup``
    untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        if progress is not None:
            progress(f"round {round_ + 1}/{warmup + repeats}")
        for name, call in calls.items():
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _spawned(fn: Callable, args: tuple, barrier, queue) -> None:
    queue.put(fn(*args, barrier=barrier) if barrier is not None else fn(*args))


def run_spawned(fn: Callable, arg_lists: Sequence[tuple], *, together: bool = False,
                timeout: float = 3600) -> list[Any]:
    """``fn(*args)`` for each of ``arg_lists``, each in its own fresh (spawned) process, all
    at once; the results in order. ``fn`` must be a module-level function. With
    ``together`` each call also gets ``barrier=`` a ``multiprocessing.Barrier`` of all of
    them, to start a measured interval at the same moment."""
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in arg_lists]
    barrier = ctx.Barrier(len(arg_lists)) if together else None
    processes = [ctx.Process(target=_spawned, args=(fn, tuple(args), barrier, queue))
                 for args, queue in zip(arg_lists, queues)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=timeout) for queue in queues]
    for process in processes:
        process.join()
    return results


def status_kib(field_name: str) -> int:
    """A field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def reset_peak_rss() -> int:
    """Reset the resident-set high-water mark (a spawned process inherits its parent's);
    returns the current resident set in KiB, the base of :func:`peak_rss_growth_mib`."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return status_kib("VmRSS")


def peak_rss_growth_mib(base_kib: int) -> float:
    return (status_kib("VmHWM") - base_kib) / 1024


def machine_description(device: str = "cpu") -> str:
    """The machine in words: the GPU's name on CUDA, else CPU, cores and torch threads."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}; torch {torch.__version__}"
    return (f"{platform.machine()} CPU ({platform.processor() or 'unknown model'}), "
            f"{os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), "
            f"no GPU in use; torch {torch.__version__}")
