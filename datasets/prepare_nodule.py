#!/usr/bin/env python
"""Check and window lung-nodule CT crops (``images/``, ``labels/`` NIfTI) to 64^3 volumes.

    python datasets/prepare_nodule.py crops/ [datasets/nodule] [--window -1000 400]

Writes ``OUT/{train,val}/{images,labels}/<name>.nii.gz`` and ``report.json`` (registered as
``nodule_train`` / ``_val`` in the default OUT). ``--help`` lists the flags every preparer
shares; see ``maskrcnn_pp.data.prepare.nodule``.
"""
from maskrcnn_pp.cli.prepare import preparer_main
from maskrcnn_pp.data.prepare.nodule import NodulePreparer

main = preparer_main(NodulePreparer)

if __name__ == "__main__":
    main()
