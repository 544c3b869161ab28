"""The semantic output kind: image/label folders in the layout of
:mod:`maskrcnn_pp.data.catalog` (``OUT/<split>/images/<name>``, ``OUT/<split>/labels/<name>``),
and the small readers and writers the semantic preparers share."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

from ...utils.errors import UserError
from ..image_io import Intensity, UnreadableImageError, normalize_intensity, read_nifti
from ..sources import display_name, walk
from .base import Converted, PreparationReport, Preparer, SampleProblem, SplitPlan

__all__ = [
    "SemanticPreparer", "folder_with", "resize_2d", "check_hu_window", "add_hu_window_argument",
    "hu_window", "read_nifti_pair",
]

KINDS = ("images", "labels")
UNSPLIT = ".unsplit"   # where samples wait for the split, inside the staging folder


class SemanticPreparer(Preparer):
    """A preparer whose :meth:`convert_item` writes each sample twice, at
    ``run.path("images", name)`` and ``run.path("labels", name)``, and returns
    ``Converted(group, [name, ...])``."""

    def check_plan(self, plan: SplitPlan) -> None:
        if plan.split:
            raise UserError("--split: the semantic data sets are registered as <folder>_train "
                            "and <folder>_val only (maskrcnn_pp/data/catalog.py)")

    def staged_path(self, staging: Path, kind: str, name: str) -> Path:
        return staging / UNSPLIT / kind / name

    def write_splits(self, staging: Path, splits: dict[str, list[Converted]],
                     report: PreparationReport) -> None:
        for split, chosen in splits.items():
            for kind in KINDS:
                (staging / split / kind).mkdir(parents=True)
            for item in chosen:
                for name in item.samples:
                    for kind in KINDS:
                        (staging / UNSPLIT / kind / name).replace(staging / split / kind / name)
            report.samples[split] = sum(len(item.samples) for item in chosen)
        shutil.rmtree(staging / UNSPLIT, ignore_errors=True)


def folder_with(root: Path, source: Path, *names: str) -> Path:
    """The one folder at or under ``root`` that holds all the sub-folders ``names``
    (an archive usually wraps the data set in a top folder such as ``Kvasir-SEG/``)."""
    def holds(folder: Path) -> bool:
        return all((folder / n).is_dir() for n in names)

    if holds(root):
        return root
    found = [folder for folder, _, _ in walk(root) if holds(folder)]
    wanted = " and ".join(f"{n}/" for n in names)
    if not found:
        raise UserError(f"{source}: expected the folders {wanted} (at its top or in one "
                        "sub-folder)")
    if len(found) > 1:
        places = ", ".join(display_name(f, root, source) for f in found[:4])
        raise UserError(f"{source}: several folders hold {wanted} ({places}); give one of "
                        "them as SRC")
    return found[0]


def resize_2d(array: np.ndarray, size: int, is_label: bool) -> np.ndarray:
    """``size`` x ``size``: nearest for labels, area when shrinking an image, else linear."""
    if array.shape[:2] == (size, size):
        return array
    if is_label:
        return cv2.resize(array, (size, size), interpolation=cv2.INTER_NEAREST)
    shrink = min(array.shape[:2]) > size
    return cv2.resize(array, (size, size),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def check_hu_window(low: float, high: float) -> None:
    if not high > low:
        raise UserError(f"HU window needs low < high, got [{low}, {high}]")


def add_hu_window_argument(parser, low: float, high: float) -> None:
    """``--window LOW HIGH``: the CT preparers' Hounsfield window mapped to 0..255."""
    parser.add_argument("--window", type=float, nargs=2, default=(low, high),
                        metavar=("LOW", "HIGH"),
                        help=f"HU window mapped to 0..255 (default {low:g} {high:g})")


def hu_window(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip Hounsfield units to ``[low, high]`` and map them linearly to uint8 0..255: the
    "range" intensity mode of the one image path, with an error that names the window."""
    check_hu_window(low, high)
    return normalize_intensity(np.asarray(hu), Intensity("range", float(low), float(high)))


def read_nifti_pair(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """``(image, label, image affine)``, or :class:`SampleProblem` for an unreadable file
    or a shape mismatch (named by the image)."""
    try:
        image, affine = read_nifti(image_path)
        label, _ = read_nifti(label_path)
    except UnreadableImageError as err:
        which = "" if err.path == Path(image_path) else f"label {err.path.name}: "
        raise SampleProblem(image_path, "unreadable_volume", which + err.reason) from err
    if image.shape != label.shape:
        raise SampleProblem(image_path, "size_mismatch",
                            f"image {image.shape} and label {label.shape} differ in shape")
    return image, label, affine
