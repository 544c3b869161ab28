"""Data sets, registered lazily with Detectron2's DatasetCatalog at import; readers, mappers."""
from .catalog import register_semantic_datasets
from .coco import register_nuclei_coco
from .dsb2018 import register_dsb2018
from .instances import register_prepared_instances
from .synthetic import register_synthetic_nuclei

__all__ = ["register_nuclei_coco"]

register_dsb2018()
register_semantic_datasets()
register_synthetic_nuclei()
# last: a prepared folder never replaces a data set registered above
register_prepared_instances()
