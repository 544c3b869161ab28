"""Instance label images (one integer id per object) to COCO JSON.

Cellpose, StarDist, napari and QuPath export instance annotations as label images: 0 is
background, every other value one object. :class:`InstancesPreparer` reads the layout they
use, ``images/<stem>.<ext>`` beside ``masks/<stem>.<ext>`` (a ``<stem>_masks`` name is
accepted too), and writes what Detectron2 reads: ``images/`` (8-bit images as PNG; 16-bit
and float images as TIFF at full depth, normalized when read) and
``annotations/instances_<split>.json`` with one RLE mask per label.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile

from ...utils.errors import UserError
from ...utils.io import PathLike
from ..coco import mask_to_annotation
from ..image_io import IMAGE_EXTENSIONS, read_label
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

__all__ = ["InstancesPreparer", "convert_instances", "read_label_image"]

MASK_SUFFIX = "_masks"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
LAYOUT = "images/<name>.<ext> and masks/<name>[_masks].<ext>"


def _image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir()
                  if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."))


def _label_images_by_stem(mask_dir: Path) -> dict[str, list[Path]]:
    """Label images keyed by the stem of their image (``x.tif`` and ``x_masks.png`` -> x)."""
    found: dict[str, list[Path]] = {}
    for path in _image_files(mask_dir):
        stem = path.stem[:-len(MASK_SUFFIX)] if path.stem.endswith(MASK_SUFFIX) else path.stem
        found.setdefault(stem, []).append(path)
    return found


def read_label_image(path: Path) -> np.ndarray:
    """A label image as a 2-D integer array, or :class:`SampleProblem` saying why it is not
    one (unreadable or not one channel, negative or non-integer values)."""
    labels = read_sample_file(path, "unreadable_mask", read_label)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise SampleProblem(path, "non_integer_labels",
                                "holds values that are not whole numbers; a label image "
                                "holds one integer id per object")
        labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise SampleProblem(path, "negative_labels", "holds negative values")
    return labels


def _write_image(image: np.ndarray, stem: str, run: Preparation) -> str:
    """8-bit images as PNG (as decoded), deeper ones as TIFF at their depth; the file name."""
    if image.dtype == np.uint8:
        channels = image.shape[2] if image.ndim == 3 else 1
        to_bgr = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}.get(channels)
        name = f"{stem}.png"
        write_png(run.path("images", name),
                  image if to_bgr is None else cv2.cvtColor(image, to_bgr))
        return name
    name = f"{stem}.tif"
    tifffile.imwrite(run.path("images", name), image)
    return name


class InstancesPreparer(InstancePreparer):
    """Label images (Cellpose, StarDist, napari, QuPath) to COCO: one annotation per label
    id of each image's label image."""

    name = "instances"
    folder = "<the name of SRC>"
    description = ("Convert instance label images (Cellpose, StarDist, napari, QuPath) to "
                   "COCO JSON")
    source_help = f"a folder (or .zip / .tar.gz) holding {LAYOUT}"

    def folder_name(self, source: Path) -> str:
        """The source's name without an archive suffix (``my_cells.zip`` -> ``my_cells``)."""
        name = Path(source).resolve().name
        for suffix in ARCHIVE_SUFFIXES:
            if name.lower().endswith(suffix):
                return name[:-len(suffix)]
        return name

    def coco_description(self, source: str) -> str:
        return f"instance label images of {source}, converted by maskrcnn_pp"

    def find_items(self, root: Path, run: Preparation) -> list[tuple[Path, list[Path]]]:
        """The first folder (``root`` or below) with images/ and masks/: its images, each
        with the label images of its name."""
        layout = next((folder for folder, dirnames, _ in walk(root)
                       if "images" in dirnames and "masks" in dirnames), None)
        if layout is None:
            raise UserError(f"no images/ folder beside a masks/ folder in {run.source}: "
                            f"expected {LAYOUT}")
        images = _image_files(layout / "images")
        if not images:
            raise UserError(f"{run.name_of(layout / 'images')}: no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        masks = _label_images_by_stem(layout / "masks")
        if not masks:
            raise UserError(f"{run.name_of(layout / 'masks')}: no label images for the "
                            f"{len(images)} images of images/: expected "
                            f"masks/<name>.<ext> or masks/<name>{MASK_SUFFIX}.<ext> "
                            f"({', '.join(IMAGE_EXTENSIONS)}), one integer id per object")
        return [(image, masks.get(image.stem, [])) for image in images]

    def convert_item(self, item: tuple[Path, list[Path]], run: Preparation) -> Converted:
        image_path, mask_paths = item
        stem = image_path.stem
        run.claim(stem, image_path)
        if not mask_paths:
            raise SampleProblem(image_path, "missing_mask",
                                f"no masks/{stem}.* or masks/{stem}{MASK_SUFFIX}.* for this "
                                "image")
        if len(mask_paths) > 1:
            raise SampleProblem(image_path, "ambiguous_mask", "several label images match: "
                                + ", ".join(p.name for p in mask_paths))
        image = read_sample_file(image_path, "unreadable_image")
        labels = read_label_image(mask_paths[0])
        height, width = image.shape[:2]
        if labels.shape != (height, width):
            raise SampleProblem(mask_paths[0], "size_mismatch",
                                f"label image is {labels.shape[1]}x{labels.shape[0]} (w x h) "
                                f"but its image is {width}x{height}")
        ids = np.unique(labels)
        ids = ids[ids != 0]
        if not ids.size:
            raise SampleProblem(mask_paths[0], "no_objects", "label image holds no object "
                                "(every pixel is 0)")
        record = InstanceImage(stem, _write_image(image, stem, run), height, width,
                               [mask_to_annotation(labels == i, NUCLEUS_CATEGORY["id"])
                                for i in ids])
        return Converted(group=stem, samples=[record])


def convert_instances(src: PathLike, out: PathLike, val_fraction: float | None = None,
                      seed: int = 0, strict: bool = False, progress: bool = True, *,
                      split: str | None = None,
                      keep_in_train: PathLike | None = None) -> PreparationReport:
    """Convert ``images/`` + ``masks/`` label images (in the folder or archive ``src``, or
    the first folder below it that holds both) into the data set folder ``out``, as
    :func:`~.dsb2018.convert_dsb2018` does for DSB2018 (same split, report and ``strict``).

    An image without a label image, a label image of another size, without objects, with
    negative or non-integer values, or a file that cannot be read skips its image and is
    reported by name. A ``masks/`` folder without any label image is an error.
    """
    plan = SplitPlan.of(val_fraction, InstancesPreparer.val_fraction, seed, split,
                        keep_in_train)
    return InstancesPreparer().prepare(src, out, plan, strict=strict, progress=progress)
