"""Binary foreground IoU and Dice for the semantic tasks, per UNet++ pruning level.

Both scores are accumulated over the whole data set, as one confusion count of every
pixel (voxel): ``IoU = sum|P & G| / sum|P | G|`` and ``Dice = 2 sum|P & G| / (sum|P| +
sum|G|)``, in percent, so large images weigh more than small ones. A data set where neither
prediction nor truth has any foreground scores 100. Foreground is probability > 0.5 for a
one-class network and any class but 0 (arg-max) otherwise.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from torch import nn

from ..utils.io import atomic_write_json

__all__ = ["SemanticEvaluator", "foreground", "overlap_scores", "mode_name", "HEADLINE",
           "RESULTS_FILE"]

logger = logging.getLogger(__name__)

HEADLINE = "output"
RESULTS_FILE = "semantic_results.json"


def foreground(probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Boolean foreground of a ``(C, *spatial)`` probability map."""
    if probabilities.shape[0] == 1:
        return probabilities[0] > threshold
    return probabilities.argmax(dim=0) > 0


def overlap_scores(intersection: int, predicted: int, truth: int) -> dict[str, float]:
    """IoU and Dice in percent from accumulated pixel counts (100 when both are empty)."""
    total = predicted + truth
    if total == 0:
        return {"IoU": 100.0, "Dice": 100.0}
    return {"IoU": 100.0 * intersection / (total - intersection),
            "Dice": 200.0 * intersection / total}


def mode_name(level: int) -> str:
    return f"L{level}" if level else "accurate"


class SemanticEvaluator(DatasetEvaluator):
    """IoU and Dice of the model's outputs and, given the model, of every inference mode.

    Args:
        dataset_name: the data set (for the log and the results file).
        model: a :class:`SemanticUNetPP` (or a DDP wrapper of one). When given, each batch
            is also predicted in the accurate mode and in every fast mode UNet++ L_j the
            network offers, each timed (CUDA is synchronized around it); the results gain
            ``IoU_<mode>``, ``Dice_<mode>`` and ``ms_per_image_<mode>``.
        threshold: foreground probability threshold of one-class networks.
        distributed: gather counts from every process (Detectron2's ``comm``).
        output_dir: if given, the results are also written to ``semantic_results.json``.

    ``per_image[mode]`` keeps this process's ``(file_name, intersection, predicted, truth)``
    of every image, for statistics over images (``tools/study.py`` bootstraps them).
    """

    def __init__(self, dataset_name: str, model: nn.Module | None = None, *,
                 threshold: float = 0.5, distributed: bool = True,
                 output_dir: str | None = None):
        self.dataset_name = dataset_name
        self.model = getattr(model, "module", model)
        if self.model is not None and not hasattr(self.model, "inference"):
            raise TypeError(f"{type(self.model).__name__} has no inference(inputs, level); "
                            "pass a SemanticUNetPP")
        # Fast modes L1..L_L, then the accurate mode (0), as the paper's Fig. 3.
        self.modes: tuple[int, ...] = ((*self.model.levels, 0) if self.model is not None
                                       else ())
        self.threshold = threshold
        self.distributed = distributed
        self.output_dir = output_dir
        self.reset()

    def reset(self) -> None:
        names = [HEADLINE] + [mode_name(m) for m in self.modes]
        # Per mode: [intersection, predicted, truth] pixels, seconds, images.
        self._counts = {name: np.zeros(3, np.int64) for name in names}
        self._seconds = {name: 0.0 for name in names}
        self._images = {name: 0 for name in names}
        self.per_image: dict[str, list[tuple[str, int, int, int]]] = {name: [] for name in names}

    def _accumulate(self, name: str, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            if "sem_seg" not in inp:
                raise KeyError(f"input {inp.get('file_name', '?')} has no 'sem_seg' target; "
                               "use the semantic test mapper")
            truth = inp["sem_seg"].to(out["sem_seg"].device) > 0
            pred = foreground(out["sem_seg"], self.threshold)
            if pred.shape != truth.shape:
                raise ValueError(f"{inp.get('file_name', '?')}: prediction {tuple(pred.shape)} "
                                 f"and truth {tuple(truth.shape)} differ in size")
            counts = (int((pred & truth).sum()), int(pred.sum()), int(truth.sum()))
            self._counts[name] += counts
            self._images[name] += 1
            self.per_image[name].append((str(inp.get("file_name", "")), *counts))

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        self._accumulate(HEADLINE, inputs, outputs)
        for mode in self.modes:
            name = mode_name(mode)
            cuda = self.model.device.type == "cuda"
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                predictions = self.model.inference(inputs, level=mode)
            if cuda:
                torch.cuda.synchronize()
            self._seconds[name] += time.perf_counter() - start
            self._accumulate(name, inputs, predictions)

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
        for name in self._counts:
            counts = sum(g[0][name] for g in gathered)
            images = sum(g[2][name] for g in gathered)
            suffix = "" if name == HEADLINE else f"_{name}"
            results.update({f"{k}{suffix}": v for k, v in overlap_scores(*counts).items()})
            if name != HEADLINE:
                seconds = sum(g[1][name] for g in gathered)
                results[f"ms_per_image{suffix}"] = 1000.0 * seconds / max(images, 1)
        logger.info("Semantic evaluation of %s: %s", self.dataset_name, results)
        if self.output_dir:
            atomic_write_json(Path(self.output_dir) / RESULTS_FILE, results, indent=2)
        return {"sem_seg": results}
