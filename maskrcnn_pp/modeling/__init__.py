"""Networks: the nested-skip core and the Detectron2 modules built on it."""
from .backbone import UNetPPNeck, build_resnet_unetpp_backbone  # noqa: F401
from .deep_supervision import ACCURATE, DeepSupervisionHeads  # noqa: F401
from .mask_head import UNetPPMaskHead  # noqa: F401
from .nested import NestedSkipPathways, required_nodes  # noqa: F401
from .semantic import UNet, UNetPlusPlus  # noqa: F401
from .semantic_arch import SemanticUNetPP  # noqa: F401
