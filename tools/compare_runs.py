#!/usr/bin/env python
"""Compare finished semantic runs: network, parameters, IoU, Dice, per-level IoU, time.

The command lives in ``maskrcnn_pp/cli/compare_runs.py``; installed, it is also
``maskrcnn-pp-compare-runs``.
"""
from maskrcnn_pp.cli.compare_runs import main

if __name__ == "__main__":
    main()
