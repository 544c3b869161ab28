#!/usr/bin/env python
"""Cut DSB2018 ``stage1_train`` (folder, .zip or .tar.gz) into 96x96 nucleus-union patches.

    python datasets/prepare_nuclei_patches.py stage1_train.tar.gz [datasets/nuclei_patches]

Writes ``OUT/{train,val}/{images,labels}`` and ``report.json`` (registered as
``nuclei_patches_train`` / ``_val`` in the default OUT). ``--help`` lists the flags every
preparer shares; see ``maskrcnn_pp.data.prepare.nuclei_patches``.
"""
from maskrcnn_pp.cli.prepare import preparer_main
from maskrcnn_pp.data.prepare.nuclei_patches import NucleiPatchesPreparer

main = preparer_main(NucleiPatchesPreparer)

if __name__ == "__main__":
    main()
