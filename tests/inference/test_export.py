"""TorchScript / ONNX export: the exported graphs predict like the eager models."""
from __future__ import annotations

import importlib.util
import json

import detectron2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from maskrcnn_pp.compat import detectron2_export
from maskrcnn_pp.data.synthetic import SyntheticNucleiSpec, render_image
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.engine.checkpoint import SafeCheckpointer
from maskrcnn_pp.inference import load_predictor
from maskrcnn_pp.inference.export import (
    _pruned,
    export_model,
    load_exported_model,
    sidecar_path,
)
from maskrcnn_pp.inference.instance import DetectronModelRunner
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT, run_script_main

QUICK = ROOT / "configs" / "quick_schedules"
EXPORT_TOOL = ROOT / "tools" / "export_model.py"
needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                       reason="onnxruntime is not installed (extra [export])")


def random_model(config, tmp_path_factory, opts=()):
    """An untrained model of a quick config (fixed seed), its config and saved weights."""
    cfg = load_config(str(QUICK / config), list(opts))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    folder = tmp_path_factory.mktemp(config.split(".")[0])
    SafeCheckpointer(model, str(folder)).save("model")
    return model, cfg, str(folder / "model.pth")


@pytest.fixture(scope="module")
def pp_model(tmp_path_factory):
    # The untrained network scores every box about 0.5: a threshold inside that range keeps
    # some and drops others, so the export's own score filter is exercised.
    return random_model("mask_rcnn_pp_synthetic.yaml", tmp_path_factory,
                        ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.54"])


@pytest.fixture(scope="module")
def pp_exported(pp_model, tmp_path_factory):
    """The graph file of ``pp_model`` in a format, exported once per module."""
    _, cfg, weights = pp_model
    folder, paths = tmp_path_factory.mktemp("pp_exported"), {}

    def path_of(fmt):
        if fmt not in paths:
            (paths[fmt],) = export_model(cfg, weights, fmt, folder)
        return paths[fmt]

    return path_of


@pytest.fixture(scope="module")
def semantic_model(tmp_path_factory):
    return random_model("semantic_2d_quick.yaml", tmp_path_factory)


def nuclei_tile(size, seed, width=None):
    image, _ = render_image(np.random.default_rng(seed), SyntheticNucleiSpec(size=size), True)
    return np.ascontiguousarray(image[:, :width])


def dense_masks(instances):
    """(N, H, W) bool masks, from a tensor or from a lazily pasting mask container."""
    masks = instances.pred_masks
    return torch.stack([torch.as_tensor(np.asarray(masks[k, :, :]))
                        for k in range(len(instances))])


def assert_same_instances(eager, exported):
    """Same detections up to the order of equal scores: each eager one has its own exported
    twin with the same box (to a tenth of a pixel), score, class and mask (IoU 0.95)."""
    assert len(eager) > 0, "nothing to compare: the model detected nothing"
    assert len(exported) == len(eager)
    assert exported.image_size == eager.image_size
    distance = torch.cdist(eager.pred_boxes.tensor, exported.pred_boxes.tensor)
    twin = distance.argmin(dim=1)
    assert len(set(twin.tolist())) == len(eager)
    assert distance.min(dim=1).values.max() < 0.1
    torch.testing.assert_close(exported.scores[twin], eager.scores, atol=1e-4, rtol=0)
    assert torch.equal(exported.pred_classes[twin], eager.pred_classes)
    twins, masks = dense_masks(exported)[twin], dense_masks(eager)
    assert twins.dtype == masks.dtype == torch.bool
    iou = ((twins & masks).sum(dim=(1, 2)).clamp(min=1)
           / (twins | masks).sum(dim=(1, 2)).clamp(min=1))
    assert iou.min() >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript",
                                 pytest.param("onnx", marks=needs_onnxruntime)])
def test_exported_mask_rcnn_pp_predicts_like_eager(pp_model, pp_exported, fmt):
    model, cfg, _ = pp_model
    path = pp_exported(fmt)
    assert path.name == f"model.{'ts' if fmt == 'torchscript' else 'onnx'}"
    exported = load_exported_model(path)
    assert exported.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == pytest.approx(0.54)
    assert exported.cfg.MODEL.BACKBONE.NAME == "build_resnet_unetpp_backbone"
    eager = DetectronModelRunner(model, cfg)
    for tile in (nuclei_tile(128, 1), nuclei_tile(96, 2, width=80)):  # trace size and smaller
        assert_same_instances(eager(tile), exported.model_fn(tile))


@pytest.mark.slow
def test_load_predictor_on_an_exported_file_labels_a_tiled_image_like_eager(pp_model,
                                                                          pp_exported):
    _, cfg, weights = pp_model
    image = nuclei_tile(200, 3)  # larger than the 128 px tile: three seams to merge
    options = dict(score_thresh=0.54, tile_size=128, tile_overlap=48)
    eager = load_predictor(cfg, weights, **options)(image)
    exported = load_predictor(str(pp_exported("torchscript")), **options)(image)
    assert len(eager.scores) > 0
    assert np.array_equal(exported.label_image, eager.label_image)
    np.testing.assert_allclose(exported.scores, eager.scores, atol=1e-4)


@pytest.fixture(scope="module")
def baseline_model(tmp_path_factory):
    return random_model("mask_rcnn_baseline_synthetic.yaml", tmp_path_factory,
                        ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript",
                                 pytest.param("onnx", marks=needs_onnxruntime)])
def test_exported_baseline_predicts_like_eager(baseline_model, tmp_path, fmt):
    model, cfg, weights = baseline_model
    (path,) = export_model(cfg, weights, fmt, tmp_path)
    tile = nuclei_tile(128, 3)
    assert_same_instances(DetectronModelRunner(model, cfg)(tile),
                          load_exported_model(path).model_fn(tile))


@pytest.mark.slow
def test_sidecar_holds_the_config_and_the_input_layout(pp_exported):
    path = pp_exported("torchscript")
    info = json.loads(sidecar_path(path).read_text())
    assert info["format"] == "torchscript" and info["kind"] == "instance"
    assert info["outputs"] == ["pred_boxes", "pred_classes", "pred_masks", "scores"]
    assert info["input"]["example_shape"] == [3, 128, 128]
    assert info["versions"]["detectron2"] == detectron2.__version__
    tile = nuclei_tile(128, 1)
    default = load_exported_model(path).model_fn(tile)
    lower = load_exported_model(path, score_thresh=0.0).model_fn(tile)
    assert 0 < len(default) < len(lower)


def semantic_reference(model, x, level):
    return torch.stack([r["sem_seg"] for r in model.inference(
        [{"image": image} for image in x], level=level)])


@pytest.mark.parametrize("fmt", ["torchscript",
                                 pytest.param("onnx", marks=needs_onnxruntime)])
def test_exported_unetpp_levels_predict_like_eager(semantic_model, tmp_path, fmt):
    model, cfg, weights = semantic_model
    levels = [0, *model.levels]
    paths = export_model(cfg, weights, fmt, tmp_path, levels=levels)
    assert [p.stem for p in paths] == [f"model_L{j}" for j in levels]
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    for path, level in zip(paths, levels):
        exported = load_exported_model(path)
        assert exported.info["level"] == level
        assert exported.info["input"]["layout"].startswith("NCHW float32")
        probabilities = exported.model_fn(x)
        assert probabilities.shape == (2, 1, 64, 64)
        torch.testing.assert_close(probabilities, semantic_reference(model, x, level),
                                   atol=1e-5, rtol=0)


def test_a_pruned_level_exports_only_the_nodes_it_needs(semantic_model, tmp_path):
    model, cfg, weights = semantic_model
    for path, level in zip(export_model(cfg, weights, "torchscript", tmp_path,
                                        levels=[1, 2]), [1, 2]):
        graph = torch.jit.load(str(path))
        assert sum(p.numel() for p in graph.parameters()) == model.net.parameter_count(level)
    assert model.net.parameter_count(1) < model.net.parameter_count(2)


@needs_onnxruntime
def test_a_pruned_onnx_graph_has_only_the_convolutions_of_its_level(semantic_model, tmp_path):
    import onnx

    def convolutions(net):
        return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
                   for m in net.modules())

    model, cfg, weights = semantic_model
    counts = []
    for path, level in zip(export_model(cfg, weights, "onnx", tmp_path, levels=[1, 2]),
                           [1, 2]):
        counts.append(sum(n.op_type in ("Conv", "ConvTranspose")
                          for n in onnx.load(str(path)).graph.node))
        assert counts[-1] == convolutions(_pruned(model.net, level))
    # L1 drops most of the network, L2 (the deepest here) only the head of L1
    assert counts[0] < counts[1] == convolutions(model.net) - 1


def test_3d_unetpp_exports_to_torchscript(tmp_path_factory, tmp_path):
    model, cfg, weights = random_model("semantic_3d_quick.yaml", tmp_path_factory)
    (path,) = export_model(cfg, weights, "torchscript", tmp_path)
    assert json.loads(sidecar_path(path).read_text())["input"]["layout"].startswith(
        "NCDHW float32")
    x = torch.rand(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(1)) * 255
    torch.testing.assert_close(load_exported_model(path).model_fn(x),
                               semantic_reference(model, x, model.inference_level),
                               atol=1e-5, rtol=0)


def test_an_operator_onnx_lacks_is_named_in_one_line():
    from maskrcnn_pp.inference.export import _trace_onnx

    class Histogram(torch.nn.Module):
        def forward(self, x):
            return torch.histc(x)

    with pytest.raises(UserError, match=r"Histogram cannot be exported to ONNX.*'aten::histc'"
                       ) as err:
        _trace_onnx(Histogram(), torch.rand(4, 4), "Histogram", batched=False)
    assert "\n" not in str(err.value)


def test_bad_requests_are_one_line_exit_2_before_any_work(pp_model, tmp_path, capsys):
    _, _, weights = pp_model
    config = QUICK / "mask_rcnn_pp_synthetic.yaml"
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        (["--format", "caffe2", "--weights", weights], "unknown export format 'caffe2'"),
        (["--format", "onnx", "--weights", tmp_path / "none.pth"], "none.pth does not exist"),
        (["--format", "onnx", "--weights", weights, "--output", blocker / "sub"],
         "cannot be created or written"),
        (["--format", "onnx", "--weights", weights, "--levels", "1"],
         "--levels applies to semantic networks"),
    ]
    for args, message in cases:
        if "--output" not in args:
            args = [*args, "--output", tmp_path / "out"]
        code, (out, err) = run_script_main(EXPORT_TOOL, capsys, "--config-file", config,
                                           *args)
        assert code == 2, err
        assert message in err and "Traceback" not in err and not out
        assert len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "out").glob("model*"))


@pytest.mark.slow
def test_unknown_level_missing_sidecar_and_odd_sizes_are_user_errors(semantic_model, tmp_path):
    _, cfg, weights = semantic_model
    with pytest.raises(UserError, match=r"level 7 \(--levels\) is not available"):
        export_model(cfg, weights, "torchscript", tmp_path, levels=[7])
    (path,) = export_model(cfg, weights, "torchscript", tmp_path)
    sidecar_path(path).unlink()
    with pytest.raises(UserError, match=r"sidecar model\.ts\.json is missing"):
        load_exported_model(path)
    (path,) = export_model(cfg, weights, "torchscript", tmp_path / "ok")
    with pytest.raises(UserError, match=r"size \(30, 32\) is not a multiple of 4"):
        load_exported_model(path).model_fn(torch.zeros(1, 1, 30, 32))
    with pytest.raises(UserError, match="ends in .ts or .onnx"):
        load_exported_model(tmp_path / "model.pth")


def test_cli_writes_graph_and_sidecar(semantic_model, tmp_path, capsys):
    _, _, weights = semantic_model
    code, (out, _) = run_script_main(EXPORT_TOOL, capsys, "--config-file",
                                     QUICK / "semantic_2d_quick.yaml", "--weights", weights,
                                     "--format", "torchscript", "--levels", "2",
                                     "--output", tmp_path, "MODEL.SEMANTIC.INFERENCE_LEVEL", "1")
    assert code == 0, out
    assert "model_L2.ts" in out
    exported = load_exported_model(tmp_path / "model_L2.ts")
    assert exported.cfg.MODEL.SEMANTIC.INFERENCE_LEVEL == 1   # the override is recorded
    assert exported.info["level"] == 2


def test_an_earlier_export_is_refused_unless_overwritten(semantic_model, tmp_path, capsys):
    _, _, weights = semantic_model
    config = QUICK / "semantic_2d_quick.yaml"

    def export(*extra):
        return run_script_main(EXPORT_TOOL, capsys, "--config-file", config, "--weights",
                               weights, "--format", "torchscript", "--output", tmp_path,
                               *extra)

    assert export("--levels", "1", "2")[0] == 0
    (tmp_path / "model.onnx").write_bytes(b"another format may share the folder")
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, (out, err) = export("--levels", "2")
    assert code == 2 and not out and err.strip() == (
        f"error: {tmp_path} holds an earlier torchscript export (model_L1.ts, "
        "model_L1.ts.json, model_L2.ts, model_L2.ts.json); --overwrite replaces it")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first   # untouched

    code, (out, _) = export("--levels", "2", "--overwrite")
    assert code == 0 and "model_L2.ts" in out
    # the earlier export's other graph is gone with its sidecar, the other format stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model_L2.ts",
                                                          "model_L2.ts.json"]
    assert load_exported_model(tmp_path / "model_L2.ts").info["level"] == 2


def test_detectron2_export_imports_without_caffe2():
    export = detectron2_export()
    assert export.TracingAdapter.__name__ == "TracingAdapter"
    if importlib.util.find_spec("caffe2") is None:
        assert not hasattr(export, "Caffe2Tracer")


@pytest.mark.parametrize("suffix", [".ts", pytest.param(".onnx", marks=needs_onnxruntime)])
def test_a_damaged_graph_file_is_a_user_error(semantic_model, tmp_path, suffix):
    _, cfg, weights = semantic_model
    fmt = "torchscript" if suffix == ".ts" else "onnx"
    (path,) = export_model(cfg, weights, fmt, tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="model" + suffix.replace(".", r"\.")):
        load_exported_model(path)


@needs_onnxruntime
def test_both_formats_can_share_a_folder(semantic_model, tmp_path):
    _, cfg, weights = semantic_model
    for fmt in ("torchscript", "onnx"):
        export_model(cfg, weights, fmt, tmp_path)
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 255
    ts, onnx = (load_exported_model(tmp_path / name) for name in ("model.ts", "model.onnx"))
    assert (ts.info["format"], onnx.info["format"]) == ("torchscript", "onnx")
    torch.testing.assert_close(ts.model_fn(x), onnx.model_fn(x), atol=1e-5, rtol=0)
