#!/usr/bin/env python
"""`make demo`: Mask R-CNN++ trained and evaluated on embedded synthetic nuclei, on the CPU.

The command lives in ``maskrcnn_pp/cli/demo.py``; installed, it is also
``maskrcnn-pp-demo``.
"""
from maskrcnn_pp.cli.demo import main

if __name__ == "__main__":
    main()
