"""Pictures of nuclei instances: read any microscopy image, draw masks, compare with truth.

Drawing goes through Detectron2's ``Visualizer`` (masks as COCO RLEs, one colour per
instance from Detectron2's colour map, so pictures are reproducible). A comparison is one
PNG: the ground truth on the left, the prediction on the right, and the image's nuclei
scores (DSB mAP, AJI, Dice, IoU, F1 at 0.5, from :mod:`maskrcnn_pp.evaluation.nuclei`) in
the title, which is also stored in the PNG's ``Title`` text field. Titles give scores in
percent, as the evaluators report them; ``RenderedImage.metrics`` keeps the metric
functions' fractions.
"""
from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.contrib.logging import logging_redirect_tqdm

from ..data.coco import compressed_rle
from ..data.image_io import UnreadableImageError, read_image_rgb
from ..utils.errors import UserError
from ..utils.io import PathLike, atomic_write_bytes
from ..utils.progress import ProgressBar
from .nuclei import (
    evaluate_coco_results,
    load_coco_ground_truth,
    load_coco_results,
    to_rles,
)

__all__ = [
    "draw_instance_masks",
    "dataset_dict_rles", "format_scores_title", "save_side_by_side", "RenderedImage",
    "dataset_records", "output_names", "render_each", "render_results_file",
]

logger = logging.getLogger(__name__)

# Beyond this many instances per panel, score labels would hide the nuclei they name.
MAX_LABELED_INSTANCES = 30
# Small images are enlarged so that the title (file name and five scores) fits above them.
MIN_PANEL_WIDTH = 400
TITLE_FONT_PT = 10
TITLE_LINE_PX = 18
FIGURE_DPI = 100


# --------------------------------------------------------------------------- reading


# --------------------------------------------------------------------------- drawing


def _instance_colors(count: int) -> list[np.ndarray]:
    palette = colormap(rgb=True, maximum=1)
    return [palette[index % len(palette)] for index in range(count)]


def draw_instance_masks(image_rgb: np.ndarray, rles: Sequence[dict],
                        labels: Sequence[str] | None = None, scale: float = 1.0
                        ) -> np.ndarray:
    """The image with each mask filled and outlined (Detectron2 ``Visualizer``), as RGB.

    ``labels`` are drawn only for at most ``MAX_LABELED_INSTANCES`` masks.
    """
    visualizer = Visualizer(image_rgb, scale=scale)
    if not len(rles):
        return visualizer.output.get_image()
    if labels is not None and len(labels) > MAX_LABELED_INSTANCES:
        labels = None
    drawn = visualizer.overlay_instances(masks=list(rles), labels=labels,
                                         assigned_colors=_instance_colors(len(rles)))
    return drawn.get_image()


def dataset_dict_rles(record: dict) -> list[dict]:
    """The instance masks of a Detectron2 data set dict as RLEs (crowd regions left out).

    Segmentations may be polygons, uncompressed or compressed RLEs.
    """
    return [compressed_rle(annotation["segmentation"], record["height"], record["width"])
            for annotation in record.get("annotations", []) if not annotation.get("iscrowd")]


def format_scores_title(file_name: str, metrics: dict[str, Any], score_thresh: float) -> str:
    """Three lines: the file, its nuclei scores (%), and what each panel shows."""
    scores = (f"DSB mAP {100 * metrics['dsb_map']:.1f}   AJI {100 * metrics['aji']:.1f}   "
              f"Dice {100 * metrics['dice']:.1f}   IoU {100 * metrics['iou']:.1f}   "
              f"F1@0.5 {100 * metrics['f1_50']:.1f}")
    panels = (f"left: ground truth ({metrics['num_gt']} nuclei)   right: prediction "
              f"({metrics['num_pred']} nuclei, score >= {score_thresh:.2f})")
    return f"{file_name}\n{scores}\n{panels}"


def save_side_by_side(image_rgb: np.ndarray, gt: dict | np.ndarray | Sequence,
                      pred_masks: np.ndarray | Sequence, scores: Sequence[float],
                      title: str, path: PathLike) -> None:
    """Write ``path``: ground truth (left) and prediction (right) with ``title`` above.

    ``gt`` is a Detectron2 data set dict, a label image (H, W), masks (N, H, W) or RLEs;
    ``pred_masks`` are masks (N, H, W) or RLEs with one score each. Each panel is as wide
    as the image (enlarged to ``MIN_PANEL_WIDTH`` for small images), so the PNG is exactly
    twice as wide. The title is also stored in the PNG's ``Title`` field.
    """
    width = image_rgb.shape[1]
    gt_rles = dataset_dict_rles(gt) if isinstance(gt, dict) else to_rles(gt)
    pred_rles = to_rles(pred_masks)
    if len(scores) != len(pred_rles):
        raise ValueError(f"{len(pred_rles)} predicted masks but {len(scores)} scores")
    scale = max(1.0, MIN_PANEL_WIDTH / width)
    gt_panel = draw_instance_masks(image_rgb, gt_rles, scale=scale)
    pred_panel = draw_instance_masks(image_rgb, pred_rles, [f"{s:.0%}" for s in scores],
                                     scale=scale)
    panel_height, panel_width = gt_panel.shape[:2]
    title_height = TITLE_LINE_PX * (title.count("\n") + 1) + TITLE_LINE_PX // 2
    total_height = panel_height + title_height
    # Detectron2's trick: + 1e-2 so that matplotlib's truncation keeps every pixel.
    figure = Figure(figsize=((2 * panel_width + 1e-2) / FIGURE_DPI,
                             (total_height + 1e-2) / FIGURE_DPI), dpi=FIGURE_DPI)
    canvas = FigureCanvasAgg(figure)
    for column, panel in enumerate((gt_panel, pred_panel)):
        axes = figure.add_axes((column / 2, 0.0, 0.5, panel_height / total_height))
        axes.imshow(panel, interpolation="nearest")
        axes.set_axis_off()
    figure.text(0.5, 1 - (TITLE_LINE_PX // 4) / total_height, title, ha="center", va="top",
                fontsize=TITLE_FONT_PT, linespacing=1.3, family="monospace")
    buffer = io.BytesIO()
    canvas.print_png(buffer, metadata={"Title": title})
    atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------- whole sets


@dataclass(frozen=True)
class RenderedImage:
    """One comparison PNG and the scores in its title (``metrics`` as fractions)."""

    file_name: str
    path: Path
    metrics: dict[str, Any]
    title: str


def output_names(file_names: Sequence[str], image_ids: Sequence[Any]) -> list[str]:
    """``<stem>.png`` per image, with the image id added where two stems are equal."""
    stems = [Path(name).stem for name in file_names]
    counts: dict[str, int] = defaultdict(int)
    for stem in stems:
        counts[stem] += 1
    return [f"{stem}.png" if counts[stem] == 1 else f"{stem}_{image_id}.png"
            for stem, image_id in zip(stems, image_ids)]


def dataset_records(dataset_name: str, max_images: int | None) -> list[dict]:
    """The first ``max_images`` records of a registered data set; user errors if it is not
    registered or not prepared."""
    if dataset_name not in DatasetCatalog.list():
        raise UserError(f"unknown data set {dataset_name!r}; registered: "
                        f"{', '.join(sorted(DatasetCatalog.list()))}")
    try:
        return DatasetCatalog.get(dataset_name)[:max_images]
    except FileNotFoundError as err:
        raise UserError(str(err)) from None


def render_each(items: Sequence[tuple[Any, str]], output_dir: Path,
                 render: Callable[[Any, Path], RenderedImage], description: str,
                 progress: bool) -> list[RenderedImage]:
    """Render every (item, file name); unreadable images are skipped with a warning."""
    rendered, failures = [], []
    with logging_redirect_tqdm():
        for item, name in ProgressBar(items, desc=description, unit="image",
                                      disable=not progress):
            try:
                rendered.append(render(item, output_dir / name))
            except UnreadableImageError as err:
                failures.append(str(err))
                logger.warning("skipped %s", err)
    if failures and not rendered:
        raise UserError(f"none of the {len(failures)} images could be drawn; first: "
                        f"{failures[0]}")
    return rendered


def render_results_file(gt_json: PathLike, results_json: PathLike, image_root: PathLike,
                        output_dir: PathLike, score_thresh: float = 0.5,
                        max_images: int | None = None, progress: bool = True,
                        file_names: Sequence[str] = ()) -> list[RenderedImage]:
    """One comparison PNG per ground-truth image (the first ``max_images`` by id, or the
    images named in ``file_names``).

    Scores are those of :func:`evaluate_coco_results` (what ``tools/eval_nuclei.py``
    reports per image), over the detections with ``score >= score_thresh``, which are also
    the ones drawn.
    """
    coco_gt = load_coco_ground_truth(gt_json)
    results = load_coco_results(results_json)
    image_ids = sorted(coco_gt.getImgIds())
    if file_names:
        by_name = {Path(coco_gt.imgs[i]["file_name"]).name: i for i in image_ids}
        unknown = sorted(set(file_names) - set(by_name))
        if unknown:
            raise UserError(f"{gt_json}: has no image named {', '.join(unknown)}")
        image_ids = sorted(by_name[name] for name in file_names)
    image_ids = image_ids[:max_images]
    evaluation = evaluate_coco_results(coco_gt, results, score_thresh=score_thresh,
                                       image_ids=image_ids, results_name=str(results_json))
    metrics_by_id = {entry["image_id"]: entry for entry in evaluation["per_image"]}
    detections = defaultdict(list)
    for result in sorted(results, key=lambda r: -r["score"]):
        if result["score"] >= score_thresh:
            detections[result["image_id"]].append(result)
    image_root = Path(image_root)

    def render(image_id: int, path: Path) -> RenderedImage:
        info = coco_gt.imgs[image_id]
        image = read_image_rgb(image_root / info["file_name"])
        if image.shape[:2] != (info["height"], info["width"]):
            raise UnreadableImageError(
                image_root / info["file_name"], f"is {image.shape[1]}x{image.shape[0]} "
                f"(w x h) but {gt_json} says {info['width']}x{info['height']}")
        gt = [coco_gt.annToRLE(a) for a in coco_gt.imgToAnns[image_id] if not a.get("iscrowd")]
        found = detections[image_id]
        metrics = metrics_by_id[image_id]
        title = format_scores_title(info["file_name"], metrics, score_thresh)
        save_side_by_side(image, gt, [r["segmentation"] for r in found],
                          [r["score"] for r in found], title, path)
        return RenderedImage(info["file_name"], path, metrics, title)

    names = output_names([coco_gt.imgs[i]["file_name"] for i in image_ids], image_ids)
    return render_each(list(zip(image_ids, names)), Path(output_dir), render, "visualize",
                        progress)
