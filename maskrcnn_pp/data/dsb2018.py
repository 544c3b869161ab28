"""The DSB2018 nuclei data set: ``dsb2018_train`` / ``dsb2018_val`` are registered at import
and read only when used. They are written by ``datasets/prepare_dsb2018.py``
(:mod:`maskrcnn_pp.data.prepare.dsb2018`)."""
from __future__ import annotations

from pathlib import Path

from ..utils.io import PathLike
from .catalog import SPLITS, datasets_root
from .coco import register_coco_instances_lazy
from .prepare.dsb2018 import convert_dsb2018  # still importable from here: studies call it
from .prepare.instance_output import NUCLEUS_CATEGORY

__all__ = ["DSB2018_DIRNAME", "convert_dsb2018", "prepare_command", "register_dsb2018"]

DSB2018_DIRNAME = "dsb2018"


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
