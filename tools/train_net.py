#!/usr/bin/env python
"""Train or evaluate any maskrcnn_pp model (Mask R-CNN++, its baseline, semantic UNet++).

    tools/train_net.py --config-file configs/mask_rcnn_pp.yaml [--num-gpus N] [KEY VALUE ...]
    tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    tools/train_net.py --config-file ... --resume      # continue after a crash or a kill
"""
from __future__ import annotations

import sys

from detectron2.engine import default_argument_parser

from maskrcnn_pp.engine.train import launch_from_args


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="allow loading weights that need full unpickling (e.g. legacy "
                             ".pkl files): this can run arbitrary code, use trusted files only")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(launch_from_args(parse_args()))
