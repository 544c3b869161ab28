"""Pictures of a model's predictions on a registered data set: the instance predictor or
the semantic network is run on each image, and the result drawn beside the ground truth by
:mod:`maskrcnn_pp.evaluation.visualization` (which itself runs no model)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from detectron2.config import CfgNode

from ..data.image_io import read_image_rgb
from ..data.semantic_mapper import SemanticDatasetMapper
from ..evaluation.nuclei import image_metrics
from ..evaluation.semantic import foreground, overlap_scores
from ..evaluation.visualization import (
    RenderedImage,
    dataset_dict_rles,
    dataset_records,
    format_scores_title,
    output_names,
    render_each,
    save_side_by_side,
)
from ..utils.errors import UserError
from ..utils.io import PathLike

__all__ = ["InstancePredictor", "render_dataset_predictions", "render_semantic_predictions"]


class InstancePredictor(Protocol):
    """What :func:`render_dataset_predictions` needs; ``inference.InstancePredictor`` is one.

    Calling it on an RGB image returns an object with ``rles`` and ``scores``, holding the
    detections with ``score >= score_thresh``.
    """

    score_thresh: float

    def __call__(self, image_rgb: np.ndarray) -> Any: ...


def render_dataset_predictions(predictor: InstancePredictor, dataset_name: str,
                               output_dir: PathLike, max_images: int | None = None,
                               progress: bool = True) -> list[RenderedImage]:
    """Run ``predictor`` on a registered data set and write one comparison PNG per image.

    The predictor's own score threshold decides what is drawn and scored.
    """
    records = dataset_records(dataset_name, max_images)

    def render(record: dict, path: Path) -> RenderedImage:
        image = read_image_rgb(record["file_name"])
        prediction = predictor(image)
        gt = dataset_dict_rles(record)
        metrics = image_metrics(gt, prediction.rles)
        file_name = os.path.basename(record["file_name"])
        title = format_scores_title(file_name, metrics, predictor.score_thresh)
        save_side_by_side(image, gt, prediction.rles, prediction.scores, title, path)
        return RenderedImage(file_name, path, metrics, title)

    names = output_names([r["file_name"] for r in records], [r["image_id"] for r in records])
    return render_each(list(zip(records, names)), Path(output_dir), render, dataset_name,
                        progress)


def render_semantic_predictions(model, cfg: CfgNode, dataset_name: str, output_dir: PathLike,
                                max_images: int | None = None, level: int | None = None,
                                threshold: float = 0.5,
                                progress: bool = True) -> list[RenderedImage]:
    """Ground truth | prediction of a semantic network (2D) for each image of a registered
    data set, read as ``cfg``'s test mapper reads it.

    ``model`` is a :class:`~maskrcnn_pp.modeling.semantic_arch.SemanticUNetPP` in eval mode;
    ``level`` None uses its configured inference mode, 0 the accurate one, ``j`` UNet++ L_j.
    The foreground (probability > ``threshold``) is drawn at the stored image size; its label
    is the mean probability inside it. The title holds the image's IoU and Dice (%).
    """
    level = model.inference_level if level is None else level
    mode = f"UNet++ L{level}" if level else "accurate mode"
    mapper = SemanticDatasetMapper(cfg, is_train=False)
    images = [mapper(record) for record in dataset_records(dataset_name, max_images)]
    if images and images[0]["image"].dim() != 3:
        raise UserError("pictures are drawn for 2D data sets only; score 3D volumes with "
                        "tools/train_net.py --eval-only")

    def render(inputs: dict, path: Path) -> RenderedImage:
        image = read_image_rgb(inputs["file_name"])
        with torch.no_grad():
            probabilities = model.inference([inputs], level=level)[0]["sem_seg"].cpu()
        predicted = foreground(probabilities, threshold).numpy()
        truth = inputs["sem_seg"].numpy() > 0
        intersection = int((predicted & truth).sum())
        metrics = overlap_scores(intersection, int(predicted.sum()), int(truth.sum()))
        probability = probabilities.max(dim=0).values.numpy()
        scores = [float(probability[predicted].mean())] if predicted.any() else []
        file_name = os.path.basename(inputs["file_name"])
        title = (f"{file_name}\nIoU {100 * metrics['IoU']:.1f}   "
                 f"Dice {100 * metrics['Dice']:.1f}   "
                 f"({mode})\nleft: ground truth   right: probability > {threshold:.2f} "
                 "(label: mean probability)")
        save_side_by_side(image, truth.astype(np.uint8), predicted[None] if scores else [],
                          scores, title, path)
        return RenderedImage(file_name, path, metrics, title)

    names = output_names([d["file_name"] for d in images], [d["image_id"] for d in images])
    return render_each(list(zip(images, names)), Path(output_dir), render, "visualize",
                        progress)
