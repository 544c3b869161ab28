"""Tiles of a large image and the exact merge of their instances across seams.

Instances are kept as masks cropped to their boxes, so every step costs the masks' area,
never the image's:

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
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from detectron2.structures import Instances

from ..utils.errors import UserError
from ..utils.tiles import tile_starts

__all__ = ["Window", "check_tiling", "tile_shape", "tile_windows", "Detection",
           "tile_detections", "merge_tiles"]

# Mask pixels may lie this far outside their predicted box (Detectron2 pastes masks by
# bilinear sampling, which reaches half a pixel beyond the box).
BOX_MARGIN = 2
# Side of the cells of the spatial index that finds the kept instances near a piece.
GRID_CELL = 64


@dataclass(frozen=True)
class Window:
    """A tile's rows ``top:bottom`` and columns ``left:right`` in the image."""

    top: int
    left: int
    bottom: int
    right: int


def check_tiling(tile_size: int, overlap: int, min_tile_size: int = 1) -> None:
    """:class:`UserError` unless ``tile_size >= min_tile_size`` (at least 1) and
    ``0 <= overlap < tile_size``."""
    if tile_size <= 0 or not 0 <= overlap < tile_size:
        raise UserError(f"tile size must be > 0 and tile overlap in [0, tile size), got "
                        f"tile size {tile_size}, overlap {overlap}")
    if tile_size < min_tile_size:
        raise UserError(f"tile size {tile_size} is below {min_tile_size}, the smallest tile "
                        "the network's strides allow (its coarsest feature map needs one "
                        "whole cell)")


def tile_shape(height: int, width: int, tile_size: int) -> tuple[int, int]:
    """The (rows, columns) of the tiles of an image: ``tile_size`` square, except for a thin
    image (one side shorter than a tile), whose tiles span its short side and are as much
    longer along its long side as keeps their area ``tile_size``², so it is cut along its
    long side only, in as few tiles as a square image of that area."""
    short = min(height, width)
    if short >= tile_size:
        return tile_size, tile_size
    long_side = max(tile_size, tile_size * tile_size // max(short, 1))
    return (short, long_side) if height == short else (long_side, short)


def tile_windows(height: int, width: int, tile_size: int, overlap: int) -> list[Window]:
    """Tiles covering the image (:func:`tile_shape`), neighbours sharing at least
    ``overlap`` pixels; one window (the image) when it fits one tile."""
    check_tiling(tile_size, overlap)
    rows, cols = tile_shape(height, width, tile_size)
    return [Window(top, left, min(top + rows, height), min(left + cols, width))
            for top in tile_starts(height, rows, rows - overlap)
            for left in tile_starts(width, cols, cols - overlap)]


@dataclass
class Detection:
    """One instance as a mask cropped to its box, placed at (top, left) in the image."""

    top: int
    left: int
    mask: np.ndarray
    score: float
    category: int
    tiles: list[int] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    touches_seam: bool = False

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

    def shared_pixels(self, other: Detection) -> int:
        top, left = max(self.top, other.top), max(self.left, other.left)
        bottom, right = min(self.bottom, other.bottom), min(self.right, other.right)
        if top >= bottom or left >= right:
            return 0
        mine = self.mask[top - self.top:bottom - self.top, left - self.left:right - self.left]
        theirs = other.mask[top - other.top:bottom - other.top,
                            left - other.left:right - other.left]
        return int(np.count_nonzero(mine & theirs))

    def absorb(self, piece: Detection) -> None:
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


def _seam_iou(piece: Detection, kept: Detection) -> float:
    """IoU of two masks counted only where both were seen (inside both tiles' windows)."""
    shared = piece.shared_pixels(kept)
    if not shared:
        return 0.0
    union = piece.pixels_inside(kept.windows) + kept.pixels_inside(piece.windows) - shared
    return shared / union


def _numpy(values) -> np.ndarray:
    return values.cpu().numpy() if torch.is_tensor(values) else np.asarray(values)


def tile_detections(instances: Instances, window: Window, tile_index: int,
                    image_size: tuple[int, int], score_thresh: float) -> list[Detection]:
    """The tile's instances scoring at least ``score_thresh``, cropped to their masks.

    ``pred_masks`` are (N, h, w) at the tile's size (a tensor, an array, or anything that
    gives ``masks[k, rows, cols]``); with ``pred_boxes`` only each box (plus
    :data:`BOX_MARGIN`) is read, so the cost is the boxes' area.
    """
    tile_size = (window.bottom - window.top, window.right - window.left)
    masks = instances.pred_masks
    if len(masks) and tuple(masks.shape[1:]) != tile_size:
        raise ValueError(f"the model returned masks of size {tuple(masks.shape[1:])} for a "
                         f"tile of size {tile_size}")
    scores = _numpy(instances.scores).astype(float)
    keep = np.flatnonzero(scores >= score_thresh)
    if not len(keep):
        return []
    classes = _numpy(instances.pred_classes).astype(int)
    boxes = (_numpy(instances.pred_boxes.tensor) if instances.has("pred_boxes")
             else np.tile([0, 0, tile_size[1], tile_size[0]], (len(scores), 1)))
    # A tile edge is a seam unless it is the image's own edge.
    inner = (window.top > 0, window.bottom < image_size[0],
             window.left > 0, window.right < image_size[1])
    detections = []
    for k in keep:
        x0, y0 = (max(int(np.floor(v)) - BOX_MARGIN, 0) for v in boxes[k, :2])
        x1 = min(int(np.ceil(boxes[k, 2])) + BOX_MARGIN, tile_size[1])
        y1 = min(int(np.ceil(boxes[k, 3])) + BOX_MARGIN, tile_size[0])
        region = _numpy(masks[k, y0:y1, x0:x1]).astype(bool, copy=False)
        rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
        if not len(rows):
            continue
        top, bottom = y0 + rows[0], y0 + rows[-1] + 1
        left, right = x0 + cols[0], x0 + cols[-1] + 1
        at_edge = (top == 0, bottom == tile_size[0], left == 0, right == tile_size[1])
        detections.append(Detection(
            top=window.top + int(top), left=window.left + int(left),
            mask=region[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy(),
            score=float(scores[k]), category=int(classes[k]), tiles=[tile_index],
            windows=[window], touches_seam=any(a and b for a, b in zip(at_edge, inner))))
    return detections


class _Grid:
    """Which kept instances have boxes in which ``GRID_CELL`` cells (a spatial index)."""

    def __init__(self):
        self.cells: dict[tuple[int, int], list[int]] = defaultdict(list)

    @staticmethod
    def _cells(d: Detection):
        for row in range(d.top // GRID_CELL, (d.bottom - 1) // GRID_CELL + 1):
            for col in range(d.left // GRID_CELL, (d.right - 1) // GRID_CELL + 1):
                yield row, col

    def add(self, index: int, d: Detection) -> None:
        for cell in self._cells(d):
            self.cells[cell].append(index)

    def near(self, d: Detection) -> set[int]:
        return {i for cell in self._cells(d) for i in self.cells.get(cell, ())}


def merge_tiles(detections: list[Detection], windows: Sequence[Window],
                image_size: tuple[int, int], merge_iou: float) -> list[Detection]:
    """One detection per nucleus across tiles (see the module docstring)."""
    kept: list[Detection] = []
    grid = _Grid()
    bounds = np.array([[w.top, w.left, w.bottom, w.right] for w in windows])
    # Margins that make a window's inner edges seams (1) and its image edges not (0).
    margins = np.stack([bounds[:, 0] > 0, bounds[:, 1] > 0, bounds[:, 2] < image_size[0],
                        bounds[:, 3] < image_size[1]], axis=1).astype(int)
    for piece in sorted(detections, key=lambda d: (d.touches_seam, -d.score)):
        near = [i for i in sorted(grid.near(piece))
                if kept[i].top < piece.bottom and kept[i].bottom > piece.top
                and kept[i].left < piece.right and kept[i].right > piece.left
                and piece.tiles[0] not in kept[i].tiles]
        ious = [_seam_iou(piece, kept[i]) for i in near]
        if ious and max(ious) > merge_iou:
            best = near[int(np.argmax(ious))]
            if piece.touches_seam and kept[best].touches_seam:
                kept[best].absorb(piece)
                grid.add(best, kept[best])
            continue
        if piece.touches_seam:
            # Another tile holds the piece away from its own seams: that tile owns it.
            seen = ((bounds[:, 0] + margins[:, 0] <= piece.top)
                    & (piece.bottom <= bounds[:, 2] - margins[:, 2])
                    & (bounds[:, 1] + margins[:, 1] <= piece.left)
                    & (piece.right <= bounds[:, 3] - margins[:, 3]))
            seen[piece.tiles[0]] = False
            if seen.any():
                continue
        kept.append(piece)
        grid.add(len(kept) - 1, piece)
    return kept
