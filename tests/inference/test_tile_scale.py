"""The tile size changes the speed, not the instances: every tile reaches the network at the
detector's training scale, and the per-tile limits grow with the tile (issue #23, item 2)."""
from __future__ import annotations

import types

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util

from maskrcnn_pp.engine import load_config
from maskrcnn_pp.inference import DetectronModelRunner, InstancePredictor, tile_windows
from maskrcnn_pp.inference.instance import default_tile_size, detector_scale
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT

CONFIGS = ROOT / "configs"
QUICK_PP = str(CONFIGS / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")
RADIUS = 7          # the nuclei's radius in the image, and what the stand-in was "trained" on


class ScaleBoundDetector:
    """A stand-in Detectron2 detector: every bright blob of its input whose area is that of
    a disc of radius :data:`RADIUS` (give or take 30 %) is a detection, scored by its
    brightness, with a 28 x 28 mask probability map as Mask R-CNN's head gives. Like a
    trained detector, it misses objects shown at another scale, and it keeps at most
    ``roi_heads.box_predictor.test_topk_per_image`` detections per input."""

    def __init__(self, detections_per_image: int):
        self.proposal_generator = types.SimpleNamespace(pre_nms_topk={True: 10, False: 10},
                                                        post_nms_topk={True: 10, False: 10})
        box_predictor = types.SimpleNamespace(test_topk_per_image=detections_per_image)
        self.roi_heads = types.SimpleNamespace(box_predictor=box_predictor)
        self.input_sizes, self.limits = [], []

    def eval(self):
        return self

    def inference(self, batched_inputs, do_postprocess=True):
        assert not do_postprocess
        image = batched_inputs[0]["image"].permute(1, 2, 0).numpy()[:, :, 0]   # BGR: blue
        self.input_sizes.append(image.shape)
        self.limits.append(self.roi_heads.box_predictor.test_topk_per_image)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            (image > 50).astype(np.uint8), connectivity=8)
        expected = np.pi * RADIUS ** 2
        areas = stats[:, cv2.CC_STAT_AREA]
        brightness = np.bincount(labels.ravel(), image.ravel(), count) / np.maximum(areas, 1)
        keep = [k for k in range(1, count) if 0.7 * expected <= areas[k] <= 1.3 * expected]
        boxes, masks, scores = [], [], []
        for k in keep:
            x, y, w, h = stats[k, :4]
            boxes.append([x, y, x + w, y + h])
            crop = (labels[y:y + h, x:x + w] == k).astype(np.float32)
            masks.append(cv2.resize(crop, (28, 28), interpolation=cv2.INTER_LINEAR))
            scores.append(float(brightness[k]) / 255)
        order = np.argsort(scores)[::-1][:self.roi_heads.box_predictor.test_topk_per_image]
        raw = Instances(image.shape)
        raw.pred_boxes = Boxes(torch.tensor(np.array(boxes, np.float32).reshape(-1, 4)[order]))
        raw.scores = torch.tensor(np.array(scores, np.float32)[order])
        raw.pred_classes = torch.zeros(len(order), dtype=torch.int64)
        raw.pred_masks = torch.from_numpy(np.array(masks, np.float32).reshape(-1, 28, 28)[order]
                                          )[:, None]
        return [raw]


def crowded_field(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Discs of radius RADIUS on a jittered 24 px grid, each of its own brightness, as RGB."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.uint8)
    number = 0
    for row in range(12, height - 12, 24):
        for col in range(12, width - 12, 24):
            dy, dx = rng.integers(-3, 4, 2)
            cv2.circle(image, (int(col + dx), int(row + dy)), RADIUS, 60 + number % 190, -1)
            number += 1
    return np.repeat(image[..., None], 3, axis=2)


@pytest.fixture
def one_thread():
    """Thousands of per-mask pastes on tiny tensors: threads only add overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_one_image_gives_the_same_instances_at_tile_sizes_256_512_1024(one_thread):
    """1100 x 700 px, 1,305 nuclei, about 28 per 128 x 128 px; the detector keeps at most 40
    per 128 x 128 image (the config's test size), a 1024 px tile holds over 1,000."""
    cfg = load_config(QUICK_PP, ["TEST.DETECTIONS_PER_IMAGE", "40"])
    image = crowded_field(700, 1100)
    results = {}
    for tile_size in (256, 512, 1024):
        detector = ScaleBoundDetector(detections_per_image=40)
        predictor = InstancePredictor.from_config(cfg, DetectronModelRunner(detector, cfg),
                                                  tile_size=tile_size, score_thresh=0.0)
        results[tile_size] = predictor(image)
        windows = tile_windows(700, 1100, tile_size, tile_size // 4)
        # each tile reached the network at its own size (scale 1), not resized to 128 px
        assert detector.input_sizes == [(w.bottom - w.top, w.right - w.left) for w in windows]
        # the limit grew with each tile's area beyond 128 x 128, and was put back after
        assert detector.limits == [max(40, int(np.ceil(40 * h * w / 128 ** 2)))
                                   for h, w in detector.input_sizes]
        assert detector.roi_heads.box_predictor.test_topk_per_image == 40
    truth = len(range(12, 700 - 12, 24)) * len(range(12, 1100 - 12, 24))
    reference = results[256]
    assert len(reference) == truth
    for tile_size in (512, 1024):
        other = results[tile_size]
        assert len(other) == truth, tile_size
        ious = np.asarray(mask_util.iou(reference.rles, other.rles, [0] * len(other)))
        twin = ious.argmax(axis=1)
        assert sorted(twin) == list(range(truth))          # one to one
        assert ious.max(axis=1).min() >= 0.9               # masks agree up to the seams
        np.testing.assert_allclose(other.scores[twin], reference.scores, atol=1e-6)


@pytest.mark.parametrize("config, opts, scale, default_tile", [
    ("quick_schedules/mask_rcnn_pp_synthetic.yaml", [], 1.0, 512),   # 128 px images
    ("cpu_study/mask_rcnn_pp.yaml", [], 1.0, 512),                   # native scale
    ("mask_rcnn_pp.yaml", [], 1.25, 512),                    # 512 px crops resized to 640
    ("mask_rcnn_pp.yaml", ["INPUT.MIN_SIZE_TEST", "1280"], 2.5, 512),
    ("mask_rcnn_pp.yaml", ["INPUT.CROP.ENABLED", "False"], 1.0, 640),
])
def test_the_scale_is_the_training_scale_and_default_tiles_span_512_to_1024(
        config, opts, scale, default_tile):
    cfg = load_config(str(CONFIGS / config), opts)
    assert detector_scale(cfg) == pytest.approx(scale)
    assert default_tile_size(cfg) == default_tile


def test_the_network_sees_the_training_scale(tmp_path):
    """With 512 px training crops resized to about 640 px, a tile reaches the network 1.25x
    larger, whatever its size; boxes come back in the tile's pixels."""
    cfg = load_config(str(CONFIGS / "mask_rcnn_pp.yaml"))
    detector = ScaleBoundDetector(detections_per_image=100)
    runner = DetectronModelRunner(detector, cfg)
    for size in (100, 400):
        tile = np.zeros((size, size, 3), np.uint8)
        cv2.circle(tile, (50, 50), int(round(RADIUS / 1.25)), (200, 200, 200), -1)
        instances = runner(tile)
        assert detector.input_sizes[-1] == (size * 1.25, size * 1.25)
        assert len(instances) == 1 and instances.image_size == (size, size)
        x0, y0, x1, y1 = instances.pred_boxes.tensor[0].tolist()
        assert abs((x0 + x1) / 2 - 50.5) < 1 and abs((y0 + y1) / 2 - 50.5) < 1


def test_tiles_smaller_than_the_strides_allow_are_refused_naming_the_minimum():
    cfg = load_config(QUICK_PP)
    with pytest.raises(UserError, match="tile size 16 is below 32, the smallest tile"):
        InstancePredictor.from_config(cfg, None, tile_size=16)
    with pytest.raises(UserError, match="tile size must be > 0"):
        InstancePredictor.from_config(cfg, None, tile_size=0)
    main = load_config(str(CONFIGS / "mask_rcnn_pp.yaml"))      # scale 1.25: 32 / 1.25
    with pytest.raises(UserError, match="tile size 25 is below 26"):
        InstancePredictor.from_config(main, None, tile_size=25)
    assert InstancePredictor.from_config(main, None, tile_size=26).tile_size == 26


def test_thin_images_are_tiled_along_their_long_side_only():
    """A 1 x 100,000 image in tiles of 512 px: tiles span its height and are as long as a
    512 x 512 tile's area allows, so one tile holds it (1,042 tiles of 128 px before)."""
    assert tile_windows(1, 100_000, 512, 128) == [tile_windows(1, 100_000, 512, 0)[0]]
    assert len(tile_windows(1, 100_000, 128, 32)) == 7
    windows = tile_windows(100_000, 40, 512, 128)
    assert len(windows) == 16 and all(w.right - w.left == 40 for w in windows)
    assert all(w.bottom - w.top == 512 * 512 // 40 for w in windows)
    # still covered, neighbours sharing the overlap
    assert windows[0].top == 0 and windows[-1].bottom == 100_000
    assert all(b.top <= a.bottom - 128 for a, b in zip(windows, windows[1:]))
