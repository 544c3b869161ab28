"""maskrcnn_pp: UNet++ (nested dense skips, deep supervision) for Detectron2.

``import maskrcnn_pp`` registers the backbone, the mask head, the meta-architectures and
the data sets with Detectron2's registries.
"""
from . import data, evaluation, modeling  # noqa: F401  (registration side effects)
from .config import add_maskrcnn_pp_config

__version__ = "0.1.0"
__all__ = ["add_maskrcnn_pp_config", "__version__"]
