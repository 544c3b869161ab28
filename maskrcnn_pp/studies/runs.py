"""The runs of a study: one training per (model, seed), trained by ``train_net`` in a child
process, continued with ``--resume`` after a kill.

Run ``(model, seed)`` lives in ``<output>/runs/<model>/seed<seed>`` and is trained with
the study's overrides, then the model's own, then ``SEED``, ``OUTPUT_DIR`` and an empty
``DATASETS.TEST`` (training evaluates nothing). A run is finished when its
``model_final.pth`` exists. Training runs ``python -m maskrcnn_pp.cli.train_net``, so a
study works from an installed wheel as from a clone.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..engine.config import load_config
from ..utils.errors import UserError
from ..utils.processes import die_with_parent
from .description import StudySpec

__all__ = ["Run", "plan_runs", "check_run_config", "train_runs", "TRAIN_NET"]

TRAIN_NET = [sys.executable, "-m", "maskrcnn_pp.cli.train_net"]
# Where a run is stored and which device ran it do not change what it learned.
NOT_COMPARED = {"OUTPUT_DIR", "MODEL.DEVICE"}


def override_opts(overrides: dict[str, Any]) -> list[str]:
    """``KEY VALUE`` pairs as Detectron2's ``merge_from_list`` reads them (literal_eval)."""
    opts = []
    for key, value in overrides.items():
        opts += [str(key), value if isinstance(value, str) else repr(value)]
    return opts


@dataclass
class Run:
    """One (model, seed) run of a study. ``trains`` is False for a model that reuses another
    model's runs (``runs_of``); ``eval_opts`` are applied when it is evaluated."""

    model: str
    seed: int
    config_file: str
    run_dir: Path
    opts: list[str]
    eval_opts: list[str] = field(default_factory=list)
    trains: bool = True

    @property
    def weights(self) -> Path:
        return self.run_dir / "model_final.pth"

    @property
    def finished(self) -> bool:
        return self.weights.is_file()

    def train_command(self) -> list[str]:
        """The ``train_net`` command; --resume continues a killed run (and starts a new one
        when there is no checkpoint yet)."""
        return [*TRAIN_NET, "--config-file", self.config_file, "--resume", *self.opts]

    def config(self, evaluation: bool = False):
        return load_config(self.config_file, self.opts + (self.eval_opts if evaluation else []))

    def checkpoint(self, iteration: int, max_iter: int) -> Path:
        """The weights after ``iteration`` training iterations: Detectron2's periodic
        checkpoint ``model_<iteration - 1>.pth``, or ``model_final.pth`` at the end."""
        if iteration >= max_iter:
            return self.weights
        return self.run_dir / f"model_{iteration - 1:07d}.pth"


def plan_runs(spec: StudySpec) -> list[Run]:
    """Every (model, seed) run of the study, seed by seed (so that an interrupted study has
    every model at the first seeds), models in the study's order; checks that each
    ``eval_iters`` entry has a checkpoint under the model's schedule."""
    shared = override_opts(spec.overrides)
    runs = []
    for seed in spec.seeds:
        for name, entry in spec.models.items():
            trained = entry.runs_of or name
            run_dir = spec.output / "runs" / trained / f"seed{seed}"
            model_overrides = spec.models[trained].overrides
            opts = [*shared, *override_opts(model_overrides), "SEED", str(seed),
                    "OUTPUT_DIR", str(run_dir), "DATASETS.TEST", "()"]
            runs.append(Run(name, seed, entry.config, run_dir, opts,
                            eval_opts=override_opts(entry.eval_overrides),
                            trains=entry.runs_of is None))
    for run in runs:
        if run.trains and run.seed == spec.seeds[0] and spec.eval_iters:
            _check_eval_iters(run, spec)
    return runs


def _check_eval_iters(run: Run, spec: StudySpec) -> None:
    cfg = run.config()
    period, max_iter = cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER
    for iteration in spec.eval_iters:
        if iteration > max_iter or (iteration < max_iter and iteration % period):
            raise UserError(
                f"{spec.source}: eval_iters {iteration} has no checkpoint for model "
                f"{run.model} (SOLVER.MAX_ITER {max_iter}, SOLVER.CHECKPOINT_PERIOD {period}): "
                "use multiples of the period up to MAX_ITER")


def _flat(cfg) -> dict[str, Any]:
    """Config as ``{"A.B.C": value}``, tuples and lists alike (YAML round trip)."""
    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    return dict(walk(yaml.safe_load(cfg.dump()), ""))


def check_run_config(run: Run) -> None:
    """Refuse a run folder whose ``config.yaml`` differs from what the study would train."""
    saved = run.run_dir / "config.yaml"
    if not run.trains or not saved.is_file():
        return
    wanted, found = _flat(run.config()), _flat(load_config(str(saved)))
    differ = sorted(k for k in wanted.keys() | found.keys()
                    if k not in NOT_COMPARED and wanted.get(k) != found.get(k))
    if differ:
        shown = "; ".join(f"{k}: run {found.get(k)!r}, study {wanted.get(k)!r}"
                          for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise UserError(f"{saved} differs from what the study would train ({shown}{more}): "
                        "delete that run folder, or give the study another 'output'")


def train_runs(runs: Sequence[Run], jobs: int = 1, threads: int | None = None,
               progress: Callable[[str], None] = print) -> None:
    """Train the unfinished runs, ``jobs`` at a time, each with ``threads // jobs`` threads
    (OMP_NUM_THREADS; default one per job: on CPUs, side-by-side single-threaded trainings
    use the cores better than one multi-threaded one); with several GPUs each job gets
    one. A training ends with the study, however the study ends: its rerun resumes it
    and finds the run folder free."""
    todo = [run for run in runs if run.trains and not run.finished]
    if not todo:
        return
    jobs = max(1, min(jobs, len(todo)))
    per_job = max(1, (threads or jobs) // jobs)
    gpus = torch.cuda.device_count()
    free_slots = list(range(jobs))
    lock = threading.Lock()
    failed: list[str] = []

    def train(run: Run) -> None:
        with lock:
            slot = free_slots.pop()
        env = {**os.environ, "OMP_NUM_THREADS": str(per_job), "MKL_NUM_THREADS": str(per_job)}
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        state = "resuming" if (run.run_dir / "last_checkpoint").is_file() else "starting"
        progress(f"{state} {run.model} seed {run.seed} ({per_job} thread(s)): "
                 f"{shlex.join(run.train_command())}")
        start = time.time()
        with open(run.run_dir / "train.log", "ab") as log:
            code = subprocess.call(run.train_command(), stdout=log, stderr=subprocess.STDOUT,
                                   env=env, preexec_fn=die_with_parent())
        with lock:
            free_slots.append(slot)
        if code != 0 or not run.finished:
            failed.append(f"{run.run_dir} (exit code {code}; see {run.run_dir / 'train.log'})")
        else:
            progress(f"trained {run.model} seed {run.seed} in {time.time() - start:.0f} s")

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(train, todo))
    if failed:
        raise UserError("training failed: " + "; ".join(failed))
