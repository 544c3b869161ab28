#!/usr/bin/env python
"""Convert DSB2018 ``stage1_train`` (folder, .zip or .tar.gz) to COCO JSON for Detectron2.

    python datasets/prepare_dsb2018.py stage1_train.zip datasets/dsb2018 --val-fraction 0.1 --seed 0

Writes ``OUT/images``, ``OUT/annotations/instances_{train,val}.json`` and ``OUT/report.json``
(registered as ``dsb2018_train`` / ``_val`` in the default OUT, as ``<OUT>_train`` / ``_val``
elsewhere under ``$DETECTRON2_DATASETS``). ``--help`` lists the flags every preparer shares;
see ``maskrcnn_pp.data.prepare.dsb2018``.
"""
from maskrcnn_pp.cli.prepare import preparer_main
from maskrcnn_pp.data.prepare.dsb2018 import Dsb2018Preparer

main = preparer_main(Dsb2018Preparer)

if __name__ == "__main__":
    main()
