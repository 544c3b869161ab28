#!/usr/bin/env python
"""Convert instance label images (Cellpose, StarDist, napari, QuPath) to COCO JSON.

    python datasets/prepare_instances.py my_cells/ datasets/my_cells --val-fraction 0.2

SRC (a folder, .zip or .tar.gz) holds images/<name>.<ext> and masks/<name>.<ext> (or
masks/<name>_masks.<ext>): PNG or TIFF, 8/16/32-bit integer label images, 0 = background.
Bad items are skipped, named on stderr and in OUT/report.json; ``--strict`` makes any of
them an error (exit code 2). OUT under $DETECTRON2_DATASETS registers as OUT_train /
OUT_val. See ``maskrcnn_pp.data.instances.convert_instances``.
"""
from __future__ import annotations

from maskrcnn_pp.cli.prepare import run_converter_cli
from maskrcnn_pp.data.instances import convert_instances
from maskrcnn_pp.utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    run_converter_cli(convert_instances, __doc__.splitlines()[0],
                      src_help="folder (or .zip / .tar.gz) with images/ and masks/",
                      strict_help="exit with code 2 if any image or label image is skipped",
                      argv=argv)


if __name__ == "__main__":
    main()
