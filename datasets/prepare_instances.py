#!/usr/bin/env python
"""Convert instance label images (Cellpose, StarDist, napari, QuPath) to COCO JSON.

    python datasets/prepare_instances.py my_cells/ datasets/my_cells --val-fraction 0.2

SRC (a folder, .zip or .tar.gz) holds images/<name>.<ext> and masks/<name>.<ext> (or
masks/<name>_masks.<ext>): PNG or TIFF, 8/16/32-bit integer label images, 0 = background. OUT
under $DETECTRON2_DATASETS registers as OUT_train / OUT_val. ``--help`` lists the flags every
preparer shares; see ``maskrcnn_pp.data.prepare.instances``.
"""
from maskrcnn_pp.cli.prepare import preparer_main
from maskrcnn_pp.data.prepare.instances import InstancesPreparer

main = preparer_main(InstancesPreparer)

if __name__ == "__main__":
    main()
