"""A deterministic synthetic nuclei data set: the embedded default for demos and tests.

Two looks alternate: fluorescence (bright nuclei on a dark background) and H&E-like
(dark purple nuclei on a light pink background). Nuclei are irregular ellipses of varied
size, placed alone and in touching or overlapping clusters, with texture, blur and noise.
Images are generated once into ``$DETECTRON2_DATASETS/nuclei_synthetic`` as PNGs plus
COCO instance JSON (RLE masks), and registered as ``nuclei_synthetic_train`` / ``_val``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np

from ..utils.io import atomic_write_bytes, atomic_write_json
from .catalog import datasets_root
from .coco import mask_to_annotation, register_coco_instances_lazy

__all__ = ["SyntheticNucleiSpec", "render_image", "ensure_synthetic_nuclei",
           "register_synthetic_nuclei"]

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticNucleiSpec:
    """What to generate; any change makes a new cache."""

    num_train: int = 64
    num_val: int = 16
    size: int = 128
    seed: int = 0
    min_radius: float = 4.0
    max_radius: float = 11.0
    max_nuclei: int = 30


def _nucleus_mask(rng: np.random.Generator, size: int, center: Tuple[float, float],
                  radius: float) -> np.ndarray:
    """An irregular ellipse: radius modulated by a few random low-frequency harmonics."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    elong = rng.uniform(0.6, 1.0)
    dx, dy = xx - center[0], yy - center[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / elong
    theta = np.arctan2(v, u)
    boundary = radius * (1 + sum(rng.uniform(-0.08, 0.08) * np.cos(k * theta + rng.uniform(0, 6.3))
                                 for k in (2, 3, 5)))
    return np.hypot(u, v) <= boundary


def render_image(rng: np.random.Generator, spec: SyntheticNucleiSpec, he_style: bool
                 ) -> Tuple[np.ndarray, List[np.ndarray]]:
    """One RGB uint8 image and its per-nucleus boolean masks (which may overlap)."""
    size = spec.size
    masks: List[np.ndarray] = []
    centers: List[Tuple[float, float, float]] = []
    n_target = int(rng.integers(spec.max_nuclei // 3, spec.max_nuclei + 1))
    attempts = 0
    while len(masks) < n_target and attempts < 10 * n_target:
        attempts += 1
        radius = rng.uniform(spec.min_radius, spec.max_radius)
        if centers and rng.random() < 0.4:
            # touching or slightly overlapping neighbour of an existing nucleus
            cx, cy, cr = centers[int(rng.integers(len(centers)))]
            direction = rng.uniform(0, 2 * np.pi)
            dist = (cr + radius) * rng.uniform(0.8, 1.05)
            center = (cx + dist * np.cos(direction), cy + dist * np.sin(direction))
        else:
            center = tuple(rng.uniform(radius, size - radius, 2))
        if not all(radius <= c <= size - radius for c in center):
            continue
        if any(np.hypot(center[0] - cx, center[1] - cy) < 0.75 * (radius + cr)
               for cx, cy, cr in centers):
            continue
        mask = _nucleus_mask(rng, size, center, radius)
        if mask.sum() < 12:
            continue
        masks.append(mask)
        centers.append((center[0], center[1], radius))

    signal = np.zeros((size, size), np.float32)
    for mask in masks:
        texture = rng.uniform(0.6, 1.0) * (1 + 0.15 * rng.standard_normal((size, size)))
        signal = np.maximum(signal, mask * texture.astype(np.float32))
    signal = cv2.GaussianBlur(signal, (0, 0), rng.uniform(0.6, 1.4))
    background = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 8)
    signal = np.clip(signal + 0.05 * background, 0, 1)
    if he_style:
        bg = np.array([236, 200, 220], np.float32)    # pink eosin background
        fg = np.array([70, 40, 120], np.float32)      # hematoxylin nuclei
        image = bg * (1 - signal[..., None]) + fg * signal[..., None]
    else:
        tint = np.array(rng.choice([[1, 1, 1], [0.3, 0.5, 1.0]]), np.float32)
        image = (15 + 220 * signal[..., None]) * tint
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def _annotations(masks: List[np.ndarray], image_id: int, first_id: int) -> List[dict]:
    return [{**mask_to_annotation(mask), "id": first_id + k, "image_id": image_id}
            for k, mask in enumerate(masks)]


def ensure_synthetic_nuclei(root: Path, spec: SyntheticNucleiSpec = SyntheticNucleiSpec()
                            ) -> Path:
    """Generate the data set under ``root`` unless an identical one is already there."""
    root = Path(root)
    stamp = {"generator_version": GENERATOR_VERSION, **asdict(spec)}
    stamp_file = root / "spec.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return root
    rng = np.random.default_rng(spec.seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    splits = {"train": range(spec.num_train),
              "val": range(spec.num_train, spec.num_train + spec.num_val)}
    ann_id = 1
    for split, ids in splits.items():
        images, annotations = [], []
        for image_id in ids:
            image, masks = render_image(rng, spec, he_style=image_id % 2 == 1)
            name = f"synthetic_{image_id:04d}.png"
            ok, png = cv2.imencode(".png", image[..., ::-1])
            atomic_write_bytes(root / "images" / name, png.tobytes())
            images.append({"id": image_id, "file_name": name, "height": spec.size,
                           "width": spec.size})
            annotations += _annotations(masks, image_id, ann_id)
            ann_id += len(masks)
        atomic_write_json(root / "annotations" / f"instances_{split}.json",
                          {"images": images, "annotations": annotations,
                           "categories": [{"id": 1, "name": "nucleus"}]})
    atomic_write_json(stamp_file, stamp)
    return root


def register_synthetic_nuclei(spec: SyntheticNucleiSpec = SyntheticNucleiSpec()) -> None:
    """Register ``nuclei_synthetic_{train,val}``; the data is generated on first use."""
    root = datasets_root() / "nuclei_synthetic"
    for split in ("train", "val"):
        name = f"nuclei_synthetic_{split}"
        json_file = root / "annotations" / f"instances_{split}.json"
        register_coco_instances_lazy(name, json_file, root / "images",
                                     metadata={"thing_classes": ["nucleus"], "nuclei": True},
                                     prepare=lambda: ensure_synthetic_nuclei(root, spec))
