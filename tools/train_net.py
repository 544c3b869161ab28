#!/usr/bin/env python
"""Train or evaluate any maskrcnn_pp model (Mask R-CNN++, its baseline, semantic UNet++).

The command lives in ``maskrcnn_pp/cli/train_net.py``; installed, it is also
``maskrcnn-pp-train``.
"""
import sys

from maskrcnn_pp.cli.train_net import main

if __name__ == "__main__":
    sys.exit(main())
