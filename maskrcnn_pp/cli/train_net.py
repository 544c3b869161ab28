"""Train or evaluate any maskrcnn_pp model (Mask R-CNN++, its baseline, semantic UNet++).

    tools/train_net.py --config-file configs/mask_rcnn_pp.yaml [--num-gpus N] [KEY VALUE ...]
    tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    tools/train_net.py --config-file ... --resume      # continue after a crash or a kill
"""
from __future__ import annotations

from maskrcnn_pp.engine.train import argument_parser, launch_from_args


def main(argv: list[str] | None = None) -> int:
    return launch_from_args(argument_parser().parse_args(argv))
