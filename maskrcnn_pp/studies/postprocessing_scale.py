"""The cost of instance post-processing at scale (``tools/benchmark.py --group scale``).

Instance post-processing alone (tiling, seam merge, overlap resolution, label image, RLE)
on huge synthetic images with a perfect stand-in network (each connected bright region of a
tile is one nucleus, :class:`PerfectNucleiModel`), each size in a fresh process that also
reports its peak memory: the cost must grow with the pixels that belong to objects, never
with objects x image size.
"""
from __future__ import annotations

import time
from typing import List

import cv2
import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from .timing import peak_rss_growth_mib, reset_peak_rss, run_spawned

__all__ = ["nuclei_grid_image", "PerfectNucleiModel", "scale_case", "run_scale_case",
           "scale_table"]


def nuclei_grid_image(size: int, count: int, seed: int = 0) -> np.ndarray:
    """An RGB ``size`` x ``size`` image of ``count`` separate discs (radius 5..9) on a
    jittered grid, on black."""
    per_side = int(round(count ** 0.5))
    if per_side * per_side != count or size // per_side < 22:
        raise ValueError(f"{count} nuclei need a square count with at least 22 px per cell "
                         f"in a {size} px image")
    spacing = size // per_side
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.uint8)
    radii = rng.integers(5, 10, count)
    jitter = spacing // 2 - radii - 2
    for index in range(count):
        row, col = divmod(index, per_side)
        dy, dx = rng.integers(-jitter[index], jitter[index] + 1, 2)
        cv2.circle(image, (int(col * spacing + spacing // 2 + dx),
                           int(row * spacing + spacing // 2 + dy)),
                   int(radii[index]), int(100 + index % 150), -1)
    return np.repeat(image[..., None], 3, axis=2)


class _ComponentMasks:
    """The (N, h, w) masks of a tile's connected components, computed per indexed region
    (``masks[k, rows, cols]``), as :func:`~maskrcnn_pp.inference.tiling.tile_detections`
    reads them: a stand-in network's output should not cost N full tiles of memory."""

    def __init__(self, labels: np.ndarray, count: int):
        self.labels, self.shape = labels, (count, *labels.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: tuple) -> np.ndarray:
        k, rows, cols = index
        return self.labels[rows, cols] == k + 1


class PerfectNucleiModel:
    """A network callable that finds every connected bright region of a tile, with
    Detectron2's output fields (masks at the tile's size, boxes, scores)."""

    def __call__(self, tile: np.ndarray) -> Instances:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            (tile[:, :, 0] > 0).astype(np.uint8), connectivity=8)
        boxes = stats[1:, :4].astype(np.float32)
        boxes[:, 2:] += boxes[:, :2]
        instances = Instances(tile.shape[:2])
        instances.pred_masks = _ComponentMasks(labels, count - 1)
        instances.pred_boxes = Boxes(torch.from_numpy(boxes))
        instances.scores = torch.full((count - 1,), 0.9)
        instances.pred_classes = torch.zeros(count - 1, dtype=torch.int64)
        return instances


def scale_case(size: int, count: int, tile_size: int = 1024, overlap: int = 128) -> dict:
    """Seconds of prediction (tiles, merge, label image) and of the RLEs, and peak memory
    growth above the RSS after the image is made (MiB), for one synthetic image."""
    from ..inference import InstancePredictor

    image = nuclei_grid_image(size, count)
    predictor = InstancePredictor(PerfectNucleiModel(), tile_size, overlap, score_thresh=0.5)
    before = reset_peak_rss()
    start = time.perf_counter()
    result = predictor(image)
    labels = result.label_image
    predicted = time.perf_counter()
    rles = result.rles
    encoded = time.perf_counter()
    return {"size": size, "nuclei": count, "found": len(result), "tile": tile_size,
            "overlap": overlap, "labels_max": int(labels.max()), "rles": len(rles),
            "predict_and_label_s": predicted - start, "rle_s": encoded - predicted,
            "peak_mem_MiB": peak_rss_growth_mib(before),
            "image_MiB": image.nbytes / 2**20}


def _single_threaded_scale_case(*args) -> dict:
    torch.set_num_threads(1)
    return scale_case(*args)


def run_scale_case(size: int, count: int, tile_size: int = 1024, overlap: int = 128) -> dict:
    """:func:`scale_case` in a fresh process, one thread, so its peak memory is its own."""
    return run_spawned(_single_threaded_scale_case, [(size, count, tile_size, overlap)])[0]


def scale_table(rows: List[dict]) -> str:
    lines = ["| image | nuclei | found | tiles (size / overlap) | predict + label image (s) | "
             "RLEs (s) | peak memory (MiB) | N full-size masks would take (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']}x{r['size']} | {r['nuclei']} | {r['found']} | "
                     f"{r['tile']} / {r['overlap']} | {r['predict_and_label_s']:.1f} | "
                     f"{r['rle_s']:.1f} | {r['peak_mem_MiB']:.0f} | "
                     f"{r['nuclei'] * r['size'] ** 2 / 2**20:.0f} |")
    return "\n".join(lines)
