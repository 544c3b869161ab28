"""Train or evaluate any maskrcnn_pp model (Mask R-CNN++, its baseline, semantic UNet++).

    tools/train_net.py --config-file configs/mask_rcnn_pp.yaml [--num-gpus N] [KEY VALUE ...]
    tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    tools/train_net.py --config-file ... --resume      # continue after a crash or a kill
    tools/train_net.py --config-file ... --overwrite   # replace the run in OUTPUT_DIR
"""
from __future__ import annotations

import argparse
import os
import sys

from maskrcnn_pp.cli.arguments import add_unsafe_pickle_argument

EXAMPLES = """examples:
  one machine, 8 GPUs:
    tools/train_net.py --config-file CONFIG.yaml --num-gpus 8
  config values changed on the command line:
    tools/train_net.py --config-file CONFIG.yaml SOLVER.BASE_LR 0.001 OUTPUT_DIR out/
  two machines (run on each, with its rank):
    tools/train_net.py --config-file CONFIG.yaml --num-gpus 8 --num-machines 2 \\
        --machine-rank 0 --dist-url tcp://HOST0:29500
"""


def _default_dist_port() -> int:
    """The port Detectron2's parser picks: fixed per user, so that processes left behind
    by a crashed multi-GPU run show up as a port in use."""
    user = os.getuid() if sys.platform != "win32" else 1
    return 2 ** 15 + 2 ** 14 + hash(user) % 2 ** 14


def argument_parser() -> argparse.ArgumentParser:
    """The flags of Detectron2's ``default_argument_parser`` (declared here, so that
    ``--help`` answers before torch loads; a test keeps them equal), plus
    ``--allow-unsafe-pickle`` and ``--overwrite``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="the YAML config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in OUTPUT_DIR (weights, "
                             "optimizer, scheduler, random state, data position)")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate MODEL.WEIGHTS (or, with --resume, the last checkpoint) "
                             "without training")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs on each machine")
    parser.add_argument("--num-machines", type=int, default=1, help="machines in all")
    parser.add_argument("--machine-rank", type=int, default=0,
                        help="this machine's rank, 0 .. --num-machines - 1")
    parser.add_argument("--dist-url", default=f"tcp://127.0.0.1:{_default_dist_port()}",
                        help="where the processes of a multi-GPU run meet (torch.distributed "
                             "init_method); default a port fixed per user on this machine")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.MAX_ITER 1000 MODEL.DEVICE cpu")
    add_unsafe_pickle_argument(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="train into an OUTPUT_DIR holding an earlier training, removing "
                             "its checkpoints and metrics first (--resume continues it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    from maskrcnn_pp.engine.train import launch_from_args

    return launch_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
