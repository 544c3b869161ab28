"""What each nuclei metric is, in words: the report of tools/eval_nuclei.py and its --help.

Apart from ``nuclei.py`` so that ``--help`` reads it without importing torch.
"""
from __future__ import annotations

import textwrap

# What each number of the table is, for the report of tools/eval_nuclei.py and its --help.
METRIC_DEFINITIONS = (
    ("dsb_map", "DSB2018 score: TP / (TP + FP + FN), nuclei and predictions matched one to "
                "one at IoU > t, averaged over t = 0.50:0.05:0.95 (10 thresholds)"),
    ("aji", "Aggregated Jaccard Index (Kumar et al. 2017): each true nucleus with its "
            "best-IoU prediction, summed intersections / summed unions (unmatched nuclei and "
            "predictions add to the unions)"),
    ("dice", "Dice of the union of true nuclei and the union of predicted nuclei (pixels)"),
    ("iou", "IoU (Jaccard) of the same two unions"),
    ("f1_50", "F1 = 2TP / (2TP + FP + FN), matched one to one at IoU > 0.5"),
    ("segm_AP", "COCO mask AP (pycocotools): precision averaged over recall and IoU "
                "0.50:0.05:0.95; segm_AP50, segm_AP75 at IoU 0.50, 0.75"),
    ("IoU > t", "the DSB precision TP / (TP + FP + FN) at each threshold t"),
)


def metric_notes(score_thresh: float | None = None) -> str:
    """The definitions of :data:`METRIC_DEFINITIONS`, one line each, and how they are
    averaged."""
    detections = ("detections with score >= " + f"{score_thresh:g}" if score_thresh is not None
                  else "detections above --score-thresh")
    return "\n".join(textwrap.fill(line, 90, subsequent_indent="    ") for line in (
        [f"{name}: {text}" for name, text in METRIC_DEFINITIONS]
        + ["All in percent. dsb_map, aji, dice, iou, f1_50 and the IoU > t row are means over "
           f"images of each image's score, from the {detections} (an image without true and "
           "predicted nuclei scores 100); segm_* are COCO's, over all images at once and "
           "every detection."]))
