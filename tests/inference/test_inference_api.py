"""maskrcnn_pp.inference.load_predictor for every model kind, exported models, and
tools/predict.py on semantic 2D images and 3D NIfTI volumes."""
import json
import sys
import types

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from detectron2.modeling import build_model
from PIL import Image

from maskrcnn_pp.data.image_io import to_format
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.engine.checkpoint import SafeCheckpointer
from maskrcnn_pp.inference import (
    DetectronModelRunner,
    InstancePredictor,
    InstanceResult,
    SemanticPredictor,
    SemanticResult,
    load_predictor,
)
from maskrcnn_pp.inference.batch import (
    IMAGES_INDEX_FILE,
    PROGRESS_FILE,
    RESULTS_FILE,
    WriteOptions,
    find_inputs,
    predict_files,
)
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT, run_script_main

CONFIGS = ROOT / "configs" / "quick_schedules"
QUICK = {"pp": str(CONFIGS / "mask_rcnn_pp_synthetic.yaml"),
         "baseline": str(CONFIGS / "mask_rcnn_baseline_synthetic.yaml"),
         "2d": str(CONFIGS / "semantic_2d_quick.yaml"),
         "3d": str(CONFIGS / "semantic_3d_quick.yaml")}
PREDICT = str(ROOT / "tools" / "predict.py")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Untrained weights of each quick config, saved as training saves them."""
    folder = tmp_path_factory.mktemp("weights")
    saved = {}
    for kind, config in QUICK.items():
        torch.manual_seed(0)
        SafeCheckpointer(build_model(load_config(config)), str(folder)).save(kind)
        saved[kind] = str(folder / f"{kind}.pth")
    return saved


@pytest.mark.parametrize("kind", ["pp", "baseline"])
def test_instance_models_predict_any_array(weights, kind):
    predictor = load_predictor(QUICK[kind], weights[kind], score_thresh=0.0, tile_size=64,
                               tile_overlap=16, level=1,
                               opts=["TEST.DETECTIONS_PER_IMAGE", "8"])
    assert isinstance(predictor, InstancePredictor) and predictor.tile_size == 64
    assert predictor.cfg.MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL == 1
    rng = np.random.default_rng(0)
    result = predictor(rng.integers(0, 4000, (100, 90)).astype(np.uint16))
    assert isinstance(result, InstanceResult) and 0 < len(result) <= 8 * 4
    assert result.label_image.shape == (100, 90) and result.label_image.dtype == np.uint16
    masks = result.masks()
    assert masks.shape == (len(result), 100, 90)
    np.testing.assert_array_equal(result.label_image > 0, masks.any(axis=0))
    assert len(result.rles) == len(result) and result.boxes.shape == (len(result), 4)
    assert list(result.scores) == sorted(result.scores, reverse=True)
    for array in (rng.random((70, 60, 3)).astype(np.float32),
                  rng.integers(0, 255, (70, 60, 4)).astype(np.uint8)):
        assert predictor(array).label_image.shape == (70, 60)
    with pytest.raises(UserError, match=r"shape \(3, 70, 60, 2\)"):
        predictor(np.zeros((3, 70, 60, 2), np.uint8))


def test_eager_runner_pastes_the_masks_detectron2_pastes_box_by_box(weights):
    cfg = load_config(QUICK["pp"], ["TEST.DETECTIONS_PER_IMAGE", "20",
                                    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    model = build_model(cfg).eval()
    SafeCheckpointer(model).load(weights["pp"], checkpointables=[])
    tile = np.random.default_rng(5).integers(0, 255, (100, 90, 3), dtype=np.uint8)
    runner = DetectronModelRunner(model, cfg)
    ours = runner(tile)
    resized = runner.network_image(tile)
    assert runner.scale == 1 and np.array_equal(resized, to_format(tile, cfg.INPUT.FORMAT))
    with torch.no_grad():
        theirs = model([{"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()),
                         "height": 100, "width": 90}])[0]["instances"]
    assert len(ours) == len(theirs) > 0 and ours.pred_masks.shape == (len(ours), 100, 90)
    assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
    assert torch.equal(ours.scores, theirs.scores)
    for k in range(len(ours)):
        np.testing.assert_array_equal(ours.pred_masks[k, :, :], theirs.pred_masks[k].numpy())
        np.testing.assert_array_equal(ours.pred_masks[k, 10:40, 5:80],
                                      theirs.pred_masks[k, 10:40, 5:80].numpy())


def test_semantic_2d_model_predicts_images_of_any_size(weights):
    predictor = load_predictor(QUICK["2d"], weights["2d"], threshold=0.5)
    assert isinstance(predictor, SemanticPredictor) and predictor.tile_size is None
    result = predictor(np.random.default_rng(0).integers(0, 60000, (40, 50)).astype(np.uint16))
    assert isinstance(result, SemanticResult)
    assert result.probabilities.shape == (1, 40, 50) and result.probabilities.dtype == np.float32
    assert 0 <= result.probabilities.min() and result.probabilities.max() <= 1
    np.testing.assert_array_equal(result.label_image, result.probabilities[0] > 0.5)
    assert predictor(np.random.default_rng(1).integers(0, 255, (40, 50, 3), np.uint8)
                     ).label_image.shape == (40, 50)
    with pytest.raises(UserError, match=r"shape \(2, 40, 50\) is not"):
        predictor(np.zeros((2, 40, 50), np.uint8))


def test_semantic_sliding_windows_average_exactly():
    """A network that returns its input / 255: the stitched map must equal the volume."""
    calls = []

    def echo(batch):
        calls.append(tuple(batch.shape))
        return batch / 255.0

    volume = np.random.default_rng(1).integers(0, 255, (20, 40, 24)).astype(np.uint8)
    predictor = SemanticPredictor(echo, dims=3, network_size=16, tile_size=16, tile_overlap=4)
    result = predictor(volume)
    assert len(calls) == 2 * 3 * 2 and set(calls) == {(1, 1, 16, 16, 16)}
    np.testing.assert_allclose(result.probabilities[0], volume / 255.0, atol=1e-6)
    with pytest.raises(UserError, match=r"volume array of shape \(40, 24\)"):
        predictor(volume[0])


def test_semantic_3d_model_predicts_a_volume_larger_than_its_patch(weights):
    predictor = load_predictor(QUICK["3d"], weights["3d"])
    assert predictor.tile_size == 16 and predictor.dims == 3
    result = predictor(np.random.default_rng(2).normal(0, 500, (20, 40, 24)))
    assert result.probabilities.shape == (1, 20, 40, 24)
    assert result.label_image.shape == (20, 40, 24) and result.label_image.dtype == np.uint8


def test_exported_model_file_builds_the_same_kind_of_predictor(monkeypatch):
    loaded = []

    def graph(x):
        return x

    graph.scales_limits = False     # as an exported detector's runner says

    def load_exported_model(path, score_thresh=None):
        loaded.append((str(path), score_thresh))
        kind = "2d" if "semantic" in str(path) else "pp"
        return types.SimpleNamespace(cfg=load_config(QUICK[kind]), model_fn=graph)

    fake = types.ModuleType("maskrcnn_pp.inference.export")
    fake.load_exported_model = load_exported_model
    monkeypatch.setitem(sys.modules, "maskrcnn_pp.inference.export", fake)
    semantic = load_predictor("out/semantic/model.ts", threshold=0.3, tile_size=48)
    assert isinstance(semantic, SemanticPredictor) and semantic.threshold == 0.3
    assert semantic.tile_size == 48 and semantic.network_size == 32
    instance = load_predictor("out/pp/model.onnx", score_thresh=0.7)
    assert isinstance(instance, InstancePredictor) and instance.score_thresh == 0.7
    # the requested threshold reaches the exported graph, traced with threshold 0
    assert instance.tile_size == 128 and loaded == [
        ("out/semantic/model.ts", 0.5), ("out/pp/model.onnx", 0.7)]
    with pytest.raises(UserError, match="exported model: give it alone"):
        load_predictor("out/pp/model.ts", "weights.pth")


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the message of a CPU machine")
def test_cuda_without_a_gpu_is_one_clear_error(weights):
    with pytest.raises(UserError, match="device 'cuda' asked for, but no CUDA device"):
        load_predictor(QUICK["2d"], weights["2d"], device="cuda")


# --------------------------------------------------------------------------- the CLI


def predict(capsys, *args):
    code, captured = run_script_main(PREDICT, capsys, *args)
    return code, captured.out, captured.err


def test_cli_semantic_2d_pages_probabilities_skips_and_resume(tmp_path, weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (36, 44), dtype=np.uint8)).save(folder / "a.png")
    tifffile.imwrite(folder / "b.tif", rng.integers(0, 4000, (2, 30, 20), dtype=np.uint16),
                     photometric="minisblack")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "out"
    common = ["--config-file", QUICK["2d"], "--weights", weights["2d"], folder,
              "--output", out, "--probabilities"]
    code, stdout, err = predict(capsys, *common, "--page", "1")
    assert code == 0, err
    assert "skipped" in err and "broken.png" in err and "Traceback" not in err
    assert "2 inputs, label maps, 1 skipped" in stdout
    labels = tifffile.imread(out / "labels" / "b.tif")
    assert labels.shape == (30, 20) and labels.dtype == np.uint8
    probabilities = tifffile.imread(out / "probabilities" / "a.tif")
    assert probabilities.shape == (1, 36, 44) and probabilities.dtype == np.float32
    np.testing.assert_array_equal(tifffile.imread(out / "labels" / "a.tif"),
                                  probabilities[0] > 0.5)
    assert np.asarray(Image.open(out / "overlays" / "a.png")).shape == (36, 44, 3)
    index = json.loads((out / IMAGES_INDEX_FILE).read_text())
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in index["images"]] == [
        (1, "a.png", 36, 44), (2, "b.tif", 30, 20)]
    assert index["categories"] == [{"id": 0, "name": "background"}, {"id": 1, "name": "liver"}]
    assert not (out / RESULTS_FILE).exists()
    assert len((out / PROGRESS_FILE).read_text().splitlines()) == 2

    (out / "labels" / "a.tif").unlink()
    with open(out / PROGRESS_FILE, "a") as lines:            # what a kill leaves behind
        lines.write('{"image": {"id": 3, "file_na')
    code, stdout, _ = predict(capsys, *common, "--page", "1", "--resume", "--no-overlays")
    assert code == 0 and "2 already done, 1 skipped" in stdout
    assert not (out / "labels" / "a.tif").exists()          # not predicted again
    assert [json.loads(line)["image"]["file_name"]
            for line in (out / PROGRESS_FILE).read_text().splitlines()] == ["a.png", "b.tif"]
    code, _, err = predict(capsys, *common)
    assert code == 2 and "holds an earlier prediction" in err and "--overwrite" in err
    code, _, err = predict(capsys, *common, "--overwrite")   # b.tif needs --page
    assert code == 0 and "b.tif: holds 2 images" in err
    assert (out / "labels" / "a.tif").exists()
    assert not (out / "labels" / "b.tif").exists()             # nothing of the earlier run
    assert not (out / "probabilities" / "b.tif").exists()
    assert [json.loads(line)["image"]["file_name"]
            for line in (out / PROGRESS_FILE).read_text().splitlines()] == ["a.png"]


def test_cli_resume_refuses_another_model_level_or_threshold(tmp_path, weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (36, 44), dtype=np.uint8)).save(folder / name)
    out = tmp_path / "out"
    common = ["--config-file", QUICK["2d"], folder, "--output", out]
    assert predict(capsys, *common, "--weights", weights["2d"])[0] == 0
    first_line = (out / PROGRESS_FILE).read_text().splitlines()[0]
    (out / PROGRESS_FILE).write_text(first_line + "\n")       # as if b.png was not done

    torch.manual_seed(1)
    SafeCheckpointer(build_model(load_config(QUICK["2d"])), str(tmp_path)).save("other")
    for extra, change in (
            (["--threshold", "0.7"], "threshold 0.5 -> 0.7"),
            (["--level", "1"], "config.MODEL.SEMANTIC.INFERENCE_LEVEL 0 -> 1"),
            (["--label-format", "png"], "write.label_format tif -> png"),
            (["--weights", tmp_path / "other.pth"], "weights sha256 ")):
        if "--weights" not in extra:
            extra = [*extra, "--weights", weights["2d"]]
        code, stdout, err = predict(capsys, *common, *extra, "--resume")
        assert code == 2 and not stdout, err
        assert f"was predicted with other settings: {change}" in err
        assert len(err.strip().splitlines()) == 1
    code, stdout, _ = predict(capsys, *common, "--weights", weights["2d"], "--resume",
                              "--no-overlays")
    assert code == 0 and "2 inputs, label maps, 1 already done" in stdout


def test_cli_3d_model_on_nifti_keeps_the_affine(tmp_path, weights, capsys):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 7]
    volume = np.random.default_rng(4).integers(-1000, 400, (24, 20, 18)).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "scan.nii.gz"))
    out = tmp_path / "out"
    code, stdout, err = predict(capsys, "--config-file", QUICK["3d"], "--weights",
                                weights["3d"], tmp_path / "scan.nii.gz", "--output", out,
                                "--probabilities", "INPUT.INTENSITY.MODE", "range",
                                "INPUT.INTENSITY.RANGE", "[-1000, 400]")
    assert code == 0, err
    labels = nib.load(str(out / "labels" / "scan.nii.gz"))
    np.testing.assert_allclose(labels.affine, affine)
    assert labels.shape == (24, 20, 18) and labels.get_data_dtype() == np.uint8
    assert nib.load(str(out / "probabilities" / "scan.nii.gz")).shape == (24, 20, 18, 1)
    index = json.loads((out / IMAGES_INDEX_FILE).read_text())
    assert index["images"][0]["depth"] == 18


def test_nifti_outputs_keep_the_input_orientation_voxel_for_voxel(tmp_path):
    """An LPS-ordered volume is predicted in RAS+ (as training reads volumes) and written
    back in the input's voxel order and affine: a thresholding network must give back
    exactly the input's bright voxels."""
    affine = np.diag([-1.5, -1.5, 2.5, 1.0])
    affine[:3, 3] = [40, 30, -20]
    volume = np.random.default_rng(6).integers(0, 255, (22, 17, 13)).astype(np.uint8)
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "lps.nii.gz"))
    predictor = SemanticPredictor(lambda batch: batch / 255.0, dims=3, network_size=0,
                                  tile_size=8, tile_overlap=2)
    predict_files(predictor, find_inputs([tmp_path / "lps.nii.gz"]), tmp_path / "out",
                  options=WriteOptions(probabilities=True), progress=False)
    labels = nib.load(str(tmp_path / "out" / "labels" / "lps.nii.gz"))
    np.testing.assert_allclose(labels.affine, affine)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), volume > 127.5)
    probabilities = nib.load(str(tmp_path / "out" / "probabilities" / "lps.nii.gz"))
    np.testing.assert_allclose(np.asarray(probabilities.dataobj)[..., 0], volume / 255.0,
                               atol=1e-6)


def test_cli_bad_output_folder_and_model_arguments_are_one_line_exit_2(tmp_path, weights,
                                                                       capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    (tmp_path / "file").write_text("")
    code, _, err = predict(capsys, "--config-file", QUICK["2d"], "--weights", weights["2d"],
                           image, "--output", tmp_path / "file" / "out")
    assert code == 2 and err.strip() == (f"error: --output {tmp_path / 'file' / 'out'}: "
                                         "cannot be created or written (Not a directory)")
    code, _, err = predict(capsys, "--exported", "model.ts", "--weights", weights["2d"],
                           image, "--output", tmp_path / "o")
    assert code == 2 and "--exported alone" in err
    code, _, err = predict(capsys, "--config-file", QUICK["3d"], "--weights", weights["3d"],
                           image, "--output", tmp_path / "o")
    assert code == 2 and "x.png: a 3D model predicts on NIfTI volumes only" in err
