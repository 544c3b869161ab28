#!/usr/bin/env python
"""Convert pretrained weights once into a weights-only Detectron2 checkpoint (.pth).

The command lives in ``maskrcnn_pp/cli/convert_weights.py``; installed, it is also
``maskrcnn-pp-convert-weights``.
"""
from maskrcnn_pp.cli.convert_weights import main

if __name__ == "__main__":
    main()
