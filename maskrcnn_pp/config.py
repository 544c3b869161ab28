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

import math
import warnings
from typing import Any, Callable, NamedTuple, Optional

from detectron2.config import CfgNode as CN

from .utils.errors import UserError

__all__ = ["add_maskrcnn_pp_config", "check_input_config", "check_config_values",
           "upgrade_deprecated_keys", "nested_core_node", "config_value", "trained_outputs",
           "DEPRECATED_KEYS", "VALUE_RULES"]

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
    a permission only the command line gives, a value of :data:`VALUE_RULES`, or a pixel
    mean/std whose length differs from the channels of INPUT.FORMAT (Detectron2 would fail
    later, far from the cause)."""
    if cfg.MODEL.ALLOW_UNSAFE_PICKLE:
        raise UserError(f"{source}: MODEL.ALLOW_UNSAFE_PICKLE cannot be set by a config file or "
                        "override; pass --allow-unsafe-pickle on the command line (or "
                        "allow_unsafe_pickle=True in Python) if you trust the weights file")
    check_config_values(cfg, source)
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


# --- Values checked at the door -------------------------------------------------------------
# Each rule returns what is wrong with the value at its key (None: nothing), given the whole
# config; check_config_values names the key and the value. A rule of a model node applies only
# when that node is the one the config builds (see _NODE_IN_USE).

Rule = Callable[[Any, CN], Optional[str]]
_UNETPP_BACKBONE = "build_resnet_unetpp_backbone"
_UNETPP_MASK_HEAD = "UNetPPMaskHead"
_SEMANTIC_ARCH = "SemanticUNetPP"
_UPSAMPLINGS = ("nearest", "bilinear", "transpose")
_NODE_INITS = ("", "msra")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _at_least(low: int) -> Rule:
    def rule(value: Any, cfg: CN) -> Optional[str]:
        return None if _is_int(value) and value >= low else f"must be an integer >= {low}"
    return rule


def _non_negative_number(value: Any, cfg: CN) -> Optional[str]:
    """A learning rate of 0 is a real use: checking that weights load, a frozen run."""
    return None if _is_number(value) and value >= 0 else "must be a finite number >= 0"


def _one_of(*choices: Any) -> Rule:
    def rule(value: Any, cfg: CN) -> Optional[str]:
        return None if value in choices else f"must be one of {list(choices)}"
    return rule


def _widths(min_levels: int, per: Optional[str] = None) -> Rule:
    """Node widths, one positive integer per level: at least ``min_levels``, or exactly one
    per entry of the list at the key ``per``."""
    def rule(value: Any, cfg: CN) -> Optional[str]:
        if not (isinstance(value, (list, tuple)) and all(_is_int(w) and w > 0 for w in value)):
            return "must be a list of positive integers (node channels per level)"
        if per is not None and len(value) != len(config_value(cfg, per)):
            return (f"has {len(value)} width(s) but {per} has {len(config_value(cfg, per))} "
                    "level(s): give one width per level")
        if len(value) < min_levels:
            return f"needs at least {min_levels} levels"
        return None
    return rule


def _mask_head_outputs(cfg: CN) -> list[int]:
    return list(range(1, len(cfg.MODEL.ROI_MASK_HEAD.WIDTHS)))


def _semantic_outputs(cfg: CN) -> list[int]:
    """The supervised outputs j of the semantic net: 1..L with deep supervision, else L."""
    sem = cfg.MODEL.SEMANTIC
    depth = len(sem.WIDTHS) - 1
    deep = str(sem.ARCH).lower() == "unetpp" and sem.DEEP_SUPERVISION
    return list(range(1, depth + 1)) if deep else [depth]


def _loss_weights(outputs: Callable[[CN], list[int]]) -> Rule:
    """Empty (1/K each) or one finite, non-negative weight per supervised output."""
    def rule(value: Any, cfg: CN) -> Optional[str]:
        levels = outputs(cfg)
        if not all(_is_number(w) and w >= 0 for w in value):
            return "must be finite numbers >= 0"
        if value and len(value) != len(levels):
            return (f"has {len(value)} value(s) for {len(levels)} supervised output(s) "
                    f"{levels}: give one weight per output, or none for 1/{len(levels)} each")
        if value and not any(w > 0 for w in value):
            return "gives every output weight 0: at least one output must be trained"
        return None
    return rule


def trained_outputs(levels: list[int], weights: list[float]) -> list[int]:
    """The deep-supervised outputs ``j`` that learn: those with loss weight > 0 (no weights:
    every output, 1/K each). Inference reads only these; the config rules and the model's
    heads both ask here."""
    return [j for j, w in zip(levels, weights or [1] * len(levels)) if _is_number(w) and w > 0]


def _inference_level(outputs: Callable[[CN], list[int]], weights_key: str) -> Rule:
    """0 (accurate, the mean of the trained outputs) or one of the trained outputs j (an
    output given loss weight 0 never learned to predict)."""
    def rule(value: Any, cfg: CN) -> Optional[str]:
        levels = outputs(cfg)
        trained = trained_outputs(levels, list(config_value(cfg, weights_key)))
        if _is_int(value) and (value == 0 or value in trained):
            return None
        if _is_int(value) and value in levels:
            return (f"is output {value}, which {weights_key} trains with weight 0: "
                    f"use 0 (accurate) or one of the trained outputs {trained}")
        return f"is not available: use 0 (accurate) or one of the outputs {trained}"
    return rule


# Checked in this order, so a level is checked against widths already known to be sound.
VALUE_RULES: tuple[tuple[str, Rule], ...] = (
    ("SOLVER.MAX_ITER", _at_least(1)),
    ("SOLVER.IMS_PER_BATCH", _at_least(1)),
    ("SOLVER.CHECKPOINT_PERIOD", _at_least(1)),
    ("SOLVER.WARMUP_ITERS", _at_least(0)),
    ("SOLVER.BASE_LR", _non_negative_number),
    ("TEST.EVAL_PERIOD", _at_least(0)),
    ("DATALOADER.NUM_WORKERS", _at_least(0)),
    ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", _at_least(1)),
    ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", _at_least(1)),
    ("MODEL.UNETPP.WIDTHS", _widths(2, per="MODEL.UNETPP.IN_FEATURES")),
    ("MODEL.UNETPP.OUT_CHANNELS", _at_least(1)),
    ("MODEL.UNETPP.NODE_CONVS", _at_least(0)),
    ("MODEL.UNETPP.NODE_INIT", _one_of(*_NODE_INITS)),
    ("MODEL.UNETPP.UPSAMPLE", _one_of(*_UPSAMPLINGS)),
    ("MODEL.ROI_MASK_HEAD.WIDTHS", _widths(3)),
    ("MODEL.ROI_MASK_HEAD.NODE_CONVS", _at_least(1)),
    ("MODEL.ROI_MASK_HEAD.NODE_INIT", _one_of(*_NODE_INITS)),
    ("MODEL.ROI_MASK_HEAD.UPSAMPLE", _one_of(*_UPSAMPLINGS)),
    ("MODEL.ROI_MASK_HEAD.DEEP_SUPERVISION_WEIGHTS", _loss_weights(_mask_head_outputs)),
    ("MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL", _inference_level(
        _mask_head_outputs, "MODEL.ROI_MASK_HEAD.DEEP_SUPERVISION_WEIGHTS")),
    ("MODEL.SEMANTIC.ARCH", lambda value, cfg: None if str(value).lower() in ("unetpp", "unet")
     else "must be 'unetpp' or 'unet'"),
    ("MODEL.SEMANTIC.WIDTHS", _widths(2)),
    ("MODEL.SEMANTIC.DIMS", _one_of(1, 2, 3)),
    ("MODEL.SEMANTIC.IN_CHANNELS", _at_least(1)),
    ("MODEL.SEMANTIC.NUM_CLASSES", _at_least(1)),
    ("MODEL.SEMANTIC.NODE_CONVS", _at_least(1)),
    ("MODEL.SEMANTIC.NODE_INIT", _one_of(*_NODE_INITS)),
    ("MODEL.SEMANTIC.UPSAMPLE", _one_of(*_UPSAMPLINGS)),
    ("MODEL.SEMANTIC.DEEP_SUPERVISION_WEIGHTS", _loss_weights(_semantic_outputs)),
    ("MODEL.SEMANTIC.INFERENCE_LEVEL", _inference_level(
        _semantic_outputs, "MODEL.SEMANTIC.DEEP_SUPERVISION_WEIGHTS")),
    ("INPUT.SEMANTIC_SIZE", _at_least(0)),
)

# The model nodes checked only when the config builds them (a baseline config may keep
# any value under MODEL.UNETPP, which nothing reads).
_NODE_IN_USE: dict[str, Callable[[CN], bool]] = {
    "MODEL.UNETPP.": lambda cfg: cfg.MODEL.BACKBONE.NAME == _UNETPP_BACKBONE,
    "MODEL.ROI_MASK_HEAD.": lambda cfg: cfg.MODEL.ROI_MASK_HEAD.NAME == _UNETPP_MASK_HEAD,
    "MODEL.SEMANTIC.": lambda cfg: cfg.MODEL.META_ARCHITECTURE == _SEMANTIC_ARCH,
}


def check_config_values(cfg: CN, source: str) -> None:
    """Refuse the first value of :data:`VALUE_RULES` that a model or the training loop
    would fail on later, far from the cause (a traceback), naming the key and the value."""
    for key, rule in VALUE_RULES:
        in_use = next((used for prefix, used in _NODE_IN_USE.items()
                       if key.startswith(prefix)), None)
        if in_use is not None and not in_use(cfg):
            continue
        value = config_value(cfg, key)
        problem = rule(value, cfg)
        if problem is not None:
            raise UserError(f"{source}: {key} = {value!r} {problem}")
