"""Instance post-processing on cropped masks: RLEs without canvases, label images beyond
uint16, the seam merge with shared corners, bounded overlays, the scale benchmark."""
import numpy as np
import pytest
from pycocotools import mask as mask_util

from maskrcnn_pp.inference import InstancePredictor, InstanceResult, crop_rle, tile_windows
from maskrcnn_pp.inference.overlay import draw_label_overlay
from maskrcnn_pp.inference.tiling import Detection, merge_tiles
from maskrcnn_pp.studies import postprocessing_scale as benchmark


@pytest.mark.parametrize("shape, top, left, height, width", [
    ((7, 5), 3, 4, 20, 15),      # inside
    ((20, 6), 0, 2, 20, 15),     # full columns: runs go on into the next column
    ((4, 15), 16, 0, 20, 15),    # touches the bottom and both sides
    ((1, 1), 19, 14, 20, 15),    # the last pixel
    ((1, 1), 0, 0, 20, 15),      # the first pixel
])
def test_crop_rle_equals_pycocotools_on_the_full_canvas(shape, top, left, height, width):
    rng = np.random.default_rng(sum(shape) + top)
    for _ in range(20):
        crop = rng.random(shape) < 0.5
        crop[0, 0] = crop[-1, -1] = True
        full = np.zeros((height, width), np.uint8, order="F")
        full[top:top + shape[0], left:left + shape[1]] = crop
        expected = mask_util.encode(full)
        rle = crop_rle(top, left, crop, height, width)
        assert rle["size"] == [height, width]
        assert rle["counts"] == expected["counts"].decode("ascii")
        np.testing.assert_array_equal(mask_util.decode(rle), full)


def test_label_image_switches_to_uint32_beyond_65535_instances():
    count, side = 70_000, 300
    tops, lefts = np.divmod(np.arange(count), side)
    result = InstanceResult(side, side, tops, lefts, [np.ones((1, 1), bool)] * count,
                            np.linspace(1, 0.5, count), np.zeros(count, np.int64))
    labels = result.label_image
    assert labels.dtype == np.uint32 and labels.max() == count
    assert labels[tops[-1], lefts[-1]] == count and labels[0, 0] == 1
    np.testing.assert_array_equal(result.boxes[5], [5, 0, 6, 1])


def test_kept_detections_sharing_a_top_left_corner_merge_without_error():
    """Two seam pieces of one tile start at the same pixel; a piece of the next tile joins
    the second. Merging must find that one by position, never by comparing masks."""
    windows = [tile for tile in tile_windows(100, 180, 100, 20)]
    assert [(w.left, w.right) for w in windows] == [(0, 100), (80, 180)]
    first = Detection(10, 70, np.ones((5, 30), bool), 0.9, 0, [0], [windows[0]], True)
    second = Detection(10, 70, np.ones((20, 30), bool), 0.8, 0, [0], [windows[0]], True)
    continued = Detection(10, 80, np.ones((20, 30), bool), 0.7, 0, [1], [windows[1]], True)
    kept = merge_tiles([continued, second, first], windows, (100, 180), merge_iou=0.5)
    assert len(kept) == 2
    assert (kept[0].top, kept[0].left, kept[0].mask.shape) == (10, 70, (5, 30))
    assert (kept[1].top, kept[1].left, kept[1].mask.shape) == (10, 70, (20, 40))
    assert kept[1].mask.all() and kept[1].score == 0.8 and sorted(kept[1].tiles) == [0, 1]


def test_overlay_of_a_large_image_is_shrunk_and_coloured_from_the_labels():
    labels = np.zeros((5000, 3000), np.uint32)
    labels[1000:2000, 500:1500] = 1
    labels[3000:3100, 2000:2900] = 70_000
    image = np.full((5000, 3000, 3), 40, np.uint8)
    overlay = draw_label_overlay(image, labels, max_side=1000)
    assert overlay.shape == (1000, 600, 3)
    assert (overlay[0, 0] == 40).all()                                  # background kept
    assert not (overlay[300, 200] == 40).all()                          # inside label 1
    assert not (overlay[300, 200] == overlay[610, 490]).all()           # another colour
    small = draw_label_overlay(image[:50, :60], labels[1000:1050, 500:560])
    assert small.shape == (50, 60, 3)


def test_perfect_model_at_a_small_scale_finds_every_nucleus_across_seams():
    """The scale benchmark's pipeline on a 512 px image with 256 nuclei and 9 tiles."""
    image = benchmark.nuclei_grid_image(512, 256, seed=3)
    result = InstancePredictor(benchmark.PerfectNucleiModel(), 200, 48)(image)
    assert len(result) == 256
    labels = result.label_image
    assert labels.max() == 256 and ((labels > 0) == (image[..., 0] > 0)).all()
    areas = np.bincount(labels.ravel())[1:]
    assert (areas == [crop.sum() for crop in result.crops]).all()
    row = benchmark.scale_case(512, 256, 200, 48)
    assert row["found"] == row["rles"] == 256 and row["peak_mem_MiB"] >= 0
