"""tools/predict.py and maskrcnn_pp.inference: tiling, merging, writers, inputs, errors."""
import io
import json
import os
import subprocess
import sys
import tarfile

import cv2
import numpy as np
import pytest
import tifffile
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from maskrcnn_pp.data.image_io import read_image_rgb
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.engine.checkpoint import SafeCheckpointer
from maskrcnn_pp.evaluation.nuclei import coco_from_dict, evaluate_coco_results, to_rles
from maskrcnn_pp.inference import InstancePredictor, resolve_overlaps, tile_windows
from maskrcnn_pp.inference.batch import (
    IMAGES_INDEX_FILE,
    RESULTS_FILE,
    InputImage,
    find_inputs,
    image_ids_from_coco,
    predict_files,
    split_config_overrides,
)
from maskrcnn_pp.inference.tiling import Detection
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT, run_script_main

QUICK_PP = str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")
PREDICT = str(ROOT / "tools" / "predict.py")

# (row, column, radius) in a 300 x 340 image. With 128-pixel tiles overlapping by 32 the
# seams are columns 96, 128, 192, 212, 224, 320 and rows 96, 128, 172, 224. Discs 3 and 8
# are wider than the overlap, so no tile sees them whole; 7 lies whole in two tiles.
DISCS = [(50, 128, 9), (50, 96, 9), (112, 112, 20), (250, 200, 9), (180, 40, 12),
         (260, 330, 8), (20, 300, 10), (250, 112, 19), (160, 260, 22), (200, 160, 8)]
DISC_IMAGE_SIZE = (300, 340)


def disc_masks(discs, size):
    yy, xx = np.mgrid[:size[0], :size[1]]
    return np.stack([(yy - r) ** 2 + (xx - c) ** 2 <= radius ** 2 for r, c, radius in discs])


def disc_image(discs, size):
    """Uniform discs of distinct brightness (100, 112, ...) on black, as RGB."""
    image = np.zeros((*size, 3), np.uint8)
    for number, mask in enumerate(disc_masks(discs, size)):
        image[mask] = 100 + 12 * number
    return image


class BrightComponents:
    """A stand-in model: each connected bright region of a tile is one instance, scored by
    its brightness. It records the tiles it was called on."""

    def __init__(self):
        self.tile_shapes = []

    def __call__(self, tile):
        self.tile_shapes.append(tile.shape[:2])
        count, labels = cv2.connectedComponents((tile[:, :, 0] > 50).astype(np.uint8))
        masks = np.stack([labels == k for k in range(1, count)]) if count > 1 else \
            np.zeros((0, *tile.shape[:2]), bool)
        scores = [float(tile[:, :, 0][m].mean()) / 255 for m in masks]
        instances = Instances(tile.shape[:2])
        instances.pred_masks = torch.from_numpy(masks)
        instances.scores = torch.tensor(scores, dtype=torch.float32)
        instances.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
        instances.pred_boxes = Boxes(torch.tensor(
            [[m.any(0).argmax(), m.any(1).argmax(), m.shape[1] - m.any(0)[::-1].argmax(),
              m.shape[0] - m.any(1)[::-1].argmax()] for m in masks],
            dtype=torch.float32).reshape(-1, 4))
        return instances


def mask_iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


# --------------------------------------------------------------------------- tiling


def test_tile_windows_cover_the_image_with_the_requested_overlap():
    windows = tile_windows(300, 340, 128, 32)
    assert sorted({w.left for w in windows}) == [0, 96, 192, 212]
    assert sorted({w.top for w in windows}) == [0, 96, 172]
    assert all(w.bottom - w.top == 128 and w.right - w.left == 128 for w in windows)
    assert tile_windows(100, 128, 128, 32) == [tile_windows(100, 128, 128, 0)[0]]
    with pytest.raises(UserError, match="tile overlap"):
        tile_windows(300, 300, 64, 64)


@pytest.mark.parametrize("tile_size, overlap, expected_tiles", [
    (128, 32, 12), (100, 48, 30), (400, 0, 1)])
def test_nuclei_on_tile_seams_are_merged_exactly(tile_size, overlap, expected_tiles):
    model = BrightComponents()
    predictor = InstancePredictor(model, tile_size, overlap, score_thresh=0.0)
    truth = disc_masks(DISCS, DISC_IMAGE_SIZE)
    prediction = predictor(disc_image(DISCS, DISC_IMAGE_SIZE))

    assert len(model.tile_shapes) == expected_tiles
    windows = tile_windows(*DISC_IMAGE_SIZE, tile_size, overlap)
    if tile_size == 128:   # the image really puts nuclei across seams
        seen_whole = [any(m[w.top:w.bottom, w.left:w.right].sum() == m.sum() for w in windows)
                      for m in truth]
        assert not seen_whole[2] and not seen_whole[7] and sum(seen_whole) == 8
    assert len(prediction) == len(DISCS)
    masks = prediction.masks()
    for number, disc in enumerate(truth):
        ious = [mask_iou(disc, m) for m in masks]
        best = int(np.argmax(ious))
        assert ious[best] == 1.0, f"disc {number}: best IoU {ious[best]:.3f}"
        assert prediction.scores[best] == pytest.approx((100 + 12 * number) / 255, abs=1e-6)
    assert list(prediction.scores) == sorted(prediction.scores, reverse=True)


@pytest.mark.parametrize("operation", [cv2.dilate, cv2.erode])
@pytest.mark.parametrize("tile_size, overlap", [(128, 32), (100, 48), (90, 40)])
def test_merging_tolerates_masks_that_differ_between_tiles(operation, tile_size, overlap):
    """A real model's masks of one nucleus differ a little from tile to tile: here every
    other tile grows or shrinks them by a pixel. Still one instance per disc."""
    calls = []

    def model(tile):
        calls.append(tile.shape)
        if len(calls) % 2:
            tile = operation(tile, np.ones((3, 3), np.uint8))
        return BrightComponents()(tile)

    prediction = InstancePredictor(model, tile_size, overlap, score_thresh=0.0)(
        disc_image(DISCS, DISC_IMAGE_SIZE))
    assert len(prediction) == len(DISCS)
    ious = np.array([[mask_iou(disc, m) for m in prediction.masks()]
                     for disc in disc_masks(DISCS, DISC_IMAGE_SIZE)])
    assert sorted(ious.argmax(axis=1)) == list(range(len(DISCS)))    # one-to-one
    assert ious.max(axis=1).min() > 0.65     # a 1-pixel change of an 8-pixel disc: 0.7


# The most crowded DSB2018 image: 1272 x 603 pixels, 375 nuclei.
CROWDED_DSB_IMAGE = "a102535b0e88374bea4a1cfd9ee7cb3822ff54f4ab2a9845d428ec22f9ee2288"


def read_dsb_sample(archive, image_id):
    """(PNG bytes of the image, [(top, left, cropped mask), ...]) of one archived sample."""
    image_bytes, nuclei = None, []
    with tarfile.open(archive) as tar:
        for member in tar:
            if f"/{image_id}/" not in member.name:
                if nuclei:      # members are grouped by image: this one is complete
                    break
                continue
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            if "/images/" in member.name:
                image_bytes = data
                continue
            mask = np.asarray(Image.open(io.BytesIO(data))) > 0
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            nuclei.append((rows[0], cols[0], mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]))
    return image_bytes, nuclei


@pytest.mark.slow
def test_tiling_reproduces_a_crowded_real_dsb2018_image(dsb2018_archive, tmp_path):
    """An oracle model that returns the true nuclei visible in each tile: merging the
    tiles of the real image must give back exactly its 375 nuclei."""
    image_bytes, nuclei = read_dsb_sample(dsb2018_archive, CROWDED_DSB_IMAGE)
    (tmp_path / "crowded.png").write_bytes(image_bytes)
    image = read_image_rgb(tmp_path / "crowded.png")      # an RGBA PNG
    assert image.shape == (603, 1272, 3) and len(nuclei) == 375

    def oracle(tile_rgb, window):
        masks = []
        for top, left, crop in nuclei:
            full = np.zeros(tile_rgb.shape[:2], bool)
            rows = slice(max(top - window.top, 0), min(top + crop.shape[0], window.bottom)
                         - window.top)
            cols = slice(max(left - window.left, 0), min(left + crop.shape[1], window.right)
                         - window.left)
            if rows.start >= rows.stop or cols.start >= cols.stop:
                continue
            full[rows, cols] = crop[rows.start + window.top - top:rows.stop + window.top - top,
                                    cols.start + window.left - left:
                                    cols.stop + window.left - left]
            if full.any():
                masks.append(full)
        instances = Instances(tile_rgb.shape[:2])
        instances.pred_masks = torch.from_numpy(
            np.stack(masks) if masks else np.zeros((0, *tile_rgb.shape[:2]), bool))
        instances.scores = torch.rand(len(masks))
        instances.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
        return instances

    windows = iter(tile_windows(603, 1272, 256, 64))
    prediction = InstancePredictor(lambda tile: oracle(tile, next(windows)), 256, 64,
                                 score_thresh=0.0)(image)
    truth = []
    for top, left, crop in nuclei:
        full = np.zeros((603, 1272), np.uint8, order="F")
        full[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
        truth.append(mask_util.encode(full))
    assert len(prediction) == 375
    ious = np.asarray(mask_util.iou(prediction.rles, truth, [0] * len(truth)))
    assert sorted(ious.argmax(axis=1)) == list(range(375)) and ious.max(axis=1).min() == 1.0


def test_duplicates_of_whole_nuclei_keep_the_higher_score():
    """Disc 7 lies whole in two tiles; the copy from the tile that scores it higher wins."""
    calls = []

    def model(tile):
        instances = BrightComponents()(tile)
        instances.scores = instances.scores + 0.01 * len(calls)   # later tiles score higher
        calls.append(tile.shape)
        return instances

    prediction = InstancePredictor(model, 128, 32, score_thresh=0.0)(
        disc_image(DISCS[6:7], DISC_IMAGE_SIZE))
    assert len(calls) == 12 and len(prediction) == 1
    # The disc (rows 10..30, columns 290..310) is whole in tiles 2 and 3 (top row, columns
    # 192..320 and 212..340); tile 3 came later and scored higher.
    assert prediction.scores[0] == pytest.approx((100 / 255) + 0.03, abs=1e-6)


def test_score_threshold_drops_weak_instances_before_merging():
    prediction = InstancePredictor(BrightComponents(), 128, 32, score_thresh=150 / 255)(
        disc_image(DISCS, DISC_IMAGE_SIZE))
    expected = [n for n in range(len(DISCS)) if (100 + 12 * n) / 255 >= 150 / 255]
    assert len(prediction) == len(expected) == 5


# --------------------------------------------------------------------------- writers


def detections_from_masks(masks, scores):
    """Detections holding ``masks`` in the given order, cropped to their boxes."""
    detections = []
    for mask, score in zip(masks, scores):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        detections.append(Detection(int(rows[0]), int(cols[0]),
                                    mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1],
                                    score, 0))
    return detections


def test_overlaps_are_resolved_once_by_score_and_mostly_hidden_instances_dropped():
    masks = np.zeros((4, 20, 30), bool)
    masks[0, 2:10, 2:12] = True       # score 0.6: loses 5 x 4 of its 80 pixels to mask 1
    masks[1, 5:15, 8:20] = True       # score 0.9: keeps everything
    masks[2, 12:18, 15:28] = True     # score 0.7: loses 3 x 5 of its 78 pixels to mask 1
    masks[3, 6:14, 9:19] = True       # score 0.8: 80 pixels, all under mask 1: dropped
    scores = [0.6, 0.9, 0.7, 0.8]
    result = resolve_overlaps(detections_from_masks(masks, scores), 20, 30,
                              min_visible_fraction=0.5)
    labels = result.label_image
    assert labels.dtype == np.uint16 and labels.shape == (20, 30)
    assert list(result.scores) == [0.9, 0.7, 0.6]            # mask 3 is gone, ids by score
    expected = np.zeros((20, 30), np.uint16)
    expected[masks[0]] = 3
    expected[masks[2]] = 2
    expected[masks[1]] = 1
    np.testing.assert_array_equal(labels, expected)
    # every form of the result holds the same, disjoint instances
    np.testing.assert_array_equal(result.masks(), [labels == k for k in (1, 2, 3)])
    np.testing.assert_array_equal(mask_util.decode(result.rles).transpose(2, 0, 1),
                                  result.masks())
    np.testing.assert_array_equal(result.boxes, [[8, 5, 20, 15], [15, 12, 28, 18],
                                                 [2, 2, 12, 10]])
    assert [r["score"] for r in result.coco_results(1, [1])] == [0.9, 0.7, 0.6]

    # mask 0 keeps 60 / 80 = 75 % of its pixels, mask 2 63 / 78 = 81 %
    assert list(resolve_overlaps(detections_from_masks(masks, scores), 20, 30,
                                 min_visible_fraction=0.8).scores) == [0.9, 0.7]
    # a fraction of 0 still drops what has no pixel left
    assert len(resolve_overlaps(detections_from_masks(masks, scores), 20, 30,
                                min_visible_fraction=0.0)) == 3
    assert resolve_overlaps([], 4, 5).label_image.max() == 0


def write_disc_inputs(folder):
    """Three images of known discs: an RGB PNG, a grayscale PNG and a 16-bit TIFF."""
    folder.mkdir()
    layouts = {"a.png": DISCS[:4], "b.png": DISCS[4:7], "c.tif": DISCS[7:]}
    for name, discs in layouts.items():
        image = disc_image(discs, DISC_IMAGE_SIZE)
        if name == "a.png":
            cv2.imwrite(str(folder / name), image[:, :, ::-1])
        elif name == "b.png":
            cv2.imwrite(str(folder / name), image[:, :, 0])
        else:       # 16-bit: 0 -> 0, the brightest disc -> 65535 after stretching
            cv2.imwrite(str(folder / name), image[:, :, 0].astype(np.uint16) * 250)
    return layouts


def ground_truth(layouts, first_id):
    images, annotations = [], []
    for image_id, (name, discs) in enumerate(layouts.items(), start=first_id):
        images.append({"id": image_id, "file_name": f"images/{name}",
                       "height": DISC_IMAGE_SIZE[0], "width": DISC_IMAGE_SIZE[1]})
        for rle in to_rles(disc_masks(discs, DISC_IMAGE_SIZE)):
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": 1, "iscrowd": 0, "segmentation": rle,
                                "area": int(mask_util.area(rle)),
                                "bbox": list(mask_util.toBbox(rle))})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "nucleus"}]}


def test_results_json_labels_and_overlays(tmp_path):
    """Results carry the ground truth's image ids (``--gt``) and score perfectly against it."""
    layouts = write_disc_inputs(tmp_path / "in")
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(ground_truth(layouts, first_id=11)))
    images = find_inputs([tmp_path / "in"])
    predictor = InstancePredictor(BrightComponents(), 128, 32, score_thresh=0.0)
    run = predict_files(predictor, images, tmp_path / "out",
                        image_ids=image_ids_from_coco(gt_file, images), progress=False)
    out = tmp_path / "out"
    assert run.num_instances == len(DISCS) and not run.skipped

    index = json.loads((out / IMAGES_INDEX_FILE).read_text())
    assert [(i["id"], i["file_name"]) for i in index["images"]] == [
        (11, "a.png"), (12, "b.png"), (13, "c.tif")]
    assert index["categories"] == [{"id": 1, "name": "nucleus"}]
    results = json.loads((out / RESULTS_FILE).read_text())
    assert {tuple(sorted(r)) for r in results} == {
        ("bbox", "category_id", "image_id", "score", "segmentation")}

    gt = coco_from_dict(json.loads(gt_file.read_text()), "gt")
    detections = COCO.loadRes(gt, results)
    assert len(detections.getAnnIds()) == len(DISCS)
    metrics = evaluate_coco_results(gt, results, score_thresh=0.0)
    assert metrics["dsb_map"] == 1.0 and metrics["coco_segm"]["AP"] == pytest.approx(1.0)
    for result in results:     # the bbox is the mask's box, as pycocotools computes it
        np.testing.assert_allclose(result["bbox"], mask_util.toBbox(result["segmentation"]))

    for name, discs in layouts.items():
        stem = name.rsplit(".", 1)[0]
        labels = tifffile.imread(out / "labels" / f"{stem}.tif")
        assert labels.dtype == np.uint16 and labels.shape == DISC_IMAGE_SIZE
        truth = disc_masks(discs, DISC_IMAGE_SIZE)
        assert labels.max() == len(discs)
        assert {int(v) for v in np.unique(labels[truth.any(0)])} == set(range(1, len(discs) + 1))
        overlay = cv2.imread(str(out / "overlays" / f"{stem}.png"))
        assert overlay.shape == (*DISC_IMAGE_SIZE, 3)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- inputs


def test_find_inputs_and_config_overrides(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("b.png", "sub/a.TIF", "notes.txt", "sub/c.jpeg"):
        (tmp_path / "in" / name).write_bytes(b"x")
    found = find_inputs([tmp_path / "in"])
    assert [image.name for image in found] == ["b.png", "sub/a.TIF", "sub/c.jpeg"]
    with pytest.raises(UserError, match="nope.png does not exist"):
        find_inputs([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="input folder .*empty holds no"):
        find_inputs([tmp_path / "empty"])
    with pytest.raises(UserError, match="same output files"):
        find_inputs([tmp_path / "in", tmp_path / "in" / "b.png"])

    cfg = load_config(QUICK_PP)
    assert split_config_overrides(["x.png", "dir", "MODEL.DEVICE", "cpu", "TEST.X", "1"],
                                  cfg) == (["x.png", "dir"], ["MODEL.DEVICE", "cpu",
                                                              "TEST.X", "1"])
    assert split_config_overrides(["IMG_1.JPG", "a.b"], cfg) == (["IMG_1.JPG", "a.b"], [])


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """An untrained Mask R-CNN++ of the quick config, saved as training would."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_model(load_config(QUICK_PP))
    SafeCheckpointer(model, str(folder)).save("model")
    return folder / "model.pth"


def run_predict(*args):
    return subprocess.run([sys.executable, PREDICT, *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def predict_in_process(capsys, *args):
    """tools/predict.py's main() here (fast); returns (exit code, stderr)."""
    code, captured = run_script_main(PREDICT, capsys, *args)
    return code, captured.err


@pytest.mark.slow
def test_end_to_end_with_a_real_model_skips_corrupt_images(tmp_path, tiny_weights):
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "in" / "big.png"),
                rng.integers(0, 255, (170, 200, 3), dtype=np.uint8))
    (tmp_path / "in" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    proc = run_predict("--config-file", QUICK_PP, "--weights", tiny_weights, tmp_path / "in",
                       "--output", out, "--score-thresh", "0", "TEST.DETECTIONS_PER_IMAGE", "15")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert any("skipped" in line and "corrupt.png" in line for line in proc.stderr.splitlines())

    results = json.loads((out / RESULTS_FILE).read_text())
    index = json.loads((out / IMAGES_INDEX_FILE).read_text())
    assert index["images"] == [{"id": 1, "file_name": "big.png",
                                "path": str(tmp_path / "in" / "big.png"),
                                "height": 170, "width": 200}]
    # One default tile (512 px) at the training scale; the limit of 15 detections per
    # 128 x 128 test image grows with the tile's area: 15 x 170 x 200 / 128² -> 32.
    assert 0 < len(results) <= 32
    assert all(r["segmentation"]["size"] == [170, 200] and r["image_id"] == 1
               and r["category_id"] == 1 for r in results)
    labels = tifffile.imread(out / "labels" / "big.tif")
    assert labels.dtype == np.uint16 and labels.shape == (170, 200)
    assert set(np.unique(labels)) - {0} == set(range(1, len(results) + 1))
    assert f"1 inputs, {len(results)} instances, 1 skipped" in proc.stdout
    assert cv2.imread(str(out / "overlays" / "big.png")).shape == (170, 200, 3)
    assert not (out / "overlays" / "corrupt.png").exists()


@pytest.mark.slow
def test_missing_weights_is_one_line_exit_2_no_traceback(tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8), np.uint8))
    proc = run_predict("--config-file", QUICK_PP, "--weights", tmp_path / "none.pth", image,
                       "--output", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: weights file {tmp_path / 'none.pth'} does not exist"]


def test_user_errors_exit_2_and_name_the_file(tmp_path, tiny_weights, capsys):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8), np.uint8))
    common = ["--config-file", QUICK_PP, "--output", tmp_path / "out"]

    code, err = predict_in_process(capsys, *common, "--weights", tiny_weights,
                                   tmp_path / "missing.png")
    assert code == 2 and f"input {tmp_path / 'missing.png'} does not exist" in err

    code, err = predict_in_process(capsys, *common, "--weights", tiny_weights, image,
                                   "--tile-size", "64", "--tile-overlap", "64")
    assert code == 2 and "tile overlap in [0, tile size), got tile size 64, overlap 64" in err

    corrupt_weights = tmp_path / "corrupt.pth"
    corrupt_weights.write_bytes(tiny_weights.read_bytes()[:5000])
    code, err = predict_in_process(capsys, *common, "--weights", corrupt_weights, image)
    assert code == 2 and f"checkpoint {corrupt_weights} is truncated" in err

    bad = [tmp_path / "bad1.png", tmp_path / "bad2.tif"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(b"II*\x00garbage")
    code, err = predict_in_process(capsys, *common, "--weights", tiny_weights, *bad)
    assert code == 2
    assert f"error: none of the 2 inputs could be read; first: {bad[0]}: file is empty" in err
    assert not (tmp_path / "out" / RESULTS_FILE).exists()


def test_gt_file_gives_its_image_ids(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 7, "file_name": "sub/a.png", "height": 1,
                                          "width": 1}], "annotations": []}))
    images = [InputImage(tmp_path / "a.png", "a.png")]
    assert image_ids_from_coco(gt, images) == {"a.png": 7}
    with pytest.raises(UserError, match="has no image named b.png"):
        image_ids_from_coco(gt, [InputImage(tmp_path / "b.png", "b.png")])
