"""Lung nodule crops (NIfTI, in HU) as fixed-size HU-windowed volumes (the nodule task)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ...utils.io import PathLike
from ..catalog import datasets_root
from ..image_io import is_nifti, nifti_stem
from .base import Converted, Preparation, PreparationReport, SampleProblem, SplitPlan
from .semantic_output import (
    SemanticPreparer,
    add_hu_window_argument,
    check_hu_window,
    folder_with,
    hu_window,
    read_nifti_pair,
)

__all__ = ["NodulePreparer", "prepare_nodule"]


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


class NodulePreparer(SemanticPreparer):
    """Nodule crops (``images/<name>.nii[.gz]`` in HU, ``labels/<name>.nii[.gz]``) to
    ``size``^3 uint8 NIfTI volumes, HU-windowed to 0..255 (lung window by default).

    Crops larger or smaller than ``size`` are centre-cropped or padded with 0 (the window's
    low end: air with the default window). A crop whose label has no nodule voxel is
    skipped and reported unless ``allow_empty``. The split is by crop.
    """

    name = "nodule"
    folder = "nodule"
    description = "Check and window lung-nodule CT crops (images/, labels/ NIfTI) to cubes"
    source_help = ("a folder or archive with images/ and labels/ NIfTI crops (CT in HU) of "
                   "equal names")
    items = "image/label crops"
    samples = "crops"
    val_fraction = 0.2
    val_help = "share of crops in the validation split"
    window = (-1000.0, 400.0)

    def __init__(self, size: int = 64, window: tuple[float, float] = window,
                 allow_empty: bool = False):
        check_hu_window(*window)
        super().__init__(size=size, window=list(window), allow_empty=allow_empty)
        self.size, self.hu, self.allow_empty = size, tuple(window), allow_empty

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--size", type=int, default=64, help="output cube side (default 64)")
        add_hu_window_argument(parser, *cls.window)
        parser.add_argument("--allow-empty", action="store_true",
                            help="keep crops whose label has no nodule voxel")

    @classmethod
    def settings_from(cls, args) -> dict:
        return {"size": args.size, "window": tuple(args.window), "allow_empty": args.allow_empty}

    def find_items(self, root: Path, run: Preparation) -> list[Path]:
        folder = folder_with(root, run.source, "images", "labels")
        self.labels = {nifti_stem(p): p for p in (folder / "labels").iterdir() if is_nifti(p)}
        return sorted(p for p in (folder / "images").iterdir() if is_nifti(p))

    def convert_item(self, image_path: Path, run: Preparation) -> Converted:
        label_path = self.labels.get(nifti_stem(image_path))
        if label_path is None:
            raise SampleProblem(image_path, "missing_label",
                                "no label with the same name in labels/")
        hu, label, affine = read_nifti_pair(image_path, label_path)
        nodule = np.asarray(label) > 0
        if not nodule.any() and not self.allow_empty:
            raise SampleProblem(label_path, "empty_label", "empty label: no nodule voxel")
        name = f"{nifti_stem(image_path)}.nii.gz"
        run.claim(name, image_path)
        for kind, volume in (("images", hu_window(np.asarray(hu), *self.hu)),
                             ("labels", nodule.astype(np.uint8))):
            nib.save(nib.Nifti1Image(_center_crop_or_pad(volume, self.size), affine),
                     str(run.path(kind, name)))
        return Converted(group=name, samples=[name])


def prepare_nodule(source: PathLike, output_root: PathLike | None = None, *, size: int = 64,
                   window: tuple[float, float] = NodulePreparer.window,
                   val_fraction: float | None = None, seed: int = 0, allow_empty: bool = False,
                   strict: bool = False, progress: bool = False) -> PreparationReport:
    """Nodule crops to ``<output_root>/nodule`` (default root ``$DETECTRON2_DATASETS``); see
    :class:`NodulePreparer`. ``val_fraction`` defaults to 0.2."""
    preparer = NodulePreparer(size, window, allow_empty)
    plan = SplitPlan.of(val_fraction, preparer.val_fraction, seed)
    root = Path(output_root) if output_root is not None else datasets_root()
    return preparer.prepare(source, root / preparer.folder, plan, strict=strict,
                            progress=progress)
