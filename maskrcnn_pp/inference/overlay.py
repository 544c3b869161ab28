"""Overlays of label images in bounded memory: the image is shrunk to at most ``max_side``
pixels first and the labels sampled at the overlay's pixels, so a 20k x 20k image with
100k nuclei costs no more than a 2k x 2k picture."""
from __future__ import annotations

import cv2
import numpy as np
from detectron2.utils.colormap import colormap

__all__ = ["draw_label_overlay", "MAX_OVERLAY_SIDE"]

MAX_OVERLAY_SIDE = 2048
FILL_ALPHA = 0.45


def draw_label_overlay(image_rgb: np.ndarray, labels: np.ndarray,
                       max_side: int = MAX_OVERLAY_SIDE) -> np.ndarray:
    """RGB picture: each label filled with a colour of Detectron2's colour map (label k
    gets colour k-1, cycling) and outlined; 0 is left as the image."""
    height, width = labels.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    picture = image_rgb if scale == 1 else cv2.resize(image_rgb, size[::-1],
                                                      interpolation=cv2.INTER_AREA)
    rows = np.minimum(((np.arange(size[0]) + 0.5) / scale).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) / scale).astype(np.int64), width - 1)
    sampled = labels[rows][:, cols]
    palette = colormap(rgb=True, maximum=255).astype(np.float32)
    colours = palette[(sampled.astype(np.int64) - 1) % len(palette)]
    inside = sampled > 0
    edge = np.zeros_like(inside)
    edge[:-1] |= sampled[:-1] != sampled[1:]
    edge[1:] |= sampled[1:] != sampled[:-1]
    edge[:, :-1] |= sampled[:, :-1] != sampled[:, 1:]
    edge[:, 1:] |= sampled[:, 1:] != sampled[:, :-1]
    edge &= inside
    out = picture.astype(np.float32)
    out[inside] = (1 - FILL_ALPHA) * out[inside] + FILL_ALPHA * colours[inside]
    out[edge] = colours[edge]
    return np.rint(out).astype(np.uint8)
