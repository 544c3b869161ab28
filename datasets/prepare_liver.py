#!/usr/bin/env python
"""Slice LiTS CT scans (``volume-N.nii[.gz]``, ``segmentation-N.nii[.gz]``) into 512x512 PNGs.

    python datasets/prepare_liver.py --source LiTS/ [--output datasets] [--window -200 250]

HU-windowed axial slices that show liver; liver and tumour merge into one class. Writes
``OUTPUT/liver/{train,val}/{images,labels}`` and ``report.json`` (registered as
``liver_train`` / ``_val``). See ``maskrcnn_pp.data.prepare.prepare_liver``.
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.cli.prepare import add_hu_window_argument, preparer_parser, run_preparer
from maskrcnn_pp.data.prepare import prepare_liver
from maskrcnn_pp.utils.errors import exit_on_user_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = preparer_parser(__doc__.splitlines()[0],
                             "folder or archive (.zip, .tar.gz) searched at any depth for "
                             "volume-N / segmentation-N",
                             val_fraction=0.2,
                             val_help="share of CT scans in the validation split")
    parser.add_argument("--size", type=int, default=512, help="output side (default 512)")
    add_hu_window_argument(parser, -200.0, 250.0)
    parser.add_argument("--keep-empty-slices", action="store_true",
                        help="also keep slices without liver")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_preparer(prepare_liver, args, size=args.size, window=tuple(args.window),
                 keep_empty_slices=args.keep_empty_slices)


if __name__ == "__main__":
    main()
