#!/usr/bin/env python
"""Export a trained model as a TorchScript or ONNX graph with a JSON sidecar.

The command lives in ``maskrcnn_pp/cli/export_model.py``; installed, it is also
``maskrcnn-pp-export``.
"""
from maskrcnn_pp.cli.export_model import main

if __name__ == "__main__":
    main()
