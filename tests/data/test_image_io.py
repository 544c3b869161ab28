"""The one image path (data/image_io.py): TIFF pages, intensity rules, and the training
loaders feeding the network exactly what the predictors feed it."""
import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from maskrcnn_pp.data.image_io import (
    Intensity,
    UnreadableImageError,
    array_to_rgb8,
    decode_image_file,
    normalize_intensity,
    read_image,
    read_image_rgb,
)
from maskrcnn_pp.data.mapper import CheckedDatasetMapper
from maskrcnn_pp.data.semantic_mapper import SemanticDatasetMapper
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.inference import (
    DetectronModelRunner,
    InstancePredictor,
    SemanticPredictor,
)
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT

QUICK_PP = str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")
QUICK_2D = str(ROOT / "configs" / "quick_schedules" / "semantic_2d_quick.yaml")


def sixteen_bit_image(seed=0, size=(40, 56)):
    """A dim 16-bit camera image with one hot pixel (what breaks min-max scaling)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(900, 1900, size).astype(np.uint16)
    image[3, 5] = 60000
    return image


def test_percentile_default_ignores_a_hot_pixel_minmax_and_range_as_asked():
    image = sixteen_bit_image()
    low, high = np.percentile(image.astype(np.float32), [1, 99])
    expected = np.rint(np.clip((image - low) * 255 / (high - low), 0, 255)).astype(np.uint8)
    # float32 arithmetic: a value at .5 may round either way
    assert np.abs(normalize_intensity(image).astype(int) - expected).max() <= 1
    assert normalize_intensity(image).mean() > 100           # not darkened by the hot pixel
    assert normalize_intensity(image, Intensity("minmax")).mean() < 10
    ranged = normalize_intensity(image, Intensity("range", 1000, 2000))
    assert ranged[image <= 1000].max() == 0 and ranged[3, 5] == 255
    eight = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert normalize_intensity(eight) is eight                # 8-bit passes unchanged
    with pytest.raises(UserError, match="INPUT.INTENSITY.MODE must be one of"):
        Intensity("zscore")
    with pytest.raises(UserError, match="low < high within 0..100"):
        Intensity("percentile", 99, 1)


def test_tiff_pages_channels_and_colour_files(tmp_path):
    stack = np.stack([sixteen_bit_image(seed) for seed in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    with pytest.raises(UnreadableImageError, match=r"holds 3 images \(axes .*\); choose one"):
        read_image_rgb(tmp_path / "stack.tif")
    second = read_image_rgb(tmp_path / "stack.tif", page=1)
    np.testing.assert_array_equal(second[..., 0], normalize_intensity(stack[1]))
    with pytest.raises(UnreadableImageError, match="has no page 3: it holds 3 image"):
        read_image_rgb(tmp_path / "stack.tif", page=3)

    rgb = np.stack([stack[0], stack[1] // 2, stack[2]], axis=-1)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    green = read_image(tmp_path / "rgb.tif", "L", channel=1)
    np.testing.assert_array_equal(green[..., 0], normalize_intensity(rgb[..., 1]))

    cv2.imwrite(str(tmp_path / "lzw.tif"), stack[0])      # OpenCV writes LZW
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "lzw.tif")[..., 0],
                                  normalize_intensity(stack[0]))

    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    colour = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    Image.fromarray(np.dstack([colour, np.full_like(gray, 7)]), "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "a.png"), colour)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", "BGR"), colour[..., ::-1])
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "g.png"),
                                  np.repeat(gray[..., None], 3, axis=2))
    with pytest.raises(UnreadableImageError, match="only TIFF files hold several"):
        read_image_rgb(tmp_path / "g.png", page=2)


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 3, 4, 5), np.uint8), r"shape \(2, 3, 4, 5\) is not \(H, W\)"),
    (np.zeros((8, 8, 2), np.uint8), r"shape \(8, 8, 2\)"),
    (np.zeros((8, 8), bool), "dtype bool"),
    (np.zeros((8, 8), complex), "dtype complex128"),
])
def test_wrong_arrays_are_one_clear_error(array, message):
    with pytest.raises(UserError, match=message):
        array_to_rgb8(array)
    with pytest.raises(UserError, match=message):
        InstancePredictor(lambda tile: None, 64)(array)


class Recorder(torch.nn.Module):
    """A stand-in detector that keeps the images it is given and detects nothing."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def inference(self, batched, do_postprocess=True):
        from detectron2.structures import Boxes, Instances

        self.inputs.append(batched[0]["image"].clone())
        empty = Instances(tuple(batched[0]["image"].shape[1:]))
        empty.pred_masks = torch.zeros((0, 1, 28, 28))
        empty.scores = torch.zeros(0)
        empty.pred_classes = torch.zeros(0, dtype=torch.int64)
        empty.pred_boxes = Boxes(torch.zeros((0, 4)))
        return [empty]


def test_compressed_ome_tiff_is_read_by_tifffile_with_its_axes(tmp_path):
    """LZW and zstd need ``imagecodecs`` (a dependency): tifffile, not OpenCV's page-by-page
    fallback, reads them, so the file's OME axes survive."""
    stack = np.stack([sixteen_bit_image(seed) for seed in range(3)])
    for compression in ("lzw", "zstd"):
        path = tmp_path / f"{compression}.ome.tif"
        tifffile.imwrite(path, stack, compression=compression, metadata={"axes": "ZYX"})
        with pytest.raises(UnreadableImageError, match=r"holds 3 images \(axes ZYX"):
            read_image_rgb(path)
        np.testing.assert_array_equal(read_image_rgb(path, page=2)[..., 0],
                                      normalize_intensity(stack[2]))


@pytest.mark.parametrize("image_format", ["BGR", "L"])
def test_training_loader_and_predictor_feed_identical_tensors_for_a_16bit_tiff(
        tmp_path, image_format):
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, sixteen_bit_image(size=(128, 128)))
    cfg = load_config(QUICK_PP, ["INPUT.RANDOM_FLIP", "none", "INPUT.FORMAT", image_format,
                                 "MODEL.PIXEL_MEAN", "[100.0]" if image_format == "L"
                                 else "[100.0, 100.0, 100.0]",
                                 "MODEL.PIXEL_STD", "[50.0]" if image_format == "L"
                                 else "[50.0, 50.0, 50.0]"])
    record = {"file_name": str(path), "image_id": 1, "height": 128, "width": 128,
              "annotations": []}
    training = CheckedDatasetMapper(cfg, is_train=True)(dict(record))["image"]

    network = Recorder()
    predictor = InstancePredictor.from_config(cfg, DetectronModelRunner(network, cfg))
    predictor(decode_image_file(path))             # what tools/predict.py passes
    assert len(network.inputs) == 1
    assert training.dtype == network.inputs[0].dtype
    assert torch.equal(training, network.inputs[0])
    assert training.float().std() > 20                       # real contrast, not clipped


def test_semantic_test_mapper_and_predictor_feed_identical_tensors(tmp_path):
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, sixteen_bit_image(size=(50, 70)))
    cfg = load_config(QUICK_2D)
    record = {"file_name": str(path), "sem_seg_file_name": str(tmp_path / "label.png"),
              "image_id": "deep"}
    Image.fromarray(np.zeros((50, 70), np.uint8)).save(tmp_path / "label.png")
    mapped = SemanticDatasetMapper(cfg, is_train=False)(record)["image"]

    seen = []

    def model_fn(batch):
        seen.append(batch[0].clone())
        return torch.zeros((1, 1, *batch.shape[2:]))

    SemanticPredictor.from_config(cfg, model_fn)(decode_image_file(path))
    assert len(seen) == 1 and mapped.shape == (1, 32, 32)
    assert torch.equal(mapped, seen[0])
