#!/usr/bin/env python
"""Convert DSB2018 ``stage1_train`` (folder, .zip or .tar.gz) to COCO JSON for Detectron2.

    python datasets/prepare_dsb2018.py stage1_train.zip datasets/dsb2018

Bad files are skipped, named on stderr and in OUT/report.json; ``--strict`` makes any of
them an error (exit code 2). See ``maskrcnn_pp.data.dsb2018.convert_dsb2018``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from maskrcnn_pp.data.dsb2018 import convert_dsb2018
from maskrcnn_pp.utils.errors import exit_on_user_error
from maskrcnn_pp.utils.io import check_output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="stage1_train folder, or a .zip / .tar.gz / .tar of one")
    parser.add_argument("out", help="output folder, e.g. datasets/dsb2018")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of images in the validation split, in [0, 1) (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--strict", action="store_true",
                        help="exit with code 2 if any file is skipped or any mask is empty")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    check_output_dir(args.out, "OUT")
    report = convert_dsb2018(args.src, args.out, val_fraction=args.val_fraction,
                             seed=args.seed, strict=args.strict)
    print(f"{report.images_converted} of {report.images_found} images, "
          f"{report.annotations} nuclei -> {args.out} (train {report.split_images['train']}, "
          f"val {report.split_images['val']}); {len(report.problems)} problem(s), "
          f"{len(report.overlaps)} image(s) with overlapping masks")


if __name__ == "__main__":
    main()
