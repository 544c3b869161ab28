"""Registers this project's data sets with Detectron2's catalogs, lazily (nothing is read
until a data set is used); imported by ``maskrcnn_pp``'s registration, as Detectron2's own
``detectron2.data.datasets.builtin`` is by ``detectron2.data``."""
from .catalog import register_semantic_datasets
from .dsb2018 import register_dsb2018
from .instances import register_prepared_instances
from .synthetic import register_synthetic_nuclei

register_dsb2018()
register_semantic_datasets()
register_synthetic_nuclei()
# last: a prepared folder never replaces a data set registered above
register_prepared_instances()
