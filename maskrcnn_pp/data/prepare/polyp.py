"""Kvasir-SEG and CVC-ClinicDB (``images/``, ``masks/``) as square image/label PNGs (the
polyp task)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...utils.errors import UserError
from ..image_io import IMAGE_EXTENSIONS, read_image
from ..sources import source_root
from .staging import Preparation, check_source, folder_with, resize_2d, write_png

__all__ = ["prepare_polyp"]

# First frame of each of the 29 video sequences of CVC-ClinicDB (its README.txt).
CLINICDB_SEQUENCE_STARTS = (1, 26, 51, 68, 79, 104, 127, 152, 178, 200, 206, 228, 253, 278, 298,
                            318, 343, 364, 384, 409, 429, 448, 467, 479, 504, 529, 547, 572, 592)


def _read_bgr(path: Path) -> np.ndarray:
    """An 8-bit BGR (OpenCV order) image, as written back by :func:`write_png`."""
    return read_image(path, "BGR")


def _read_gray(path: Path) -> np.ndarray:
    """An 8-bit gray (H, W) mask."""
    return read_image(path, "L")[..., 0]


def _clinicdb_sequence(stem: str) -> str:
    """The video sequence of a CVC-ClinicDB frame number (frames of one sequence are
    near-duplicates and must not be split between train and val)."""
    if not stem.isdigit():
        return stem
    return str(int(np.searchsorted(CLINICDB_SEQUENCE_STARTS, int(stem), side="right")))


def prepare_polyp(source: Path, output_root: Path | None = None, *, name: str = "kvasir",
                  size: int = 224, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Kvasir-SEG or CVC-ClinicDB (``images/``, ``masks/``) to ``size`` x ``size`` PNGs.

    ``source`` is the folder or its archive as downloaded (.zip, .tar.gz), with
    ``images/`` and ``masks/`` at its top or in one sub-folder (``Kvasir-SEG/``).

    Masks are thresholded at 127 (they are JPEG in both releases), after resizing the gray
    mask, which keeps the border where the JPEG put it. Frames without any polyp pixel are
    skipped and reported. CVC-ClinicDB is split by video sequence, Kvasir-SEG by frame.
    """
    if name not in ("kvasir", "clinicdb"):
        raise UserError(f"--name must be 'kvasir' or 'clinicdb', got {name!r}")
    source = check_source(source, "a folder or archive with images/ and masks/")
    with source_root(source) as root, Preparation(
            output_root, f"polyp_{name}", source, extracted_to=root,
            val_fraction=val_fraction, seed=seed, size=size) as prep:
        folder = folder_with(root, source, "images", "masks")
        image_dir, mask_dir = folder / "images", folder / "masks"
        masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for image_path in images:
            mask_path = masks.get(image_path.stem)
            if mask_path is None:
                prep.skip(image_path, "no mask with the same name in masks/")
                continue
            image = prep.read(_read_bgr, image_path)
            mask = None if image is None else prep.read(_read_gray, mask_path)
            if mask is None:
                continue
            if image.shape[:2] != mask.shape:
                prep.skip(image_path, f"image {image.shape[1]}x{image.shape[0]} and mask "
                                      f"{mask.shape[1]}x{mask.shape[0]} differ in size")
                continue
            label = (resize_2d(mask, size, is_label=False) > 127).astype(np.uint8)
            if not label.any():
                prep.skip(mask_path, "empty mask: every frame must show a polyp")
                continue
            out_name = f"{image_path.stem}.png"
            write_png(prep.path("images", out_name), resize_2d(image, size, is_label=False))
            write_png(prep.path("labels", out_name), label)
            group = _clinicdb_sequence(image_path.stem) if name == "clinicdb" else out_name
            prep.add(group, out_name)
            prep.sources_used += 1
        return prep.finish("image/mask pairs")
