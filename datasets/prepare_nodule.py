#!/usr/bin/env python
"""Check and window lung-nodule CT crops (``images/``, ``labels/`` NIfTI) to 64^3 volumes.

    python datasets/prepare_nodule.py --source crops/ [--output datasets] [--window -1000 400]

Writes ``OUTPUT/nodule/{train,val}/{images,labels}/<name>.nii.gz`` and ``report.json``
(registered as ``nodule_train`` / ``_val``). See ``maskrcnn_pp.data.prepare.prepare_nodule``.
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.data.catalog import datasets_root
from maskrcnn_pp.data.prepare import iter_report_lines, prepare_nodule
from maskrcnn_pp.utils.errors import exit_on_user_error
from maskrcnn_pp.utils.io import check_output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True,
                        help="folder or archive holding images/ (CT in HU) and labels/ with "
                             "equal names")
    parser.add_argument("--output", default=str(datasets_root()),
                        help="data sets root (default $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--size", type=int, default=64, help="output cube side (default 64)")
    parser.add_argument("--window", type=float, nargs=2, default=(-1000.0, 400.0),
                        metavar=("LOW", "HIGH"), help="HU window mapped to 0..255")
    parser.add_argument("--allow-empty", action="store_true",
                        help="keep crops whose label has no nodule voxel")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of crops in the validation split (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_output_dir(args.output, "--output")
    report = prepare_nodule(args.source, args.output, size=args.size, window=tuple(args.window),
                            val_fraction=args.val_fraction, seed=args.seed,
                            allow_empty=args.allow_empty)
    print("\n".join(iter_report_lines(report)))


if __name__ == "__main__":
    main()
