"""The instance output kind: COCO JSON with RLE masks, as Detectron2 reads it.

``OUT/images/<file>`` (written by :meth:`Preparer.convert_item` at
``run.path("images", file)``) and ``OUT/annotations/instances_<split>.json`` per split, one
``nucleus`` category, image and annotation ids unique across splits (in image-id order) so
the files can be merged. A folder of this layout under ``$DETECTRON2_DATASETS`` registers
as ``<folder>_<split>`` (:func:`maskrcnn_pp.data.instances.register_prepared_instances`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...utils.io import atomic_write_json
from .base import Converted, PreparationReport, Preparer

__all__ = ["NUCLEUS_CATEGORY", "InstanceImage", "InstancePreparer"]

NUCLEUS_CATEGORY = {"id": 1, "name": "nucleus"}


@dataclass
class InstanceImage:
    """One converted image: its file in ``images/`` and its annotations (without ids yet)."""

    image_id: str
    file_name: str
    height: int
    width: int
    annotations: list[dict] = field(default_factory=list)
    coco_id: int = 0


class InstancePreparer(Preparer):
    """A preparer whose :meth:`convert_item` returns
    ``Converted(group=image_id, samples=[InstanceImage(...)])``."""

    def coco_description(self, source: str) -> str:
        """The ``info.description`` of the COCO files of ``source``."""
        raise NotImplementedError

    def staged_path(self, staging: Path, kind: str, name: str) -> Path:
        return staging / kind / name

    def write_splits(self, staging: Path, splits: dict[str, list[Converted]],
                     report: PreparationReport) -> None:
        images = sorted((image for chosen in splits.values() for item in chosen
                         for image in item.samples), key=lambda image: image.image_id)
        next_annotation_id = 1
        for number, image in enumerate(images, start=1):
            image.coco_id = number
            for annotation in image.annotations:
                annotation["id"], annotation["image_id"] = next_annotation_id, number
                next_annotation_id += 1
        description = self.coco_description(report.source)
        for split, chosen in splits.items():
            ids = {item.group for item in chosen}
            in_split = [image for image in images if image.image_id in ids]
            atomic_write_json(staging / "annotations" / f"instances_{split}.json", {
                "info": {"description": description},
                "images": [{"id": image.coco_id, "file_name": image.file_name,
                            "height": image.height, "width": image.width}
                           for image in in_split],
                "annotations": [a for image in in_split for a in image.annotations],
                "categories": [NUCLEUS_CATEGORY]})
            report.samples[split] = len(in_split)
        report.objects = next_annotation_id - 1
