"""Instance prediction (Mask R-CNN++ and the baseline) on images of any size.

:class:`InstancePredictor` runs a network callable on overlapping tiles, merges the tiles'
instances across seams (:mod:`.tiling`) and resolves their overlaps once
(:func:`resolve_overlaps`): every pixel belongs to at most one instance, so the label image,
the RLEs, boxes, scores, COCO results and counts all describe the same instances. Results
keep every mask cropped to its box, so memory and time follow the total mask area, not
(instances x image size).

Scale: the network sees every tile at the pixel scale the detector was trained at
(:func:`detector_scale`), whatever the tile size, and its per-image limits (RPN proposals,
``TEST.DETECTIONS_PER_IMAGE``) grow with a tile's area (:class:`DetectronModelRunner`), so
the tile size changes the speed, not the instances.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.structures import Instances

from .. import compat
from ..data.coco import compressed_rle, rle_as_text
from ..data.image_io import Intensity, array_to_rgb8, to_format
from ..utils.progress import ProgressBar
from .outputs import WriteOptions, write_labels_2d
from .predictor import (
    DegenerateImageError,
    Predictor,
    Prepared,
    check_unit_interval,
    degenerate_image_problem,
)
from .tiling import Detection, check_tiling, merge_tiles, tile_detections, tile_windows

__all__ = ["InstanceModelFn", "InstanceResult", "InstancePredictor", "DetectronModelRunner",
           "PastedMasks", "crop_rle", "resolve_overlaps", "detector_scale",
           "default_tile_size", "limits_tile_size", "COCO_RESULTS_FILE",
           "MIN_VISIBLE_FRACTION"]

logger = logging.getLogger(__name__)

InstanceModelFn = Callable[[np.ndarray], Instances]

COCO_RESULTS_FILE = "coco_instances_results.json"
# An instance that keeps less than this fraction of its mask where higher-scoring instances
# overlap it is dropped (mostly a duplicate or a fragment of one of them).
MIN_VISIBLE_FRACTION = 0.5
# Default tiles span this many image pixels (the side the detector's limits are configured
# for, kept inside this range): large enough that per-tile overheads and seams cost little.
DEFAULT_TILE_RANGE = (512, 1024)
# Test-time limits of a detector that predicts at native size (INPUT.MIN_SIZE_TEST 0) are
# taken to be meant for images of this side.
NATIVE_LIMITS_SIDE = 512
# The largest stride of a detector whose config names none (ResNet res5).
DEFAULT_MAX_STRIDE = 32


def crop_rle(top: int, left: int, mask: np.ndarray, height: int, width: int) -> dict:
    """Compressed COCO RLE (``counts`` as text) of a mask cropped to its box, placed at
    (top, left) in a ``height`` x ``width`` image, without a full-size canvas."""
    rows_in_crop, cols_in_crop = mask.shape
    padded = np.zeros((cols_in_crop, rows_in_crop + 2), bool)   # column-major, zero-framed
    padded[:, 1:-1] = mask.T
    cols, rows = np.nonzero(padded[:, 1:] != padded[:, :-1])
    edges = (left + cols).astype(np.int64) * height + top + rows  # run starts and ends
    starts, ends = edges[0::2], edges[1::2]
    joined = starts[1:] == ends[:-1]            # a run that goes on in the next column
    starts = np.concatenate([starts[:1], starts[1:][~joined]])
    ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
    bounds = np.stack([starts, ends], axis=1).ravel()
    counts = np.diff(np.concatenate([[0], bounds, [height * width]]))
    if counts[-1] == 0:     # a mask that ends at the last pixel has no trailing background
        counts = counts[:-1]
    return rle_as_text(compressed_rle({"counts": counts.tolist(), "size": [height, width]},
                                      height, width))


@dataclass
class InstanceResult:
    """The instances found in one image, highest score first; no two share a pixel.

    ``crops[k]`` is instance k's mask cropped to its box at (``tops[k]``, ``lefts[k]``).
    ``boxes`` are XYXY; ``classes`` the model's contiguous class indices; ``rles`` compressed
    COCO RLEs (``counts`` as text, ready for JSON); ``label_image`` (H, W) has 0 for
    background and k for the k-th instance (uint16, or uint32 beyond 65,535 instances).
    :func:`resolve_overlaps` makes results from overlapping detections; built directly, the
    crops must not overlap.
    """

    height: int
    width: int
    tops: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lefts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    crops: list[np.ndarray] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    label_image: Optional[np.ndarray] = field(default=None, repr=False)

    def __post_init__(self):
        if self.label_image is None:
            self.label_image = np.zeros((self.height, self.width), _label_dtype(len(self)))
            for index, (top, left, crop) in enumerate(zip(self.tops, self.lefts, self.crops)):
                self.label_image[top:top + crop.shape[0], left:left + crop.shape[1]][crop] = \
                    index + 1

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float XYXY boxes of the masks."""
        sizes = np.array([c.shape for c in self.crops], np.int64).reshape(-1, 2)
        return np.stack([self.lefts, self.tops, self.lefts + sizes[:, 1],
                         self.tops + sizes[:, 0]], axis=1).astype(float)

    @cached_property
    def rles(self) -> list[dict]:
        return [crop_rle(int(t), int(left), crop, self.height, self.width)
                for t, left, crop in zip(self.tops, self.lefts, self.crops)]

    def masks(self) -> np.ndarray:
        """Boolean full-size masks (N, H, W): N x H x W bytes, for small images only."""
        masks = np.zeros((len(self), self.height, self.width), bool)
        for index, (top, left, crop) in enumerate(zip(self.tops, self.lefts, self.crops)):
            masks[index, top:top + crop.shape[0], left:left + crop.shape[1]] = crop
        return masks

    def coco_results(self, image_id: Any, category_ids: Sequence[int]) -> list[dict]:
        """Standard COCO results entries; ``category_ids[k]`` is the id of class index k."""
        boxes = self.boxes
        return [{"image_id": image_id, "category_id": int(category_ids[int(category)]),
                 "segmentation": rle, "score": float(score),
                 "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                          float(box[3] - box[1])]}
                for rle, score, category, box in zip(self.rles, self.scores, self.classes,
                                                     boxes)]


def _label_dtype(count: int) -> type:
    return np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32


def resolve_overlaps(detections: Sequence[Detection], height: int, width: int,
                     min_visible_fraction: float = MIN_VISIBLE_FRACTION) -> InstanceResult:
    """One instance per pixel: the highest score wins it (at equal scores, the earlier
    detection). Going from the highest score down, each detection keeps the pixels of its
    mask that no kept instance holds; it is dropped when that is nothing or less than
    ``min_visible_fraction`` of its mask. The label image is painted in the same pass, so it
    holds exactly the kept instances, numbered 1..N by decreasing score."""
    ordered = sorted(detections, key=lambda d: -d.score)
    labels = np.zeros((height, width), _label_dtype(len(ordered)))
    tops, lefts, crops, kept = [], [], [], []
    for detection in ordered:
        window = labels[detection.top:detection.bottom, detection.left:detection.right]
        under = window[detection.mask]            # the ids already under the mask
        area, taken = under.size, np.count_nonzero(under)
        visible_area = area - taken
        if not visible_area or visible_area < min_visible_fraction * area:
            continue
        visible = detection.mask & (window == 0) if taken else detection.mask
        window[visible] = len(kept) + 1
        top, left = detection.top, detection.left
        if visible_area < area:     # crop to what is left
            rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
            visible = visible[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            top, left = top + int(rows[0]), left + int(cols[0])
        tops.append(top)
        lefts.append(left)
        crops.append(visible)
        kept.append(detection)
    return InstanceResult(height, width, np.array(tops, np.int64), np.array(lefts, np.int64),
                          crops, np.array([d.score for d in kept], float),
                          np.array([d.category for d in kept], np.int64),
                          labels.astype(_label_dtype(len(kept)), copy=False))


class PastedMasks:
    """A detector's (N, M, M) mask probabilities as (N, H, W) boolean masks, pasted into
    their boxes only where read (``masks[k, rows, cols]``).

    Each read runs what Detectron2's ``paste_masks_in_image`` runs for one box on the CPU
    (Detectron2's pasting over the box's region, then ``>= threshold``), so the masks are the
    same, but a tile's masks cost their boxes' area instead of N full tiles.
    """

    def __init__(self, probabilities: torch.Tensor, boxes: torch.Tensor, height: int,
                 width: int, threshold: float = 0.5):
        self.probabilities, self.boxes = probabilities, boxes
        self.shape = (len(probabilities), height, width)
        self.threshold = threshold

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: tuple) -> np.ndarray:
        k, rows, cols = index
        rows = range(*rows.indices(self.shape[1]))
        cols = range(*cols.indices(self.shape[2]))
        out = np.zeros((len(rows), len(cols)), bool)
        pasted, (box_rows, box_cols) = compat.paste_mask_in_box(
            self.probabilities[k:k + 1, None], self.boxes[k:k + 1], *self.shape[1:])
        top, bottom = max(rows.start, box_rows.start), min(rows.stop, box_rows.stop)
        left, right = max(cols.start, box_cols.start), min(cols.stop, box_cols.stop)
        if top < bottom and left < right:
            out[top - rows.start:bottom - rows.start, left - cols.start:right - cols.start] = (
                pasted[0, top - box_rows.start:bottom - box_rows.start,
                       left - box_cols.start:right - box_cols.start] >= self.threshold).numpy()
        return out


def detector_scale(cfg: CfgNode) -> float:
    """Network pixels per image pixel at which a detector of ``cfg`` was trained, so that
    prediction shows it objects at that size whatever the tile size.

    1 when it was trained or is tested at native size (``INPUT.MIN_SIZE_TRAIN`` 0 or
    ``MIN_SIZE_TEST`` 0); with absolute training crops, the test size over the crop side
    (each crop of ``CROP.SIZE`` was resized to about ``MIN_SIZE_TEST``); otherwise 1 (the
    training images are taken to be about ``MIN_SIZE_TEST`` pixels). To predict at another
    scale, override ``INPUT.MIN_SIZE_TEST``.
    """
    node = cfg.INPUT
    if not node.MIN_SIZE_TEST or not any(node.MIN_SIZE_TRAIN):
        return 1.0
    if node.CROP.ENABLED and node.CROP.TYPE == "absolute":
        return node.MIN_SIZE_TEST / min(node.CROP.SIZE)
    return 1.0


def _limits_side(cfg: CfgNode) -> int:
    """Side (network pixels) of the square image the detector's test-time limits are meant
    for: ``INPUT.MIN_SIZE_TEST``, or :data:`NATIVE_LIMITS_SIDE` at native size."""
    return int(cfg.INPUT.MIN_SIZE_TEST) or NATIVE_LIMITS_SIDE


def limits_tile_size(cfg: CfgNode) -> int:
    """:func:`_limits_side` in image pixels: the largest tile on which a detector with
    fixed limits (an exported graph) predicts like the eager model."""
    return max(1, round(_limits_side(cfg) / detector_scale(cfg)))


def default_tile_size(cfg: CfgNode) -> int:
    """The tile side (image pixels) used when none is given: the side the limits are meant
    for, within :data:`DEFAULT_TILE_RANGE`."""
    low, high = DEFAULT_TILE_RANGE
    return min(max(limits_tile_size(cfg), low), high)


def _min_tile_size(cfg: CfgNode) -> int:
    """The smallest tile (image pixels) that fills one cell of the detector's coarsest
    feature map (the largest stride of its ResNet outputs, ``res<k>``: 2^k)."""
    strides = [2 ** int(name[3:]) for name in cfg.MODEL.RESNETS.OUT_FEATURES
               if name.startswith("res") and name[3:].isdigit()]
    return math.ceil(max(strides, default=DEFAULT_MAX_STRIDE) / detector_scale(cfg))


class _TestLimits:
    """A Detectron2 detector's test-time limits per network input (RPN proposals kept
    before and after NMS, ``TEST.DETECTIONS_PER_IMAGE``), raised in proportion to an
    input's area beyond the area they are meant for, so that a large tile keeps per pixel
    what a small one keeps."""

    def __init__(self, rpn: Any, box_predictor: Any, area: int):
        self.rpn, self.box_predictor, self.area = rpn, box_predictor, area
        self.configured = (rpn.pre_nms_topk[False], rpn.post_nms_topk[False],
                           box_predictor.test_topk_per_image)

    @classmethod
    def of(cls, model: Any, area: int) -> Optional[_TestLimits]:
        """The limits of a Detectron2 R-CNN; None for a model without them (a graph)."""
        rpn = getattr(model, "proposal_generator", None)
        box_predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
        if not (isinstance(getattr(rpn, "pre_nms_topk", None), dict)
                and isinstance(getattr(rpn, "post_nms_topk", None), dict)
                and isinstance(getattr(box_predictor, "test_topk_per_image", None), int)):
            return None
        return cls(rpn, box_predictor, area)

    def _set(self, values: Sequence[int]) -> None:
        self.rpn.pre_nms_topk[False], self.rpn.post_nms_topk[False] = values[:2]
        self.box_predictor.test_topk_per_image = values[2]

    @contextlib.contextmanager
    def for_input(self, height: int, width: int):
        factor = max(1.0, height * width / self.area)
        self._set([math.ceil(v * factor) if v > 0 else v for v in self.configured])
        try:
            yield
        finally:
            self._set(self.configured)


class DetectronModelRunner:
    """The network callable of a Detectron2 detector: an 8-bit RGB tile (h, w, 3) in,
    ``Instances`` of that tile out (on the CPU). ``DefaultPredictor``'s pre-processing
    (channel order by ``cfg.INPUT.FORMAT``), except that the tile is resized by the
    detector's training scale (:func:`detector_scale`) instead of to a fixed size, and
    ``detector_postprocess``'s box scaling; masks come as :class:`PastedMasks`.

    For an eager model the test-time limits grow with the tile's area (``scales_limits``);
    an exported graph (:mod:`.export`) keeps those it was traced with.
    """

    def __init__(self, model: torch.nn.Module, cfg: CfgNode):
        self.model = model.eval()
        self.input_format = cfg.INPUT.FORMAT
        to_format(np.zeros((1, 1, 3), np.uint8), self.input_format)   # a supported format
        self.scale = detector_scale(cfg)
        self.limits = _TestLimits.of(model, _limits_side(cfg) ** 2)

    @property
    def scales_limits(self) -> bool:
        return self.limits is not None

    def network_image(self, tile_rgb: np.ndarray) -> np.ndarray:
        """The tile as the network sees it: ``INPUT.FORMAT`` channels, at the training
        scale (Detectron2's bilinear resize, its rounding)."""
        image = to_format(tile_rgb, self.input_format)
        if self.scale == 1:
            return image
        height, width = image.shape[:2]
        return T.ResizeTransform(height, width, max(1, int(height * self.scale + 0.5)),
                                 max(1, int(width * self.scale + 0.5))).apply_image(image)

    def __call__(self, tile_rgb: np.ndarray) -> Instances:
        height, width = tile_rgb.shape[:2]
        resized = self.network_image(tile_rgb)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        limits = (self.limits.for_input(*resized.shape[:2]) if self.limits
                  else contextlib.nullcontext())
        with torch.no_grad(), limits:
            raw = self.model.inference([{"image": tensor, "height": height, "width": width}],
                                       do_postprocess=False)[0].to("cpu")
        boxes = raw.pred_boxes.clone()
        boxes.scale(width / raw.image_size[1], height / raw.image_size[0])
        boxes.clip((height, width))
        keep = boxes.nonempty()
        out = Instances((height, width), pred_boxes=boxes[keep], scores=raw.scores[keep],
                        pred_classes=raw.pred_classes[keep])
        out.pred_masks = PastedMasks(raw.pred_masks[keep][:, 0], out.pred_boxes.tensor,
                                     height, width)
        return out


def _class_names(metadata: Any) -> list[str]:
    names = metadata.get("thing_classes", None) if metadata is not None else None
    return list(names or ["nucleus"])


def _category_ids(metadata: Any, count: int) -> list[int]:
    """Data set category id of each contiguous class (COCO's 1..K when none is recorded)."""
    mapping = (metadata.get("thing_dataset_id_to_contiguous_id", None)
               if metadata is not None else None)
    if mapping:
        inverse = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
        return [inverse[k] for k in range(count)]
    return list(range(1, count + 1))


class InstancePredictor(Predictor):
    """Instances of a whole image from a per-tile network callable, merged across seams,
    overlaps resolved (:func:`resolve_overlaps`).

    Args:
        model_fn: 8-bit RGB tile (h, w, 3) -> Detectron2 ``Instances`` of that tile
            (``pred_masks`` (N, h, w), ``scores``, ``pred_classes``, optional
            ``pred_boxes`` that bound each mask).
        tile_size: side of the square tiles (image pixels); images not larger run in one
            call, thin images in tiles as long as their area allows (:func:`.tile_shape`).
        tile_overlap: pixels neighbouring tiles share (larger than a nucleus); default a
            quarter of the tile.
        score_thresh: instances scoring less are dropped before merging.
        merge_iou: instances of two tiles are one nucleus above this seam IoU.
        intensity: how 16-bit / float arrays become 8-bit (default percentile 1..99).
        progress: show a bar over the tiles of images with several tiles.
        min_visible_fraction: an instance left with less of its mask where higher-scoring
            instances overlap it is dropped.
        min_tile_size: the smallest tile the network's strides allow.
    """

    kind = "instance"
    results_file = COCO_RESULTS_FILE

    def __init__(self, model_fn: InstanceModelFn, tile_size: int = DEFAULT_TILE_RANGE[0],
                 tile_overlap: Optional[int] = None, score_thresh: float = 0.5,
                 merge_iou: float = 0.5, intensity: Optional[Intensity] = None,
                 progress: bool = False, min_visible_fraction: float = MIN_VISIBLE_FRACTION,
                 min_tile_size: int = 1):
        super().__init__(intensity, progress)
        tile_overlap = tile_size // 4 if tile_overlap is None else tile_overlap
        check_tiling(tile_size, tile_overlap, min_tile_size)
        self.model_fn = model_fn
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.score_thresh = check_unit_interval(score_thresh, "score threshold")
        self.merge_iou = merge_iou
        self.min_visible_fraction = check_unit_interval(min_visible_fraction,
                                                        "minimum visible fraction")

    @classmethod
    def from_config(cls, cfg: CfgNode, model_fn: Optional[InstanceModelFn], *,
                    tile_size: Optional[int] = None, **options) -> InstancePredictor:
        """Tiles default to :func:`default_tile_size`; for a network callable whose limits
        do not grow with the tile (an exported graph), to the largest tile it predicts like
        the eager model, and a larger one is predicted with a warning. The intensity rule is
        ``cfg.INPUT.INTENSITY``."""
        fixed_limits = model_fn is not None and not getattr(model_fn, "scales_limits", True)
        exact = limits_tile_size(cfg)
        if tile_size is None:
            tile_size = exact if fixed_limits else default_tile_size(cfg)
        elif fixed_limits and tile_size > exact:
            logger.warning("tile size %d: an exported detector keeps the RPN proposals and "
                           "detections per tile that it was traced with, meant for tiles of "
                           "%d px; larger tiles may lose detections the eager model finds",
                           tile_size, exact)
        predictor = cls(model_fn, tile_size, intensity=Intensity.from_config(cfg),
                        min_tile_size=_min_tile_size(cfg), **options)
        predictor.cfg = cfg
        return predictor

    def prepare(self, image: np.ndarray, channel: Optional[int] = None) -> Prepared:
        """The 8-bit RGB image the tiles are cut from (:func:`array_to_rgb8`)."""
        rgb = array_to_rgb8(image, self.intensity, channel)
        problem = degenerate_image_problem(np.asarray(image), rgb)
        if problem:
            raise DegenerateImageError(problem)
        return Prepared(rgb)

    def _windows(self, prepared: Prepared) -> list:
        height, width = prepared.pixels.shape[:2]
        return tile_windows(height, width, self.tile_size, self.tile_overlap)

    def steps(self, prepared: Prepared) -> int:
        return len(self._windows(prepared))

    def run(self, prepared: Prepared) -> InstanceResult:
        image_rgb = prepared.pixels
        height, width = image_rgb.shape[:2]
        windows = self._windows(prepared)
        detections: list[Detection] = []
        bar = ProgressBar(windows, desc="tiles", unit="tile", leave=False,
                          disable=not self.progress or len(windows) == 1)
        for index, window in enumerate(bar):
            tile = np.ascontiguousarray(
                image_rgb[window.top:window.bottom, window.left:window.right])
            detections += tile_detections(self.model_fn(tile), window, index,
                                          (height, width), self.score_thresh)
        merged = merge_tiles(detections, windows, (height, width), self.merge_iou)
        return resolve_overlaps(merged, height, width, self.min_visible_fraction)

    def write(self, result: InstanceResult, prepared: Prepared, output_dir: Path, stem: str,
              image_id: Any, categories: Sequence[dict], options: WriteOptions
              ) -> tuple[dict, list[dict]]:
        write_labels_2d(output_dir, stem, result.label_image, prepared.pixels, options)
        return ({"height": result.height, "width": result.width},
                result.coco_results(image_id, [c["id"] for c in categories]))

    def categories(self, metadata: Any) -> list[dict]:
        names = _class_names(metadata)
        return [{"id": i, "name": n} for i, n in zip(_category_ids(metadata, len(names)),
                                                     names)]

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "score_thresh": self.score_thresh,
                "tile_size": self.tile_size, "tile_overlap": self.tile_overlap,
                "merge_iou": self.merge_iou, "min_visible_fraction": self.min_visible_fraction,
                "intensity": [self.intensity.mode, self.intensity.low, self.intensity.high]}
