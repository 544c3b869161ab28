#!/usr/bin/env python
"""Nuclei metrics (DSB2018 score, AJI, Dice, IoU, F1@0.5, COCO segm AP) of a COCO results file.

The command lives in ``maskrcnn_pp/cli/eval_nuclei.py``; installed, it is also
``maskrcnn-pp-eval-nuclei``.
"""
from maskrcnn_pp.cli.eval_nuclei import main

if __name__ == "__main__":
    main()
