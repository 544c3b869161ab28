"""``add_maskrcnn_pp_config(cfg)``: the config keys this project adds to Detectron2's.

The three users of the nested core (the neck ``MODEL.UNETPP``, the mask head
``MODEL.ROI_MASK_HEAD`` and the semantic nets ``MODEL.SEMANTIC``) share one vocabulary:
``WIDTHS`` (node channels per level, finest first), ``NODE_CONVS`` (3x3 convolutions per
node), ``NODE_INIT`` (their initialization), ``UPSAMPLE`` and ``NORM``; the two
deep-supervised ones add ``DEEP_SUPERVISION_WEIGHTS`` and ``INFERENCE_LEVEL`` (0: accurate,
j: UNet++ L_j). The names used before still load for one release, with a
``FutureWarning`` naming the new key.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

from detectron2.config import CfgNode as CN

from .utils.errors import UserError

__all__ = ["add_maskrcnn_pp_config", "check_input_config", "upgrade_deprecated_keys",
           "nested_core_node", "config_value", "DEPRECATED_KEYS"]

# Channels of the image each INPUT.FORMAT gives the model.
_FORMAT_CHANNELS = {"BGR": 3, "RGB": 3, "YUV-BT.601": 3, "L": 1}


def add_maskrcnn_pp_config(cfg: CN) -> CN:
    """Add every maskrcnn_pp key, with its default, to a Detectron2 config (in place).

    Calling it twice is harmless, so configs and tools may each call it.
    """
    _add_backbone_config(cfg)
    _add_mask_head_config(cfg)
    _add_semantic_config(cfg)
    _add_runtime_config(cfg)
    _add_input_config(cfg)
    return cfg


def _add_backbone_config(cfg: CN) -> None:
    """cfg.MODEL.UNETPP: the nested-skip neck that replaces FPN."""
    if "UNETPP" in cfg.MODEL:
        return
    cfg.MODEL.UNETPP = CN()
    # ResNet outputs, finest first; each becomes one level of the nested pathways.
    cfg.MODEL.UNETPP.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    # Channels of p2..p6, as FPN's OUT_CHANNELS, so RPN and ROI heads are unchanged.
    cfg.MODEL.UNETPP.OUT_CHANNELS = 256
    # Width of the lateral projection and of the nested nodes X^{i,j} of each level.
    cfg.MODEL.UNETPP.WIDTHS = [128, 128, 128, 128]
    cfg.MODEL.UNETPP.NORM = "GN"
    # Node block H: a 1x1 fusion of the concatenated inputs, then NODE_CONVS 3x3 convs.
    cfg.MODEL.UNETPP.FUSE_1X1 = True
    cfg.MODEL.UNETPP.NODE_CONVS = 1
    # "" (PyTorch's default) or "msra" (He normal, as Detectron2's heads): the node convs.
    cfg.MODEL.UNETPP.NODE_INIT = ""
    cfg.MODEL.UNETPP.UPSAMPLE = "nearest"
    cfg.MODEL.UNETPP.WIDTH = None  # deprecated: WIDTHS


def _add_mask_head_config(cfg: CN) -> None:
    """Keys of ``UNetPPMaskHead`` under cfg.MODEL.ROI_MASK_HEAD."""
    head = cfg.MODEL.ROI_MASK_HEAD
    if "WIDTHS" in head:
        return
    # Node widths per level of the head's UNet++ (level 0 at the pooler resolution).
    # K = len(WIDTHS) - 1 deep-supervised outputs X^{0,1}..X^{0,K}, K >= 2.
    head.WIDTHS = [64, 128, 256]
    head.NODE_CONVS = 2
    head.NODE_INIT = ""
    # U(.) inside the head's nested pathways: "transpose", "nearest" or "bilinear".
    head.UPSAMPLE = "transpose"
    # Weight of loss_mask_1..loss_mask_K; empty means 1/K each (the mean), so the mask
    # term has the scale of Mask R-CNN's single loss_mask.
    head.DEEP_SUPERVISION_WEIGHTS = []
    # 0: accurate (mean of the K outputs' probabilities); j in 1..K: fast, the pruned
    # sub-network of output j alone.
    head.INFERENCE_LEVEL = 0
    head.UNETPP_WIDTHS = None  # deprecated: WIDTHS
    head.UNETPP_NODE_CONVS = None  # deprecated: NODE_CONVS


def _add_semantic_config(cfg: CN) -> None:
    """Keys of the semantic UNet++ / U-Net meta-architecture (cfg.MODEL.SEMANTIC)."""
    if "SEMANTIC" in cfg.MODEL:
        return
    sem = cfg.MODEL.SEMANTIC = CN()
    # "unetpp" (dense nested skips) or "unet" (plain skips; wide U-Net: WIDTHS 35..560).
    sem.ARCH = "unetpp"
    # Node channels per level, finest first: the paper's 32 * 2^i.
    sem.WIDTHS = [32, 64, 128, 256, 512]
    # 2 for images, 3 for volumes (the 64^3 lung-nodule crops).
    sem.DIMS = 2
    # Must equal len(MODEL.PIXEL_MEAN) and len(MODEL.PIXEL_STD).
    sem.IN_CHANNELS = 1
    # 1: sigmoid foreground map with BCE + Dice (Eq. 2); K >= 2: softmax, CE + Dice.
    sem.NUM_CLASSES = 1
    # UNet++ only: a head and a loss on every X^{0,j} (loss_seg_1..L).
    sem.DEEP_SUPERVISION = True
    # Weight of loss_seg_1..loss_seg_L; empty means 1/L each (the mean of the L losses).
    sem.DEEP_SUPERVISION_WEIGHTS = []
    sem.NORM = "BN"
    # "transpose" (the reference code's 2x2 transposed conv), "nearest" or "bilinear".
    sem.UPSAMPLE = "transpose"
    sem.NODE_CONVS = 2
    sem.NODE_INIT = ""
    sem.NUM_CONVS = None  # deprecated: NODE_CONVS
    # 0: accurate mode (mean of the outputs); j in 1..L: fast mode, the pruned UNet++ L_j.
    sem.INFERENCE_LEVEL = 0
    # Eq. 2: BCE_WEIGHT * BCE + (1 - Dice), Dice smoothed by DICE_SMOOTH.
    sem.BCE_WEIGHT = 0.5
    sem.DICE_SMOOTH = 1.0
    # Side of the square (2D) or cubic (3D) network input; 0 keeps the stored size.
    cfg.INPUT.SEMANTIC_SIZE = 0
    # Random flips along every spatial axis while training.
    cfg.INPUT.SEMANTIC_FLIP = True
    # "SGD" (Detectron2's build_optimizer) or "ADAM" (the paper's); see engine/optim.py.
    if "OPTIMIZER" not in cfg.SOLVER:
        cfg.SOLVER.OPTIMIZER = "SGD"


def _add_runtime_config(cfg: CN) -> None:
    """Training-loop options that Detectron2 lacks."""
    # Only False: full unpickling (which can run code) is allowed by the command line
    # (--allow-unsafe-pickle) or an explicit Python argument, never by a config file; the
    # key stays so that configs saved by earlier versions still load.
    if "ALLOW_UNSAFE_PICKLE" not in cfg.MODEL:
        cfg.MODEL.ALLOW_UNSAFE_PICKLE = False
    # An image that fails to decode stops training with its file name; True skips it
    # with a warning that keeps count.
    if "SKIP_BAD_IMAGES" not in cfg.DATALOADER:
        cfg.DATALOADER.SKIP_BAD_IMAGES = False
    # The training fast paths of issue #20, which compute the same (to float tolerance):
    # masks outside a training crop are not decoded, proposals index their ground-truth
    # masks instead of copying them, and on the CPU ROIAlign runs as sparse matrix products.
    # False restores Detectron2's own paths.
    if "FAST_PATHS" not in cfg.MODEL:
        cfg.MODEL.FAST_PATHS = True


def _add_input_config(cfg: CN) -> None:
    """cfg.INPUT.INTENSITY: how 16-bit / float pixels become 0..255 (``data/image_io.py``),
    the same in training, evaluation and prediction; cfg.INPUT.PIXEL_SIZE_UM: the pixel
    size the model was trained at."""
    if "PIXEL_SIZE_UM" not in cfg.INPUT:
        # Micrometres per pixel of the training images. Whole-slide prediction reads the
        # pyramid level closest to it and resamples, so nuclei reach the network at the
        # trained size; None (unset) uses a slide's level-0 pixels as they are.
        cfg.INPUT.PIXEL_SIZE_UM = None
    if "INTENSITY" in cfg.INPUT:
        return
    intensity = cfg.INPUT.INTENSITY = CN()
    # "percentile" (PERCENTILES of each image to 0..255), "minmax", or "range" (RANGE to
    # 0..255 for every pixel type, e.g. a CT window [-200, 250] or a 12-bit camera [0, 4095]).
    # 8-bit images pass unchanged except with "range".
    intensity.MODE = "percentile"
    intensity.PERCENTILES = [1.0, 99.0]
    intensity.RANGE = [0.0, 65535.0]


def check_input_config(cfg: CN, source: str) -> None:
    """Refuse, naming the keys, what a config file or override (``source``) may not say:
    a permission only the command line gives, or a pixel mean/std whose length differs
    from the channels of INPUT.FORMAT (Detectron2 would fail later, far from the cause)."""
    if cfg.MODEL.ALLOW_UNSAFE_PICKLE:
        raise UserError(f"{source}: MODEL.ALLOW_UNSAFE_PICKLE cannot be set by a config file or "
                        "override; pass --allow-unsafe-pickle on the command line (or "
                        "allow_unsafe_pickle=True in Python) if you trust the weights file")
    pixel_size = cfg.INPUT.get("PIXEL_SIZE_UM")
    if pixel_size is not None and not (isinstance(pixel_size, (int, float))
                                       and not isinstance(pixel_size, bool)
                                       and 0 < pixel_size < float("inf")):
        raise UserError(f"{source}: INPUT.PIXEL_SIZE_UM must be a positive number of "
                        f"micrometres per pixel (or None), got {pixel_size!r}")
    channels = _FORMAT_CHANNELS.get(cfg.INPUT.FORMAT)
    if channels is None:
        return
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        values = list(cfg.MODEL[key])
        if len(values) != channels:
            raise UserError(f"{source}: MODEL.{key} has {len(values)} value(s) {values} but "
                            f"INPUT.FORMAT {cfg.INPUT.FORMAT} gives {channels} channel(s)")


class DeprecatedKey(NamedTuple):
    old: str
    new: str
    # The new key's value from the old one's and the config (e.g. a scalar width to a list).
    convert: Callable[[Any, CN], Any] = lambda value, cfg: value


DEPRECATED_KEYS = (
    DeprecatedKey("MODEL.UNETPP.WIDTH", "MODEL.UNETPP.WIDTHS",
                  lambda width, cfg: [width] * len(cfg.MODEL.UNETPP.IN_FEATURES)),
    DeprecatedKey("MODEL.ROI_MASK_HEAD.UNETPP_WIDTHS", "MODEL.ROI_MASK_HEAD.WIDTHS"),
    DeprecatedKey("MODEL.ROI_MASK_HEAD.UNETPP_NODE_CONVS", "MODEL.ROI_MASK_HEAD.NODE_CONVS"),
    DeprecatedKey("MODEL.SEMANTIC.NUM_CONVS", "MODEL.SEMANTIC.NODE_CONVS"),
)


def _split(key: str) -> tuple[str, str]:
    node, _, name = key.rpartition(".")
    return node, name


def config_value(cfg: CN, key: str, default: Any = None) -> Any:
    """The value at a dotted ``key`` (``"MODEL.UNETPP.WIDTHS"``), or ``default`` where a
    node on the way is missing."""
    for name in key.split("."):
        if not isinstance(cfg, dict) or name not in cfg:
            return default
        cfg = cfg[name]
    return cfg


def _node(cfg: CN, path: str) -> CN:
    return config_value(cfg, path, CN())


def _set_deprecated(cfg: CN) -> list[DeprecatedKey]:
    """The deprecated keys that hold a value in ``cfg``."""
    return [key for key in DEPRECATED_KEYS
            if _node(cfg, _split(key.old)[0]).get(_split(key.old)[1]) is not None]


def upgrade_deprecated_keys(cfg: CN, source: str = "config") -> CN:
    """Move the values of old key names to their new keys, each with a ``FutureWarning``
    naming the new key, and remove the old keys (in place, on an unfrozen config), so that
    the config a run saves speaks only the current vocabulary. An old key set in the
    config overrides its new key."""
    for key in _set_deprecated(cfg):
        old_node, old_name = _split(key.old)
        new_node, new_name = _split(key.new)
        value = _node(cfg, old_node)[old_name]
        warnings.warn(f"{source}: {key.old} is deprecated and will be removed in the next "
                      f"release; use {key.new} instead", FutureWarning, stacklevel=2)
        _node(cfg, new_node)[new_name] = key.convert(value, cfg)
    for key in DEPRECATED_KEYS:
        node, name = _split(key.old)
        _node(cfg, node).pop(name, None)
    return cfg


def nested_core_node(cfg: CN, path: str) -> CN:
    """The config node at ``path`` (e.g. ``"MODEL.SEMANTIC"``) with deprecated keys
    upgraded: what the builders read, so that a config merged by plain Detectron2 calls
    (``cfg.merge_from_file``) with old key names builds the same model."""
    if _set_deprecated(cfg):
        cfg = cfg.clone()
        cfg.defrost()
        upgrade_deprecated_keys(cfg)
    return _node(cfg, path)
