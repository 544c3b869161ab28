"""LiTS CT volumes as HU-windowed axial slices with liver labels (the liver task)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..image_io import NIFTI_SUFFIXES, is_nifti, nifti_stem
from ..sources import source_root
from .staging import (
    Preparation,
    check_source,
    hu_window,
    read_nifti_pair,
    resize_2d,
    write_png,
)

__all__ = ["prepare_liver"]


def _lits_pairs(source: Path, prep: Preparation) -> list[tuple[str, Path, Path]]:
    """``(N, volume-N, segmentation-N)`` for every volume under ``source`` (any depth)."""
    pairs = []
    for volume in sorted(p for p in source.rglob("volume-*") if is_nifti(p)):
        number = nifti_stem(volume)[len("volume-"):]
        candidates = [volume.with_name(f"segmentation-{number}{s}") for s in NIFTI_SUFFIXES]
        segmentation = next((c for c in candidates if c.is_file()), None)
        if segmentation is None:
            prep.skip(volume, f"no segmentation-{number}.nii[.gz] beside it")
            continue
        pairs.append((number, volume, segmentation))
    return pairs


def _axial_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice of a RAS+ volume as seen in radiology: anterior up, patient's right on
    the image's left."""
    return np.ascontiguousarray(volume[:, :, z].T[::-1, ::-1])


def prepare_liver(source: Path, output_root: Path | None = None, *, size: int = 512,
                  window: tuple[float, float] = (-200.0, 250.0), val_fraction: float = 0.2,
                  seed: int = 0, keep_empty_slices: bool = False) -> dict:
    """LiTS ``volume-N`` / ``segmentation-N`` NIfTI pairs to axial ``size`` x ``size`` slices.

    Volumes are read in RAS+ orientation whatever their affine. Intensities are
    HU-windowed to 0..255; liver (1) and tumour (2) merge into liver. Only slices that show
    liver are kept unless ``keep_empty_slices``. Slices are named ``volume-N_zNNNN.png``;
    the split is by CT scan.
    """
    source = check_source(source, "a folder or archive of LiTS volume-N / segmentation-N "
                                   "NIfTI files")
    with source_root(source) as root, Preparation(
            output_root, "liver", source, extracted_to=root, val_fraction=val_fraction,
            seed=seed, size=size, window=list(window),
            keep_empty_slices=keep_empty_slices) as prep:
        for number, volume_path, segmentation_path in _lits_pairs(root, prep):
            pair = read_nifti_pair(volume_path, segmentation_path, prep)
            if pair is None:
                continue
            hu, seg, _ = pair
            unexpected = sorted(set(np.unique(seg).tolist()) - {0, 1, 2})
            if unexpected:
                prep.skip(segmentation_path, f"label values {unexpected[:5]} outside "
                                             "{0 background, 1 liver, 2 tumour}")
                continue
            liver = np.asarray(seg) > 0
            if not liver.any():
                prep.skip(segmentation_path, "no liver voxel")
                continue
            image = hu_window(np.asarray(hu), *window)
            for z in range(hu.shape[2]):
                if not keep_empty_slices and not liver[:, :, z].any():
                    continue
                out_name = f"volume-{number}_z{z:04d}.png"
                write_png(prep.path("images", out_name),
                           resize_2d(_axial_slice(image, z), size, is_label=False))
                write_png(prep.path("labels", out_name),
                           resize_2d(_axial_slice(liver, z).astype(np.uint8), size, True))
                prep.add(number, out_name)
            prep.sources_used += 1
        return prep.finish("CT volumes with liver")
