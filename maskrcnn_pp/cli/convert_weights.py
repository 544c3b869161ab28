"""Convert pretrained weights once into a weights-only Detectron2 checkpoint (.pth).

    tools/convert_weights.py resnet50-0676ba61.pth output/R-50-torchvision.pth
    tools/convert_weights.py R-50.pkl output/R-50-msra.pth

Torchvision and timm ResNets (also in ``state_dict`` / ``model`` wrappers, with ``module.``
prefixes) are renamed to Detectron2's ResNet, without the classifier; a NumPy-only .pkl
(Detectron2's model zoo) keeps its names and its flag for Detectron2's name matching.
Any other network (no ResNet trunk names) is refused.
MODEL.WEIGHTS loads the output with ``torch.load(weights_only=True)``; it loads the input
files directly too, so converting only saves the renaming at every start.
"""
from __future__ import annotations

import argparse
import sys

from maskrcnn_pp.cli.arguments import add_unsafe_pickle_argument
from maskrcnn_pp.utils.errors import UserError, exit_on_user_error
from maskrcnn_pp.utils.io import atomic_write_stream, check_output_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="torchvision / timm .pth, or a NumPy-only .pkl")
    parser.add_argument("output", help="the weights-only checkpoint to write (.pth)")
    add_unsafe_pickle_argument(parser)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from maskrcnn_pp.engine.checkpoint import (
        convert_to_detectron2_resnet,
        is_resnet_state,
        load_weights_file,
    )

    if not args.output.endswith(".pth"):
        raise UserError(f"output {args.output} must end in .pth (a .pkl would be read as a "
                        "pickle again)")
    check_output_file(args.output, "output")
    checkpoint = load_weights_file(args.input, allow_unsafe_pickle=args.allow_unsafe_pickle)
    state = convert_to_detectron2_resnet(checkpoint["model"])
    if not is_resnet_state(state):
        raise UserError(f"{args.input}: holds no ResNet weights (no torchvision / timm "
                        "layer1..4, Detectron2 stem / res2..5 or Caffe2 res2_... names); only "
                        "ResNet trunks are converted")
    converted = {"model": {key: torch.as_tensor(value) for key, value in state.items()
                           if hasattr(value, "shape")},
                 "__author__": str(checkpoint.get("__author__", f"converted from {args.input}"))}
    if checkpoint.get("matching_heuristics"):
        converted["matching_heuristics"] = True
    atomic_write_stream(args.output, lambda f: torch.save(converted, f))
    renamed = ("renamed to Detectron2's ResNet" if set(state) != set(checkpoint["model"])
               else "names kept")
    print(f"{len(converted['model'])} tensors ({renamed}) -> {args.output}")


if __name__ == "__main__":
    sys.exit(main())
