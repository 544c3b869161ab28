#!/usr/bin/env python
"""Resize Kvasir-SEG or CVC-ClinicDB (``images/``, ``masks/``) to 224x224 image/label PNGs.

    python datasets/prepare_polyp.py --name kvasir --source kvasir-seg.zip [--output datasets]

Writes ``OUTPUT/polyp_<name>/{train,val}/{images,labels}`` and ``report.json`` (registered
as ``polyp_<name>_train`` / ``_val``). See ``maskrcnn_pp.data.prepare.prepare_polyp``.
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.data.catalog import datasets_root
from maskrcnn_pp.data.prepare import iter_report_lines, prepare_polyp
from maskrcnn_pp.utils.errors import exit_on_user_error
from maskrcnn_pp.utils.io import check_output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True,
                        help="folder or archive (.zip, .tar.gz, as downloaded) holding images/ "
                             "and masks/ (JPEG masks are thresholded at 127)")
    parser.add_argument("--name", required=True, choices=("kvasir", "clinicdb"),
                        help="which data set (CVC-ClinicDB is split by video sequence)")
    parser.add_argument("--output", default=str(datasets_root()),
                        help="data sets root (default $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--size", type=int, default=224, help="output side (default 224)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of frames (ClinicDB: sequences) for validation (0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_output_dir(args.output, "--output")
    report = prepare_polyp(args.source, args.output, name=args.name, size=args.size,
                           val_fraction=args.val_fraction, seed=args.seed)
    print("\n".join(iter_report_lines(report)))


if __name__ == "__main__":
    main()
