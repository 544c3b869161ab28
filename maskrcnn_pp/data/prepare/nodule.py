"""Lung nodule crops (NIfTI, in HU) as fixed-size HU-windowed volumes (the nodule task)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..image_io import is_nifti, nifti_stem
from ..sources import source_root
from .staging import Preparation, check_source, folder_with, hu_window, read_nifti_pair

__all__ = ["prepare_nodule"]


def _center_crop_or_pad(volume: np.ndarray, size: int) -> np.ndarray:
    """A ``size``^3 block around the volume's centre, zero-padded where it is smaller."""
    out = np.zeros((size,) * 3, volume.dtype)
    src, dst = [], []
    for n in volume.shape:
        start = max(0, (n - size) // 2)
        length = min(n, size)
        offset = max(0, (size - n) // 2)
        src.append(slice(start, start + length))
        dst.append(slice(offset, offset + length))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def prepare_nodule(source: Path, output_root: Path | None = None, *, size: int = 64,
                   window: tuple[float, float] = (-1000.0, 400.0), val_fraction: float = 0.2,
                   seed: int = 0, allow_empty: bool = False) -> dict:
    """Nodule crops (``images/<name>.nii[.gz]`` in HU, ``labels/<name>.nii[.gz]``) to
    ``size``^3 uint8 NIfTI volumes, HU-windowed to 0..255 (lung window by default).

    Crops larger or smaller than ``size`` are centre-cropped or padded with 0 (the window's
    low end: air with the default window). A crop whose label has no nodule voxel is
    skipped and reported unless ``allow_empty``. The split is by crop.
    """
    source = check_source(source, "a folder or archive with images/ and labels/ NIfTI "
                                   "crops")
    with source_root(source) as root, Preparation(
            output_root, "nodule", source, extracted_to=root, val_fraction=val_fraction,
            seed=seed, size=size, window=list(window), allow_empty=allow_empty) as prep:
        folder = folder_with(root, source, "images", "labels")
        image_dir, label_dir = folder / "images", folder / "labels"
        labels = {nifti_stem(p): p for p in label_dir.iterdir() if is_nifti(p)}
        for image_path in sorted(p for p in image_dir.iterdir() if is_nifti(p)):
            label_path = labels.get(nifti_stem(image_path))
            if label_path is None:
                prep.skip(image_path, "no label with the same name in labels/")
                continue
            pair = read_nifti_pair(image_path, label_path, prep)
            if pair is None:
                continue
            hu, label, affine = pair
            nodule = np.asarray(label) > 0
            if not nodule.any() and not allow_empty:
                prep.skip(label_path, "empty label: no nodule voxel")
                continue
            out_name = f"{nifti_stem(image_path)}.nii.gz"
            for kind, volume in (("images", hu_window(np.asarray(hu), *window)),
                                 ("labels", nodule.astype(np.uint8))):
                nib.save(nib.Nifti1Image(_center_crop_or_pad(volume, size), affine),
                         str(prep.path(kind, out_name)))
            prep.add(out_name, out_name)
            prep.sources_used += 1
        return prep.finish("image/label crops")
