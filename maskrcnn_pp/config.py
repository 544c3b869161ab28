"""``add_maskrcnn_pp_config(cfg)``: the config keys this project adds to Detectron2's."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

from .utils.errors import UserError

__all__ = ["add_maskrcnn_pp_config", "check_input_config"]

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
    # Width of the lateral projections and of every nested node X^{i,j}.
    cfg.MODEL.UNETPP.WIDTH = 128
    cfg.MODEL.UNETPP.NORM = "GN"
    # Node block H: a 1x1 fusion of the concatenated inputs, then NODE_CONVS 3x3 convs.
    cfg.MODEL.UNETPP.FUSE_1X1 = True
    cfg.MODEL.UNETPP.NODE_CONVS = 1
    cfg.MODEL.UNETPP.UPSAMPLE = "nearest"


def _add_mask_head_config(cfg: CN) -> None:
    """Keys of ``UNetPPMaskHead`` under cfg.MODEL.ROI_MASK_HEAD."""
    head = cfg.MODEL.ROI_MASK_HEAD
    if "UNETPP_WIDTHS" in head:
        return
    # Node widths per level of the head's UNet++ (level 0 at the pooler resolution).
    # K = len(UNETPP_WIDTHS) - 1 deep-supervised outputs X^{0,1}..X^{0,K}, K >= 2.
    head.UNETPP_WIDTHS = [64, 128, 256]
    head.UNETPP_NODE_CONVS = 2
    # Weight of loss_mask_1..loss_mask_K; empty means 1/K each, so the mask term has the
    # same scale as Mask R-CNN's single loss_mask.
    head.DEEP_SUPERVISION_WEIGHTS = []
    # 0: accurate (mean of the K outputs' probabilities); j in 1..K: fast, the pruned
    # sub-network of output j alone.
    head.INFERENCE_LEVEL = 0


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
    sem.NORM = "BN"
    # "transpose" (the reference code's 2x2 transposed conv), "nearest" or "bilinear".
    sem.UPSAMPLE = "transpose"
    sem.NUM_CONVS = 2
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


def _add_input_config(cfg: CN) -> None:
    """cfg.INPUT.INTENSITY: how 16-bit / float pixels become 0..255 (``data/image_io.py``),
    the same in training, evaluation and prediction."""
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
    channels = _FORMAT_CHANNELS.get(cfg.INPUT.FORMAT)
    if channels is None:
        return
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        values = list(cfg.MODEL[key])
        if len(values) != channels:
            raise UserError(f"{source}: MODEL.{key} has {len(values)} value(s) {values} but "
                            f"INPUT.FORMAT {cfg.INPUT.FORMAT} gives {channels} channel(s)")
