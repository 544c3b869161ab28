"""The command line of the instance converters (``datasets/prepare_dsb2018.py``,
``datasets/prepare_instances.py``)."""
from __future__ import annotations

import argparse
import logging
from typing import Callable

from maskrcnn_pp.data.conversion import ConversionReport
from maskrcnn_pp.utils.io import check_output_dir


def run_converter_cli(convert: Callable[..., ConversionReport], description: str,
                      src_help: str, strict_help: str, argv: list[str] | None = None
                      ) -> ConversionReport:
    """The command line every instance converter shares (``datasets/prepare_dsb2018.py``,
    ``datasets/prepare_instances.py``): SRC OUT [--val-fraction] [--seed] [--strict], the
    output folder checked before any work, a one-line summary."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("src", help=src_help)
    parser.add_argument("out", help="output folder, e.g. datasets/<name>")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of images in the validation split, in [0, 1) (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--strict", action="store_true", help=strict_help)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_output_dir(args.out, "OUT")
    report = convert(args.src, args.out, val_fraction=args.val_fraction, seed=args.seed,
                     strict=args.strict)
    overlaps = report.overlaps
    print(f"{report.images_converted} of {report.images_found} images, "
          f"{report.annotations} objects -> {args.out} (train {report.split_images['train']}, "
          f"val {report.split_images['val']}); {len(report.problems)} problem(s)"
          + (f", {len(overlaps)} image(s) with overlapping masks" if overlaps else ""))
    return report
