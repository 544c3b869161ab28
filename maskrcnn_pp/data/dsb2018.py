"""DSB2018 nuclei: convert the Kaggle ``stage1_train`` layout to COCO JSON, and register it.

The Kaggle release stores one PNG per nucleus (``<id>/masks/*.png``; some re-exports use
JPEG, which is read too and reported as lossy) beside each image
(``<id>/images/<id>.png``). Detectron2 wants one COCO file with RLE masks, so
:func:`convert_dsb2018` writes ``images/<id>.png`` (RGB, 8 bit) and
``annotations/instances_{train,val}.json`` once; a bad file is skipped and reported by name
instead of failing a conversion of hundreds of images. ``dsb2018_train`` / ``dsb2018_val``
are registered at import and read only when used.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..utils.errors import UserError
from ..utils.io import PathLike, atomic_write_bytes
from .catalog import SPLITS, datasets_root
from .coco import mask_to_annotation, register_coco_instances_lazy
from .conversion import (
    NUCLEUS_CATEGORY,
    ConversionReport,
    Sample,
    SampleProblem,
    read_sample_file,
    record_problem,
    write_conversion,
)
from .image_io import IMAGE_EXTENSIONS, Intensity, read_image_rgb
from .sources import display_name, source_root

__all__ = [
    "convert_dsb2018", "find_sample_folders", "is_jpeg", "mask_files", "register_dsb2018",
    "prepare_command", "read_image_bgr8", "read_mask",
]

DSB2018_DIRNAME = "dsb2018"


# --------------------------------------------------------------------------- conversion


def convert_dsb2018(src: PathLike, out: PathLike, val_fraction: float = 0.1, seed: int = 0,
                    strict: bool = False, progress: bool = True) -> ConversionReport:
    """Convert a ``stage1_train``-style folder or archive (.zip, .tar.gz, .tgz, .tar) to COCO.

    Writes ``out/images/<id>.png``, ``out/annotations/instances_{train,val}.json`` (a split
    that depends only on the converted ids and ``seed``) and ``out/report.json``. Unreadable
    images or masks, masks of the wrong size and folders without masks skip their image;
    empty masks are dropped; overlapping masks are kept. All of these are logged and
    reported by file name. With ``strict`` any problem other than an overlap raises
    :class:`UserError` after ``report.json`` is written, and no annotation file is written.
    A missing or unreadable ``src`` raises :class:`UserError`.
    """
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    out = Path(out)
    report = ConversionReport(source=str(src), val_fraction=val_fraction, seed=seed)
    samples: list[Sample] = []
    with source_root(Path(src)) as root:
        folders = find_sample_folders(root)
        if not folders:
            raise UserError(f"no image folders (<id>/images/<id>.png) found in {src}")
        report.images_found = len(folders)
        seen = set()
        with logging_redirect_tqdm():
            for folder in tqdm(folders, desc="dsb2018", unit="image", disable=not progress):
                try:
                    if folder.name in seen:
                        raise SampleProblem(folder, "duplicate_id",
                                             "another folder has the same image id")
                    seen.add(folder.name)
                    sample = _convert_sample(folder, out / "images")
                except SampleProblem as problem:
                    record_problem(report, root, problem)
                    continue
                samples.append(sample)
                for mask_path in sample.empty_masks:
                    record_problem(report, root,
                                   SampleProblem(mask_path, "empty_mask", "mask is empty"))
                report.lossy_masks += [display_name(p, root, Path(src))
                                       for p in sample.lossy_masks]
                if sample.overlap_pixels:
                    report.overlaps.append({"image": sample.image_id,
                                            "overlap_pixels": sample.overlap_pixels})

    return write_conversion(samples, report, out, strict, _coco_dict)


def find_sample_folders(root: PathLike) -> list[Path]:
    """Every folder under ``root`` that holds an ``images/`` folder, sorted by image id.

    Hidden folders and macOS ``__MACOSX`` resource forks are not searched.
    """
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
        if "images" in dirnames:
            found.append(Path(dirpath))
            dirnames.remove("images")
    return sorted(found, key=lambda p: (p.name, str(p)))


def _convert_sample(folder: Path, image_dir: Path) -> Sample:
    """Read one image and its masks, write the image, return its annotations (no ids yet)."""
    image_id = folder.name
    image_path = folder / "images" / f"{image_id}.png"
    if not image_path.is_file():
        raise SampleProblem(folder / "images", "missing_image", f"no {image_id}.png in images/")
    mask_paths = mask_files(folder)
    if not mask_paths:
        raise SampleProblem(folder, "no_masks", "no masks/*.png (or .jpg) for this image")
    image = read_image_bgr8(image_path)
    height, width = image.shape[:2]

    sample = Sample(image_id=image_id, height=height, width=width)
    coverage = np.zeros((height, width), np.uint16)
    for mask_path in mask_paths:
        mask = read_mask(mask_path, (height, width))
        if is_jpeg(mask_path):
            sample.lossy_masks.append(mask_path)
        if not mask.any():
            sample.empty_masks.append(mask_path)
            continue
        coverage += mask
        sample.annotations.append(mask_to_annotation(mask, NUCLEUS_CATEGORY["id"]))
    sample.overlap_pixels = int(np.count_nonzero(coverage > 1))

    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise SampleProblem(image_path, "unreadable_image", "could not be re-encoded as PNG")
    atomic_write_bytes(image_dir / f"{image_id}.png", png.tobytes())
    return sample


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


def _coco_dict(samples: list[Sample]) -> dict:
    images, annotations = [], []
    for sample in samples:
        images.append({"id": sample.coco_id, "file_name": f"{sample.image_id}.png",
                       "height": sample.height, "width": sample.width})
        annotations.extend(sample.annotations)
    return {"info": {"description": "DSB2018 stage 1 nuclei, converted by maskrcnn_pp"},
            "images": images, "annotations": annotations, "categories": [NUCLEUS_CATEGORY]}


# --------------------------------------------------------------------------- registration


def prepare_command(root: PathLike) -> str:
    """The shell command that writes the DSB2018 files that ``root`` should hold."""
    return f"python datasets/prepare_dsb2018.py PATH/TO/stage1_train.zip {root}"


def register_dsb2018(root: PathLike | None = None) -> None:
    """Register ``dsb2018_train`` / ``dsb2018_val`` from ``root`` (default
    ``$DETECTRON2_DATASETS/dsb2018``)."""
    root = Path(root) if root is not None else datasets_root() / DSB2018_DIRNAME
    hint = f"Prepare it with: {prepare_command(root)}"
    for split in SPLITS:
        register_coco_instances_lazy(
            f"dsb2018_{split}", root / "annotations" / f"instances_{split}.json",
            root / "images", metadata={"thing_classes": [NUCLEUS_CATEGORY["name"]],
                                       "nuclei": True},
            missing_hint=hint)
