"""Export a trained model as a TorchScript or ONNX graph with a JSON sidecar.

    python tools/export_model.py --config-file configs/mask_rcnn_pp.yaml \\
        --weights output/mask_rcnn_pp/model_final.pth --format torchscript --output export/
    python tools/export_model.py --config-file configs/semantic/unetpp_nuclei.yaml \\
        --weights model_final.pth --format onnx --output export/ --levels 1 2 3 4

Writes ``model.ts`` / ``model.onnx`` (semantic networks with ``--levels``: ``model_L<j>``
per level, 0 the accurate mode) and ``<file>.json`` beside each, which holds the config and
the input layout. ``maskrcnn_pp.inference.export.load_exported_model`` loads them. A folder
that holds an export of the format is refused unless ``--overwrite`` is given (which also
removes that export's graphs this one does not rewrite). Config overrides
(``KEY VALUE ...``) may follow the options.
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.cli.arguments import add_config_overrides, add_model_arguments
from maskrcnn_pp.utils.errors import exit_on_user_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, required=True)
    parser.add_argument("--format", required=True, metavar="FORMAT",
                        help="torchscript or onnx")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--levels", type=int, nargs="+", metavar="J",
                        help="semantic UNet++: one graph per inference level (0 = accurate, "
                             "j = the pruned UNet++ L_j); default MODEL.SEMANTIC."
                             "INFERENCE_LEVEL in one model file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export of this format in --output")
    add_config_overrides(parser)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from maskrcnn_pp.engine import load_config
    from maskrcnn_pp.inference.export import export_model, sidecar_path

    cfg = load_config(args.config_file, args.opts)
    for path in export_model(cfg, args.weights, args.format, args.output, args.levels,
                             overwrite=args.overwrite):
        print(f"wrote {path} and {sidecar_path(path).name}")


if __name__ == "__main__":
    main()
