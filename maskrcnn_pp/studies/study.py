"""Multi-seed comparisons of models with bootstrap intervals (``tools/study.py``): train
what is unfinished, evaluate every (model, seed, iteration) once, write the report.

The parts, one module each: the description (:mod:`.description`), the runs and their
training (:mod:`.runs`), the evaluation cache (:mod:`.evaluation`), the statistics
(:mod:`.bootstrap`) and the report (:mod:`.report`). A run is evaluated at each of the
description's ``eval_iters`` whose checkpoint exists, so the report of a study still
training shows what it has (and lists what is missing).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..engine.config import load_config
from ..evaluation.nuclei import dataset_ground_truth
from ..utils.errors import UserError
from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .bootstrap import comparisons_of, summarize
from .description import StudySpec, load_spec
from .evaluation import EvalPoint, RunEval, evaluate_run, load_run_eval
from .report import KEY_METRICS, curve_figure, point_figure, study_markdown
from .runs import Run, check_run_config, plan_runs, train_runs
from .timing import machine_description

__all__ = ["StudySpec", "load_spec", "run_study", "evaluate_study"]


def _eval_sets(spec: StudySpec) -> list[str]:
    names = spec.eval_sets or list(dict.fromkeys(
        name for entry in spec.models.values()
        for name in load_config(entry.config).DATASETS.TEST))
    if not names:
        raise UserError(f"{spec.source}: no 'eval_sets' and the models' configs have no "
                        "DATASETS.TEST")
    return names


def run_study(spec: StudySpec, jobs: int = 1, threads: int | None = None, train: bool = True,
              evaluate: bool = True, only: Sequence[str] = (), resamples: int = 2000,
              ap_resamples: int = 200, seed: int = 0, command: str = "",
              progress: Callable[[str], None] = print) -> dict | None:
    """Train what is unfinished (unless ``train`` is False; ``only`` limits training to
    those models), then, unless ``evaluate`` is False, evaluate and write ``study.json``,
    ``study.md`` and the figures into ``spec.output``; returns the report."""
    unknown = sorted(set(only) - set(spec.models))
    if unknown:
        raise UserError(f"--only: unknown model(s) {', '.join(unknown)} (the study has "
                        f"{', '.join(spec.models)})")
    runs = plan_runs(spec)
    for run in runs:
        check_run_config(run)
    eval_sets = _eval_sets(spec)
    if train:
        train_runs([r for r in runs if not only or r.model in only], jobs=jobs,
                   threads=threads, progress=progress)
    if not evaluate:
        return None
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return evaluate_study(spec, runs, eval_sets, resamples=resamples,
                          ap_resamples=ap_resamples, seed=seed, command=command,
                          progress=progress)


def evaluate_study(spec: StudySpec, runs: list[Run], eval_sets: list[str],
                   resamples: int = 2000, ap_resamples: int = 200, seed: int = 0,
                   command: str = "", progress: Callable[[str], None] = print) -> dict:
    """Evaluate every run at every point its checkpoint exists for, summarize, report."""
    points = [EvalPoint(i) for i in spec.eval_iters] or [EvalPoint()]
    max_iters = {run.run_dir: run.config().SOLVER.MAX_ITER for run in runs if run.trains}
    comparisons = comparisons_of(list(spec.models), spec.pairs, spec.contrasts)
    report: dict[str, Any] = {
        "study": spec.as_dict(), "command": command, "machine": machine_description(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "confidence": 0.95, "resamples": resamples, "ap_resamples": ap_resamples,
        "runs": [{"model": r.model, "seed": r.seed, "run_dir": str(r.run_dir),
                  "finished": r.finished} for r in runs],
        "missing": [], "eval_sets": {}}
    for dataset in eval_sets:
        caches: dict[str, list[tuple[Run, Path]]] = {}
        for point in points:
            for run in runs:
                cache = evaluate_run(run, dataset, point, max_iters[run.run_dir], progress)
                if cache is None:
                    report["missing"].append(f"{run.model} seed {run.seed} at {point.label}")
                else:
                    caches.setdefault(point.label, []).append((run, cache))
        kinds = {json.loads(c.read_text())["kind"] for pairs in caches.values() for _, c in pairs}
        ground_truth = dataset_ground_truth(dataset) if "instance" in kinds else None
        summaries: dict[str, dict] = {}
        plots: dict[str, dict] = {}
        for point in points:
            evals: dict[str, dict[int, RunEval]] = {}
            for run, cache in caches.get(point.label, []):
                evals.setdefault(run.model, {})[run.seed] = load_run_eval(cache, ground_truth)
            progress(f"bootstrapping {dataset} at {point.label}")
            summary, plots[point.label] = summarize(
                evals, list(spec.models), comparisons, spec.group_pattern, resamples,
                ap_resamples, seed)
            summary["figures"] = []
            summaries[point.label] = summary
        last = next((p.label for p in reversed(points) if summaries[p.label]["models"]), None)
        if last is not None:
            _figures(spec.output, dataset, last, summaries, plots[last])
        report["eval_sets"][dataset] = summaries
    atomic_write_json(spec.output / "study.json", report, indent=1)
    atomic_write_text(spec.output / "study.md", study_markdown(report))
    progress(f"written: {spec.output / 'study.md'}, {spec.output / 'study.json'}")
    return report


def _figures(output: Path, dataset: str, last: str, summaries: dict[str, dict],
             plots_of_last: dict) -> None:
    """The last evaluated point's figures and the learning curves, for the key metrics
    that have comparisons."""
    summary = summaries[last]
    metrics = [m for m in KEY_METRICS if any(c["metric"] == m for c in summary["comparisons"])]
    for metric in metrics:
        name = f"{dataset}_{metric}.png"
        atomic_write_bytes(output / name, point_figure(dataset, last, metric, summary,
                                                       plots_of_last))
        summary["figures"].append(name)
        if sum(1 for label, s in summaries.items() if label != "final" and s["models"]) > 1:
            name = f"{dataset}_{metric}_curve.png"
            atomic_write_bytes(output / name, curve_figure(dataset, metric, summaries))
            summary.setdefault("curve_figures", []).append(name)
