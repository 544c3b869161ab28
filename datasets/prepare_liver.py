#!/usr/bin/env python
"""Slice LiTS CT scans (``volume-N.nii[.gz]``, ``segmentation-N.nii[.gz]``) into 512x512 PNGs.

    python datasets/prepare_liver.py LiTS/ [datasets/liver] [--window -200 250]

HU-windowed axial slices that show liver; liver and tumour merge into one class. Writes
``OUT/{train,val}/{images,labels}`` and ``report.json`` (registered as ``liver_train`` /
``_val`` in the default OUT). ``--help`` lists the flags every preparer shares; see
``maskrcnn_pp.data.prepare.liver``.
"""
from maskrcnn_pp.cli.prepare import preparer_main
from maskrcnn_pp.data.prepare.liver import LiverPreparer

main = preparer_main(LiverPreparer)

if __name__ == "__main__":
    main()
