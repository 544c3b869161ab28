"""Each (run, data set, iteration) of a study evaluated once, its per-image results cached.

The cache of a run's checkpoint after ``n`` iterations on ``set`` is
``<run>/study_eval/<set>/iter<n>/per_image.json`` (``final`` for the last weights when the
study names no ``eval_iters``; a suffix for models evaluated with their own
``eval_overrides``). It is reused while the weights file (size, modification time) and the
evaluation settings are unchanged.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset

from ..engine.checkpoint import load_trained_model
from ..engine.config import is_semantic
from ..engine.inference_modes import InferenceModes
from ..engine.trainer import Trainer
from ..evaluation.coco_resampling import CocoMatches
from ..evaluation.nuclei import (
    MAIN_METRICS,
    coco_image_evaluation,
    load_coco_results,
)
from ..evaluation.semantic import HEADLINE, SemanticEvaluator, mode_scores
from ..utils.errors import UserError
from ..utils.io import atomic_write_json
from .runs import Run

__all__ = ["EvalPoint", "RunEval", "evaluate_run", "load_run_eval", "COCO_METRICS",
           "CACHE_VERSION"]

CACHE_VERSION = 2
COCO_METRICS = {"segm_AP": ("segm", "AP"), "segm_AP50": ("segm", "AP50"),
                "segm_AP75": ("segm", "AP75"), "bbox_AP": ("bbox", "AP")}


@dataclass(frozen=True)
class EvalPoint:
    """Where a run is evaluated: after ``iteration`` training iterations, or its final
    weights (``iteration`` None)."""

    iteration: int | None = None

    @property
    def label(self) -> str:
        return "final" if self.iteration is None else str(self.iteration)

    def weights(self, run: Run, max_iter: int) -> Path:
        return run.weights if self.iteration is None else run.checkpoint(self.iteration,
                                                                         max_iter)


@dataclass
class RunEval:
    """One run's per-image results on one data set, in a fixed image order."""

    kind: str                                   # "instance" or "semantic"
    keys: list[str]                             # image identities (pairing across runs)
    file_names: list[str]
    values: dict[str, np.ndarray] = field(default_factory=dict)   # per-image scores (%)
    counts: dict[str, np.ndarray] = field(default_factory=dict)   # per-image (I, P, T)
    coco: dict[str, CocoMatches | None] = field(default_factory=dict)  # iou type -> matches

    def scores(self, positions: np.ndarray, with_coco: bool = True) -> dict[str, float]:
        """Every metric (%) on the images at ``positions`` (repeats allowed)."""
        out: dict[str, float] = {}
        if self.kind == "instance":
            if with_coco:
                for name, (iou_type, key) in COCO_METRICS.items():
                    if iou_type in self.coco:
                        matches = self.coco[iou_type]
                        ap = matches.ap(positions)[key] if matches is not None else None
                        out[name] = 100.0 * (ap if ap is not None else 0.0)
            out.update({m: float(v[positions].mean()) for m, v in self.values.items()})
            return out
        for mode, counts in self.counts.items():
            out.update(mode_scores(counts[positions].sum(axis=0), mode))
        return out

    def per_image(self, metric: str) -> np.ndarray | None:
        """Per-image values of a metric (None for COCO AP, which has none)."""
        if metric in self.values:
            return self.values[metric]
        for mode, counts in self.counts.items():
            if metric in mode_scores((0, 0, 0), mode):  # one of the keys this mode reports
                return np.array([mode_scores(c, mode)[metric] for c in counts])
        return None


def _folder(run: Run, dataset: str, point: EvalPoint) -> Path:
    name = f"iter{point.label}"
    if run.eval_opts:
        name += "-" + hashlib.sha1(json.dumps(run.eval_opts).encode()).hexdigest()[:8]
    return run.run_dir / "study_eval" / dataset / name


def _fingerprint(run: Run, weights: Path) -> dict:
    stat = weights.stat()
    return {"version": CACHE_VERSION, "weights": weights.name, "weights_size": stat.st_size,
            "weights_mtime_ns": stat.st_mtime_ns, "eval_opts": list(run.eval_opts)}


def evaluate_run(run: Run, dataset: str, point: EvalPoint, max_iter: int,
                 progress: Callable[[str], None] = print) -> Path | None:
    """Evaluate ``run`` at ``point`` on ``dataset`` unless its cache is current; returns
    the cache file, or None while the checkpoint does not exist yet."""
    weights = point.weights(run, max_iter)
    if not weights.is_file():
        return None
    folder = _folder(run, dataset, point)
    cache = folder / "per_image.json"
    if cache.is_file():
        try:
            if json.loads(cache.read_text())["fingerprint"] == _fingerprint(run, weights):
                return cache
        except (ValueError, KeyError):
            pass
    cfg = run.config(evaluation=True)
    semantic = is_semantic(cfg)
    evaluator_type = MetadataCatalog.get(dataset).get("evaluator_type", "coco")
    if semantic != (evaluator_type == "semantic"):
        raise UserError(f"eval set {dataset!r} ({evaluator_type} evaluation) does not fit "
                        f"model {run.model} ({'semantic' if semantic else 'instance'})")
    progress(f"evaluating {run.model} seed {run.seed} at iteration {point.label} on {dataset}")
    model = load_trained_model(cfg, weights)
    loader = Trainer.build_test_loader(cfg, dataset)
    if semantic:
        semantic_evaluator = SemanticEvaluator(dataset, distributed=False,
                                               output_dir=str(folder))
        evaluator = InferenceModes(model, semantic_evaluator)
    else:
        evaluator = Trainer.build_evaluator(cfg, dataset, output_folder=str(folder))
    with contextlib.redirect_stdout(io.StringIO()):      # pycocotools prints its tables
        inference_on_dataset(model, loader, evaluator)
    if semantic:
        record: dict[str, Any] = {
            "kind": "semantic",
            "per_image": {mode: sorted(rows)
                          for mode, rows in semantic_evaluator.per_image.items()}}
    else:
        nuclei = folder / "nuclei_metrics.json"
        per_image = (sorted(json.loads(nuclei.read_text())["per_image"],
                            key=lambda m: m["image_id"]) if nuclei.is_file() else [])
        record = {"kind": "instance", "max_dets": cfg.TEST.DETECTIONS_PER_IMAGE,
                  "detections": "coco_instances_results.json",
                  "image_ids": [m["image_id"] for m in per_image],
                  "file_names": [m["file_name"] for m in per_image],
                  "values": {k: [m[k] for m in per_image] for k in MAIN_METRICS}}
        if not per_image:
            ids = sorted(d["image_id"] for d in DatasetCatalog.get(dataset))
            record.update(image_ids=ids, file_names=[str(i) for i in ids], values={})
    atomic_write_json(cache, {"fingerprint": _fingerprint(run, weights), **record})
    return cache


def load_run_eval(cache: Path, ground_truth) -> RunEval:
    """A :class:`RunEval` from a cache file (instance runs: with their COCO matches)."""
    record = json.loads(cache.read_text())
    if record["kind"] == "semantic":
        per_image = record["per_image"]
        first = per_image[HEADLINE]
        return RunEval("semantic", keys=[r[0] for r in first],
                       file_names=[r[0] for r in first],
                       counts={mode: np.array([r[1:] for r in rows], np.int64)
                               for mode, rows in per_image.items()})
    ids = record["image_ids"]
    results = load_coco_results(cache.parent / record["detections"])
    coco: dict[str, CocoMatches | None] = {}
    for iou_type in ("segm", "bbox"):
        if not results:
            coco[iou_type] = None
            continue
        evaluation = coco_image_evaluation(ground_truth, results, ids, record["max_dets"],
                                           iou_type)
        if list(evaluation.params.imgIds) != ids:
            raise UserError(f"{cache}: image ids differ from the ground truth's")
        coco[iou_type] = CocoMatches(evaluation)
    return RunEval("instance", keys=[str(i) for i in ids], file_names=record["file_names"],
                   values={k: 100.0 * np.asarray(v, np.float64)
                           for k, v in record["values"].items()},
                   coco=coco)
