"""How fast the real training loop runs: Detectron2's paths vs the fast paths, and how a
study should spread trainings over the cores (``tools/benchmark.py --group train_step``).

Two measurements, each side by side in one run:

- **Step time.** Two trainers of one config, built the same way with the same seed, one
  with ``MODEL.FAST_PATHS False`` (Detectron2's own paths, the code of commit 6f36dc4)
  and one with the fast paths. Each runs the project's real training step (data loading
  and augmentation in the main process, forward, backward, optimizer step, the finite-loss
  check) on its own data stream, which is the same stream for both; the two are timed in
  interleaved rounds so that load on the machine affects both alike. Their losses are
  compared step by step.
- **Machine throughput.** Training iterations per second of the whole machine for a study
  setting: ``jobs`` trainings side by side, ``threads`` each, in fresh processes.
"""
from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from .. import compat
from ..engine.config import load_config
from ..engine.trainer import Trainer
from .timing import interleaved_times, run_spawned

__all__ = ["SteppingTrainer", "step_times", "machine_throughput", "profile_steps",
           "step_table", "throughput_table", "profile_table"]


class _TrainerWithoutWriters(Trainer):
    """A timed trainer writes no metrics.json or TensorBoard events: it never reaches
    ``train()``'s end, which would close them, and nobody reads them."""

    def build_writers(self):
        return []


class SteppingTrainer:
    """A project :class:`Trainer` advanced one real training step at a time (outside
    ``train()``, so that two can be interleaved), with its losses recorded. Each keeps its
    own random state (the augmentations draw from the global generators), so two trainers
    built with one seed see the same data whatever the interleaving."""

    def __init__(self, config_file: str, opts: list[str], fast_paths: bool, output_dir: str):
        cfg = load_config(config_file, [*opts, "MODEL.FAST_PATHS", str(fast_paths),
                                        "OUTPUT_DIR", output_dir, "DATALOADER.NUM_WORKERS",
                                        "0"])
        seed_all_rng(cfg.SEED if cfg.SEED >= 0 else 0)  # a fixed seed, to compare two
        self.trainer = _TrainerWithoutWriters(cfg)
        self.trainer.resume_or_load(resume=False)
        self.inner = compat.inner_trainer(self.trainer)
        self.storage = EventStorage(0)
        self.losses: list[dict[str, float]] = []
        self.random_state = _random_state()

    def step(self) -> float:
        """One training step (and the LR schedule's); returns its wall time in seconds."""
        outer = _random_state()
        _set_random_state(self.random_state)
        try:
            return self._step()
        finally:
            self.random_state = _random_state()
            _set_random_state(outer)

    def _step(self) -> float:
        with self.storage:
            self.inner.iter = self.storage.iter
            start = time.perf_counter()
            self.inner.run_step()
            elapsed = time.perf_counter() - start
            self.trainer.scheduler.step()
            self.losses.append({k: v.latest() for k, v in self.storage.histories().items()
                                if k.startswith("loss") or k == "total_loss"})
            self.storage.step()
        return elapsed


def _random_state() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_random_state(state: tuple) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def step_times(config_file: str, opts: list[str] = (), rounds: int = 6, steps: int = 5,
               warmup_rounds: int = 1, threads: int = 1,
               progress: Callable[[str], None] = print) -> dict:
    """Median seconds per training step with Detectron2's paths and with the fast paths
    (``rounds`` x ``steps`` steps of each, interleaved step by step; the first
    ``warmup_rounds`` x ``steps`` discarded), and how far their losses are apart."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="train-step-") as workdir:
        trainers = {}
        for name, fast in (("detectron2 paths", False), ("fast paths", True)):
            progress(f"building {config_file} with {name}")
            trainers[name] = SteppingTrainer(config_file, list(opts), fast, f"{workdir}/{name}")
        times = interleaved_times({name: t.step for name, t in trainers.items()},
                                  (rounds - warmup_rounds) * steps, warmup_rounds * steps)
    old, new = (trainers[n].losses for n in trainers)
    first = max(abs(old[0][k] - new[0][k]) / max(abs(old[0][k]), 1e-8) for k in old[0])
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"config": _shown(config_file), "threads": threads,
            "steps_timed": len(times["fast paths"]), "seconds_per_step": medians,
            "speedup": medians["detectron2 paths"] / medians["fast paths"],
            "first_step_relative_loss_difference": first,
            "mean_total_loss": {"detectron2 paths": statistics.mean(x["total_loss"] for x in old),
                                "fast paths": statistics.mean(x["total_loss"] for x in new)},
            "steps_compared": len(new)}


def _shown(config_file: str) -> str:
    """A config path as a reader of the report would type it: relative where it can be."""
    path = Path(config_file).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(config_file)


def _throughput_job(config_file: str, opts: list[str], fast_paths: bool, threads: int,
                    warmup: int, steps: int, *, barrier) -> tuple[float, int]:
    """One training job of :func:`machine_throughput`: (steps per second, its PID)."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="throughput-") as workdir:
        trainer = SteppingTrainer(config_file, opts, fast_paths, workdir)
        for _ in range(warmup):
            trainer.step()
        barrier.wait()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        return steps / (time.perf_counter() - start), os.getpid()


def machine_throughput(config_file: str, jobs: int, threads: int, fast_paths: bool,
                       opts: list[str] = (), warmup: int = 3, steps: int = 20) -> dict:
    """Iterations per second of the machine with ``jobs`` trainings side by side (fresh
    processes, ``threads`` threads each), all timed over the same interval."""
    results = run_spawned(_throughput_job, [(config_file, list(opts), fast_paths, threads,
                                             warmup, steps)] * jobs, together=True)
    rates = [rate for rate, _ in results]
    return {"config": _shown(config_file), "jobs": jobs, "threads": threads,
            "fast_paths": fast_paths,
            "iterations_per_second": sum(rates),
            "seconds_per_step_per_job": statistics.mean(1 / r for r in rates),
            "worker_pids": sorted(pid for _, pid in results)}


def profile_steps(config_file: str, fast_paths: bool, opts: list[str] = (), steps: int = 4,
                  warmup: int = 2, top: int = 12, threads: int = 1) -> dict:
    """``torch.profiler``'s operators of ``steps`` training steps, by self CPU time: the
    ``top`` largest, in seconds per step and as a share of the step."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="train-profile-") as workdir:
        trainer = SteppingTrainer(config_file, list(opts), fast_paths, workdir)
        for _ in range(warmup):
            trainer.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                trainer.step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"config": _shown(config_file), "fast_paths": fast_paths, "steps": steps,
            "seconds_per_step": total / 1e6 / steps,
            "top": [{"op": e.key, "seconds_per_step": e.self_cpu_time_total / 1e6 / steps,
                     "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps}
                    for e in ranked]}


def step_table(rows: list[dict]) -> str:
    lines = ["| config | threads | Detectron2 paths (s/step) | fast paths (s/step) | speed-up "
             "| steps timed | first step: rel. loss difference | mean total loss (D2 / fast) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, loss = r["seconds_per_step"], r["mean_total_loss"]
        lines.append(f"| `{r['config']}` | {r['threads']} | {t['detectron2 paths']:.3f} | "
                     f"{t['fast paths']:.3f} | {r['speedup']:.2f}x | {r['steps_timed']} | "
                     f"{r['first_step_relative_loss_difference']:.1e} | "
                     f"{loss['detectron2 paths']:.3f} / {loss['fast paths']:.3f} |")
    return "\n".join(lines)


def throughput_table(rows: list[dict]) -> str:
    reference = rows[0]["iterations_per_second"]
    lines = ["| config | setting | iterations/s (machine) | s/step per job | ratio |",
             "|---|---|---|---|---|"]
    for r in rows:
        setting = (f"{r['jobs']} job(s) x {r['threads']} thread(s), "
                   f"{'fast' if r['fast_paths'] else 'Detectron2'} paths")
        lines.append(f"| `{r['config']}` | {setting} | {r['iterations_per_second']:.3f} | "
                     f"{r['seconds_per_step_per_job']:.3f} | "
                     f"{r['iterations_per_second'] / reference:.2f}x |")
    return "\n".join(lines)


def profile_table(profile: dict) -> str:
    lines = [f"`{profile['config']}`, {'fast' if profile['fast_paths'] else 'Detectron2'} "
             f"paths: {profile['seconds_per_step']:.3f} s of operators per step", "",
             "| operator (self time) | s/step | share | calls/step |", "|---|---|---|---|"]
    for row in profile["top"]:
        lines.append(f"| `{row['op']}` | {row['seconds_per_step']:.3f} | {row['share']:.1%} | "
                     f"{row['calls_per_step']:.0f} |")
    return "\n".join(lines)
