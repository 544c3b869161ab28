#!/usr/bin/env python
"""Slice LiTS CT scans (``volume-N.nii[.gz]``, ``segmentation-N.nii[.gz]``) into 512x512 PNGs.

    python datasets/prepare_liver.py --source LiTS/ [--output datasets] [--window -200 250]

HU-windowed axial slices that show liver; liver and tumour merge into one class. Writes
``OUTPUT/liver/{train,val}/{images,labels}`` and ``report.json`` (registered as
``liver_train`` / ``_val``). See ``maskrcnn_pp.data.prepare.prepare_liver``.
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.data.catalog import datasets_root
from maskrcnn_pp.data.prepare import iter_report_lines, prepare_liver
from maskrcnn_pp.utils.errors import exit_on_user_error
from maskrcnn_pp.utils.io import check_output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True,
                        help="folder or archive (.zip, .tar.gz) searched at any depth for "
                             "volume-N / segmentation-N")
    parser.add_argument("--output", default=str(datasets_root()),
                        help="data sets root (default $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--size", type=int, default=512, help="output side (default 512)")
    parser.add_argument("--window", type=float, nargs=2, default=(-200.0, 250.0),
                        metavar=("LOW", "HIGH"), help="HU window mapped to 0..255")
    parser.add_argument("--keep-empty-slices", action="store_true",
                        help="also keep slices without liver")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of CT scans in the validation split (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_output_dir(args.output, "--output")
    report = prepare_liver(args.source, args.output, size=args.size, window=tuple(args.window),
                           val_fraction=args.val_fraction, seed=args.seed,
                           keep_empty_slices=args.keep_empty_slices)
    print("\n".join(iter_report_lines(report)))


if __name__ == "__main__":
    main()
