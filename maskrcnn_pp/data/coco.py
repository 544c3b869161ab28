"""COCO instance data shared by every instance data set: how a binary mask becomes an
annotation, and lazy registration with Detectron2's catalogs."""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np
from pycocotools import mask as mask_util

from ..utils.io import PathLike
from .catalog import DatasetNotPreparedError
from .validation import check_coco_ground_truth, read_json

__all__ = ["encode_mask", "compressed_rle", "rle_as_text", "mask_to_annotation",
           "register_coco_instances_lazy", "register_nuclei_coco"]


def encode_mask(mask: np.ndarray) -> dict:
    """The compressed COCO RLE of a binary (H, W) mask, or a list of them for (H, W, N)."""
    return mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))


def compressed_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """One compressed RLE of a COCO segmentation of a ``height`` x ``width`` image: polygons
    (merged into one mask), an uncompressed RLE (list ``counts``) or a compressed one (as is),
    which is what pycocotools' area, IoU and merge take."""
    if isinstance(segmentation, list):
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


def rle_as_text(rle: dict) -> dict:
    """``rle`` with its ``counts`` as str, as JSON files hold it (pycocotools gives bytes)."""
    counts = rle["counts"]
    return {**rle, "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def mask_to_annotation(mask: np.ndarray, category_id: int = 1) -> dict:
    """A COCO annotation (compressed RLE with a str ``counts``, bbox, area) of one mask."""
    rle = rle_as_text(encode_mask(mask))
    return {"category_id": category_id, "iscrowd": 0, "segmentation": rle,
            "area": int(mask_util.area(rle)), "bbox": [float(v) for v in mask_util.toBbox(rle)]}


def register_coco_instances_lazy(name: str, json_file: PathLike, image_root: PathLike,
                                 metadata: Optional[dict] = None, missing_hint: str = "",
                                 prepare: Optional[Callable[[], object]] = None) -> None:
    """Register a COCO instance set whose files may not exist yet; safe to call again.

    Nothing is read until ``DatasetCatalog.get(name)``, which first calls ``prepare`` (if
    given: e.g. generate the files once); if ``json_file`` is missing then,
    :class:`DatasetNotPreparedError` says which file and (``missing_hint``) how to make it;
    a truncated or malformed one is a :class:`UserError` naming it.
    Registering a name again replaces the earlier registration.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog  # torch: only to register
    from detectron2.data.datasets import load_coco_json

    json_file, image_root = str(json_file), str(image_root)

    def load() -> list:
        if prepare is not None:
            prepare()
        if not os.path.isfile(json_file):
            raise DatasetNotPreparedError(
                f"data set {name!r} is not prepared: {os.path.abspath(json_file)} does not "
                f"exist. {missing_hint}".rstrip())
        check_coco_ground_truth(read_json(json_file), json_file)
        return load_coco_json(json_file, image_root, name)

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="coco", **(metadata or {}))


def register_nuclei_coco(name: str, json_file: PathLike, image_root: PathLike) -> None:
    """Register a COCO instance file of nuclei or cells (yours, or one written by
    ``datasets/prepare_instances.py``) as data set ``name``, for training and evaluation.

    Its metadata asks for the nuclei metrics beside COCO's (``nuclei=True``); category names
    come from the file. Nothing is read until the data set is used.
    """
    register_coco_instances_lazy(name, json_file, image_root, metadata={"nuclei": True},
                                 missing_hint="Write it with datasets/prepare_instances.py, or "
                                              "point register_nuclei_coco at your COCO file.")
