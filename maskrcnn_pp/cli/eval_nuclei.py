"""Nuclei metrics (DSB2018 score, AJI, Dice, IoU, F1@0.5, COCO segm AP) of a COCO results file.

    python tools/eval_nuclei.py --gt datasets/dsb2018/annotations/instances_val.json \\
        --pred output/inference/coco_instances_results.json --json output/nuclei.json

The results file is what Detectron2's COCOEvaluator writes. The table is in percent, as
the evaluators report, followed by what each metric is; the --json file is the record of
``maskrcnn_pp.evaluation.nuclei.evaluate_coco_results``, in fractions (per image too).
"""
from __future__ import annotations

import argparse

from maskrcnn_pp.cli.arguments import add_score_threshold_argument
from maskrcnn_pp.evaluation.metric_notes import metric_notes
from maskrcnn_pp.utils.errors import check_finite, exit_on_user_error
from maskrcnn_pp.utils.io import atomic_write_json, check_output_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="the metrics:\n" + metric_notes(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, help="COCO instances JSON (ground truth)")
    parser.add_argument("--pred", required=True, help="COCO results JSON (detections)")
    parser.add_argument("--json", help="also write every metric, per image too, to this file (as "
                             "fractions in [0, 1])")
    add_score_threshold_argument(parser, "detections below this score are ignored by the "
                                         "nuclei metrics (not by COCO AP)")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from maskrcnn_pp.evaluation.nuclei import (
        evaluate_coco_results,
        format_metrics_table,
        load_coco_ground_truth,
        load_coco_results,
    )

    check_finite(args.score_thresh, "--score-thresh")
    if args.json:
        check_output_file(args.json, "--json")
    coco_gt = load_coco_ground_truth(args.gt)
    results = load_coco_results(args.pred)
    metrics = evaluate_coco_results(coco_gt, results, score_thresh=args.score_thresh,
                                    results_name=args.pred)
    print(format_metrics_table(metrics, explain=True))
    if args.json:
        atomic_write_json(args.json, metrics, indent=1)


if __name__ == "__main__":
    main()
