"""Instance prediction (Mask R-CNN++ and the baseline) on images of any size.

:class:`InstancePredictor` runs a network callable on overlapping tiles and merges the
tiles' instances across seams (:mod:`.tiling`). Results keep every mask cropped to its box:
the label image is painted from the crops and COCO RLEs are encoded from them, so memory
and time follow the total mask area, not (instances x image size).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.structures import Instances
from tqdm import tqdm

from .. import compat
from ..data.coco import compressed_rle, rle_as_text
from ..data.image_io import Intensity, array_to_rgb8, to_format
from .tiling import Detection, check_tiling, merge_tiles, tile_detections, tile_windows

__all__ = ["InstanceModelFn", "InstanceResult", "InstancePredictor", "DetectronModelRunner",
           "PastedMasks", "crop_rle"]

InstanceModelFn = Callable[[np.ndarray], Instances]


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
    """The instances found in one image, highest score first.

    ``crops[k]`` is instance k's mask cropped to its box at (``tops[k]``, ``lefts[k]``).
    ``boxes`` are XYXY; ``classes`` the model's contiguous class indices; ``rles`` compressed
    COCO RLEs (``counts`` as text, ready for JSON); ``label_image`` (H, W) has 0 for
    background and k for the k-th instance (uint16, or uint32 beyond 65,535 instances).
    """

    height: int
    width: int
    tops: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lefts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    crops: list[np.ndarray] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def from_detections(cls, detections: Sequence[Detection], height: int, width: int
                        ) -> InstanceResult:
        ordered = sorted(detections, key=lambda d: -d.score)
        return cls(height, width, np.array([d.top for d in ordered], np.int64),
                   np.array([d.left for d in ordered], np.int64),
                   [d.mask for d in ordered], np.array([d.score for d in ordered], float),
                   np.array([d.category for d in ordered], np.int64))

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

    @cached_property
    def label_image(self) -> np.ndarray:
        """Where instances overlap, the higher score (then the earlier) wins."""
        dtype = np.uint16 if len(self) <= np.iinfo(np.uint16).max else np.uint32
        labels = np.zeros((self.height, self.width), dtype)
        # Painted from the lowest score up, later instances before earlier ones at equal
        # scores, so the winner is painted last.
        for index in np.lexsort((-np.arange(len(self)), self.scores)):
            top, left, crop = self.tops[index], self.lefts[index], self.crops[index]
            window = labels[top:top + crop.shape[0], left:left + crop.shape[1]]
            window[crop] = index + 1
        return labels

    def masks(self) -> np.ndarray:
        """Boolean full-size masks (N, H, W): N x H x W bytes, for small images only."""
        masks = np.zeros((len(self), self.height, self.width), bool)
        for index, (top, left, crop) in enumerate(zip(self.tops, self.lefts, self.crops)):
            masks[index, top:top + crop.shape[0], left:left + crop.shape[1]] = crop
        return masks

    def coco_results(self, image_id: int, category_ids: Sequence[int]) -> list[dict]:
        """Standard COCO results entries; ``category_ids[k]`` is the id of class index k."""
        boxes = self.boxes
        return [{"image_id": image_id, "category_id": int(category_ids[int(category)]),
                 "segmentation": rle, "score": float(score),
                 "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                          float(box[3] - box[1])]}
                for rle, score, category, box in zip(self.rles, self.scores, self.classes,
                                                     boxes)]


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


class DetectronModelRunner:
    """The eager network callable of a Detectron2 detector: an 8-bit RGB tile (h, w, 3)
    in, ``Instances`` of that tile out (on the CPU), with ``DefaultPredictor``'s
    pre-processing (channel order by ``cfg.INPUT.FORMAT``, the test resize) and
    ``detector_postprocess``'s box scaling; masks come as :class:`PastedMasks`."""

    def __init__(self, model: torch.nn.Module, cfg: CfgNode):
        self.model = model.eval()
        self.input_format = cfg.INPUT.FORMAT
        to_format(np.zeros((1, 1, 3), np.uint8), self.input_format)   # a supported format
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2,
                                           cfg.INPUT.MAX_SIZE_TEST)

    def __call__(self, tile_rgb: np.ndarray) -> Instances:
        image = to_format(tile_rgb, self.input_format)
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with torch.no_grad():
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


class InstancePredictor:
    """Instances of a whole image from a per-tile network callable, merged across seams.

    Args:
        model_fn: 8-bit RGB tile (h, w, 3) -> Detectron2 ``Instances`` of that tile
            (``pred_masks`` (N, h, w), ``scores``, ``pred_classes``, optional
            ``pred_boxes`` that bound each mask).
        tile_size: side of the square tiles; images not larger run in one call.
        tile_overlap: pixels neighbouring tiles share (larger than a nucleus); default a
            quarter of the tile.
        score_thresh: instances scoring less are dropped before merging.
        merge_iou: instances of two tiles are one nucleus above this seam IoU.
        intensity: how 16-bit / float arrays become 8-bit (default percentile 1..99).
        progress: show a bar over the tiles of images with several tiles.
    """

    kind = "instance"

    def __init__(self, model_fn: InstanceModelFn, tile_size: int = 512,
                 tile_overlap: Optional[int] = None, score_thresh: float = 0.5,
                 merge_iou: float = 0.5, intensity: Optional[Intensity] = None,
                 progress: bool = False):
        tile_overlap = tile_size // 4 if tile_overlap is None else tile_overlap
        check_tiling(tile_size, tile_overlap)
        self.model_fn = model_fn
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.score_thresh, self.merge_iou = score_thresh, merge_iou
        self.intensity = intensity or Intensity()
        self.progress = progress
        self.cfg: Optional[CfgNode] = None   # the config it was built from, if any

    @classmethod
    def from_config(cls, cfg: CfgNode, model_fn: InstanceModelFn, *,
                    tile_size: Optional[int] = None, **options) -> InstancePredictor:
        """Tiles default to ``cfg.INPUT.MIN_SIZE_TEST`` square (``MAX_SIZE_TEST`` where test
        resizing is off), the largest square the test resize never shrinks; the intensity
        rule is ``cfg.INPUT.INTENSITY``."""
        tile_size = tile_size or int(cfg.INPUT.MIN_SIZE_TEST or cfg.INPUT.MAX_SIZE_TEST)
        predictor = cls(model_fn, tile_size, intensity=Intensity.from_config(cfg), **options)
        predictor.cfg = cfg
        return predictor

    def prepare(self, image: np.ndarray, channel: Optional[int] = None) -> np.ndarray:
        """The 8-bit RGB image the tiles are cut from (:func:`array_to_rgb8`)."""
        return array_to_rgb8(image, self.intensity, channel)

    def predict_rgb(self, image_rgb: np.ndarray) -> InstanceResult:
        """:meth:`__call__` on an image already :meth:`prepare` d."""
        height, width = image_rgb.shape[:2]
        windows = tile_windows(height, width, self.tile_size, self.tile_overlap)
        detections: list[Detection] = []
        for index, window in enumerate(tqdm(windows, desc="tiles", unit="tile", leave=False,
                                            disable=not self.progress or len(windows) == 1)):
            tile = np.ascontiguousarray(
                image_rgb[window.top:window.bottom, window.left:window.right])
            detections += tile_detections(self.model_fn(tile), window, index,
                                          (height, width), self.score_thresh)
        merged = merge_tiles(detections, windows, (height, width), self.merge_iou)
        return InstanceResult.from_detections(merged, height, width)

    def __call__(self, image: np.ndarray, channel: Optional[int] = None) -> InstanceResult:
        """Instances of an (H, W) or (H, W, 1/3/4) uint8 / uint16 / float image."""
        return self.predict_rgb(self.prepare(image, channel))
