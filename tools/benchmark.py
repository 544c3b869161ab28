#!/usr/bin/env python
"""Speed, size and memory of the models, and of instance post-processing on huge images.

The command lives in ``maskrcnn_pp/cli/benchmark.py``; installed, it is also
``maskrcnn-pp-benchmark``.
"""
from maskrcnn_pp.cli.benchmark import main

if __name__ == "__main__":
    main()
