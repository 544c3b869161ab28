#!/usr/bin/env python
"""Resize Kvasir-SEG or CVC-ClinicDB (``images/``, ``masks/``) to 224x224 image/label PNGs.

    python datasets/prepare_polyp.py kvasir-seg.zip --name kvasir [datasets/polyp_kvasir]

Writes ``OUT/{train,val}/{images,labels}`` and ``report.json`` (registered as
``polyp_<name>_train`` / ``_val`` in the default OUT). ``--help`` lists the flags every
preparer shares; see ``maskrcnn_pp.data.prepare.polyp``.
"""
from maskrcnn_pp.cli.prepare import preparer_main
from maskrcnn_pp.data.prepare.polyp import PolypPreparer

main = preparer_main(PolypPreparer)

if __name__ == "__main__":
    main()
