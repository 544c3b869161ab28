#!/usr/bin/env python
"""Ground truth and prediction side by side, with each image's nuclei scores in the title.

The command lives in ``maskrcnn_pp/cli/visualize.py``; installed, it is also
``maskrcnn-pp-visualize``.
"""
from maskrcnn_pp.cli.visualize import main

if __name__ == "__main__":
    main()
