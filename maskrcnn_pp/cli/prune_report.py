"""Parameters, inference time and IoU of a trained UNet++ pruned to L1..L4 (the paper's Fig. 3).

    tools/prune_report.py --config-file configs/semantic/nuclei_unetpp.yaml \\
        --weights output/semantic/nuclei_unetpp/model_final.pth --output output/prune

Writes OUTPUT/prune_report.{md,json,png}. See ``maskrcnn_pp.studies.pruning.prune_report``.
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.cli.arguments import (
    add_config_overrides,
    add_model_arguments,
    add_unsafe_pickle_argument,
)
from maskrcnn_pp.utils.errors import UserError, exit_on_user_error
from maskrcnn_pp.utils.io import check_output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, required=True)
    parser.add_argument("--dataset", default=None,
                        help="registered data set to measure on (default: first DATASETS.TEST)")
    parser.add_argument("--output", required=True, help="folder for the report files")
    add_unsafe_pickle_argument(parser)
    add_config_overrides(parser)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from maskrcnn_pp.engine import is_semantic, load_config
    from maskrcnn_pp.studies.pruning import prune_report

    cfg = load_config(args.config_file, [*args.opts, "MODEL.WEIGHTS", args.weights])
    if not is_semantic(cfg):
        raise UserError(f"{args.config_file}: MODEL.META_ARCHITECTURE is "
                        f"{cfg.MODEL.META_ARCHITECTURE}; the pruning report needs a semantic "
                        "UNet++ config (SemanticUNetPP)")
    if args.dataset is None and not cfg.DATASETS.TEST:
        raise UserError(f"{args.config_file}: DATASETS.TEST is empty; pass --dataset")
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    check_output_dir(args.output, "--output")
    paths = prune_report(cfg, dataset, args.output,
                         allow_unsafe_pickle=args.allow_unsafe_pickle, weights_key="--weights")
    print(paths["md"].read_text(), end="")
    print(f"written: {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
