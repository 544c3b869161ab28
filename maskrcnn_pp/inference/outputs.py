"""The files a prediction writes under its output folder, each written atomically.

Per input ``<stem>``: ``labels/<stem>.tif`` (or ``.png`` on request, or ``.nii.gz`` for
NIfTI volumes, in the input's voxel order and affine), ``probabilities/<stem>.tif`` /
``.nii.gz`` (semantic maps, on request) and ``overlays/<stem>.png``. The predictors write
them (:meth:`~maskrcnn_pp.inference.predictor.Predictor.write`); :mod:`.batch` adds the
per-run files.
"""
from __future__ import annotations

import gzip
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import nibabel as nib
import numpy as np
import tifffile

from ..data.image_io import nifti_affine
from ..utils.errors import UserError
from ..utils.io import PathLike, atomic_write_bytes
from .overlay import draw_label_overlay

__all__ = ["LABEL_FORMATS", "OUTPUT_FOLDERS", "WriteOptions", "NiftiSpace", "write_png",
           "write_tiff", "write_nifti", "write_labels_2d"]

logger = logging.getLogger(__name__)

LABEL_FORMATS = ("tif", "png")
# The folders a prediction writes per-input files into.
OUTPUT_FOLDERS = ("labels", "probabilities", "overlays")


@dataclass
class WriteOptions:
    """What to write besides the label images and results, and which page or channel of
    each input to read."""

    label_format: str = "tif"
    overlays: bool = True
    probabilities: bool = False
    page: Optional[int] = None
    channel: Optional[int] = None

    def __post_init__(self):
        if self.label_format not in LABEL_FORMATS:
            raise UserError(f"label format must be one of {', '.join(LABEL_FORMATS)}, got "
                            f"{self.label_format!r}")


@dataclass(frozen=True)
class NiftiSpace:
    """An input volume's affine, and the nibabel orientation transform from the canonical
    (RAS+) voxel order the network sees (:func:`~maskrcnn_pp.data.image_io.read_nifti`)
    back to the input's."""

    affine: np.ndarray
    to_input: np.ndarray

    @classmethod
    def of_file(cls, path: PathLike, canonical_affine: np.ndarray) -> NiftiSpace:
        affine = nifti_affine(path)
        return cls(affine, nib.orientations.ornt_transform(
            nib.io_orientation(canonical_affine), nib.io_orientation(affine)))


def write_png(path: Path, image: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, png.tobytes())


def write_tiff(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression="zlib")
    atomic_write_bytes(path, buffer.getvalue())


def write_nifti(path: Path, array_zyx: np.ndarray, space: NiftiSpace) -> None:
    """A (K,) D x H x W array as NIfTI (x, y, z[, K]) in the input's voxel order and affine."""
    xyz = np.moveaxis(array_zyx, 0, -1).transpose(2, 1, 0, 3) if array_zyx.ndim == 4 \
        else array_zyx.transpose(2, 1, 0)
    xyz = nib.orientations.apply_orientation(xyz, space.to_input)
    image = nib.Nifti1Image(np.ascontiguousarray(xyz), space.affine)
    atomic_write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=6))


def write_labels_2d(output_dir: Path, stem: str, labels: np.ndarray,
                    overlay_rgb: np.ndarray, options: WriteOptions) -> None:
    """``labels/<stem>.tif`` (``.png`` on request, unless the ids need 32 bits) and, unless
    turned off, ``overlays/<stem>.png`` drawn on ``overlay_rgb``."""
    if options.label_format == "png" and labels.dtype != np.uint32:
        write_png(output_dir / "labels" / f"{stem}.png", labels)
    else:
        if options.label_format == "png":
            logger.warning("%s: %d instances do not fit a 16-bit PNG; wrote a TIFF", stem,
                           labels.max())
        write_tiff(output_dir / "labels" / f"{stem}.tif", labels)
    if options.overlays:
        overlay = draw_label_overlay(overlay_rgb, labels)
        write_png(output_dir / "overlays" / f"{stem}.png", overlay[:, :, ::-1])
