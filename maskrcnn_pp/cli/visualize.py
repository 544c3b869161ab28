"""Ground truth and prediction side by side, with each image's nuclei scores in the title.

From a COCO results file (what tools/predict.py or Detectron2's COCOEvaluator writes):

    python tools/visualize.py --pred out/coco_instances_results.json \\
        --gt datasets/dsb2018/annotations/instances_val.json \\
        --image-root datasets/dsb2018/images --output vis/

or from a checkpoint on a registered data set:

    python tools/visualize.py --config-file configs/mask_rcnn_pp.yaml \\
        --weights output/mask_rcnn_pp/model_final.pth --dataset dsb2018_val --output vis/

Scores (DSB mAP, AJI, Dice, IoU, F1@0.5) are those of maskrcnn_pp.evaluation.nuclei.
With a semantic config (configs/semantic/, configs/cpu_study/{nuclei,polyp}_*) the pictures
show the foreground of a semantic network and each image's IoU and Dice; the inference mode
is MODEL.SEMANTIC.INFERENCE_LEVEL (0 accurate, j = UNet++ L_j), which an override may set:

    python tools/visualize.py --config-file configs/cpu_study/polyp_unetpp.yaml \
        --weights output/cpu_study/polyp_unetpp/model_final.pth --dataset polyp_kvasir_val \
        --output vis/ MODEL.SEMANTIC.INFERENCE_LEVEL 3
"""
from __future__ import annotations

import argparse
import logging

from maskrcnn_pp.cli.arguments import (
    add_config_overrides,
    add_model_arguments,
    add_score_threshold_argument,
    add_tiling_arguments,
    add_unsafe_pickle_argument,
)
from maskrcnn_pp.utils.errors import UserError, check_finite, exit_on_user_error
from maskrcnn_pp.utils.io import check_output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Config overrides (KEY VALUE ...) may follow the options (checkpoint mode).")
    results = parser.add_argument_group("from a COCO results file")
    results.add_argument("--pred", metavar="RESULTS.json", help="COCO results (detections)")
    results.add_argument("--gt", metavar="GT.json", help="COCO instances (ground truth)")
    results.add_argument("--image-root", metavar="DIR", help="folder of the GT's file_names")
    results.add_argument("--images", nargs="+", default=(), metavar="FILE_NAME",
                         help="only these images (file names as in the GT)")
    model = parser.add_argument_group("from a checkpoint")
    add_model_arguments(model)
    model.add_argument("--dataset", metavar="NAME", help="a registered data set, e.g. "
                                                         "nuclei_synthetic_val")
    add_tiling_arguments(model)
    add_unsafe_pickle_argument(model)
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--max-images", type=int, metavar="N", help="at most N images")
    add_score_threshold_argument(parser, "draw and score detections with at least this score")
    add_config_overrides(parser)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be at least 1, got {args.max_images}")
    if args.opts and not args.config_file:
        raise UserError(f"config overrides {' '.join(args.opts)} need --config-file")
    check_finite(args.score_thresh, "--score-thresh")
    from_results = [args.pred, args.gt, args.image_root]
    from_model = [args.config_file, args.weights, args.dataset]
    from_results_file = all(from_results) and not any(from_model)
    if not (from_results_file or all(from_model) and not any(from_results)):
        raise UserError("give either --pred, --gt and --image-root, or --config-file, "
                        "--weights and --dataset")
    check_output_dir(args.output, "--output")
    if from_results_file:
        from maskrcnn_pp.evaluation.visualization import render_results_file

        rendered = render_results_file(args.gt, args.pred, args.image_root, args.output,
                                       score_thresh=args.score_thresh,
                                       max_images=args.max_images, file_names=args.images)
    else:
        from maskrcnn_pp.engine import is_semantic, load_config

        cfg = load_config(args.config_file, args.opts)
        rendered = (_render_semantic(cfg, args) if is_semantic(cfg)
                    else _render_instances(cfg, args))
    print(f"{len(rendered)} pictures: {args.output}")


def _render_instances(cfg, args):
    from maskrcnn_pp.inference import load_predictor
    from maskrcnn_pp.studies.pictures import render_dataset_predictions

    predictor = load_predictor(
        cfg, args.weights, allow_unsafe_pickle=args.allow_unsafe_pickle,
        score_thresh=args.score_thresh, tile_size=args.tile_size,
        tile_overlap=args.tile_overlap)
    return render_dataset_predictions(predictor, args.dataset, args.output,
                                      max_images=args.max_images)


def _render_semantic(cfg, args):
    from maskrcnn_pp.engine.checkpoint import load_trained_model
    from maskrcnn_pp.studies.pictures import render_semantic_predictions

    model = load_trained_model(cfg, args.weights, allow_unsafe_pickle=args.allow_unsafe_pickle,
                               weights_key="--weights")
    return render_semantic_predictions(model, cfg, args.dataset, args.output,
                                       max_images=args.max_images)


if __name__ == "__main__":
    main()
