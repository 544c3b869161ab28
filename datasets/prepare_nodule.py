#!/usr/bin/env python
"""Check and window lung-nodule CT crops (``images/``, ``labels/`` NIfTI) to 64^3 volumes.

    python datasets/prepare_nodule.py --source crops/ [--output datasets] [--window -1000 400]

Writes ``OUTPUT/nodule/{train,val}/{images,labels}/<name>.nii.gz`` and ``report.json``
(registered as ``nodule_train`` / ``_val``). See ``maskrcnn_pp.data.prepare.prepare_nodule``.
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.cli.prepare import add_hu_window_argument, preparer_parser, run_preparer
from maskrcnn_pp.data.prepare import prepare_nodule
from maskrcnn_pp.utils.errors import exit_on_user_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = preparer_parser(__doc__.splitlines()[0],
                             "folder or archive holding images/ (CT in HU) and labels/ with "
                             "equal names",
                             val_fraction=0.2,
                             val_help="share of crops in the validation split")
    parser.add_argument("--size", type=int, default=64, help="output cube side (default 64)")
    add_hu_window_argument(parser, -1000.0, 400.0)
    parser.add_argument("--allow-empty", action="store_true",
                        help="keep crops whose label has no nodule voxel")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_preparer(prepare_nodule, args, size=args.size, window=tuple(args.window),
                 allow_empty=args.allow_empty)


if __name__ == "__main__":
    main()
