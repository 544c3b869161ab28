"""maskrcnn_pp: UNet++ (nested dense skips, deep supervision) for Detectron2.

``import maskrcnn_pp`` registers the backbone, the mask head, the meta-architectures and
the data sets with Detectron2's registries.
"""
import warnings

# Detectron2 v0.6 scripts a few helpers with torch.jit.script at import time, which
# current torch flags as deprecated on every run; the message is noise for our users.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning)

import importlib  # noqa: E402

from . import data, evaluation, modeling  # noqa: E402, F401  (registration side effects)
from .config import add_maskrcnn_pp_config  # noqa: E402
from .model_zoo import get_config_file  # noqa: E402
from .modeling import UNet, UNetPlusPlus  # noqa: E402

__version__ = "0.1.0"

# The entry points a user needs, by the module that defines them. The training loop and the
# predictors load on first use, so that `import maskrcnn_pp` (which registers) stays light.
_ENTRY_POINTS = {
    "load_config": "engine.config", "setup": "engine.config",
    "Trainer": "engine.trainer", "launch_from_args": "engine.train",
    "load_predictor": "inference.api", "export_model": "inference.export",
    "register_nuclei_coco": "data.coco",
}

__all__ = ["add_maskrcnn_pp_config", "get_config_file", "UNetPlusPlus", "UNet",
           *_ENTRY_POINTS, "__version__"]


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(f".{_ENTRY_POINTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_ENTRY_POINTS))
