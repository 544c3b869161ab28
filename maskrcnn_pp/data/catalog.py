"""Where data sets live, and the catalog of the four semantic tasks of UNet++ (Table 1).

Every prepared semantic data set has one layout, under ``$DETECTRON2_DATASETS`` (default
``./datasets``)::

    <folder>/{train,val}/images/<name>.png|.nii.gz    uint8 intensities 0..255
    <folder>/{train,val}/labels/<name>.png|.nii.gz    uint8 class ids (0 background, 1 object)
    <folder>/report.json                               what was kept, skipped and why

written by :mod:`maskrcnn_pp.data.prepare` and registered here as ``<key>_train`` /
``<key>_val``, lazily: nothing is listed until a data set is used.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..utils.errors import UserError
from .image_io import IMAGE_EXTENSIONS, is_nifti, nifti_stem

__all__ = [
    "datasets_root", "DatasetNotPreparedError", "SemanticDataError", "SPLITS",
    "SemanticDatasetInfo", "SEMANTIC_DATASETS", "load_semantic_split",
    "register_semantic_datasets",
]

SPLITS = ("train", "val")


def datasets_root() -> Path:
    """Detectron2's convention: ``$DETECTRON2_DATASETS``, default ``./datasets``."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


class DatasetNotPreparedError(UserError, FileNotFoundError):
    """A registered data set whose files have not been written yet; the message says how."""


class SemanticDataError(UserError, ValueError):
    """A semantic data set or sample that cannot be used although its files decode (no
    label for an image, no usable source, a label that is not a class id); the message
    names the file. A file that does not decode is an
    :class:`~maskrcnn_pp.data.image_io.UnreadableImageError`."""


@dataclass(frozen=True)
class SemanticDatasetInfo:
    """Where a prepared data set lives and how to make it."""

    folder: str
    classes: tuple[str, ...]
    prepare_command: str


SEMANTIC_DATASETS: dict[str, SemanticDatasetInfo] = {
    "nuclei_patches": SemanticDatasetInfo(
        "nuclei_patches", ("background", "nucleus"),
        "python datasets/prepare_nuclei_patches.py <stage1_train folder or .tar.gz>"),
    "polyp_kvasir": SemanticDatasetInfo(
        "polyp_kvasir", ("background", "polyp"),
        "python datasets/prepare_polyp.py --name kvasir <Kvasir-SEG folder>"),
    "polyp_clinicdb": SemanticDatasetInfo(
        "polyp_clinicdb", ("background", "polyp"),
        "python datasets/prepare_polyp.py --name clinicdb <CVC-ClinicDB folder>"),
    "liver": SemanticDatasetInfo(
        "liver", ("background", "liver"),
        "python datasets/prepare_liver.py <folder of LiTS volume-N/segmentation-N>"),
    "nodule": SemanticDatasetInfo(
        "nodule", ("background", "nodule"),
        "python datasets/prepare_nodule.py <folder with images/ and labels/>"),
}


def _sample_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                  and (is_nifti(p) or p.suffix.lower() in IMAGE_EXTENSIONS))


def load_semantic_split(split_dir: Path) -> list[dict]:
    """Dataset dicts (``file_name``, ``sem_seg_file_name``, ``image_id``) of one prepared
    split folder; every image needs a label of the same name."""
    split_dir = Path(split_dir)
    image_dir, label_dir = split_dir / "images", split_dir / "labels"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise DatasetNotPreparedError(f"{split_dir}: expected the folders images/ and labels/")
    dicts = []
    for image_path in _sample_files(image_dir):
        label_path = label_dir / image_path.name
        if not label_path.is_file():
            raise SemanticDataError(f"{image_path}: no label {label_path}")
        dicts.append({"file_name": str(image_path), "sem_seg_file_name": str(label_path),
                      "image_id": nifti_stem(image_path)})
    if not dicts:
        raise SemanticDataError(f"{image_dir}: no images")
    return dicts


def _lazy_loader(dataset_name: str, info: SemanticDatasetInfo, split: str) -> Callable:
    def load() -> list[dict]:
        split_dir = datasets_root() / info.folder / split
        if not split_dir.is_dir():
            raise DatasetNotPreparedError(
                f"data set {dataset_name!r} is not prepared: {split_dir} does not exist; run "
                f"`{info.prepare_command} {datasets_root() / info.folder}`")
        return load_semantic_split(split_dir)

    return load


def register_semantic_datasets() -> None:
    """Register ``<key>_train`` / ``<key>_val`` for every entry of :data:`SEMANTIC_DATASETS`.

    Lazy (files are listed when the data set is first used, under the
    ``$DETECTRON2_DATASETS`` of that moment) and idempotent.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog  # torch: only to register

    for key, info in SEMANTIC_DATASETS.items():
        for split in SPLITS:
            name = f"{key}_{split}"
            if name in DatasetCatalog.list():
                continue
            DatasetCatalog.register(name, _lazy_loader(name, info, split))
            MetadataCatalog.get(name).set(stuff_classes=list(info.classes),
                                          evaluator_type="semantic",
                                          prepare_command=info.prepare_command)
