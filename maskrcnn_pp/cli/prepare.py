"""The command lines of the data preparation scripts in ``datasets/``: the instance
converters (``prepare_dsb2018.py``, ``prepare_instances.py``) and the semantic preparers
(``prepare_nuclei_patches.py``, ``prepare_polyp.py``, ``prepare_liver.py``,
``prepare_nodule.py``), each flag they share declared once."""
from __future__ import annotations

import argparse
import logging
from typing import Any, Callable

from maskrcnn_pp.data.catalog import datasets_root
from maskrcnn_pp.data.conversion import ConversionReport
from maskrcnn_pp.data.prepare import iter_report_lines
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


def preparer_parser(description: str, source_help: str, *, val_fraction: float,
                    val_help: str) -> argparse.ArgumentParser:
    """The options every semantic preparer takes: ``--source``, ``--output`` (the data sets
    root), ``--val-fraction`` and ``--seed``; each script adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--source", required=True, help=source_help)
    parser.add_argument("--output", default=str(datasets_root()),
                        help="data sets root (default $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--val-fraction", type=float, default=val_fraction,
                        help=f"{val_help} (default {val_fraction})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    return parser


def add_hu_window_argument(parser: argparse.ArgumentParser, low: float, high: float) -> None:
    """``--window LOW HIGH``: the CT preparers' Hounsfield window mapped to 0..255."""
    parser.add_argument("--window", type=float, nargs=2, default=(low, high),
                        metavar=("LOW", "HIGH"),
                        help=f"HU window mapped to 0..255 (default {low:g} {high:g})")


def run_preparer(prepare: Callable[..., dict], args: argparse.Namespace, **options: Any
                 ) -> dict:
    """Check the output root before any work, prepare, print the report's summary."""
    check_output_dir(args.output, "--output")
    report = prepare(args.source, args.output, val_fraction=args.val_fraction, seed=args.seed,
                     **options)
    print("\n".join(iter_report_lines(report)))
    return report
