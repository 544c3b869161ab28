#!/usr/bin/env python
"""Parameters, inference time and IoU of a trained UNet++ pruned to L1..L4 (the paper's Fig. 3).

The command lives in ``maskrcnn_pp/cli/prune_report.py``; installed, it is also
``maskrcnn-pp-prune-report``.
"""
from maskrcnn_pp.cli.prune_report import main

if __name__ == "__main__":
    main()
