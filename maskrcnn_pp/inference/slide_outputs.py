"""What whole-slide prediction writes, streamed block by block (:mod:`.slide`).

Per slide, under its folder:

* ``labels.ome.zarr``: the label image as OME-Zarr 0.4 (zarr format 2, ``/`` chunk keys):
  ``labels/nuclei`` holds a uint32 pyramid (``0`` at the slide's level-0 size, each next
  level halved by taking every other pixel, as label pyramids are) with ``multiscales`` and
  ``image-label`` metadata, so napari (napari-ome-zarr) opens it as a labels layer. Chunks
  are written as blocks finish; empty chunks are never stored.
* ``nuclei.geojson``: a ``FeatureCollection`` with one feature per nucleus for QuPath:
  ``objectType: "detection"``, a polygon in level-0 pixel coordinates, ``classification``
  and ``measurements`` (label, score, area).
* ``nuclei.csv``: one row per nucleus: label, class, score, centroid and box (level-0
  pixels), area in pixels and square micrometres, mean intensity per channel.
* ``nuclei_coco.json`` (on request): COCO results with polygon masks (an RLE's run counts
  overflow 32 bits on slides above 65,536 pixels a side).

The three text files are appended to under a ``.partial`` name and renamed when the slide
is done, so a file under its final name is always complete; a resumed run cuts them back
to the last finished block's byte offsets first.

Nuclei are written in block order, each block's highest score first. A block's nucleus that
overlaps pixels already written by an earlier block (two blocks that drew a boundary
differently) keeps only its free pixels, and is dropped when that is less than the
predictor's minimum visible fraction of its mask: every pixel belongs to one nucleus, and
the label image, polygons and table describe the same nuclei.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from detectron2.utils.colormap import colormap

from ..utils.io import fsync_folder
from .outputs import write_png
from .overlay import MAX_OVERLAY_SIDE, draw_label_overlay

__all__ = ["SlideOutputs", "SlideInstance", "level0_mask", "mask_polygons", "write_overview",
           "LABELS_NAME",
           "GEOJSON_NAME", "TABLE_NAME", "COCO_NAME", "LABEL_CHUNK"]

LABELS_NAME = "labels.ome.zarr"
GEOJSON_NAME = "nuclei.geojson"
TABLE_NAME = "nuclei.csv"
COCO_NAME = "nuclei_coco.json"
PARTIAL = ".partial"
# Side of the label image's chunks; level-0 rows are read and written in stripes this high.
LABEL_CHUNK = 1024
OME_VERSION = "0.4"
# Added to divisions so that a pixel edge that is an exact multiple maps to itself.
_EPS = 1e-9
_GEOJSON_HEAD = b'{"type": "FeatureCollection", "features": [\n'
_GEOJSON_TAIL = b"\n]}\n"
_COCO_HEAD = b"[\n"
_COCO_TAIL = b"\n]\n"


@dataclass
class SlideInstance:
    """One nucleus on the processing grid: its mask cropped to its box at (top, left), its
    score and class index, and the slide's pixel values under the mask, (n, channels) in the
    mask's row-major order."""

    top: int
    left: int
    mask: np.ndarray
    score: float
    category: int
    values: np.ndarray


@dataclass
class _Placed:
    """A nucleus in level-0 pixels, as it will be written."""

    source: SlideInstance
    top: int
    left: int
    mask: np.ndarray
    claimed: Optional[np.ndarray] = None    # pixels an earlier block already holds

    @property
    def bottom(self) -> int:
        return self.top + self.mask.shape[0]

    @property
    def right(self) -> int:
        return self.left + self.mask.shape[1]


def _level0_span(start: int, length: int, downsample: float, limit: int
                 ) -> tuple[int, np.ndarray]:
    """The level-0 pixels [first, first + n) whose processing pixel lies in
    [start, start + length), and for each, that pixel's offset from ``start``."""
    first = math.ceil(start * downsample - _EPS)
    stop = min(math.ceil((start + length) * downsample - _EPS), limit)
    offsets = np.floor(np.arange(first, stop) / downsample + _EPS).astype(np.int64) - start
    return first, np.clip(offsets, 0, length - 1)


def level0_mask(top: int, left: int, mask: np.ndarray, downsample: float,
                shape0: tuple[int, int]) -> tuple[int, int, np.ndarray]:
    """A processing-grid mask at (top, left) as a level-0 mask cropped to its pixels: each
    level-0 pixel takes the value of the processing pixel it falls in, so the level-0 masks
    of disjoint nuclei stay disjoint. An empty result has shape (0, 0)."""
    if downsample == 1:
        return top, left, mask
    top0, rows = _level0_span(top, mask.shape[0], downsample, shape0[0])
    left0, cols = _level0_span(left, mask.shape[1], downsample, shape0[1])
    scaled = mask[np.ix_(rows, cols)]
    hit_rows, hit_cols = np.flatnonzero(scaled.any(1)), np.flatnonzero(scaled.any(0))
    if not len(hit_rows):
        return top0, left0, np.zeros((0, 0), bool)
    return (top0 + int(hit_rows[0]), left0 + int(hit_cols[0]),
            scaled[hit_rows[0]:hit_rows[-1] + 1, hit_cols[0]:hit_cols[-1] + 1])


def _kept_processing_pixels(instance: SlideInstance, placed: _Placed, visible: np.ndarray,
                            downsample: float) -> np.ndarray:
    """Which of the processing-grid mask's pixels (in row-major mask order) remain when
    only ``visible`` of the level-0 mask is kept: a processing pixel goes with the level-0
    pixel at its top-left corner (one that holds no level-0 pixel stays)."""
    height, width = instance.mask.shape
    rows = np.ceil((instance.top + np.arange(height)) * downsample - _EPS).astype(np.int64)
    cols = np.ceil((instance.left + np.arange(width)) * downsample - _EPS).astype(np.int64)
    rows -= placed.top
    cols -= placed.left
    inside_rows = (rows >= 0) & (rows < visible.shape[0])
    inside_cols = (cols >= 0) & (cols < visible.shape[1])
    sampled = visible[np.ix_(np.clip(rows, 0, visible.shape[0] - 1),
                             np.clip(cols, 0, visible.shape[1] - 1))]
    inside = inside_rows[:, None] & inside_cols[None, :]
    # A processing pixel whose corner lies in the level-0 box was judged there; one whose
    # corner lies outside held no level-0 pixel of this mask, and stays.
    keep = np.where(inside, sampled, True)
    return keep[instance.mask]


def mask_polygons(mask: np.ndarray, top: int, left: int) -> list[list[list[float]]]:
    """The outer outline of each part of a mask placed at (top, left), as closed rings of
    [x, y] level-0 coordinates (a pixel spans [x, x+1)). The mask is traced at twice its
    resolution, so the outline runs a quarter pixel inside the pixel edges and a part one
    pixel wide is still a polygon with an area."""
    doubled = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2,
                         interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(cv2.copyMakeBorder(doubled, 1, 1, 1, 1,
                                                      cv2.BORDER_CONSTANT, value=0),
                                   cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for contour in contours:
        # back from the padded, doubled grid: a doubled pixel's centre
        xy = (contour[:, 0, :] - 0.5) / 2 + (left, top)
        rings.append(np.concatenate([xy, xy[:1]]).tolist())
    return rings


def _has_diagonal_pinch(mask: np.ndarray) -> bool:
    """Whether two pixels of the mask touch only at a corner, where a traced outline
    would touch itself."""
    a, b = mask[:-1, :-1], mask[:-1, 1:]
    c, d = mask[1:, :-1], mask[1:, 1:]
    return bool(np.any((a & d & ~b & ~c) | (b & c & ~a & ~d)))


def _geometry(mask: np.ndarray, top: int, left: int) -> dict[str, Any]:
    """The GeoJSON Polygon (one part) or MultiPolygon of a mask (:func:`mask_polygons`).
    Outlines of separate parts never touch; where a part touches itself at a corner the
    outline is split there by ``shapely.make_valid``, so every geometry is valid."""
    rings = mask_polygons(mask, top, left)
    if _has_diagonal_pinch(mask):
        import shapely
        from shapely.geometry import MultiPolygon, Polygon

        shape = shapely.make_valid(MultiPolygon([Polygon(r) for r in rings]))
        parts = [p for p in shapely.get_parts(shape) if p.geom_type == "Polygon"]
        rings = [[list(point) for point in part.exterior.coords] for part in parts]
        if not rings:   # cannot happen for a non-empty mask; keep the box, never nothing
            rows, cols = mask.shape
            box = [[left, top], [left + cols, top], [left + cols, top + rows],
                   [left, top + rows], [left, top]]
            return {"type": "Polygon", "coordinates": [box]}
    if len(rings) == 1:
        return {"type": "Polygon", "coordinates": [rings[0]]}
    return {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]}


class _Stream:
    """A text file written by appending, under ``<name>.partial`` until :meth:`finish`
    renames it. ``resume_at``: continue an earlier run's file, cut back to that byte
    offset (its last finished block); None starts it afresh with ``head``."""

    def __init__(self, path: Path, head: bytes, resume_at: Optional[int]):
        self.path, self.partial = path, path.with_name(path.name + PARTIAL)
        self.head_size = len(head)
        if resume_at is None or not self.partial.exists():
            self.file = open(self.partial, "wb")
            self.file.write(head)
        else:
            self.file = open(self.partial, "r+b")
            self.file.truncate(resume_at)
            self.file.seek(resume_at)

    @property
    def offset(self) -> int:
        return self.file.tell()

    @property
    def empty(self) -> bool:
        return self.offset == self.head_size

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def finish(self, tail: bytes) -> None:
        self.file.write(tail)
        self.sync()
        self.file.close()
        os.replace(self.partial, self.path)

    def close(self) -> None:
        self.file.close()


@dataclass
class SlideOutputs:
    """The outputs of one slide under ``folder``, written block by block (module doc).

    ``shape0`` and ``pixel_size_um`` are the slide's level-0 size and pixel size (None if
    unknown); ``downsample`` is level-0 pixels per processing pixel; ``channel_names`` name
    the table's mean-intensity columns; ``categories`` are the predictor's classes
    (``id``, ``name``). ``offsets`` (a resumed run) are the stream offsets recorded after
    its last finished block; None starts afresh.
    """

    folder: Path
    shape0: tuple[int, int]
    pixel_size_um: Optional[float]
    downsample: float
    channel_names: Sequence[str]
    categories: Sequence[dict]
    coco: bool = False
    offsets: Optional[dict[str, int]] = None
    streams: dict[str, _Stream] = field(default_factory=dict, init=False)

    def __post_init__(self):
        import zarr

        self.folder.mkdir(parents=True, exist_ok=True)
        labels_path = self.folder / LABELS_NAME
        if self.offsets is None or not (labels_path / "labels" / "nuclei" / "0").exists():
            self._create_labels(labels_path)
        self.labels = zarr.open_array(labels_path / "labels" / "nuclei" / "0", mode="r+")
        resume = self.offsets or {}
        table_head = io.StringIO()
        csv.writer(table_head, lineterminator="\n").writerow(self._columns())
        heads = {GEOJSON_NAME: _GEOJSON_HEAD, TABLE_NAME: table_head.getvalue().encode()}
        if self.coco:
            heads[COCO_NAME] = _COCO_HEAD
        for name, head in heads.items():
            self.streams[name] = _Stream(self.folder / name, head, resume.get(name))
        palette = colormap(rgb=True, maximum=255).astype(int)
        self.colours = [palette[k % len(palette)].tolist() for k in range(len(self.categories))]

    def _create_labels(self, path: Path) -> None:
        import numcodecs
        import zarr

        if path.exists():
            shutil.rmtree(path)
        root = zarr.open_group(path, mode="w", zarr_format=2)
        labels = root.create_group("labels")
        labels.attrs["labels"] = ["nuclei"]
        labels.create_group("nuclei").create_array(
            "0", shape=self.shape0, chunks=(LABEL_CHUNK, LABEL_CHUNK), dtype="uint32",
            fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"},
            compressors=numcodecs.Blosc(cname="zstd", clevel=3,
                                        shuffle=numcodecs.Blosc.BITSHUFFLE))

    def _columns(self) -> list[str]:
        return ["label", "class", "score", "centroid_x", "centroid_y", "left", "top", "right",
                "bottom", "area_px", "area_um2", *(f"mean_{c}" for c in self.channel_names)]

    # ------------------------------------------------------------------ one block

    def write_block(self, instances: Sequence[SlideInstance], first_id: int,
                    context: tuple[int, int, int, int], min_visible_fraction: float) -> int:
        """Write one block's nuclei with ids ``first_id``, ``first_id + 1``, ...; return
        how many were written. ``context``: the block's processing-grid region (top, left,
        bottom, right), which holds every nucleus it found; ids at or above ``first_id``
        found there are leftovers of an interrupted write of this block and are cleared."""
        placed = [p for p in (self._place(i) for i in instances) if p.mask.size]
        self._find_claimed(placed, first_id)
        kept = []
        for item in placed:
            area = int(np.count_nonzero(item.mask))
            if item.claimed is not None:
                visible = item.mask & ~item.claimed
                left_area = int(np.count_nonzero(visible))
                if not left_area or left_area < min_visible_fraction * area:
                    continue
                item = self._trimmed(item, visible)
            kept.append(item)
        self._paint(kept, first_id, context)
        for number, item in enumerate(kept):
            self._write_nucleus(first_id + number, item)
        return len(kept)

    def _place(self, instance: SlideInstance) -> _Placed:
        top, left, mask = level0_mask(instance.top, instance.left, instance.mask,
                                      self.downsample, self.shape0)
        return _Placed(instance, top, left, mask)

    def _stripes(self, top: int, bottom: int):
        """Chunk-aligned row ranges covering [top, bottom)."""
        start = top - top % LABEL_CHUNK
        for row in range(start, bottom, LABEL_CHUNK):
            yield max(row, top), min(row + LABEL_CHUNK, bottom)

    def _find_claimed(self, placed: list[_Placed], first_id: int) -> None:
        """Mark the pixels of each nucleus that an earlier block's nucleus holds."""
        if not placed:
            return
        left = min(p.left for p in placed)
        right = max(p.right for p in placed)
        for top, bottom in self._stripes(min(p.top for p in placed),
                                         max(p.bottom for p in placed)):
            stripe = np.asarray(self.labels[top:bottom, left:right])
            earlier = (stripe > 0) & (stripe < first_id)
            if not earlier.any():
                continue
            for p in placed:
                rows = slice(max(p.top, top), min(p.bottom, bottom))
                if rows.start >= rows.stop:
                    continue
                under = earlier[rows.start - top:rows.stop - top, p.left - left:p.right - left]
                claimed = under & p.mask[rows.start - p.top:rows.stop - p.top]
                if claimed.any():
                    if p.claimed is None:
                        p.claimed = np.zeros_like(p.mask)
                    p.claimed[rows.start - p.top:rows.stop - p.top] |= claimed

    def _trimmed(self, item: _Placed, visible: np.ndarray) -> _Placed:
        """``item`` keeping only ``visible`` (cropped to it), with the values of the
        processing pixels that remain."""
        source = item.source
        values = source.values[_kept_processing_pixels(source, item, visible, self.downsample)]
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        cropped = visible[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        kept_source = SlideInstance(source.top, source.left, source.mask, source.score,
                                    source.category, values)
        return _Placed(kept_source, item.top + int(rows[0]), item.left + int(cols[0]), cropped)

    def _paint(self, kept: list[_Placed], first_id: int,
               context: tuple[int, int, int, int]) -> None:
        """Write the ids into the label image, in chunk-aligned stripes of the block's
        level-0 region, clearing leftovers of an interrupted write of this block."""
        top0 = math.ceil(context[0] * self.downsample - _EPS)
        left0 = math.ceil(context[1] * self.downsample - _EPS)
        bottom0 = min(math.ceil(context[2] * self.downsample - _EPS), self.shape0[0])
        right0 = min(math.ceil(context[3] * self.downsample - _EPS), self.shape0[1])
        if kept:
            top0, left0 = min(top0, *(p.top for p in kept)), min(left0, *(p.left for p in kept))
            bottom0 = max(bottom0, *(p.bottom for p in kept))
            right0 = max(right0, *(p.right for p in kept))
        for top, bottom in self._stripes(top0, bottom0):
            stripe = np.asarray(self.labels[top:bottom, left0:right0])
            leftover = stripe >= first_id
            changed = bool(leftover.any())
            stripe[leftover] = 0
            for number, p in enumerate(kept):
                rows = slice(max(p.top, top), min(p.bottom, bottom))
                if rows.start >= rows.stop:
                    continue
                window = stripe[rows.start - top:rows.stop - top, p.left - left0:p.right - left0]
                window[p.mask[rows.start - p.top:rows.stop - p.top]] = first_id + number
                changed = True
            if changed:
                self.labels[top:bottom, left0:right0] = stripe

    def _write_nucleus(self, label: int, item: _Placed) -> None:
        source = item.source
        rows, cols = np.nonzero(item.mask)
        area = len(rows)
        centroid_x = item.left + float(cols.mean()) + 0.5
        centroid_y = item.top + float(rows.mean()) + 0.5
        area_um2 = area * self.pixel_size_um ** 2 if self.pixel_size_um else None
        means = (source.values.astype(np.float64).mean(axis=0) if len(source.values)
                 else np.full(len(self.channel_names), np.nan))
        category = self.categories[source.category]
        score = round(float(source.score), 6)
        measurements = {"label": label, "score": score, "area_px": area}
        if area_um2 is not None:
            measurements["area_um2"] = round(area_um2, 4)
        geometry = _geometry(item.mask, item.top, item.left)
        feature = {"type": "Feature", "geometry": geometry,
                   "properties": {"objectType": "detection",
                                  "classification": {"name": category["name"],
                                                     "color": self.colours[source.category]},
                                  "measurements": measurements}}
        geojson = self.streams[GEOJSON_NAME]
        geojson.write(("" if geojson.empty else ",\n").encode() + json.dumps(feature).encode())
        row = io.StringIO()
        csv.writer(row, lineterminator="\n").writerow(
            [label, category["name"], score, round(centroid_x, 3), round(centroid_y, 3),
             item.left, item.top, item.right, item.bottom, area,
             "" if area_um2 is None else round(area_um2, 4),
             *(round(float(m), 4) for m in means)])
        self.streams[TABLE_NAME].write(row.getvalue().encode())
        if self.coco:
            polygons = [[c for point in ring[:-1] for c in point]
                        for ring in _exterior_rings(geometry)]
            result = {"image_id": 1, "category_id": int(category["id"]),
                      "segmentation": polygons, "score": score,
                      "bbox": [item.left, item.top, item.right - item.left,
                               item.bottom - item.top]}
            coco = self.streams[COCO_NAME]
            coco.write(("" if coco.empty else ",\n").encode() + json.dumps(result).encode())

    def sync(self) -> dict[str, int]:
        """Make everything written so far durable; the streams' offsets, for the record."""
        for stream in self.streams.values():
            stream.sync()
        return {name: stream.offset for name, stream in self.streams.items()}

    # ------------------------------------------------------------------ the end

    def finish(self) -> None:
        """Close the streams under their final names and build the label pyramid."""
        self.streams[GEOJSON_NAME].finish(_GEOJSON_TAIL)
        self.streams[TABLE_NAME].finish(b"")
        if self.coco:
            self.streams[COCO_NAME].finish(_COCO_TAIL)
        self._write_pyramid()
        fsync_folder(self.folder)

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()

    def _write_pyramid(self) -> None:
        """Levels 1, 2, ... (every other pixel of the level before) until the image fits
        one chunk, then the OME-Zarr metadata naming them."""
        import zarr

        group = zarr.open_group(self.folder / LABELS_NAME / "labels" / "nuclei", mode="r+",
                                zarr_format=2)
        for name in [k for k in group.array_keys() if k != "0"]:
            del group[name]
        source, level = self.labels, 0
        while max(source.shape) > LABEL_CHUNK:
            level += 1
            target = group.create_array(
                str(level), shape=tuple(math.ceil(s / 2) for s in source.shape),
                chunks=(LABEL_CHUNK, LABEL_CHUNK), dtype="uint32", fill_value=0,
                chunk_key_encoding={"name": "v2", "separator": "/"},
                compressors=self.labels.compressors)
            step = 4 * LABEL_CHUNK      # source pixels per side copied at once
            for top in range(0, source.shape[0], step):
                for left in range(0, source.shape[1], step):
                    piece = np.asarray(source[top:top + step, left:left + step])[::2, ::2]
                    if piece.any():
                        target[top // 2:top // 2 + piece.shape[0],
                               left // 2:left // 2 + piece.shape[1]] = piece
            source = target
        unit = {"unit": "micrometer"} if self.pixel_size_um else {}
        size = self.pixel_size_um or 1.0
        group.attrs.update({
            "multiscales": [{
                "version": OME_VERSION, "name": "nuclei",
                "axes": [{"name": "y", "type": "space", **unit},
                         {"name": "x", "type": "space", **unit}],
                "datasets": [{"path": str(k), "coordinateTransformations": [
                    {"type": "scale", "scale": [size * 2 ** k, size * 2 ** k]}]}
                    for k in range(level + 1)]}],
            "image-label": {"version": OME_VERSION}})


def _exterior_rings(geometry: dict) -> list[list[list[float]]]:
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"][0]]
    return [polygon[0] for polygon in geometry["coordinates"]]


def write_overview(path: Path, thumbnail_rgb: np.ndarray, labels_path: Path,
                   shape0: tuple[int, int], blocks0: Sequence[tuple[int, int, int, int]],
                   skipped0: Sequence[tuple[int, int, int, int]]) -> None:
    """A PNG of the whole slide: the thumbnail with the label pyramid's level nearest its
    size drawn over it, the blocks that were run outlined in white and the skipped ones in
    red (boxes are level-0 (top, left, bottom, right))."""
    import zarr

    group = zarr.open_group(labels_path / "labels" / "nuclei", mode="r", zarr_format=2)
    levels = sorted(int(k) for k in group.array_keys())
    side = max(thumbnail_rgb.shape[:2])
    level = max([k for k in levels if max(group[str(k)].shape) >= side] or [levels[0]])
    labels = np.asarray(group[str(level)][...])
    picture = cv2.resize(thumbnail_rgb, labels.shape[::-1], interpolation=cv2.INTER_LINEAR)
    overlay = draw_label_overlay(picture, labels, MAX_OVERLAY_SIDE)
    scale_y, scale_x = overlay.shape[0] / shape0[0], overlay.shape[1] / shape0[1]
    for boxes, colour in ((blocks0, (255, 255, 255)), (skipped0, (255, 0, 0))):
        for top, left, bottom, right in boxes:
            cv2.rectangle(overlay, (int(left * scale_x), int(top * scale_y)),
                          (max(int(right * scale_x) - 1, 0), max(int(bottom * scale_y) - 1, 0)),
                          colour, 1)
    write_png(path, overlay[:, :, ::-1])
