"""Train or evaluate any maskrcnn_pp model (Mask R-CNN++, its baseline, semantic UNet++).

    tools/train_net.py --config-file configs/mask_rcnn_pp.yaml [--num-gpus N] [KEY VALUE ...]
    tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    tools/train_net.py --config-file ... --resume      # continue after a crash or a kill
"""
from __future__ import annotations

import sys

from detectron2.engine import default_argument_parser

from maskrcnn_pp.cli.arguments import add_unsafe_pickle_argument
from maskrcnn_pp.engine.train import launch_from_args


def argument_parser():
    """Detectron2's training flags plus ``--allow-unsafe-pickle``."""
    parser = default_argument_parser()
    add_unsafe_pickle_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return launch_from_args(argument_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
