"""Data sets (registered lazily with DatasetCatalog), readers and mappers."""
from .synthetic import register_synthetic_nuclei

register_synthetic_nuclei()
from .semantic import register_semantic_datasets  # noqa: E402

register_semantic_datasets()
from .dsb2018 import register_dsb2018  # noqa: E402, F401  (registers dsb2018_train / _val)
