"""DSB2018 nuclei: the Kaggle ``stage1_train`` layout to COCO JSON.

The Kaggle release stores one PNG per nucleus (``<id>/masks/*.png``; some re-exports use
JPEG, which is read too and reported as lossy) beside each image (``<id>/images/<id>.png``).
Detectron2 wants one COCO file with RLE masks, so :class:`Dsb2018Preparer` writes
``images/<id>.png`` (RGB, 8 bit) and ``annotations/instances_<split>.json`` once; a bad file
is skipped and reported by name instead of failing a conversion of hundreds of images. The
readers here are also those of the semantic nuclei patches (:mod:`.nuclei_patches`), so both
data sets see the same pixels and reject the same files.
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from ...utils.errors import UserError
from ...utils.io import PathLike
from ..coco import mask_to_annotation
from ..image_io import IMAGE_EXTENSIONS, Intensity, read_image_rgb
from ..sources import walk
from .base import (
    Converted,
    Preparation,
    PreparationReport,
    SampleProblem,
    SplitPlan,
    read_sample_file,
    write_png,
)
from .instance_output import NUCLEUS_CATEGORY, InstanceImage, InstancePreparer

__all__ = [
    "Dsb2018Preparer", "convert_dsb2018", "find_sample_folders", "read_sample", "mask_files",
    "is_jpeg", "read_image_bgr8", "read_mask",
]

LOSSY = "JPEG mask: lossy, thresholded at half range"


def find_sample_folders(root: PathLike) -> list[Path]:
    """Every folder under ``root`` that holds an ``images/`` folder, sorted by image id;
    symlinked folders are followed, hidden and ``__MACOSX`` ones not searched."""
    found = []
    for folder, dirnames, _ in walk(Path(root)):
        if "images" in dirnames:
            found.append(folder)
            dirnames.remove("images")
    return sorted(found, key=lambda p: (p.name, str(p)))


def read_image_bgr8(path: Path) -> np.ndarray:
    """A DSB2018 image as 8-bit BGR (OpenCV order), by :func:`read_image_rgb`'s rules;
    a 16-bit image is stretched from its minimum..maximum (the converter's documented rule,
    which keeps every prepared data set as it was)."""
    rgb = read_sample_file(path, "unreadable_image",
                           partial(read_image_rgb, intensity=Intensity("minmax")))
    return np.ascontiguousarray(rgb[..., ::-1])


def mask_files(folder: Path) -> list[Path]:
    """The per-nucleus mask files of a sample folder (``masks/*`` in an image format)."""
    return sorted(path for path in (folder / "masks").glob("*")
                  if path.suffix.lower() in IMAGE_EXTENSIONS)


def is_jpeg(path: Path) -> bool:
    """Whether the file holds JPEG data (lossy), whatever its name says."""
    with open(path, "rb") as file:
        return file.read(3) == b"\xff\xd8\xff"


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask file as a boolean array: a pixel is foreground where any channel is non-zero,
    or, for JPEG, above half the range (its ringing around edges is non-zero, and ``> 0``
    would inflate nuclei by ~44% and invent overlaps)."""
    pixels = read_sample_file(path, "unreadable_mask")
    if pixels.shape[:2] != shape:
        raise SampleProblem(path, "size_mismatch",
                            f"mask is {pixels.shape[1]}x{pixels.shape[0]} (w x h) but its "
                            f"image is {shape[1]}x{shape[0]}")
    threshold = np.iinfo(pixels.dtype).max // 2 if is_jpeg(path) else 0
    return (pixels.max(axis=2) if pixels.ndim == 3 else pixels) > threshold


def read_sample(folder: Path, run: Preparation) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """The image of a sample folder (8-bit BGR) and its non-empty nucleus masks, read one
    at a time (an image may have hundreds). Empty masks are reported as ignored, JPEG ones
    as lossy; a missing image, no masks or a bad file is a :class:`SampleProblem`."""
    image_path = folder / "images" / f"{folder.name}.png"
    if not image_path.is_file():
        raise SampleProblem(folder / "images", "missing_image",
                            f"no {folder.name}.png in images/")
    paths = mask_files(folder)
    if not paths:
        raise SampleProblem(folder, "no_masks", "no masks/*.png (or .jpg) for this image")
    image = read_image_bgr8(image_path)

    def masks() -> Iterator[np.ndarray]:
        for path in paths:
            mask = read_mask(path, image.shape[:2])
            if is_jpeg(path):
                run.warn(path, "lossy_mask", LOSSY)
            if not mask.any():
                run.ignore(path, "empty_mask", "mask is empty")
                continue
            yield mask

    return image, masks()


class Dsb2018Preparer(InstancePreparer):
    """DSB2018 ``stage1_train`` to COCO: one image per sample folder, one annotation per
    non-empty mask (overlapping masks are kept and reported as warnings)."""

    name = "dsb2018"
    folder = "dsb2018"
    description = "Convert DSB2018 stage1_train (folder, .zip or .tar.gz) to COCO JSON"
    source_help = "a DSB2018 stage1_train folder, or a .zip / .tar.gz / .tar of one"

    def coco_description(self, source: str) -> str:
        return "DSB2018 stage 1 nuclei, converted by maskrcnn_pp"

    def find_items(self, root: Path, run: Preparation) -> list[Path]:
        folders = find_sample_folders(root)
        if not folders:
            raise UserError(f"no image folders (<id>/images/<id>.png) found in {run.source}")
        return folders

    def convert_item(self, folder: Path, run: Preparation) -> Converted:
        run.claim(folder.name, folder)
        image, masks = read_sample(folder, run)
        height, width = image.shape[:2]
        record = InstanceImage(folder.name, f"{folder.name}.png", height, width)
        coverage = np.zeros((height, width), np.uint16)
        for mask in masks:
            coverage += mask
            record.annotations.append(mask_to_annotation(mask, NUCLEUS_CATEGORY["id"]))
        overlap = int(np.count_nonzero(coverage > 1))
        if overlap:
            run.warn(folder, "overlapping_masks", f"{overlap} pixel(s) lie in more than one mask")
        write_png(run.path("images", record.file_name), image)
        return Converted(group=folder.name, samples=[record])


def convert_dsb2018(src: PathLike, out: PathLike, val_fraction: float | None = None,
                    seed: int = 0, strict: bool = False, progress: bool = True, *,
                    split: str | None = None,
                    keep_in_train: PathLike | None = None) -> PreparationReport:
    """Convert a ``stage1_train``-style folder or archive (.zip, .tar.gz, .tgz, .tar) into
    the data set folder ``out`` (replaced whole when the run succeeds).

    Writes ``out/images/<id>.png``, ``out/annotations/instances_{train,val}.json`` (a split
    that depends only on the converted ids and ``seed``; ``val_fraction`` default 0.1;
    ``keep_in_train``: a COCO file whose images never enter validation; ``split``: one named
    split of every image instead) and ``out/report.json``. Unreadable images or masks, masks
    of the wrong size and folders without masks skip their image; empty masks are left out;
    overlapping masks are kept. All of these are logged and reported by file name. With
    ``strict`` any problem (not an overlap or a lossy mask) raises :class:`UserError` after
    ``report.json`` is written, and ``out`` holds nothing else.
    """
    plan = SplitPlan.of(val_fraction, Dsb2018Preparer.val_fraction, seed, split, keep_in_train)
    return Dsb2018Preparer().prepare(src, out, plan, strict=strict, progress=progress)
