"""Data sets (registered with Detectron2's DatasetCatalog by :mod:`.builtin`, which
``import maskrcnn_pp`` runs once Detectron2's registries load), readers, mappers and the
preparers. Importing this package loads neither torch nor Detectron2, so the preparers
start in a fraction of a second."""
from .coco import register_nuclei_coco

__all__ = ["register_nuclei_coco"]
