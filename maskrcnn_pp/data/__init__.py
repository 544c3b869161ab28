"""Data sets, registered lazily with Detectron2's DatasetCatalog at import; readers, mappers."""
from .dsb2018 import register_dsb2018
from .semantic import register_semantic_datasets
from .synthetic import register_synthetic_nuclei

register_dsb2018()
register_semantic_datasets()
register_synthetic_nuclei()
