#!/usr/bin/env python
"""Predict with any trained model: label images, overlays, COCO results, probability maps.

The command lives in ``maskrcnn_pp/cli/predict.py``; installed, it is also
``maskrcnn-pp-predict``.
"""
from maskrcnn_pp.cli.predict import main

if __name__ == "__main__":
    main()
