#!/usr/bin/env python
"""Cut DSB2018 ``stage1_train`` (folder, .zip or .tar.gz) into 96x96 nucleus-union patches.

    python datasets/prepare_nuclei_patches.py --source stage1_train.tar.gz [--output datasets]

Writes ``OUTPUT/nuclei_patches/{train,val}/{images,labels}`` and ``report.json`` (registered
as ``nuclei_patches_train`` / ``_val``). See
``maskrcnn_pp.data.prepare.prepare_nuclei_patches``.
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.cli.prepare import preparer_parser, run_preparer
from maskrcnn_pp.data.prepare import prepare_nuclei_patches
from maskrcnn_pp.utils.errors import exit_on_user_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = preparer_parser(__doc__.splitlines()[0],
                             "stage1_train folder, or a .zip / .tar.gz / .tar of one",
                             val_fraction=0.1,
                             val_help="share of source images in the validation split (as "
                                      "prepare_dsb2018.py, so both see the same validation images)")
    parser.add_argument("--patch-size", type=int, default=96, help="patch side (default 96)")
    parser.add_argument("--stride", type=int, default=None,
                        help="step between patches (default: the patch size, no overlap)")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_preparer(prepare_nuclei_patches, args, patch_size=args.patch_size, stride=args.stride)


if __name__ == "__main__":
    main()
