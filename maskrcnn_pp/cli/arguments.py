"""The flags several tools share, declared once so that each has one name, default and help
in every tool that takes it."""
from __future__ import annotations

import argparse

SCORE_THRESH = 0.5


def add_model_arguments(parser, *, required: bool = False) -> None:
    """``--config-file`` and ``--weights``: the trained model a tool loads."""
    parser.add_argument("--config-file", required=required, metavar="FILE")
    parser.add_argument("--weights", required=required, metavar="FILE",
                        help="model weights (.pth written by tools/train_net.py)")


def add_unsafe_pickle_argument(parser) -> None:
    """``--allow-unsafe-pickle``: a command line may allow full unpickling, a config cannot."""
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="allow weights that need full unpickling (e.g. legacy .pkl): this "
                             "can run arbitrary code, use trusted files only")


def add_tiling_arguments(parser) -> None:
    """``--tile-size`` and ``--tile-overlap`` of :func:`maskrcnn_pp.inference.load_predictor`."""
    parser.add_argument("--tile-size", type=int, metavar="N",
                        help="side of the square tiles / windows in image pixels (the "
                             "network sees them at its training scale); default 512-1024 "
                             "(instances), the whole image (semantic 2D) or the training "
                             "patch (3D)")
    parser.add_argument("--tile-overlap", type=int, metavar="N",
                        help="pixels shared by neighbouring tiles, larger than a nucleus; "
                             "default a quarter of the tile size")


def add_score_threshold_argument(parser, use: str) -> None:
    """``--score-thresh``, the lowest detection score kept; ``use`` says what the tool does
    with the detections below it."""
    parser.add_argument("--score-thresh", type=float, default=SCORE_THRESH,
                        help=f"{use}; default {SCORE_THRESH}")


def add_config_overrides(parser) -> None:
    """The trailing ``KEY VALUE ...`` config overrides."""
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.DEVICE cpu")
