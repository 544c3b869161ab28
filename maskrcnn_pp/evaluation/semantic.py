"""Binary foreground IoU and Dice for the semantic tasks, per inference mode.

Both scores are accumulated over the whole data set, as one confusion count of every
pixel (voxel): ``IoU = sum|P & G| / sum|P | G|`` and ``Dice = 2 sum|P & G| / (sum|P| +
sum|G|)``, so large images weigh more than small ones. A data set where neither prediction
nor truth has any foreground scores 1 (100%). Foreground is probability > 0.5 for a
one-class network and any class but 0 (arg-max) otherwise.

Units (Detectron2's convention): :func:`overlap_scores` returns fractions in [0, 1], as
pycocotools does; :class:`SemanticEvaluator` returns percent, as Detectron2's evaluators
do (what goes to the console, ``metrics.json`` and ``semantic_results.json``).

The evaluator is pure: it scores the outputs it is given and runs no model. Predicting a
data set in every inference mode of UNet++, timed, is
:class:`maskrcnn_pp.engine.inference_modes.InferenceModes`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..utils.io import atomic_write_json

__all__ = ["SemanticEvaluator", "foreground", "overlap_scores", "mode_scores", "mode_name",
           "HEADLINE", "RESULTS_FILE"]

logger = logging.getLogger(__name__)

HEADLINE = "output"
RESULTS_FILE = "semantic_results.json"


def foreground(probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Boolean foreground of a ``(C, *spatial)`` probability map."""
    if probabilities.shape[0] == 1:
        return probabilities[0] > threshold
    return probabilities.argmax(dim=0) > 0


def overlap_scores(intersection: int, predicted: int, truth: int) -> dict[str, float]:
    """IoU and Dice as fractions from accumulated pixel counts (1 when both are empty)."""
    total = predicted + truth
    if total == 0:
        return {"IoU": 1.0, "Dice": 1.0}
    return {"IoU": intersection / (total - intersection), "Dice": 2 * intersection / total}


def mode_scores(counts, mode: str = HEADLINE) -> dict[str, float]:
    """What the evaluator reports for one mode's ``(intersection, predicted, truth)`` pixel
    counts: ``IoU`` and ``Dice`` in percent, suffixed ``_<mode>`` for a mode other than the
    model's own outputs."""
    suffix = "" if mode == HEADLINE else f"_{mode}"
    return {f"{key}{suffix}": 100.0 * value
            for key, value in overlap_scores(*(int(c) for c in counts)).items()}


def mode_name(level: int) -> str:
    """The name of inference mode ``level`` in results: ``L<j>`` for UNet++ L_j, ``accurate``
    for 0."""
    return f"L{level}" if level else "accurate"


class SemanticEvaluator(DatasetEvaluator):
    """IoU and Dice (percent) of the outputs it is given, under the mode they are given for.

    ``process(inputs, outputs)`` scores the model's own outputs (``IoU``, ``Dice``);
    ``process(inputs, outputs, mode=name, seconds=s)`` scores outputs predicted in another
    inference mode, reported as ``IoU_<name>``, ``Dice_<name>`` and, when the time the model
    took is given, ``ms_per_image_<name>``.

    Args:
        dataset_name: the data set (for the log and the results file).
        threshold: foreground probability threshold of one-class networks.
        distributed: gather counts from every process (Detectron2's ``comm``).
        output_dir: if given, the results are also written to ``semantic_results.json``.

    ``per_image[mode]`` keeps this process's ``(file_name, intersection, predicted, truth)``
    of every image, for statistics over images (``tools/study.py`` bootstraps them).
    """

    def __init__(self, dataset_name: str, *, threshold: float = 0.5, distributed: bool = True,
                 output_dir: str | None = None):
        self.dataset_name = dataset_name
        self.threshold = threshold
        self.distributed = distributed
        self.output_dir = output_dir
        self.reset()

    def reset(self) -> None:
        # Per mode, in the order first seen: [intersection, predicted, truth] pixels, images,
        # and seconds (only for modes given a time).
        self._counts: dict[str, np.ndarray] = {}
        self._images: dict[str, int] = {}
        self._seconds: dict[str, float] = {}
        self.per_image: dict[str, list[tuple[str, int, int, int]]] = {}

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict], mode: str = HEADLINE,
                seconds: float | None = None) -> None:
        counts = self._counts.setdefault(mode, np.zeros(3, np.int64))
        self._images.setdefault(mode, 0)
        rows = self.per_image.setdefault(mode, [])
        if seconds is not None:
            self._seconds[mode] = self._seconds.get(mode, 0.0) + seconds
        for inp, out in zip(inputs, outputs):
            if "sem_seg" not in inp:
                raise KeyError(f"input {inp.get('file_name', '?')} has no 'sem_seg' target; "
                               "use the semantic test mapper")
            truth = inp["sem_seg"].to(out["sem_seg"].device) > 0
            pred = foreground(out["sem_seg"], self.threshold)
            if pred.shape != truth.shape:
                raise ValueError(f"{inp.get('file_name', '?')}: prediction {tuple(pred.shape)} "
                                 f"and truth {tuple(truth.shape)} differ in size")
            image_counts = (int((pred & truth).sum()), int(pred.sum()), int(truth.sum()))
            counts += image_counts
            self._images[mode] += 1
            rows.append((str(inp.get("file_name", "")), *image_counts))

    def evaluate(self) -> dict:
        state = (self._counts, self._seconds, self._images)
        if self.distributed:
            comm.synchronize()
            gathered = comm.gather(state, dst=0)
            if not comm.is_main_process():
                return {}
        else:
            gathered = [state]
        results: dict[str, float] = {}
        for name in dict.fromkeys(name for g in gathered for name in g[0]):
            counts = sum(g[0].get(name, 0) for g in gathered)
            results.update(mode_scores(counts, name))
            suffix = "" if name == HEADLINE else f"_{name}"
            if any(name in g[1] for g in gathered):
                seconds = sum(g[1].get(name, 0.0) for g in gathered)
                images = sum(g[2].get(name, 0) for g in gathered)
                results[f"ms_per_image{suffix}"] = 1000.0 * seconds / max(images, 1)
        logger.info("Semantic evaluation of %s: %s", self.dataset_name, results)
        if self.output_dir:
            atomic_write_json(Path(self.output_dir) / RESULTS_FILE, results, indent=2)
        return {"sem_seg": results}
