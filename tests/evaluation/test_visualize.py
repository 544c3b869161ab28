"""tools/visualize.py and maskrcnn_pp.evaluation.visualization: side-by-side pictures, scores."""
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from PIL import Image
from pycocotools import mask as mask_util

from maskrcnn_pp.data.image_io import read_image_rgb
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.engine.checkpoint import SafeCheckpointer
from maskrcnn_pp.evaluation.nuclei import image_metrics
from maskrcnn_pp.evaluation.visualization import (
    MIN_PANEL_WIDTH,
    dataset_dict_rles,
    render_results_file,
)
from maskrcnn_pp.inference import load_predictor
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT, liver_phantom, run_script_main, write_lits

QUICK_PP = str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")
VISUALIZE = str(ROOT / "tools" / "visualize.py")
SIZE = (120, 160)     # smaller than MIN_PANEL_WIDTH: panels are enlarged to 400 px
DISCS = {"one.png": [(30, 30, 10), (30, 80, 12), (80, 60, 15), (90, 130, 9)],
         "two.png": [(40, 40, 14), (60, 110, 11)]}
SCORE_LINE = re.compile(r"DSB mAP (\S+)\s+AJI (\S+)\s+Dice (\S+)\s+IoU (\S+)\s+F1@0.5 (\S+)")


def disc_masks(discs):
    yy, xx = np.mgrid[:SIZE[0], :SIZE[1]]
    return np.stack([(yy - r) ** 2 + (xx - c) ** 2 <= radius ** 2 for r, c, radius in discs])


def rle_json(mask):
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture
def results_case(tmp_path):
    """Images, a ground truth and imperfect detections of known discs.

    Image 1: one disc missed, one shifted by 8 px (IoU 0.41), plus a weak (0.3) false detection that
    a 0.5 threshold removes. Image 2: exact.
    """
    root = tmp_path / "images"
    root.mkdir()
    images, annotations, results, kept = [], [], [], {}
    for image_id, (name, discs) in enumerate(DISCS.items(), start=1):
        masks = disc_masks(discs)
        picture = np.zeros((*SIZE, 3), np.uint8)
        picture[masks.any(0)] = (200, 120, 160)
        cv2.imwrite(str(root / name), picture)
        images.append({"id": image_id, "file_name": name, "height": SIZE[0], "width": SIZE[1]})
        for mask in masks:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": 1, "iscrowd": 0, "segmentation": rle_json(mask),
                                "area": int(mask.sum()), "bbox": [0, 0, 1, 1]})
        predicted = list(masks)
        if image_id == 1:
            predicted = [masks[0], np.roll(masks[1], 8, axis=1), masks[2]]
            weak = np.zeros(SIZE, bool)
            weak[100:110, 10:20] = True
            results.append({"image_id": 1, "category_id": 1, "segmentation": rle_json(weak),
                            "score": 0.3})
        kept[image_id] = (masks, np.stack(predicted))
        results += [{"image_id": image_id, "category_id": 1, "segmentation": rle_json(m),
                     "score": 0.9 - 0.1 * k} for k, m in enumerate(predicted)]
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations,
                              "categories": [{"id": 1, "name": "nucleus"}]}))
    pred = tmp_path / "results.json"
    pred.write_text(json.dumps(results))
    return gt, pred, root, kept


def title_scores(path):
    title = Image.open(path).text["Title"]
    return [float(v) for v in SCORE_LINE.search(title).groups()]


def expected_scores(gt_masks, pred_masks):
    metrics = image_metrics(gt_masks, pred_masks)
    return [round(100 * metrics[k], 1) for k in ("dsb_map", "aji", "dice", "iou", "f1_50")]


def test_side_by_side_from_results_file(results_case, tmp_path):
    gt, pred, root, kept = results_case
    rendered = render_results_file(gt, pred, root, tmp_path / "vis", score_thresh=0.5)
    assert [r.path.name for r in rendered] == ["one.png", "two.png"]

    panel_width = MIN_PANEL_WIDTH
    panel_height = int(SIZE[0] * MIN_PANEL_WIDTH / SIZE[1])
    for image_id, r in enumerate(rendered, start=1):
        picture = Image.open(r.path)
        assert picture.format == "PNG" and picture.width == 2 * panel_width
        assert picture.height > panel_height
        gt_masks, pred_masks = kept[image_id]
        assert title_scores(r.path) == expected_scores(gt_masks, pred_masks)
        assert r.metrics["num_gt"] == len(gt_masks) and r.metrics["num_pred"] == len(pred_masks)
    one = title_scores(rendered[0].path)
    assert 0 < one[0] < 100 and one[4] == pytest.approx(100 * 2 * 2 / (4 + 3), abs=0.1)
    assert title_scores(rendered[1].path) == [100.0] * 5

    # The left panel shows all four true discs of image 1, the right panel three.
    pixels = np.asarray(Image.open(rendered[0].path).convert("RGB"))[-panel_height:]
    left, right = pixels[:, :panel_width], pixels[:, panel_width:]
    assert np.abs(left.astype(int) - right.astype(int)).sum(axis=2).astype(bool).mean() > 0.01


def test_named_images_only_and_unknown_names_are_errors(results_case, tmp_path):
    gt, pred, root, kept = results_case
    rendered = render_results_file(gt, pred, root, tmp_path / "vis", file_names=["two.png"])
    assert [r.path.name for r in rendered] == ["two.png"]
    assert title_scores(rendered[0].path) == expected_scores(*kept[2])
    with pytest.raises(UserError, match="has no image named three.png"):
        render_results_file(gt, pred, root, tmp_path / "vis", file_names=["three.png"])


def visualize_in_process(capsys, *args):
    return run_script_main(VISUALIZE, capsys, *args)


def test_cli_from_results_file_and_its_errors(results_case, tmp_path, capsys, caplog):
    gt, pred, root, _ = results_case
    out = tmp_path / "vis"
    code, captured = visualize_in_process(capsys, "--pred", pred, "--gt", gt, "--image-root",
                                          root, "--output", out, "--max-images", "1")
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["one.png"]

    code, captured = visualize_in_process(capsys, "--pred", pred, "--gt", tmp_path / "no.json",
                                          "--image-root", root, "--output", out)
    assert code == 2 and captured.err.strip() == f"error: {tmp_path / 'no.json'}: file not found"

    code, captured = visualize_in_process(capsys, "--pred", pred, "--gt", gt, "--output", out)
    assert code == 2 and "give either --pred, --gt and --image-root" in captured.err

    (root / "one.png").write_bytes(b"broken")
    (root / "two.png").unlink()
    code, captured = visualize_in_process(capsys, "--pred", pred, "--gt", gt, "--image-root",
                                          root, "--output", tmp_path / "vis2")
    assert code == 2
    assert captured.err.strip().splitlines()[-1].startswith(
        f"error: none of the 2 images could be drawn; first: {root / 'one.png'}")
    assert f"skipped {root / 'two.png'}: cannot be read" in caplog.text


def test_bad_results_file_is_one_line_exit_2(results_case, tmp_path, capsys):
    gt, _, root, _ = results_case
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9}]))
    code, captured = visualize_in_process(capsys, "--pred", bad, "--gt", gt, "--image-root",
                                          root, "--output", tmp_path / "vis")
    assert code == 2 and captured.err.strip().splitlines() == [
        f"error: {bad}: detection 0 lacks one of image_id, category_id, segmentation, score"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """An untrained Mask R-CNN++ of the quick config, saved as training would."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    SafeCheckpointer(build_model(load_config(QUICK_PP)), str(folder)).save("model")
    return folder / "model.pth"


@pytest.mark.slow
def test_cli_from_a_checkpoint_on_a_registered_data_set(tmp_path, tiny_weights, capsys):
    out = tmp_path / "vis"
    code, captured = visualize_in_process(
        capsys, "--config-file", QUICK_PP, "--weights", tiny_weights, "--dataset",
        "nuclei_synthetic_val", "--output", out, "--max-images", "1", "--score-thresh", "0.4",
        "TEST.DETECTIONS_PER_IMAGE", "10")
    assert code == 0, captured.err
    records = DatasetCatalog.get("nuclei_synthetic_val")[:1]
    cfg = load_config(QUICK_PP, ["TEST.DETECTIONS_PER_IMAGE", "10"])
    predictor = load_predictor(cfg, str(tiny_weights), score_thresh=0.4)
    for record in records:
        path = out / os.path.basename(record["file_name"])
        picture = Image.open(path)
        assert picture.width == 2 * MIN_PANEL_WIDTH        # 128-px images, enlarged
        prediction = predictor(read_image_rgb(record["file_name"]))
        assert len(prediction) <= 10
        assert title_scores(path) == expected_scores(dataset_dict_rles(record), prediction.rles)
        assert f"left: ground truth ({len(record['annotations'])} nuclei)" in \
            picture.text["Title"]

    code, captured = visualize_in_process(
        capsys, "--config-file", QUICK_PP, "--weights", tiny_weights, "--dataset", "nope",
        "--output", out)
    assert code == 2 and "unknown data set 'nope'" in captured.err


def test_semantic_checkpoint_pictures_show_foreground_and_score_it(tmp_path, capsys,
                                                                   monkeypatch):
    """A semantic network whose heads say "foreground" everywhere: each picture's IoU must
    be the label's foreground share, computed here from the prepared label file."""

    from maskrcnn_pp.data.prepare import prepare_liver

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    hu, seg = liver_phantom()
    write_lits(tmp_path / "lits", 0, hu, seg)
    prepare_liver(tmp_path / "lits", tmp_path / "datasets", size=64, val_fraction=0)
    config = ROOT / "configs" / "quick_schedules" / "semantic_2d_quick.yaml"
    model = build_model(load_config(str(config)))
    with torch.no_grad():
        for head in model.net.heads.values():
            head.weight.zero_()
            head.bias.fill_(20.0)
    SafeCheckpointer(model, str(tmp_path)).save("all_foreground")
    code, captured = visualize_in_process(
        capsys, "--config-file", config, "--weights", tmp_path / "all_foreground.pth",
        "--dataset", "liver_train", "--output", tmp_path / "vis", "--max-images", "2",
        "MODEL.SEMANTIC.INFERENCE_LEVEL", "1")
    assert code == 0, captured.err
    pictures = sorted((tmp_path / "vis").glob("*.png"))
    assert len(pictures) == 2 and "2 pictures" in captured.out
    for picture in pictures:
        label = cv2.imread(str(tmp_path / "datasets/liver/train/labels" / picture.name), 0)
        title = Image.open(picture).text["Title"]
        assert f"IoU {100 * (label > 0).mean():.1f}" in title and "(UNet++ L1)" in title
        assert Image.open(picture).size[0] == 2 * 400  # 64 px panels enlarged to 400
    code, captured = visualize_in_process(
        capsys, "--config-file", config, "--weights", tmp_path / "all_foreground.pth",
        "--dataset", "polyp_kvasir_none", "--output", tmp_path / "vis")
    assert code == 2 and "unknown data set 'polyp_kvasir_none'" in captured.err
