#!/usr/bin/env python
"""Items 4 and 7 of the claim at full width on one GPU (``make gpu-study``).

The command lives in ``maskrcnn_pp/cli/gpu_study.py``; installed, it is also
``maskrcnn-pp-gpu-study``.
"""
import sys

from maskrcnn_pp.cli.gpu_study import main

if __name__ == "__main__":
    sys.exit(main())
