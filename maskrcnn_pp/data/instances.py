"""Prepared instance data sets register themselves by folder name.

Every folder under ``$DETECTRON2_DATASETS`` in the layout the instance preparers write
(``images/`` and ``annotations/instances_<split>.json``, see
:mod:`maskrcnn_pp.data.prepare.instance_output`) registers as ``<folder>_<split>`` at import
(:func:`register_prepared_instances`), with the nuclei metadata, so ``tools/train_net.py``
trains and evaluates on it by name: ``datasets/my_cells`` gives ``my_cells_train`` and
``my_cells_val``, a set written with ``--split test`` gives ``<folder>_test``.
"""
from __future__ import annotations

from pathlib import Path

from ..utils.io import PathLike
from .catalog import datasets_root
from .coco import register_nuclei_coco

__all__ = ["register_prepared_instances"]

PREFIX = "instances_"


def register_prepared_instances(root: PathLike | None = None) -> None:
    """Register every ``annotations/instances_<split>.json`` of every prepared folder under
    ``root`` (default ``$DETECTRON2_DATASETS``) that also holds ``images/``, as
    ``<folder>_<split>``, unless a data set of that name exists. Hidden folders (a
    preparation in progress) are not data sets."""
    from detectron2.data import DatasetCatalog  # torch: only to register

    root = Path(root) if root is not None else datasets_root()
    if not root.is_dir():
        return
    taken = set(DatasetCatalog.list())
    for folder in sorted(p for p in root.iterdir()
                         if not p.name.startswith(".") and (p / "images").is_dir()):
        for json_file in sorted((folder / "annotations").glob(f"{PREFIX}*.json")):
            name = f"{folder.name}_{json_file.stem[len(PREFIX):]}"
            if name not in taken:
                register_nuclei_coco(name, json_file, folder / "images")
