#!/usr/bin/env python
"""Compare models over several seeds: train what is missing, evaluate, bootstrap the CIs.

The command lives in ``maskrcnn_pp/cli/study.py``; installed, it is also
``maskrcnn-pp-study``.
"""
from maskrcnn_pp.cli.study import main

if __name__ == "__main__":
    main()
