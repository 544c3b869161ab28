"""Instance label images (one integer id per object) to COCO JSON, and registering them.

Cellpose, StarDist, napari and QuPath export instance annotations as label images: 0 is
background, every other value one object. :func:`convert_instances` reads the layout they
use, ``images/<stem>.<ext>`` beside ``masks/<stem>.<ext>`` (a ``<stem>_masks`` name is
accepted too), and writes what Detectron2 reads: ``images/`` (8-bit images as PNG; 16-bit
and float images as TIFF at full depth, normalized when read) and
``annotations/instances_{train,val}.json`` with one RLE mask per label. As for DSB2018, a
bad item is skipped and named in ``report.json``; ``--strict`` makes it an error.

Folders under ``$DETECTRON2_DATASETS`` with that output layout register as
``<folder>_train`` / ``<folder>_val`` at import (:func:`register_prepared_instances`), so
``tools/train_net.py`` trains on them by name.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import tifffile
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..utils.errors import UserError
from ..utils.io import PathLike, atomic_write_bytes
from .catalog import SPLITS, datasets_root
from .coco import mask_to_annotation, register_nuclei_coco
from .conversion import (
    NUCLEUS_CATEGORY,
    ConversionReport,
    Sample,
    SampleProblem,
    read_sample_file,
    record_problem,
    write_conversion,
)
from .image_io import IMAGE_EXTENSIONS, read_label
from .sources import source_root

__all__ = ["convert_instances", "read_label_image", "register_prepared_instances"]

logger = logging.getLogger(__name__)

MASK_SUFFIX = "_masks"


def convert_instances(src: PathLike, out: PathLike, val_fraction: float = 0.1, seed: int = 0,
                      strict: bool = False, progress: bool = True) -> ConversionReport:
    """Convert ``images/`` + ``masks/`` label images (in the folder or archive ``src``, or
    the first folder below it that holds both) to COCO under ``out``.

    Writes ``out/images/``, ``out/annotations/instances_{train,val}.json`` (a seeded split
    of the converted stems) and ``out/report.json``. An image without a label image, a
    label image of another size, without objects, with negative or non-integer values, or
    a file that cannot be read skips its image and is reported by name. With ``strict``
    any problem raises :class:`UserError` after ``report.json`` is written, and no
    annotation file is written.
    """
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    out = Path(out)
    report = ConversionReport(source=str(src), val_fraction=val_fraction, seed=seed)
    samples: list[Sample] = []
    file_names: dict[str, str] = {}
    with source_root(Path(src)) as root:
        layout = _find_layout(root)
        if layout is None:
            raise UserError(f"no images/ folder beside a masks/ folder in {src}: expected "
                            "images/<name>.<ext> and masks/<name>[_masks].<ext>")
        images = sorted(p for p in (layout / "images").iterdir()
                        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        masks = _label_images_by_stem(layout / "masks")
        report.images_found = len(images)
        with logging_redirect_tqdm():
            for image_path in tqdm(images, desc="instances", unit="image",
                                   disable=not progress):
                try:
                    if image_path.stem in file_names:
                        raise SampleProblem(image_path, "duplicate_id",
                                             "another image has the same name stem")
                    sample, file_names[image_path.stem] = _convert_sample(
                        image_path, masks.get(image_path.stem, []), out / "images")
                except SampleProblem as problem:
                    record_problem(report, root, problem)
                    continue
                samples.append(sample)
    if not samples and not report.problems:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {src}")

    def coco_dict(chosen: list[Sample]) -> dict:
        return {"info": {"description": f"instance label images of {src}, converted by "
                                        "maskrcnn_pp"},
                "images": [{"id": s.coco_id, "file_name": file_names[s.image_id],
                            "height": s.height, "width": s.width} for s in chosen],
                "annotations": [a for s in chosen for a in s.annotations],
                "categories": [NUCLEUS_CATEGORY]}

    return write_conversion(samples, report, out, strict, coco_dict)


def _find_layout(root: Path) -> Path | None:
    """The first folder (``root`` or below, e.g. inside an archive) with images/ and masks/."""
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
        if "images" in dirnames and "masks" in dirnames:
            return Path(dirpath)
    return None


def _label_images_by_stem(mask_dir: Path) -> dict[str, list[Path]]:
    """Label images keyed by the stem of their image (``x.tif`` and ``x_masks.png`` -> x)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(mask_dir.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            stem = path.stem[:-len(MASK_SUFFIX)] if path.stem.endswith(MASK_SUFFIX) else path.stem
            found.setdefault(stem, []).append(path)
    return found


def read_label_image(path: Path) -> np.ndarray:
    """A label image as a 2-D int64 array, or :class:`SampleProblem` saying why it is not
    one (unreadable or not one channel, negative or non-integer values)."""
    labels = read_sample_file(path, "unreadable_mask", read_label)
    if labels.dtype.kind == "f" and (not np.isfinite(labels).all()
                                     or (labels != np.round(labels)).any()):
        raise SampleProblem(path, "non_integer_labels",
                            "holds values that are not whole numbers; a label image "
                            "holds one integer id per object")
    if labels.min() < 0:
        raise SampleProblem(path, "negative_labels", "holds negative values")
    return labels.astype(np.int64)


def _convert_sample(image_path: Path, mask_paths: list[Path],
                    image_dir: Path) -> tuple[Sample, str]:
    """One image and its label image -> the written image's name and its annotations."""
    if not mask_paths:
        raise SampleProblem(image_path, "missing_mask",
                            f"no masks/{image_path.stem}.* or masks/{image_path.stem}"
                            f"{MASK_SUFFIX}.* for this image")
    if len(mask_paths) > 1:
        raise SampleProblem(image_path, "ambiguous_mask", "several label images match: "
                            + ", ".join(p.name for p in mask_paths))
    image = read_sample_file(image_path, "unreadable_image")
    labels = read_label_image(mask_paths[0])
    height, width = image.shape[:2]
    if labels.shape != (height, width):
        raise SampleProblem(mask_paths[0], "size_mismatch",
                            f"label image is {labels.shape[1]}x{labels.shape[0]} (w x h) but "
                            f"its image is {width}x{height}")
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if not ids.size:
        raise SampleProblem(mask_paths[0], "no_objects", "label image holds no object "
                            "(every pixel is 0)")
    sample = Sample(image_id=image_path.stem, height=height, width=width,
                     annotations=[mask_to_annotation(labels == i, NUCLEUS_CATEGORY["id"])
                                  for i in ids])
    return sample, _write_image(image, image_path, image_dir)


def _write_image(image: np.ndarray, source: Path, image_dir: Path) -> str:
    """8-bit images as PNG (as decoded), deeper ones as TIFF at their depth; the file name."""
    if image.dtype == np.uint8:
        channels = image.shape[2] if image.ndim == 3 else 1
        to_bgr = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}.get(channels)
        ok, png = cv2.imencode(".png", image if to_bgr is None else cv2.cvtColor(image, to_bgr))
        if not ok:
            raise SampleProblem(source, "unreadable_image", "could not be re-encoded as PNG")
        name = f"{source.stem}.png"
        atomic_write_bytes(image_dir / name, png.tobytes())
        return name
    name = f"{source.stem}.tif"
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    atomic_write_bytes(image_dir / name, buffer.getvalue())
    return name


def register_prepared_instances(root: PathLike | None = None) -> None:
    """Register every prepared folder under ``root`` (default ``$DETECTRON2_DATASETS``)
    that holds ``annotations/instances_{train,val}.json`` and ``images/`` as
    ``<folder>_train`` / ``<folder>_val``, unless a data set of that name exists."""
    from detectron2.data import DatasetCatalog

    root = Path(root) if root is not None else datasets_root()
    if not root.is_dir():
        return
    taken = set(DatasetCatalog.list())
    for folder in sorted(p for p in root.iterdir() if (p / "images").is_dir()):
        for split in SPLITS:
            json_file = folder / "annotations" / f"instances_{split}.json"
            name = f"{folder.name}_{split}"
            if json_file.is_file() and name not in taken:
                register_nuclei_coco(name, json_file, folder / "images")
