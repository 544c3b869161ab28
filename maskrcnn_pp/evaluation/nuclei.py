"""Nuclei instance metrics: the DSB2018 score, AJI, pixel Dice / IoU and F1 at IoU 0.5.

Definitions follow the project's reference notes (DSB2018 Kaggle score; AJI in its common
form, Kumar et al. 2017). Every metric of one image is computed from one table of pixel
counts, :class:`InstanceOverlap`, built from COCO RLEs with pycocotools: masks may overlap
(real DSB2018 masks do, predictions often do) and only pairs whose bounding boxes meet are
intersected, so an image with hundreds of nuclei costs milliseconds.

Three ways in, one implementation: per-image masks (:func:`image_metrics`), a COCO ground
truth plus a COCO results list (:func:`evaluate_coco_results`, used by
``tools/eval_nuclei.py``), and Detectron2 model outputs (:class:`NucleiEvaluator`).

Units (Detectron2's convention): the metric functions and the record
:func:`evaluate_coco_results` returns (also what ``nuclei_metrics.json`` and
``tools/eval_nuclei.py --json`` hold) are fractions in [0, 1], as pycocotools' ``COCOeval``
stats; what is reported to Detectron2 or printed (:func:`summary_scalars`, the results of
:class:`NucleiEvaluator`, :func:`format_metrics_table`) is in percent, as
``COCOEvaluator``'s AP.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from ..data.coco import compressed_rle, encode_mask
from ..data.validation import check_coco_ground_truth, check_coco_results, read_json
from ..utils.io import atomic_write_json
from .coco_resampling import mean_defined
from .metric_notes import METRIC_DEFINITIONS, metric_notes  # noqa: F401  (names kept here)

__all__ = [
    "DSB_THRESHOLDS", "InstanceOverlap", "to_rles", "dsb_precisions", "dsb_map", "aji",
    "pixel_dice", "pixel_iou", "f1_at_50", "image_metrics", "load_coco_ground_truth",
    "dataset_ground_truth", "load_coco_results", "evaluate_coco_results",
    "coco_image_evaluation", "coco_ap", "summary_scalars", "format_metrics_table",
    "NucleiEvaluator",
]

logger = logging.getLogger(__name__)

# Thresholds in percent, so "IoU > t" is an exact integer test: 100 * |G∩S| > p * |G∪S|.
DSB_THRESHOLD_PERCENTS = tuple(range(50, 100, 5))
DSB_THRESHOLDS = tuple(p / 100 for p in DSB_THRESHOLD_PERCENTS)
F1_THRESHOLD_PERCENT = 50
MAIN_METRICS = ("dsb_map", "aji", "dice", "iou", "f1_50")

# A label image (H, W) with 0 as background; binary masks (N, H, W) or a sequence of (H, W);
# or a sequence of COCO RLE dicts.
Instances = Union[np.ndarray, Sequence[np.ndarray], Sequence[dict]]


# --------------------------------------------------------------------------- one image


def to_rles(instances: Instances) -> list[dict]:
    """Instance masks as compressed COCO RLEs (one per instance; empty input gives [])."""
    if isinstance(instances, np.ndarray) and instances.ndim == 2:
        labels = np.unique(instances)
        return [encode_mask(instances == label) for label in labels[labels != 0]]
    if len(instances) == 0:
        return []
    if all(isinstance(item, dict) for item in instances):
        return [compressed_rle(rle, *rle["size"]) for rle in instances]
    masks = np.asarray(instances)
    if masks.ndim != 3:
        raise ValueError(f"expected a label image (H, W) or masks (N, H, W), got {masks.shape}")
    return encode_mask(masks.transpose(1, 2, 0) != 0)


@dataclass(frozen=True)
class InstanceOverlap:
    """The pixel counts every nuclei metric of one image is computed from."""

    gt_areas: np.ndarray        # (n,) pixels of each true nucleus
    pred_areas: np.ndarray      # (m,) pixels of each predicted nucleus
    intersections: np.ndarray   # (n, m) shared pixels of each pair
    gt_foreground: int          # pixels of the union of true nuclei
    pred_foreground: int        # pixels of the union of predicted nuclei
    foreground_intersection: int

    @classmethod
    def of(cls, gt: Instances, pred: Instances) -> InstanceOverlap:
        return cls.from_rles(to_rles(gt), to_rles(pred))

    @classmethod
    def from_rles(cls, gt: list[dict], pred: list[dict]) -> InstanceOverlap:
        sizes = {tuple(rle["size"]) for rle in itertools.chain(gt, pred)}
        if len(sizes) > 1:
            raise ValueError(f"masks of one image differ in size (h, w): {sorted(sizes)}")
        intersections = np.zeros((len(gt), len(pred)), np.int64)
        if gt and pred:
            # pycocotools skips pairs whose boxes do not meet; IoU > 0 marks touching pairs,
            # whose exact shared pixel count is then taken from the intersected RLE.
            touching = np.argwhere(np.asarray(mask_util.iou(gt, pred, [0] * len(pred))) > 0)
            for i, j in touching:
                intersections[i, j] = mask_util.area(mask_util.merge([gt[i], pred[j]], True))
        gt_union, pred_union = _union(gt), _union(pred)
        both = (int(mask_util.area(mask_util.merge([gt_union, pred_union], True)))
                if gt_union is not None and pred_union is not None else 0)
        return cls(gt_areas=_areas(gt), pred_areas=_areas(pred), intersections=intersections,
                   gt_foreground=_area(gt_union), pred_foreground=_area(pred_union),
                   foreground_intersection=both)

    @property
    def unions(self) -> np.ndarray:
        return self.gt_areas[:, None] + self.pred_areas[None, :] - self.intersections


def _areas(rles: list[dict]) -> np.ndarray:
    # One call per mask: pycocotools' list form of area() overflows past 255 masks on NumPy 2.
    return np.fromiter((mask_util.area(rle) for rle in rles), np.int64, len(rles))


def _union(rles: list[dict]) -> dict | None:
    return mask_util.merge(rles, False) if rles else None


def _area(rle: dict | None) -> int:
    return int(mask_util.area(rle)) if rle is not None else 0


def _maximum_matching_size(candidates: np.ndarray) -> int:
    """Most one-to-one (true, predicted) pairs that can be taken from a boolean (n, m) table.

    Above IoU 0.5 a nucleus has at most one candidate unless masks overlap on one side, so
    the table is then returned directly; otherwise augmenting paths (Kuhn) find the maximum.
    """
    if (candidates.sum(axis=0) <= 1).all() and (candidates.sum(axis=1) <= 1).all():
        return int(candidates.sum())
    neighbours = [np.flatnonzero(row).tolist() for row in candidates]
    gt_of_pred: dict[int, int] = {}
    pred_of_gt: dict[int, int] = {}
    for start in range(len(neighbours)):
        reached_from: dict[int, int] = {}     # predicted nucleus -> true nucleus that reached it
        frontier, visited, free_pred = [start], {start}, None
        while frontier and free_pred is None:
            next_frontier = []
            for gt_index in frontier:
                for pred_index in neighbours[gt_index]:
                    if pred_index in reached_from:
                        continue
                    reached_from[pred_index] = gt_index
                    owner = gt_of_pred.get(pred_index)
                    if owner is None:
                        free_pred = pred_index
                        break
                    if owner not in visited:
                        visited.add(owner)
                        next_frontier.append(owner)
                if free_pred is not None:
                    break
            frontier = next_frontier
        pred_index = free_pred
        while pred_index is not None:       # flip the alternating path back to ``start``
            gt_index = reached_from[pred_index]
            previous = pred_of_gt.get(gt_index)
            gt_of_pred[pred_index], pred_of_gt[gt_index] = gt_index, pred_index
            pred_index = None if gt_index == start else previous
    return len(pred_of_gt)


def _matches(overlap: InstanceOverlap, percent: int) -> int:
    """True positives at "IoU > percent / 100" under one-to-one matching."""
    return _maximum_matching_size(100 * overlap.intersections > percent * overlap.unions)


def _dsb_precisions(overlap: InstanceOverlap) -> np.ndarray:
    n, m = len(overlap.gt_areas), len(overlap.pred_areas)
    if n == 0 and m == 0:
        return np.ones(len(DSB_THRESHOLD_PERCENTS))
    tp = np.array([_matches(overlap, p) for p in DSB_THRESHOLD_PERCENTS], np.float64)
    return tp / (n + m - tp)        # TP + FP + FN = TP + (m - TP) + (n - TP)


def _f1_50(overlap: InstanceOverlap) -> float:
    n, m = len(overlap.gt_areas), len(overlap.pred_areas)
    if n == 0 and m == 0:
        return 1.0
    return 2 * _matches(overlap, F1_THRESHOLD_PERCENT) / (n + m)   # 2TP / (2TP + FP + FN)


def _aji(overlap: InstanceOverlap) -> float:
    n, m = len(overlap.gt_areas), len(overlap.pred_areas)
    if n == 0 and m == 0:
        return 1.0
    inter, unions = overlap.intersections, overlap.unions
    ious = np.divide(inter, unions, out=np.zeros(inter.shape), where=unions > 0)
    hit = (inter > 0).any(axis=1) if m else np.zeros(n, bool)
    best = np.where(inter > 0, ious, -1.0).argmax(axis=1) if m else np.zeros(n, int)
    rows = np.flatnonzero(hit)
    chosen = np.zeros(m, bool)
    chosen[best[rows]] = True
    common = inter[rows, best[rows]].sum()
    union = (unions[rows, best[rows]].sum() + overlap.gt_areas[~hit].sum()
             + overlap.pred_areas[~chosen].sum())
    return float(common / union) if union else 0.0


def _pixel_dice(overlap: InstanceOverlap) -> float:
    total = overlap.gt_foreground + overlap.pred_foreground
    return 2 * overlap.foreground_intersection / total if total else 1.0


def _pixel_iou(overlap: InstanceOverlap) -> float:
    union = overlap.gt_foreground + overlap.pred_foreground - overlap.foreground_intersection
    return overlap.foreground_intersection / union if union else 1.0


def dsb_precisions(gt: Instances, pred: Instances) -> np.ndarray:
    """TP / (TP + FP + FN) at IoU > 0.50, 0.55, ..., 0.95 (one-to-one matches)."""
    return _dsb_precisions(InstanceOverlap.of(gt, pred))


def dsb_map(gt: Instances, pred: Instances) -> float:
    """The DSB2018 image score: the mean of :func:`dsb_precisions` (1 when both are empty)."""
    return float(_dsb_precisions(InstanceOverlap.of(gt, pred)).mean())


def aji(gt: Instances, pred: Instances) -> float:
    """Aggregated Jaccard index; a prediction may be the best match of several nuclei."""
    return _aji(InstanceOverlap.of(gt, pred))


def pixel_dice(gt: Instances, pred: Instances) -> float:
    """Dice of the union of true nuclei and the union of predicted nuclei."""
    return _pixel_dice(InstanceOverlap.of(gt, pred))


def pixel_iou(gt: Instances, pred: Instances) -> float:
    """IoU (Jaccard) of the union of true nuclei and the union of predicted nuclei."""
    return _pixel_iou(InstanceOverlap.of(gt, pred))


def f1_at_50(gt: Instances, pred: Instances) -> float:
    """F1 = 2TP / (2TP + FP + FN) with one-to-one matches at IoU > 0.5."""
    return _f1_50(InstanceOverlap.of(gt, pred))


def image_metrics(gt: Instances, pred: Instances) -> dict[str, Any]:
    """Every nuclei metric of one image, from a single overlap computation."""
    return _metrics_of(InstanceOverlap.of(gt, pred))


def _metrics_of(overlap: InstanceOverlap) -> dict[str, Any]:
    precisions = _dsb_precisions(overlap)
    return {"num_gt": len(overlap.gt_areas), "num_pred": len(overlap.pred_areas),
            "dsb_map": float(precisions.mean()), "dsb_precisions": precisions.tolist(),
            "aji": _aji(overlap), "dice": _pixel_dice(overlap), "iou": _pixel_iou(overlap),
            "f1_50": _f1_50(overlap)}


# --------------------------------------------------------------------------- COCO files

def coco_from_dict(data: Any, name: str) -> COCO:
    """A pycocotools ``COCO`` index of an instances dict, after
    :func:`~maskrcnn_pp.data.validation.check_coco_ground_truth`."""
    check_coco_ground_truth(data, name)
    coco = COCO()
    coco.dataset = {**data, "annotations": data.get("annotations") or [],
                    "categories": data.get("categories") or []}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco_ground_truth(path: str | os.PathLike) -> COCO:
    """A COCO instances file; :class:`UserError` names the file and the problem."""
    return coco_from_dict(read_json(path), str(path))


def dataset_ground_truth(dataset_name: str) -> COCO:
    """A registered data set's ``json_file`` or, if it has none, Detectron2's COCO
    conversion of its dicts."""
    json_file = MetadataCatalog.get(dataset_name).get("json_file")
    return (load_coco_ground_truth(json_file) if json_file else
            coco_from_dict(convert_to_coco_dict(dataset_name), dataset_name))


def load_coco_results(path: str | os.PathLike) -> Any:
    """A COCO results file (what ``COCOEvaluator`` writes), as read: it is checked against
    the ground truth by :func:`evaluate_coco_results`."""
    return read_json(path)


def evaluate_coco_results(coco_gt: COCO, results: Sequence[dict], score_thresh: float = 0.5,
                          image_ids: Iterable[int] | None = None, max_dets: int | None = None,
                          results_name: str = "results") -> dict[str, Any]:
    """Score COCO instance results against a COCO ground truth, image by image.

    Nuclei metrics are class-agnostic, skip crowd annotations, and use the detections with
    ``score >= score_thresh``; an image without such detections still counts. The COCO
    segm AP (pycocotools, all detections, at most ``max_dets`` per image; default: the
    most any image has, at least 100) is under ``coco_segm``. ``image_ids`` limits the
    evaluation to those images (default: every image of the ground truth). All values are
    fractions in [0, 1]; the top-level metrics are means over images.
    """
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else set(image_ids))
    results = _normalized_results(coco_gt, results, results_name)
    kept = defaultdict(list)
    for result in results:
        if result["score"] >= score_thresh:
            kept[result["image_id"]].append(result["segmentation"])

    per_image = []
    for image_id in image_ids:
        gt = [coco_gt.annToRLE(a) for a in coco_gt.imgToAnns[image_id] if not a.get("iscrowd")]
        metrics = _metrics_of(InstanceOverlap.from_rles(gt, kept.get(image_id, [])))
        per_image.append({"image_id": image_id,
                          "file_name": coco_gt.imgs[image_id].get("file_name", ""), **metrics})

    summary: dict[str, Any] = {key: _mean(m[key] for m in per_image) for key in MAIN_METRICS}
    precisions = (np.mean([m["dsb_precisions"] for m in per_image], axis=0) if per_image
                  else np.full(len(DSB_THRESHOLDS), np.nan))
    summary.update(
        num_images=len(per_image), score_thresh=score_thresh,
        dsb_precision_by_threshold={f"{t:.2f}": float(p) for t, p in
                                    zip(DSB_THRESHOLDS, precisions)},
        coco_segm=_coco_segm_ap(coco_gt, results, image_ids, max_dets),
        per_image=per_image)
    return summary


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _normalized_results(coco_gt: COCO, results: Any, name: str) -> list[dict]:
    """Copies of the detections with compressed RLE masks, after
    :func:`~maskrcnn_pp.data.validation.check_coco_results`."""
    check_coco_results(results, coco_gt.imgs, coco_gt.getCatIds(), name)
    normalized = []
    for result in results:
        segm = result["segmentation"]
        normalized.append({**result, "segmentation": compressed_rle(segm, *segm["size"])})
    return normalized


def _coco_segm_ap(coco_gt: COCO, results: Sequence[dict], image_ids: list[int],
                  max_dets: int | None) -> dict[str, float | None]:
    """COCO mask AP, AP50, AP75 as fractions; None where COCO defines none (no true nuclei)."""
    if not coco_gt.getAnnIds(imgIds=image_ids, iscrowd=False):
        return {"AP": None, "AP50": None, "AP75": None}
    wanted = set(image_ids)
    results = [r for r in results if r["image_id"] in wanted]
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    if max_dets is None:
        max_dets = max(100, *Counter(r["image_id"] for r in results).values())
    return coco_ap(coco_image_evaluation(coco_gt, results, image_ids, max_dets))


def coco_image_evaluation(coco_gt: COCO, results: Sequence[dict], image_ids: list[int],
                          max_dets: int, iou_type: str = "segm") -> COCOeval:
    """pycocotools' per-image matching (``evaluate()``, not yet accumulated) of ``results``
    (non-empty) with at most ``max_dets`` detections per image, "all" area range only."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(list(results))
        evaluation = COCOeval(coco_gt, coco_dt, iou_type)
        evaluation.params.imgIds = list(image_ids)
        evaluation.params.maxDets = [max_dets]
        # Only the "all" area range is reported; skipping small/medium/large is 4x faster.
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.evaluate()
    return evaluation


def coco_ap(evaluation: COCOeval) -> dict[str, float | None]:
    """AP, AP50, AP75 (fractions) of an evaluated ``COCOeval`` over its ``params.imgIds``."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.accumulate()
    # precision[iou threshold, recall, category, area range, max detections];
    # read directly because COCOeval.summarize() assumes maxDets == 100.
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    iou_thresholds = evaluation.params.iouThrs
    return {"AP": mean_defined(precision),
            "AP50": mean_defined(precision[np.isclose(iou_thresholds, 0.5)]),
            "AP75": mean_defined(precision[np.isclose(iou_thresholds, 0.75)])}


def summary_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of :func:`evaluate_coco_results` as a flat dict of floats in percent
    (for Detectron2).

    Names with "-" (the per-threshold precisions) are stored but not printed by
    Detectron2's ``print_csv_format``.
    """
    scalars = {key: 100.0 * metrics[key] for key in MAIN_METRICS}
    scalars.update({f"segm_{key}": 100.0 * value for key, value in metrics["coco_segm"].items()
                    if value is not None})
    scalars.update({f"dsb_precision-{t}": 100.0 * p
                    for t, p in metrics["dsb_precision_by_threshold"].items()})
    return scalars


def format_metrics_table(metrics: dict[str, Any], explain: bool = False) -> str:
    """The number of images, then two small tables in percent: the main metrics, and the
    DSB precision at each IoU threshold; with ``explain``, what each metric is."""
    rows = [(key, f"{100 * metrics[key]:.2f}") for key in MAIN_METRICS]
    rows += [(f"segm_{key}", "n/a" if value is None else f"{100 * value:.2f}")
             for key, value in metrics["coco_segm"].items()]
    thresholds = metrics["dsb_precision_by_threshold"]
    return "\n\n".join([
        f"{metrics['num_images']} images",
        tabulate(rows, headers=["metric", "value (%)"], tablefmt="pipe", disable_numparse=True,
                 colalign=("left", "right")),
        tabulate([["precision (%)", *(f"{100 * p:.2f}" for p in thresholds.values())]],
                 headers=["IoU >", *thresholds.keys()], tablefmt="pipe", disable_numparse=True),
        *([metric_notes(metrics.get("score_thresh"))] if explain else []),
    ])


# --------------------------------------------------------------------------- Detectron2


class NucleiEvaluator(DatasetEvaluator):
    """The nuclei metrics of a Detectron2 instance-segmentation model on a registered set.

    Predicted masks are kept as RLE (as ``COCOEvaluator`` does), gathered from all workers,
    and scored by :func:`evaluate_coco_results` against :func:`dataset_ground_truth`.
    ``evaluate()`` returns ``{"nuclei": {name: float}}`` in percent (:func:`summary_scalars`);
    with ``output_dir`` the full result, per image, is written to ``nuclei_metrics.json``
    (fractions, as :func:`evaluate_coco_results` returns it).
    """

    def __init__(self, dataset_name: str, score_thresh: float = 0.5,
                 output_dir: str | None = None, distributed: bool = True,
                 max_dets: int | None = None):
        self._dataset_name = dataset_name
        self._score_thresh = score_thresh
        self._output_dir = output_dir
        self._distributed = distributed
        self._max_dets = max_dets
        self._coco_gt = dataset_ground_truth(dataset_name)
        # Detectron2 predicts contiguous class indices in the order of the sorted category ids.
        self._category_ids = sorted(self._coco_gt.getCatIds())
        self._predictions: list[dict] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for sample, output in zip(inputs, outputs):
            instances = output["instances"].to("cpu")
            if not instances.has("pred_masks"):
                raise ValueError("NucleiEvaluator needs instance masks (pred_masks), "
                                 f"got only {sorted(instances.get_fields())}")
            detections = instances_to_coco_json(instances, sample["image_id"])
            for detection in detections:
                detection["category_id"] = self._category_ids[detection["category_id"]]
            self._predictions.append({"image_id": sample["image_id"],
                                      "detections": detections})

    def evaluate(self) -> dict[str, dict[str, float]]:
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if not predictions:
            logger.warning("[NucleiEvaluator] received no predictions for %s",
                           self._dataset_name)
            return {}
        metrics = evaluate_coco_results(
            self._coco_gt, [d for p in predictions for d in p["detections"]],
            score_thresh=self._score_thresh, image_ids=[p["image_id"] for p in predictions],
            max_dets=self._max_dets, results_name=f"predictions on {self._dataset_name}")
        if self._output_dir:
            atomic_write_json(os.path.join(self._output_dir, "nuclei_metrics.json"), metrics,
                              indent=1)
        logger.info("Nuclei metrics on %s (score >= %s):\n%s", self._dataset_name,
                    self._score_thresh, format_metrics_table(metrics))
        return {"nuclei": summary_scalars(metrics)}
