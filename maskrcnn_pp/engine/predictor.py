"""Predict nuclei on images of any size, and write overlays, label images and COCO results.

:class:`NucleiPredictor` runs a model on overlapping tiles when an image is larger than
the tile size (by default ``cfg.INPUT.MIN_SIZE_TEST``, the largest square the test resize
never shrinks, so small nuclei keep their pixels) and merges the tiles' instances into
one set for the whole image:

* An instance "touches a seam" when its mask reaches an edge of its tile that lies
  inside the image: it may be cut off there. Other instances are "whole".
* Instances from different tiles are the same nucleus when their masks agree where both
  tiles saw the image: the IoU of the two masks, counted only on pixels inside both
  tiles' windows, exceeds ``merge_iou``. Two instances of one tile are never merged (the
  model already separated them).
* Whole instances are taken first, highest score first; a later copy of one is dropped.
* Then the seam-touching pieces, highest score first: a piece that is the same nucleus as
  a whole instance is dropped; one that is the same nucleus as a kept piece is joined to
  it (mask union, highest score), so a nucleus larger than the overlap, which no tile sees
  whole, comes out as the union of its pieces; a piece that matches nothing is dropped
  when another tile saw its region away from that tile's own seams (that tile owns the
  nucleus; this removes slivers whose masks differ too much between tiles for the IoU
  test), and kept otherwise.

The model call is injectable: any callable that maps an RGB tile to Detectron2
``Instances`` (``pred_masks``, ``scores``, ``pred_classes``) at the tile's size works;
:meth:`NucleiPredictor.from_config` builds it from a config and weights.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances
from pycocotools import mask as mask_util
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..data.image_io import IMAGE_EXTENSIONS, UnreadableImageError, read_image_rgb
from ..evaluation.nuclei import load_coco_ground_truth
from ..evaluation.visualization import (
    draw_instance_masks,
)
from ..utils.errors import UserError
from ..utils.io import atomic_write_bytes, atomic_write_json
from .checkpoint import MissingCheckpointError, SafeCheckpointer

__all__ = [
    "Window", "check_tiling", "tile_windows", "ImagePrediction", "NucleiPredictor",
    "DetectronModelRunner", "InputImage", "find_images", "split_config_overrides",
    "image_ids_from_coco",
    "PredictionRun", "predict_images", "label_image", "RESULTS_FILE", "IMAGES_INDEX_FILE",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ModelFn = Callable[[np.ndarray], Instances]
RESULTS_FILE = "coco_instances_results.json"
IMAGES_INDEX_FILE = "images.json"
OVERLAY_DIR = "overlays"
LABEL_DIR = "labels"


# --------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class Window:
    """A tile's rows ``top:bottom`` and columns ``left:right`` in the image."""

    top: int
    left: int
    bottom: int
    right: int


def _tile_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    if length <= tile_size:
        return [0]
    return [*range(0, length - tile_size, tile_size - overlap), length - tile_size]


def check_tiling(tile_size: int, overlap: int) -> None:
    """:class:`UserError` unless ``tile_size > 0`` and ``0 <= overlap < tile_size``."""
    if tile_size <= 0 or not 0 <= overlap < tile_size:
        raise UserError(f"tile size must be > 0 and tile overlap in [0, tile size), got "
                        f"tile size {tile_size}, overlap {overlap}")


def tile_windows(height: int, width: int, tile_size: int, overlap: int) -> list[Window]:
    """Tiles of ``tile_size`` covering the image, neighbours sharing at least ``overlap``
    pixels; one window (the image) when it is not larger than a tile."""
    check_tiling(tile_size, overlap)
    return [Window(top, left, min(top + tile_size, height), min(left + tile_size, width))
            for top in _tile_starts(height, tile_size, overlap)
            for left in _tile_starts(width, tile_size, overlap)]


@dataclass
class _Detection:
    """One instance as a mask cropped to its box, placed at (top, left) in the image."""

    top: int
    left: int
    mask: np.ndarray
    score: float
    category: int
    tiles: list[int]
    windows: list[Window]
    touches_seam: bool

    @property
    def bottom(self) -> int:
        return self.top + self.mask.shape[0]

    @property
    def right(self) -> int:
        return self.left + self.mask.shape[1]

    def pixels_inside(self, windows: Sequence[Window]) -> int:
        """Mask pixels that lie in any of ``windows``."""
        cover = np.zeros(self.mask.shape, bool)
        for w in windows:
            cover[max(w.top - self.top, 0):max(w.bottom - self.top, 0),
                  max(w.left - self.left, 0):max(w.right - self.left, 0)] = True
        return int(np.count_nonzero(self.mask & cover))

    def shared_pixels(self, other: _Detection) -> int:
        top, left = max(self.top, other.top), max(self.left, other.left)
        bottom, right = min(self.bottom, other.bottom), min(self.right, other.right)
        if top >= bottom or left >= right:
            return 0
        mine = self.mask[top - self.top:bottom - self.top, left - self.left:right - self.left]
        theirs = other.mask[top - other.top:bottom - other.top,
                            left - other.left:right - other.left]
        return int(np.count_nonzero(mine & theirs))

    def absorb(self, piece: _Detection) -> None:
        """Become the union of both masks (a nucleus cut by a seam), keeping the best score."""
        top, left = min(self.top, piece.top), min(self.left, piece.left)
        bottom, right = max(self.bottom, piece.bottom), max(self.right, piece.right)
        mask = np.zeros((bottom - top, right - left), bool)
        for part in (self, piece):
            mask[part.top - top:part.bottom - top, part.left - left:part.right - left] |= part.mask
        self.top, self.left, self.mask = top, left, mask
        self.score = max(self.score, piece.score)
        self.tiles += piece.tiles
        self.windows += piece.windows


def _seam_iou(piece: _Detection, kept: _Detection) -> float:
    """IoU of two masks counted only where both were seen (inside both tiles' windows)."""
    shared = piece.shared_pixels(kept)
    if not shared:
        return 0.0
    union = piece.pixels_inside(kept.windows) + kept.pixels_inside(piece.windows) - shared
    return shared / union


def _tile_detections(instances: Instances, window: Window, tile_index: int,
                     image_size: tuple[int, int], score_thresh: float) -> list[_Detection]:
    tile_size = (window.bottom - window.top, window.right - window.left)
    masks = np.asarray(instances.pred_masks.cpu().numpy() if torch.is_tensor(
        instances.pred_masks) else instances.pred_masks, bool)
    if len(masks) and masks.shape[1:] != tile_size:
        raise ValueError(f"the model returned masks of size {masks.shape[1:]} for a tile of "
                         f"size {tile_size}")
    scores = np.asarray(instances.scores.cpu() if torch.is_tensor(instances.scores)
                        else instances.scores, float)
    classes = np.asarray(instances.pred_classes.cpu() if torch.is_tensor(instances.pred_classes)
                         else instances.pred_classes, int)
    # A tile edge is a seam unless it is the image's own edge.
    inner = (window.top > 0, window.bottom < image_size[0],
             window.left > 0, window.right < image_size[1])
    detections = []
    for mask, score, category in zip(masks, scores, classes):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if score < score_thresh or not len(rows):
            continue
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        at_edge = (top == 0, bottom == tile_size[0], left == 0, right == tile_size[1])
        detections.append(_Detection(
            top=window.top + int(top), left=window.left + int(left),
            mask=mask[top:bottom, left:right].copy(), score=float(score),
            category=int(category), tiles=[tile_index], windows=[window],
            touches_seam=any(a and b for a, b in zip(at_edge, inner))))
    return detections


def _seen_away_from_seams(piece: _Detection, window: Window, image_size: tuple[int, int]
                          ) -> bool:
    """Whether ``window`` holds the piece without the piece touching that tile's seams."""
    margin_top, margin_left = int(window.top > 0), int(window.left > 0)
    margin_bottom = int(window.bottom < image_size[0])
    margin_right = int(window.right < image_size[1])
    return (window.top + margin_top <= piece.top
            and piece.bottom <= window.bottom - margin_bottom
            and window.left + margin_left <= piece.left
            and piece.right <= window.right - margin_right)


def _merge_tiles(detections: list[_Detection], windows: Sequence[Window],
                 image_size: tuple[int, int], merge_iou: float) -> list[_Detection]:
    """One detection per nucleus across tiles (see the module docstring)."""
    kept: list[_Detection] = []
    boxes = np.zeros((len(detections), 4), np.int64)   # top, left, bottom, right of kept
    for piece in sorted(detections, key=lambda d: (d.touches_seam, -d.score)):
        near = [kept[i] for i in np.flatnonzero(
            (boxes[:len(kept), 0] < piece.bottom) & (boxes[:len(kept), 2] > piece.top)
            & (boxes[:len(kept), 1] < piece.right) & (boxes[:len(kept), 3] > piece.left))
            if piece.tiles[0] not in kept[i].tiles]
        ious = [_seam_iou(piece, other) for other in near]
        if ious and max(ious) > merge_iou:
            best = near[int(np.argmax(ious))]
            if piece.touches_seam and best.touches_seam:
                best.absorb(piece)
                boxes[kept.index(best)] = best.top, best.left, best.bottom, best.right
        elif not piece.touches_seam or not any(
                _seen_away_from_seams(piece, window, image_size)
                for index, window in enumerate(windows) if index != piece.tiles[0]):
            kept.append(piece)
            boxes[len(kept) - 1] = piece.top, piece.left, piece.bottom, piece.right
    return kept


# --------------------------------------------------------------------------- predictions


@dataclass
class ImagePrediction:
    """The nuclei found in one image, highest score first.

    ``rles`` are compressed COCO RLEs (``counts`` as text, ready for JSON); ``classes``
    are the model's contiguous class indices.
    """

    height: int
    width: int
    rles: list[dict] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.rles)

    def masks(self) -> np.ndarray:
        """Boolean masks (N, H, W)."""
        if not self.rles:
            return np.zeros((0, self.height, self.width), bool)
        return mask_util.decode(self.rles).transpose(2, 0, 1).astype(bool)

    def coco_results(self, image_id: int, category_ids: Sequence[int]) -> list[dict]:
        """Standard COCO results entries; ``category_ids[k]`` is the id of class index k."""
        return [{"image_id": image_id, "category_id": int(category_ids[int(category)]),
                 "segmentation": rle, "score": float(score),
                 "bbox": [float(v) for v in mask_util.toBbox(rle)]}
                for rle, score, category in zip(self.rles, self.scores, self.classes)]


def label_image(prediction: ImagePrediction) -> np.ndarray:
    """uint16 (H, W): 0 is background and k the k-th instance of ``prediction`` (its k-th
    results entry); where instances overlap, the higher score (then the earlier) wins."""
    if len(prediction) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(prediction)} instances do not fit a uint16 label image")
    labels = np.zeros((prediction.height, prediction.width), np.uint16)
    # Painted from the lowest score up, later instances before earlier ones at equal scores.
    for index in np.lexsort((-np.arange(len(prediction)), prediction.scores)):
        labels[mask_util.decode(prediction.rles[index]).astype(bool)] = index + 1
    return labels


def _to_prediction(detections: list[_Detection], height: int, width: int) -> ImagePrediction:
    detections = sorted(detections, key=lambda d: -d.score)
    canvas = np.zeros((height, width), np.uint8, order="F")
    rles = []
    for d in detections:
        canvas[d.top:d.bottom, d.left:d.right] = d.mask
        rle = mask_util.encode(canvas)
        rle["counts"] = rle["counts"].decode("ascii")
        rles.append(rle)
        canvas[d.top:d.bottom, d.left:d.right] = 0
    return ImagePrediction(height, width, rles, np.array([d.score for d in detections]),
                           np.array([d.category for d in detections], np.int64))


class DetectronModelRunner:
    """Detectron2's ``DefaultPredictor`` pre-processing for an RGB image: channel order by
    ``cfg.INPUT.FORMAT`` (RGB, BGR or single-channel L) and the test resize; returns the
    model's ``Instances`` at the input's size, on the CPU."""

    def __init__(self, model: torch.nn.Module, cfg: CfgNode):
        self.model = model.eval()
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR", "L"):
            raise UserError(f"INPUT.FORMAT {self.input_format!r} cannot be predicted on; "
                            "use RGB, BGR or L")
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2,
                                           cfg.INPUT.MAX_SIZE_TEST)

    def __call__(self, image_rgb: np.ndarray) -> Instances:
        if self.input_format == "BGR":
            image = image_rgb[:, :, ::-1]
        elif self.input_format == "L":
            image = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
        else:
            image = image_rgb
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        with torch.no_grad():
            outputs = self.model([{"image": tensor, "height": height, "width": width}])
        return outputs[0]["instances"].to("cpu")


class NucleiPredictor:
    """Instances of a whole RGB image from a per-tile model call, merged across seams.

    Args:
        model_fn: RGB tile (h, w, 3) uint8 -> ``Instances`` of that size.
        tile_size: side of the square tiles; images not larger run in one call.
        tile_overlap: pixels neighbouring tiles share; make it larger than a nucleus.
        score_thresh: instances scoring less are dropped before merging.
        merge_iou: instances of two tiles are one nucleus above this seam IoU.
    """

    def __init__(self, model_fn: ModelFn, tile_size: int, tile_overlap: int,
                 score_thresh: float = 0.5, merge_iou: float = 0.5):
        check_tiling(tile_size, tile_overlap)
        self.model_fn = model_fn
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.score_thresh, self.merge_iou = score_thresh, merge_iou

    @classmethod
    def from_config(cls, cfg: CfgNode, weights: str, *, allow_unsafe_pickle: bool = False,
                    score_thresh: float = 0.5, tile_size: int | None = None,
                    tile_overlap: int | None = None) -> NucleiPredictor:
        """Build the model of ``cfg`` with ``weights`` (weights-only loading unless
        ``allow_unsafe_pickle``). Tiles default to ``cfg.INPUT.MIN_SIZE_TEST`` square (or
        ``MAX_SIZE_TEST`` where test resizing is off), overlapping by a quarter of that."""
        if not weights:
            raise UserError("no weights given: pass the .pth file written by training")
        if "://" not in weights and not os.path.isfile(weights):
            raise MissingCheckpointError(f"checkpoint or weights file {weights} does not exist")
        if tile_size is None:
            tile_size = int(cfg.INPUT.MIN_SIZE_TEST or cfg.INPUT.MAX_SIZE_TEST)
        tile_overlap = tile_size // 4 if tile_overlap is None else tile_overlap
        check_tiling(tile_size, tile_overlap)       # before the slow model build
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
        cfg.MODEL.WEIGHTS = weights
        model = build_model(cfg)
        SafeCheckpointer(model, allow_unsafe_pickle=allow_unsafe_pickle).load(
            weights, checkpointables=[])
        return cls(DetectronModelRunner(model, cfg), tile_size, tile_overlap,
                   score_thresh=score_thresh)

    def __call__(self, image_rgb: np.ndarray) -> ImagePrediction:
        height, width = image_rgb.shape[:2]
        detections: list[_Detection] = []
        windows = tile_windows(height, width, self.tile_size, self.tile_overlap)
        for index, window in enumerate(windows):
            tile = np.ascontiguousarray(
                image_rgb[window.top:window.bottom, window.left:window.right])
            detections += _tile_detections(self.model_fn(tile), window, index,
                                           (height, width), self.score_thresh)
        merged = _merge_tiles(detections, windows, (height, width), self.merge_iou)
        return _to_prediction(merged, height, width)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    """An image to predict on; ``name`` is its path relative to the folder it was found in
    (its file name when given directly), and names the output files."""

    path: Path
    name: str


def find_images(inputs: Sequence[PathLike]) -> list[InputImage]:
    """Files as given, and every PNG/JPEG/TIFF under each folder (recursively, sorted).

    Raises :class:`UserError` for a missing path, a folder without images, or two inputs
    whose outputs would have the same name.
    """
    found: list[InputImage] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not files:
                raise UserError(f"input folder {item} holds no {'/'.join(IMAGE_EXTENSIONS)} "
                                "images")
            found += [InputImage(p, p.relative_to(item).as_posix()) for p in files]
        elif item.is_file():
            found.append(InputImage(item, item.name))
        else:
            raise UserError(f"input {item} does not exist")
    seen: dict[str, Path] = {}
    for image in found:
        stem = str(Path(image.name).with_suffix(""))
        if stem in seen:
            raise UserError(f"inputs {seen[stem]} and {image.path} would write the same "
                            f"output files ({stem}.png); predict them separately")
        seen[stem] = image.path
    return found


def split_config_overrides(tokens: Sequence[str], cfg: CfgNode) -> tuple[list[str], list[str]]:
    """Split ``INPUT... [KEY VALUE...]``: overrides start at the first token that is a key
    of ``cfg`` (like ``MODEL.DEVICE``) and not an existing path."""
    for index, token in enumerate(tokens):
        if "." in token and not os.path.exists(token) and _is_config_key(cfg, token):
            return list(tokens[:index]), list(tokens[index:])
    return list(tokens), []


def _is_config_key(cfg: CfgNode, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def image_ids_from_coco(gt_json: PathLike, images: Sequence[InputImage]) -> dict[str, int]:
    """The ground truth's id of each input (matched by file name), so that results can be
    scored against it with ``tools/eval_nuclei.py``."""
    coco = load_coco_ground_truth(gt_json)
    by_name: dict[str, int] = {}
    for image in coco.dataset["images"]:
        name = os.path.basename(image.get("file_name", ""))
        if name in by_name:
            raise UserError(f"{gt_json}: two images are named {name}; cannot match inputs")
        by_name[name] = image["id"]
    ids = {}
    for image in images:
        name = os.path.basename(image.name)
        if name not in by_name:
            raise UserError(f"{gt_json}: has no image named {name} (input {image.path})")
        ids[image.name] = by_name[name]
    return ids


# --------------------------------------------------------------------------- writing


@dataclass
class PredictionRun:
    """What :func:`predict_images` wrote and what it skipped."""

    output_dir: Path
    images: list[dict] = field(default_factory=list)       # the images index entries
    num_instances: int = 0
    skipped: list[str] = field(default_factory=list)        # "path: problem"


def _class_names(metadata: Any) -> list[str]:
    names = metadata.get("thing_classes", None) if metadata is not None else None
    return list(names or ["nucleus"])


def _category_ids(metadata: Any) -> list[int]:
    """Data set category id of each contiguous class (COCO's 1..K when none is recorded)."""
    count = len(_class_names(metadata))
    mapping = (metadata.get("thing_dataset_id_to_contiguous_id", None)
               if metadata is not None else None)
    if mapping:
        inverse = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
        return [inverse[k] for k in range(count)]
    return list(range(1, count + 1))


def _encode_png(image: np.ndarray, path: Path) -> bytes:
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    return png.tobytes()


def predict_images(predictor: Callable[[np.ndarray], ImagePrediction],
                   images: Sequence[InputImage], output_dir: PathLike, metadata: Any = None,
                   image_ids: Mapping[str, int] | None = None, progress: bool = True
                   ) -> PredictionRun:
    """Predict every image and write, under ``output_dir``:

    * ``overlays/<name>.png``: the image with the instance masks (Detectron2 Visualizer);
    * ``labels/<name>.png``: a uint16 instance label image (see :func:`label_image`);
    * ``coco_instances_results.json``: every detection as a COCO results entry;
    * ``images.json``: a COCO ``images`` list (id, file name, size) and the categories,
      which maps the results' ``image_id`` to the files.

    Ids are ``image_ids[name]`` or 1, 2, ... in input order. An unreadable image is
    skipped with a warning; if none can be read, :class:`UserError` is raised and the
    JSON files are not written. Every file is written atomically.
    """
    output_dir = Path(output_dir)
    category_ids, class_names = _category_ids(metadata), _class_names(metadata)
    run = PredictionRun(output_dir)
    results: list[dict] = []
    with logging_redirect_tqdm():
        for number, item in enumerate(tqdm(images, desc="predict", unit="image",
                                           disable=not progress), start=1):
            try:
                image = read_image_rgb(item.path)
            except UnreadableImageError as err:
                run.skipped.append(str(err))
                logger.warning("skipped %s", err)
                continue
            prediction = predictor(image)
            image_id = image_ids[item.name] if image_ids is not None else number
            stem = str(Path(item.name).with_suffix(""))
            overlay = draw_instance_masks(
                image, prediction.rles,
                [f"{class_names[c]} {s:.0%}" for c, s in zip(prediction.classes,
                                                               prediction.scores)])
            overlay_path = output_dir / OVERLAY_DIR / f"{stem}.png"
            atomic_write_bytes(overlay_path, _encode_png(overlay[:, :, ::-1], overlay_path))
            label_path = output_dir / LABEL_DIR / f"{stem}.png"
            atomic_write_bytes(label_path, _encode_png(label_image(prediction), label_path))
            results += prediction.coco_results(image_id, category_ids)
            run.num_instances += len(prediction)
            run.images.append({"id": image_id, "file_name": item.name,
                               "path": str(item.path), "height": prediction.height,
                               "width": prediction.width})
    if not run.images:
        raise UserError(f"none of the {len(images)} input images could be read; first: "
                        f"{run.skipped[0] if run.skipped else 'no inputs'}")
    atomic_write_json(output_dir / RESULTS_FILE, results)
    categories = [{"id": i, "name": n} for i, n in zip(category_ids, class_names)]
    atomic_write_json(output_dir / IMAGES_INDEX_FILE,
                      {"images": run.images, "categories": categories}, indent=1)
    return run
