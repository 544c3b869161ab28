"""Nuclei metrics against hand-computed answers, on COCO files, and as a Detectron2 evaluator."""
from __future__ import annotations

import itertools
import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import print_csv_format
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util

from maskrcnn_pp.data.coco import register_coco_instances_lazy
from maskrcnn_pp.data.dsb2018 import convert_dsb2018
from maskrcnn_pp.evaluation.nuclei import (
    DSB_THRESHOLDS,
    InstanceOverlap,
    NucleiEvaluator,
    _maximum_matching_size,
    aji,
    coco_from_dict,
    dsb_map,
    dsb_precisions,
    evaluate_coco_results,
    f1_at_50,
    format_metrics_table,
    image_metrics,
    load_coco_ground_truth,
    pixel_dice,
    pixel_iou,
    summary_scalars,
    to_rles,
)
from maskrcnn_pp.utils.errors import UserError

SHAPE = (64, 64)
REAL_IDS = [
    "0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9",  # overlapping masks
    "1609b1b8480ee52652a644403b3f7d5511410a016750aa3b9a4c8ddb3e893e8e",  # overlapping masks
    "af576e8ec3a8d0b57eb6a311299e9e4fd2047970d3dd9d6f52e54ea6a91109da",  # colour, 320x256
    "a102535b0e88374bea4a1cfd9ee7cb3822ff54f4ab2a9845d428ec22f9ee2288",  # 375 nuclei
]


def box(y: int, x: int, height: int, width: int | None = None) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[y:y + height, x:x + (height if width is None else width)] = True
    return mask


def expected_dsb(ious_of_single_pair: Fraction) -> float:
    """One true and one predicted nucleus: precision is 1 where IoU > t, else 0."""
    return sum(ious_of_single_pair > Fraction(round(t * 100), 100) for t in DSB_THRESHOLDS) / 10


# --------------------------------------------------------------------------- hand-built


def test_perfect_prediction_scores_one():
    gt = [box(2, 2, 10), box(20, 20, 8), box(40, 5, 12, 20)]
    labels = np.zeros(SHAPE, np.int32)
    for k, mask in enumerate(gt):
        labels[mask] = 10 * (k + 1)
    for pred in (gt, np.stack(gt), labels, to_rles(gt)):
        metrics = image_metrics(gt, pred)
        assert metrics["dsb_precisions"] == [1.0] * 10
        assert [metrics[k] for k in ("dsb_map", "aji", "dice", "iou", "f1_50")] == [1.0] * 5
        assert metrics["num_gt"] == metrics["num_pred"] == 3


def test_empty_sides():
    gt = [box(2, 2, 10)]
    for one_empty in ((gt, []), ([], gt), (gt, np.zeros(SHAPE, np.int32))):
        metrics = image_metrics(*one_empty)
        assert [metrics[k] for k in ("dsb_map", "aji", "dice", "iou", "f1_50")] == [0.0] * 5
    both = image_metrics([], np.zeros(SHAPE, np.int32))
    assert [both[k] for k in ("dsb_map", "aji", "dice", "iou", "f1_50")] == [1.0] * 5


@pytest.mark.parametrize("shift", range(0, 20))
def test_shifted_square(shift):
    """A 20x20 square moved by k pixels: IoU = (20-k)/(20+k), crossing the thresholds.

    k = 5 gives IoU exactly 0.6, which must not count at t = 0.60 ("IoU > t").
    """
    n = 20
    gt, pred = [box(10, 10, n)], [box(10, 10 + shift, n)]
    iou = Fraction(n - shift, n + shift)
    assert dsb_map(gt, pred) == pytest.approx(expected_dsb(iou))
    assert aji(gt, pred) == pytest.approx(float(iou))
    assert pixel_iou(gt, pred) == pytest.approx(float(iou))
    assert pixel_dice(gt, pred) == pytest.approx((n - shift) / n)
    assert f1_at_50(gt, pred) == (1.0 if iou > Fraction(1, 2) else 0.0)


def test_exact_threshold_boundary():
    iou_point_six = dsb_precisions([box(10, 10, 20)], [box(10, 15, 20)])   # 15/25
    assert iou_point_six.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]


def test_nucleus_split_in_two_halves():
    gt = [box(10, 10, 10)]
    halves = [box(10, 10, 10, 5), box(10, 15, 10, 5)]       # IoU 0.5 each: never > 0.5
    assert dsb_map(gt, halves) == 0.0 and f1_at_50(gt, halves) == 0.0
    assert aji(gt, halves) == pytest.approx(50 / 150)       # C=50, U=100 + unused half 50
    assert pixel_dice(gt, halves) == 1.0 and pixel_iou(gt, halves) == 1.0
    uneven = [box(10, 10, 10, 6), box(10, 16, 10, 4)]       # IoU 0.6 and 0.4
    assert dsb_precisions(gt, uneven).tolist() == [0.5, 0.5] + [0.0] * 8
    assert dsb_map(gt, uneven) == pytest.approx(0.1)
    assert aji(gt, uneven) == pytest.approx(60 / 140)
    assert f1_at_50(gt, uneven) == pytest.approx(2 / 3)


def test_two_nuclei_merged_into_one_prediction():
    gt = [box(10, 10, 10), box(10, 20, 10)]
    merged = [box(10, 10, 10, 20)]
    assert dsb_map(gt, merged) == 0.0 and f1_at_50(gt, merged) == 0.0
    # Both nuclei pick the merged prediction: C = 100 + 100, U = 200 + 200.
    assert aji(gt, merged) == pytest.approx(0.5)
    assert pixel_dice(gt, merged) == 1.0
    unequal = [box(10, 10, 10), box(10, 20, 10, 5)]           # 100 and 50 pixels
    merged = [box(10, 10, 10, 15)]                            # IoU 100/150 and 50/150
    assert dsb_precisions(unequal, merged).tolist() == [0.5] * 4 + [0.0] * 6
    assert aji(unequal, merged) == pytest.approx(150 / 300)
    assert f1_at_50(unequal, merged) == pytest.approx(2 / 3)


def test_duplicate_predictions_match_once():
    gt = [box(10, 10, 10)]
    twice = [box(10, 10, 10), box(10, 10, 10)]               # overlapping predictions
    assert dsb_map(gt, twice) == 0.5                           # TP 1, FP 1
    assert aji(gt, twice) == pytest.approx(100 / 200)          # the copy is never chosen
    assert f1_at_50(gt, twice) == pytest.approx(2 / 3)


def test_matching_is_maximum_not_greedy():
    # Greedy would give true 0 prediction 0 and leave true 1 unmatched.
    trap = np.array([[True, True], [True, False]])
    assert _maximum_matching_size(trap) == 2
    rng = np.random.default_rng(0)
    for _ in range(200):
        table = rng.random((4, 5)) < 0.4
        best = max(sum(1 for i, j in enumerate(perm) if j < 5 and table[i, j])
                   for perm in itertools.permutations(range(7), 4))
        assert _maximum_matching_size(table) == best


def test_masks_of_different_sizes_are_rejected():
    with pytest.raises(ValueError, match="differ in size"):
        image_metrics([box(1, 1, 3)], [np.ones((8, 8), bool)])


# --------------------------------------------------------------------------- COCO files


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _hand_built_gt() -> dict:
    images = [{"id": i, "file_name": f"{i}.png", "height": SHAPE[0], "width": SHAPE[1]}
              for i in (1, 2, 3)]
    masks = [(1, box(5, 5, 10)), (2, box(5, 5, 10)), (2, box(30, 30, 12))]
    annotations = [{"id": k + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                    "segmentation": _rle(mask), "area": int(mask.sum()),
                    "bbox": list(mask_util.toBbox(_rle(mask)))}
                   for k, (image_id, mask) in enumerate(masks)]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "nucleus"}]}


def test_coco_results_scored_per_image():
    coco_gt = coco_from_dict(_hand_built_gt(), "gt")
    results = [  # image 1: a hit and a low-score false positive; images 2 and 3: nothing
        {"image_id": 1, "category_id": 1, "segmentation": _rle(box(5, 5, 10)), "score": 0.9},
        {"image_id": 1, "category_id": 1, "segmentation": _rle(box(40, 40, 6)), "score": 0.1}]
    metrics = evaluate_coco_results(coco_gt, results)
    per_image = {m["image_id"]: m for m in metrics["per_image"]}
    assert [per_image[i]["dsb_map"] for i in (1, 2, 3)] == [1.0, 0.0, 1.0]
    assert per_image[1]["num_pred"] == 1 and per_image[2]["num_gt"] == 2
    assert metrics["dsb_map"] == pytest.approx(2 / 3)
    assert metrics["aji"] == pytest.approx(2 / 3) and metrics["f1_50"] == pytest.approx(2 / 3)
    assert metrics["num_images"] == 3
    assert list(metrics["dsb_precision_by_threshold"]) == [f"{t:.2f}" for t in DSB_THRESHOLDS]
    # COCO AP uses every detection: recall reaches 1/3 at precision 1, so 34 of the 101
    # recall points score 1.
    assert metrics["coco_segm"]["AP"] == pytest.approx(34 / 101)
    assert metrics["coco_segm"]["AP50"] == pytest.approx(34 / 101)

    everything = evaluate_coco_results(coco_gt, results, score_thresh=0.0)
    assert everything["per_image"][0]["dsb_map"] == 0.5       # the false positive now counts
    only_first = evaluate_coco_results(coco_gt, results, image_ids=[1])
    assert only_first["num_images"] == 1 and only_first["dsb_map"] == 1.0


def test_uncompressed_rle_results_are_accepted():
    coco_gt = coco_from_dict(_hand_built_gt(), "gt")
    mask = box(5, 5, 10)
    counts = []            # run lengths in column-major order, starting with background
    value, run = False, 0
    for pixel in mask.flatten(order="F"):
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    segmentation = {"size": list(SHAPE), "counts": counts}
    decoded = mask_util.decode(mask_util.frPyObjects(segmentation, *SHAPE)).astype(bool)
    np.testing.assert_array_equal(decoded, mask)
    result = {"image_id": 1, "category_id": 1, "score": 1.0, "segmentation": segmentation}
    metrics = evaluate_coco_results(coco_gt, [result], image_ids=[1])
    assert metrics["dsb_map"] == 1.0 and metrics["coco_segm"]["AP"] == pytest.approx(1.0)


def test_summary_and_table():
    coco_gt = coco_from_dict(_hand_built_gt(), "gt")
    metrics = evaluate_coco_results(coco_gt, [])
    assert metrics["dsb_map"] == pytest.approx(1 / 3)       # only the empty image 3 scores
    assert metrics["coco_segm"] == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    scalars = summary_scalars(metrics)
    assert scalars["dsb_precision-0.50"] == pytest.approx(100 / 3)
    assert {"dsb_map", "aji", "dice", "iou", "f1_50", "segm_AP"} <= scalars.keys()
    table = format_metrics_table(metrics)
    assert re.search(r"^\| dsb_map +\| +33\.33 \|$", table, re.M)
    assert re.search(r"^\| segm_AP +\| +0\.00 \|$", table, re.M) and "0.95" in table


def test_bad_results_name_the_source():
    coco_gt = coco_from_dict(_hand_built_gt(), "gt")
    stray = {"image_id": 99, "category_id": 1, "segmentation": _rle(box(1, 1, 3)), "score": 1}
    with pytest.raises(UserError, match=r"preds.json: detection 0 has image_id 99"):
        evaluate_coco_results(coco_gt, [stray], results_name="preds.json")
    wrong_size = dict(stray, image_id=1, segmentation=_rle(np.ones((8, 8), bool)))
    with pytest.raises(UserError, match="mask of size"):
        evaluate_coco_results(coco_gt, [wrong_size])
    with pytest.raises(UserError, match="gt: not a COCO instances file"):
        coco_from_dict([stray], "gt")


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_coco(dsb2018_root, tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("nuclei_src")
    for image_id in REAL_IDS:
        shutil.copytree(dsb2018_root / image_id, src / image_id)
    out = tmp_path_factory.mktemp("nuclei_coco")
    convert_dsb2018(src, out, val_fraction=0.0, progress=False)
    return out / "annotations" / "instances_train.json"


def _gt_as_results(json_file: Path) -> list[dict]:
    data = json.loads(json_file.read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"],
             "segmentation": a["segmentation"], "score": 1.0} for a in data["annotations"]]


@pytest.mark.slow
def test_ground_truth_scored_as_predictions_is_perfect(real_coco):
    metrics = evaluate_coco_results(load_coco_ground_truth(real_coco), _gt_as_results(real_coco))
    assert [metrics[k] for k in ("dsb_map", "aji", "dice", "iou", "f1_50")] == [1.0] * 5
    assert metrics["coco_segm"] == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})
    assert sorted(m["num_gt"] for m in metrics["per_image"])[-1] == 375
    assert all(m["num_pred"] == m["num_gt"] for m in metrics["per_image"])


@pytest.mark.slow
def test_intersections_are_exact_on_real_overlapping_masks(real_coco):
    coco = load_coco_ground_truth(real_coco)
    image_id = next(i for i, im in coco.imgs.items() if im["file_name"] == f"{REAL_IDS[0]}.png")
    masks = np.stack([coco.annToMask(a) for a in coco.imgToAnns[image_id]]).astype(bool)
    moved = np.roll(masks, (1, 2), axis=(1, 2))
    overlap = InstanceOverlap.of(masks, moved)
    flat_gt = masks.reshape(len(masks), -1).astype(np.int64)
    flat_pred = moved.reshape(len(moved), -1).astype(np.int64)
    np.testing.assert_array_equal(overlap.intersections, flat_gt @ flat_pred.T)
    np.testing.assert_array_equal(overlap.gt_areas, flat_gt.sum(1))
    assert overlap.foreground_intersection == (masks.any(0) & moved.any(0)).sum()
    assert overlap.gt_foreground == masks.any(0).sum()


def _instances_from_coco(coco, image_id: int) -> Instances:
    image = coco.imgs[image_id]
    anns = coco.imgToAnns[image_id]
    masks = np.stack([coco.annToMask(a) for a in anns]).astype(bool)
    x, y, w, h = np.array([a["bbox"] for a in anns], np.float32).T
    instances = Instances((image["height"], image["width"]))
    instances.pred_boxes = Boxes(torch.from_numpy(np.stack([x, y, x + w, y + h], 1)))
    instances.scores = torch.ones(len(anns))
    instances.pred_classes = torch.zeros(len(anns), dtype=torch.int64)
    instances.pred_masks = torch.from_numpy(masks)
    return instances


@pytest.mark.slow
def test_evaluator_on_registered_real_set(real_coco, tmp_path):
    name = "dsb2018_test_evaluator"
    register_coco_instances_lazy(name, real_coco, real_coco.parent.parent / "images",
                                 metadata={"thing_classes": ["nucleus"]})
    try:
        evaluator = NucleiEvaluator(name, output_dir=str(tmp_path))
        coco = load_coco_ground_truth(real_coco)
        evaluator.reset()
        for image_id in coco.imgs:
            evaluator.process([{"image_id": image_id}],
                              [{"instances": _instances_from_coco(coco, image_id)}])
        results = evaluator.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    scalars = results["nuclei"]
    assert [scalars[k] for k in ("dsb_map", "aji", "dice", "iou", "f1_50")] == [100.0] * 5
    assert scalars["segm_AP"] == pytest.approx(100.0)
    assert all(isinstance(v, float) for v in flatten_results_dict(results).values())
    print_csv_format(results)
    saved = json.loads((tmp_path / "nuclei_metrics.json").read_text())
    assert saved["num_images"] == len(REAL_IDS) and len(saved["per_image"]) == len(REAL_IDS)


def test_evaluator_without_json_uses_detectron2_conversion(tmp_path):
    name = "nuclei_test_dicts_only"
    truth = {1: [box(5, 5, 10), box(30, 30, 12)], 2: [box(10, 40, 8)]}
    dicts = [{"image_id": i, "file_name": f"{i}.png", "height": SHAPE[0], "width": SHAPE[1],
              "annotations": [{"bbox": list(mask_util.toBbox(_rle(m))), "bbox_mode": 1,
                               "category_id": 0, "segmentation": _rle(m)} for m in masks]}
             for i, masks in truth.items()]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["nucleus"])
    try:
        evaluator = NucleiEvaluator(name, score_thresh=0.5)
        predictions = {1: [box(5, 5, 10), box(30, 35, 12)], 2: []}
        evaluator.reset()
        for image_id, masks in predictions.items():
            instances = Instances(SHAPE)
            instances.pred_boxes = Boxes(torch.tensor([[0.0, 0, 1, 1]] * len(masks)))
            instances.scores = torch.tensor([0.9] * len(masks))
            instances.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
            instances.pred_masks = torch.from_numpy(np.array(masks, bool).reshape(-1, *SHAPE))
            evaluator.process([{"image_id": image_id}], [{"instances": instances}])
        scalars = evaluator.evaluate()["nuclei"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # Image 1: one exact hit, one miss (IoU 84/204 = 0.41): TP 1, FP 1, FN 1 everywhere;
    # AJI (100 + 84) / (100 + 204). Image 2: a nucleus and no prediction: all 0.
    assert scalars["dsb_map"] == pytest.approx(100 * (1 / 3 + 0) / 2)
    assert scalars["aji"] == pytest.approx(100 * (184 / 304 + 0) / 2)
    assert scalars["f1_50"] == pytest.approx(100 * (2 / 4 + 0) / 2)
