"""COCO AP on any multiset of images, from one ``COCOeval.evaluate()``: for bootstraps.

COCO AP is not a mean over images, so a bootstrap that resamples images must recompute it
from the per-image matches of each resample. pycocotools' ``accumulate()`` does that in a
Python loop over every detection (about 0.15 s per call at 66 images x 400 detections);
:class:`CocoMatches` keeps the matches of every image as arrays, read once from the public
``evalImgs`` and ``params`` of an evaluated ``COCOeval`` (its "all" area range and largest
``maxDets``), and computes the same precision table with array operations: the same
concatenation order, the same stable sort by score, the same interpolated precision at the
recall thresholds. The values equal ``accumulate()``'s (tested).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval

__all__ = ["CocoMatches", "mean_defined"]


class _ImageMatches:
    """One image's detections of one category: scores, matched flags and ignore flags
    per IoU threshold, and its number of non-ignored ground-truth objects."""

    __slots__ = ("scores", "matched", "ignored", "truths")

    def __init__(self, record: dict | None, max_dets: int, thresholds: int):
        if record is None:
            self.scores = np.zeros(0)
            self.matched = self.ignored = np.zeros((thresholds, 0), bool)
            self.truths = 0
            return
        self.scores = np.asarray(record["dtScores"][:max_dets], np.float64)
        self.matched = np.asarray(record["dtMatches"])[:, :max_dets] != 0
        self.ignored = np.asarray(record["dtIgnore"])[:, :max_dets].astype(bool)
        self.truths = int(np.count_nonzero(np.asarray(record["gtIgnore"]) == 0))


class CocoMatches:
    """The per-image matches of an evaluated ``COCOeval``, resampled by image position.

    Positions index ``evaluation.params.imgIds`` (sorted, as ``evaluate()`` leaves them);
    repeats are allowed.
    """

    def __init__(self, evaluation: COCOeval):
        params = evaluation.params
        if not evaluation.evalImgs:
            raise ValueError("the COCOeval has no per-image results: run evaluate() first")
        self.image_ids = list(params.imgIds)
        self.iou_thresholds = np.asarray(params.iouThrs)
        self.recall_thresholds = np.asarray(params.recThrs)
        categories = params.catIds if params.useCats else [-1]
        images, areas = len(self.image_ids), len(params.areaRng)
        area = params.areaRngLbl.index("all") if "all" in params.areaRngLbl else 0
        max_dets = params.maxDets[-1]
        thresholds = len(self.iou_thresholds)
        self.per_category = [
            [_ImageMatches(evaluation.evalImgs[k * areas * images + area * images + i],
                           max_dets, thresholds) for i in range(images)]
            for k in range(len(categories))]

    def precision(self, positions: Sequence[int]) -> np.ndarray:
        """The interpolated precision (T, R, K) of the images at ``positions``; -1 where a
        category has no ground truth, as ``accumulate()`` leaves it."""
        T, R = len(self.iou_thresholds), len(self.recall_thresholds)
        out = -np.ones((T, R, len(self.per_category)))
        for k, images in enumerate(self.per_category):
            chosen = [images[i] for i in positions]
            truths = sum(m.truths for m in chosen)
            if truths == 0:
                continue
            scores = np.concatenate([m.scores for m in chosen])
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate([m.matched for m in chosen], axis=1)[:, order]
            ignored = np.concatenate([m.ignored for m in chosen], axis=1)[:, order]
            tp = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
            fp = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
            detections = tp.shape[1]
            for t in range(T):
                recall = tp[t] / truths
                precision = tp[t] / (fp[t] + tp[t] + np.spacing(1))
                # The precision envelope: the best precision at this recall or beyond.
                envelope = np.maximum.accumulate(precision[::-1])[::-1]
                at = np.searchsorted(recall, self.recall_thresholds, side="left")
                q = np.zeros(R)
                inside = at < detections
                q[inside] = envelope[at[inside]]
                out[t, :, k] = q
        return out

    def ap(self, positions: Sequence[int]) -> dict[str, float | None]:
        """AP, AP50, AP75 (fractions; None without ground truth) on the images at
        ``positions``, as ``coco_ap`` reads them from ``accumulate()``."""
        precision = self.precision(positions)
        return {"AP": mean_defined(precision),
                "AP50": mean_defined(precision[np.isclose(self.iou_thresholds, 0.5)]),
                "AP75": mean_defined(precision[np.isclose(self.iou_thresholds, 0.75)])}


def mean_defined(precision: np.ndarray) -> float | None:
    """COCO's mean over the entries it defines (-1 marks a category without true objects)."""
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else None
