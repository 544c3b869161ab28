#!/usr/bin/env python
"""Resize Kvasir-SEG or CVC-ClinicDB (``images/``, ``masks/``) to 224x224 image/label PNGs.

    python datasets/prepare_polyp.py --name kvasir --source kvasir-seg.zip [--output datasets]

Writes ``OUTPUT/polyp_<name>/{train,val}/{images,labels}`` and ``report.json`` (registered
as ``polyp_<name>_train`` / ``_val``). See ``maskrcnn_pp.data.prepare.prepare_polyp``.
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.cli.prepare import preparer_parser, run_preparer
from maskrcnn_pp.data.prepare import prepare_polyp
from maskrcnn_pp.utils.errors import exit_on_user_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = preparer_parser(__doc__.splitlines()[0],
                             "folder or archive (.zip, .tar.gz, as downloaded) holding "
                             "images/ and masks/ (JPEG masks are thresholded at 127)",
                             val_fraction=0.2,
                             val_help="share of frames (ClinicDB: sequences) for validation")
    parser.add_argument("--name", required=True, choices=("kvasir", "clinicdb"),
                        help="which data set (CVC-ClinicDB is split by video sequence)")
    parser.add_argument("--size", type=int, default=224, help="output side (default 224)")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_preparer(prepare_polyp, args, name=args.name, size=args.size)


if __name__ == "__main__":
    main()
