#!/usr/bin/env python
"""Convert instance label images (Cellpose, StarDist, napari, QuPath) to COCO JSON.

    python datasets/prepare_instances.py my_cells/ datasets/my_cells --val-fraction 0.2

SRC (a folder, .zip or .tar.gz) holds images/<name>.<ext> and masks/<name>.<ext> (or
masks/<name>_masks.<ext>): PNG or TIFF, 8/16/32-bit integer label images, 0 = background.
Bad items are skipped, named on stderr and in OUT/report.json; ``--strict`` makes any of
them an error (exit code 2). OUT under $DETECTRON2_DATASETS registers as OUT_train /
OUT_val. See ``maskrcnn_pp.data.instances.convert_instances``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from maskrcnn_pp.data.instances import convert_instances
from maskrcnn_pp.utils.errors import exit_on_user_error
from maskrcnn_pp.utils.io import check_output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="folder (or .zip / .tar.gz) with images/ and masks/")
    parser.add_argument("out", help="output folder, e.g. datasets/my_cells")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of images in the validation split, in [0, 1) (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--strict", action="store_true",
                        help="exit with code 2 if any image or label image is skipped")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    check_output_dir(args.out, "OUT")
    report = convert_instances(args.src, args.out, val_fraction=args.val_fraction,
                               seed=args.seed, strict=args.strict)
    print(f"{report.images_converted} of {report.images_found} images, "
          f"{report.annotations} objects -> {args.out} (train {report.split_images['train']}, "
          f"val {report.split_images['val']}); {len(report.problems)} problem(s)")


if __name__ == "__main__":
    main()
