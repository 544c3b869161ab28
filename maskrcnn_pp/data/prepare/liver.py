"""LiTS CT volumes as HU-windowed axial slices with liver labels (the liver task)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...utils.io import PathLike
from ..catalog import datasets_root
from ..image_io import NIFTI_SUFFIXES, is_nifti, nifti_stem
from ..sources import walk
from .base import Converted, Preparation, PreparationReport, SampleProblem, SplitPlan, write_png
from .semantic_output import (
    SemanticPreparer,
    add_hu_window_argument,
    check_hu_window,
    hu_window,
    read_nifti_pair,
    resize_2d,
)

__all__ = ["LiverPreparer", "prepare_liver"]


def _axial_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice of a RAS+ volume as seen in radiology: anterior up, patient's right on
    the image's left."""
    return np.ascontiguousarray(volume[:, :, z].T[::-1, ::-1])


class LiverPreparer(SemanticPreparer):
    """LiTS ``volume-N`` / ``segmentation-N`` NIfTI pairs (any depth under the source) to
    axial ``size`` x ``size`` slices.

    Volumes are read in RAS+ orientation whatever their affine. Intensities are
    HU-windowed to 0..255; liver (1) and tumour (2) merge into liver. Only slices that show
    liver are kept unless ``keep_empty_slices``. Slices are named ``volume-N_zNNNN.png``;
    the split is by CT scan.
    """

    name = "liver"
    folder = "liver"
    description = ("Slice LiTS CT scans (volume-N.nii[.gz], segmentation-N.nii[.gz]) into "
                   "HU-windowed axial PNGs")
    source_help = "a folder or archive of LiTS volume-N / segmentation-N NIfTI files"
    items = "CT volumes"
    samples = "slices"
    val_fraction = 0.2
    val_help = "share of CT scans in the validation split"
    window = (-200.0, 250.0)

    def __init__(self, size: int = 512, window: tuple[float, float] = window,
                 keep_empty_slices: bool = False):
        check_hu_window(*window)
        super().__init__(size=size, window=list(window), keep_empty_slices=keep_empty_slices)
        self.size, self.hu, self.keep_empty_slices = size, tuple(window), keep_empty_slices

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--size", type=int, default=512, help="output side (default 512)")
        add_hu_window_argument(parser, *cls.window)
        parser.add_argument("--keep-empty-slices", action="store_true",
                            help="also keep slices without liver")

    @classmethod
    def settings_from(cls, args) -> dict:
        return {"size": args.size, "window": tuple(args.window),
                "keep_empty_slices": args.keep_empty_slices}

    def find_items(self, root: Path, run: Preparation) -> list[Path]:
        return sorted(folder / name for folder, _, files in walk(root) for name in files
                      if name.startswith("volume-") and is_nifti(name))

    def convert_item(self, volume_path: Path, run: Preparation) -> Converted:
        number = nifti_stem(volume_path)[len("volume-"):]
        candidates = [volume_path.with_name(f"segmentation-{number}{s}") for s in NIFTI_SUFFIXES]
        segmentation_path = next((c for c in candidates if c.is_file()), None)
        if segmentation_path is None:
            raise SampleProblem(volume_path, "missing_label",
                                f"no segmentation-{number}.nii[.gz] beside it")
        hu, seg, _ = read_nifti_pair(volume_path, segmentation_path)
        unexpected = sorted(set(np.unique(seg).tolist()) - {0, 1, 2})
        if unexpected:
            raise SampleProblem(segmentation_path, "unexpected_labels",
                                f"label values {unexpected[:5]} outside "
                                "{0 background, 1 liver, 2 tumour}")
        liver = np.asarray(seg) > 0
        if not liver.any():
            raise SampleProblem(segmentation_path, "no_liver", "no liver voxel")
        run.claim(number, volume_path)
        image = hu_window(np.asarray(hu), *self.hu)
        names = []
        for z in range(hu.shape[2]):
            if not self.keep_empty_slices and not liver[:, :, z].any():
                continue
            name = f"volume-{number}_z{z:04d}.png"
            write_png(run.path("images", name),
                      resize_2d(_axial_slice(image, z), self.size, is_label=False))
            write_png(run.path("labels", name),
                      resize_2d(_axial_slice(liver, z).astype(np.uint8), self.size, True))
            names.append(name)
        return Converted(group=number, samples=names)


def prepare_liver(source: PathLike, output_root: PathLike | None = None, *, size: int = 512,
                  window: tuple[float, float] = LiverPreparer.window,
                  val_fraction: float | None = None, seed: int = 0,
                  keep_empty_slices: bool = False, strict: bool = False,
                  progress: bool = False) -> PreparationReport:
    """LiTS to ``<output_root>/liver`` (default root ``$DETECTRON2_DATASETS``); see
    :class:`LiverPreparer`. ``val_fraction`` defaults to 0.2."""
    preparer = LiverPreparer(size, window, keep_empty_slices)
    plan = SplitPlan.of(val_fraction, preparer.val_fraction, seed)
    root = Path(output_root) if output_root is not None else datasets_root()
    return preparer.prepare(source, root / preparer.folder, plan, strict=strict,
                            progress=progress)
