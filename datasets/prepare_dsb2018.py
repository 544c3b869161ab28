#!/usr/bin/env python
"""Convert DSB2018 ``stage1_train`` (folder, .zip or .tar.gz) to COCO JSON for Detectron2.

    python datasets/prepare_dsb2018.py stage1_train.zip datasets/dsb2018

Bad files are skipped, named on stderr and in OUT/report.json; ``--strict`` makes any of
them an error (exit code 2). See ``maskrcnn_pp.data.dsb2018.convert_dsb2018``.
"""
from __future__ import annotations

from maskrcnn_pp.cli.prepare import run_converter_cli
from maskrcnn_pp.data.dsb2018 import convert_dsb2018
from maskrcnn_pp.utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    run_converter_cli(convert_dsb2018, __doc__.splitlines()[0],
                      src_help="stage1_train folder, or a .zip / .tar.gz / .tar of one",
                      strict_help="exit with code 2 if any file is skipped or any mask is empty",
                      argv=argv)


if __name__ == "__main__":
    main()
