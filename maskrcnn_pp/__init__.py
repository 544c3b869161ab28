"""maskrcnn_pp: UNet++ (nested dense skips, deep supervision) for Detectron2.

``import maskrcnn_pp`` registers the backbone, the mask head, the meta-architectures and
the data sets with Detectron2's registries.
"""
import warnings

# Detectron2 v0.6 scripts a few helpers with torch.jit.script at import time, which
# current torch flags as deprecated on every run; the message is noise for our users.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning)

from . import data, evaluation, modeling  # noqa: E402, F401  (registration side effects)
from .config import add_maskrcnn_pp_config  # noqa: E402
from .model_zoo import get_config_file  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_maskrcnn_pp_config", "get_config_file", "__version__"]
