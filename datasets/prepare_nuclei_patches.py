#!/usr/bin/env python
"""Cut DSB2018 ``stage1_train`` (folder, .zip or .tar.gz) into 96x96 nucleus-union patches.

    python datasets/prepare_nuclei_patches.py --source stage1_train.tar.gz [--output datasets]

Writes ``OUTPUT/nuclei_patches/{train,val}/{images,labels}`` and ``report.json`` (registered
as ``nuclei_patches_train`` / ``_val``). See
``maskrcnn_pp.data.prepare.prepare_nuclei_patches``.
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.data.catalog import datasets_root
from maskrcnn_pp.data.prepare import iter_report_lines, prepare_nuclei_patches
from maskrcnn_pp.utils.errors import exit_on_user_error
from maskrcnn_pp.utils.io import check_output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True,
                        help="stage1_train folder, or a .zip / .tar.gz / .tar of one")
    parser.add_argument("--output", default=str(datasets_root()),
                        help="data sets root (default $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--patch-size", type=int, default=96, help="patch side (default 96)")
    parser.add_argument("--stride", type=int, default=None,
                        help="step between patches (default: the patch size, no overlap)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of source images in the validation split (default 0.1, "
                             "as prepare_dsb2018.py, so both see the same validation images)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_output_dir(args.output, "--output")
    report = prepare_nuclei_patches(args.source, args.output, patch_size=args.patch_size,
                                    stride=args.stride, val_fraction=args.val_fraction,
                                    seed=args.seed)
    print("\n".join(iter_report_lines(report)))


if __name__ == "__main__":
    main()
