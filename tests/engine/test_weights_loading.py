"""Weights users own: torchvision/timm ResNets, MSRA-style .pkl files, and weights that do
not fit the model (strict for inference and resume, per-module report for initialization)."""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import subprocess
import sys
from datetime import date

import numpy as np
import pytest
import torch
import torchvision

from maskrcnn_pp.engine import load_config
from maskrcnn_pp.engine.checkpoint import (
    CorruptCheckpointError,
    MismatchedCheckpointError,
    SafeCheckpointer,
    UnsafeCheckpointError,
    convert_to_detectron2_resnet,
    is_resnet_state,
)
from maskrcnn_pp.engine.trainer import Trainer
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT, flatten_config, run_script_main

QUICK = ROOT / "configs" / "quick_schedules"
QUICK_PP = str(QUICK / "mask_rcnn_pp_synthetic.yaml")
QUICK_BASELINE = str(QUICK / "mask_rcnn_baseline_synthetic.yaml")
CONVERT = ROOT / "tools" / "convert_weights.py"
FROZEN_BN = ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.RESNETS.STRIDE_IN_1X1", "False"]
DEPTH_OPTS = {18: ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"],
              50: ["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.RES2_OUT_CHANNELS", "256"]}


def _random_torchvision_resnet(depth: int) -> torch.nn.Module:
    """torchvision's ResNet with random weights and BatchNorm statistics that are not the
    defaults, so that a norm parameter loaded into the wrong slot shows."""
    torch.manual_seed(depth)
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _torchvision_features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _init_from(config: str, weights, *opts: str):
    cfg = load_config(config, ["MODEL.WEIGHTS", str(weights), *opts])
    model = Trainer.build_model(cfg)
    Trainer.build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    return model.eval()


def _fingerprint(tensor: torch.Tensor) -> tuple:
    values = tensor.double().flatten()
    return tuple(tensor.shape), float(values.sum()), float((values * values.abs()).sum())


def _trunk_sources(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_state_dict_loads_through_model_weights(tmp_path, depth, caplog):
    net = _random_torchvision_resnet(depth)
    torch.save(net.state_dict(), tmp_path / f"resnet{depth}.pth")
    with caplog.at_level(logging.INFO):
        model = _init_from(QUICK_PP, tmp_path / f"resnet{depth}.pth", *FROZEN_BN,
                           *DEPTH_OPTS[depth])

    trunk = model.backbone.bottom_up
    # every trunk tensor equals one source tensor, none used twice or left out
    assert sorted(map(_fingerprint, trunk.state_dict().values())) == sorted(
        map(_fingerprint, _trunk_sources(net).values()))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trunk(x)["res5"], _torchvision_features(net, x))
    n = len(trunk.state_dict())
    assert f"backbone.bottom_up: {n} matched, 0 missing or of another shape, 0 unexpected" \
        in caplog.text


def test_timm_checkpoint_wrappers_and_module_prefix(tmp_path):
    net = _random_torchvision_resnet(18)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    # timm's train.py keeps its argparse arguments beside the weights
    torch.save({"epoch": 3, "arch": "resnet18", "state_dict": state,
                "args": argparse.Namespace(lr=0.1, model="resnet18")}, tmp_path / "timm.pth.tar")
    model = _init_from(QUICK_PP, tmp_path / "timm.pth.tar", *FROZEN_BN)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.backbone.bottom_up(x)["res5"], _torchvision_features(net, x))


def test_gray_model_sums_the_rgb_stem(tmp_path):
    net = _random_torchvision_resnet(18)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    model = _init_from(str(ROOT / "configs" / "mask_rcnn_pp_gray.yaml"), tmp_path / "r18.pth",
                       *FROZEN_BN, *DEPTH_OPTS[18])
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.backbone.bottom_up(gray)["res5"],
                              _torchvision_features(net, gray.repeat(1, 3, 1, 1)), atol=1e-4)


def _synthetic_msra_pkl(path) -> dict[str, np.ndarray]:
    """A Detectron2-named R-50 trunk of random NumPy arrays pickled like the model zoo's
    ImageNetPretrained/MSRA/R-50.pkl (a plain dict of arrays)."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    cfg = load_config(str(ROOT / "configs" / "mask_rcnn_pp_imagenet.yaml"))
    torch.manual_seed(0)
    trunk = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    rng = np.random.default_rng(0)
    arrays = {k: v.numpy().copy() for k, v in trunk.state_dict().items()}  # He-initialized
    for key, array in arrays.items():
        if ".norm." in key:  # FrozenBN: random statistics, not the defaults (ones, zeros)
            low, high = (0.5, 1.5) if key.endswith(("weight", "running_var")) else (-0.1, 0.1)
            arrays[key] = rng.uniform(low, high, array.shape).astype(np.float32)
    with open(path, "wb") as f:
        pickle.dump(arrays, f, protocol=2)
    return arrays


@pytest.mark.slow
def test_msra_pkl_trains_through_train_net_without_a_flag(tmp_path):
    arrays = _synthetic_msra_pkl(tmp_path / "R-50.pkl")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file",
         str(ROOT / "configs" / "mask_rcnn_pp_imagenet.yaml"),
         "MODEL.WEIGHTS", str(tmp_path / "R-50.pkl"), "MODEL.DEVICE", "cpu",
         "DATASETS.TRAIN", "('nuclei_synthetic_train',)", "DATASETS.TEST", "()",
         "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
         "INPUT.CROP.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0",
         "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "1", "SOLVER.BASE_LR", "0.0",
         "SOLVER.WARMUP_ITERS", "0", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
         "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
         "OUTPUT_DIR", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Fully unpickling" not in proc.stderr
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    for name, array in arrays.items():
        assert torch.equal(final[f"backbone.bottom_up.{name}"], torch.from_numpy(array)), name


def test_pickle_with_numpy_and_os_system_is_refused_by_name(tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "weights.pkl"
    with open(path, "wb") as f:
        pickle.dump({"weight": np.ones((2, 2), np.float32), "payload": Payload()}, f)
    disallowed = rf"names {os.system.__module__}\.system"
    with pytest.raises(UnsafeCheckpointError, match=disallowed) as refused:
        SafeCheckpointer(torch.nn.Linear(2, 2)).load(str(path))
    assert "\n" not in str(refused.value) and "--allow-unsafe-pickle" in str(refused.value)
    assert not marker.exists()


def test_truncated_pkl_is_named(tmp_path):
    data = pickle.dumps({"weight": np.ones((64, 64), np.float32)}, protocol=2)
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="cut.pkl is truncated") as err:
        SafeCheckpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / "cut.pkl"))
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def baseline_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("baseline")
    SafeCheckpointer(Trainer.build_model(load_config(QUICK_BASELINE)), str(folder)).save("model")
    return folder / "model.pth"


def _load_all(model, path):
    """What load_trained_model does after building the model: every parameter from path."""
    SafeCheckpointer(model, require_all_weights=True).load(str(path) if path else "",
                                                           checkpointables=[])


def test_inference_refuses_weights_of_the_other_model(baseline_weights):
    model = Trainer.build_model(load_config(QUICK_PP))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MismatchedCheckpointError) as refused:
        _load_all(model, baseline_weights)
    message = str(refused.value)
    assert "does not fit the model" in message and "\n" not in message
    assert "are not in it (backbone." in message and ", ...)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_inference_names_wrong_shapes_and_resume_is_strict_too(baseline_weights, tmp_path):
    model = Trainer.build_model(load_config(QUICK_BASELINE, ["MODEL.ROI_HEADS.NUM_CLASSES", "3"]))
    with pytest.raises(MismatchedCheckpointError, match=r"have another shape \(roi_heads\.box_"
                                                       r"predictor\.cls_score\.weight: \(2, 256\) "
                                                       r"in the file, \(4, 256\) in the model"):
        _load_all(model, baseline_weights)
    with pytest.raises(MismatchedCheckpointError, match="another shape"):
        SafeCheckpointer(model, str(tmp_path)).load(str(baseline_weights))
    with pytest.raises(UserError, match="no weights file given"):
        _load_all(model, "")


def test_initialization_accepts_a_partial_match_and_reports_it(baseline_weights, caplog):
    cfg = load_config(QUICK_PP, ["MODEL.WEIGHTS", str(baseline_weights)])
    model = Trainer.build_model(cfg)
    with caplog.at_level(logging.INFO):
        Trainer.build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    source = torch.load(baseline_weights, weights_only=True)["model"]
    for key, value in model.state_dict().items():
        if key.startswith("backbone.bottom_up."):
            assert torch.equal(value, source[key]), key
    trunk_size = len(model.backbone.bottom_up.state_dict())
    assert f"backbone.bottom_up: {trunk_size} matched, 0 missing" in caplog.text
    assert "roi_heads.mask_head: 0 matched" in caplog.text


def test_detector_weights_into_semantic_unetpp_are_refused(baseline_weights, tmp_path,
                                                           caplog):
    cfg = load_config(str(QUICK / "semantic_2d_quick.yaml"))
    model = Trainer.build_model(cfg)
    with pytest.raises(MismatchedCheckpointError, match="matches none of the .* model"):
        Trainer.build_checkpointer(cfg, model).resume_or_load(str(baseline_weights),
                                                             resume=False)
    other = Trainer.build_model(load_config(str(QUICK / "semantic_2d_quick.yaml"),
                                            ["MODEL.SEMANTIC.WIDTHS", "[8, 16, 32]"]))
    SafeCheckpointer(other, str(tmp_path)).save("narrow")
    with caplog.at_level(logging.WARNING):
        Trainer.build_checkpointer(cfg, model).resume_or_load(str(tmp_path / "narrow.pth"),
                                                             resume=False)
    # only the output convs' biases (one value each) fit: said, with names
    assert "narrow.pth fits only part of the model: 68 of 70 not in the file or of another " \
           "shape (net.pathways.nodes.x0_0.0.weight" in caplog.text


def test_config_file_cannot_allow_unsafe_pickle(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"_BASE_: {QUICK_PP}\nMODEL:\n  ALLOW_UNSAFE_PICKLE: True\n")
    with pytest.raises(UserError, match="MODEL.ALLOW_UNSAFE_PICKLE cannot be set by a config"):
        load_config(str(evil))
    with pytest.raises(UserError, match="--allow-unsafe-pickle on the command line"):
        load_config(QUICK_PP, ["MODEL.ALLOW_UNSAFE_PICKLE", "True"])


def test_pixel_mean_length_must_match_input_format():
    with pytest.raises(UserError, match=r"MODEL.PIXEL_MEAN has 3 value\(s\) .* INPUT.FORMAT L "
                                        r"gives 1 channel"):
        load_config(QUICK_PP, ["INPUT.FORMAT", "L"])
    gray = load_config(str(ROOT / "configs" / "mask_rcnn_pp_gray.yaml"))
    assert Trainer.build_model(gray).backbone.bottom_up.stem.conv1.weight.shape[1] == 1


def test_torchvision_configs_are_twins_with_rgb_input():
    pp, base = (flatten_config(load_config(str(ROOT / "configs" / f"{name}.yaml")))
                for name in ("mask_rcnn_pp_torchvision", "mask_rcnn_baseline_torchvision"))
    assert {k for k in pp if pp[k] != base[k]} == {
        "MODEL.BACKBONE.NAME", "MODEL.ROI_MASK_HEAD.NAME", "OUTPUT_DIR"}
    assert pp["INPUT.FORMAT"] == "RGB" and not pp["MODEL.RESNETS.STRIDE_IN_1X1"]
    assert pp["MODEL.PIXEL_MEAN"] == pytest.approx([255 * m for m in (0.485, 0.456, 0.406)])
    assert pp["MODEL.PIXEL_STD"] == pytest.approx([255 * s for s in (0.229, 0.224, 0.225)])


@pytest.mark.slow
def test_convert_weights_writes_a_weights_only_checkpoint_once(tmp_path, capsys):
    net = _random_torchvision_resnet(18)
    torch.save({"model": net.state_dict()}, tmp_path / "tv.pth")
    code, captured = run_script_main(CONVERT, capsys, tmp_path / "tv.pth", tmp_path / "d2.pth")
    assert code == 0, captured.err
    assert "renamed to Detectron2's ResNet" in captured.out
    converted = torch.load(tmp_path / "d2.pth", weights_only=True)["model"]
    assert "stem.conv1.norm.running_var" in converted and "fc.weight" not in converted
    model = _init_from(QUICK_PP, tmp_path / "d2.pth", *FROZEN_BN)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.backbone.bottom_up(x)["res5"], _torchvision_features(net, x))

    arrays = _synthetic_msra_pkl(tmp_path / "R-50.pkl")
    assert run_script_main(CONVERT, capsys, tmp_path / "R-50.pkl", tmp_path / "msra.pth")[0] == 0
    msra = torch.load(tmp_path / "msra.pth", weights_only=True)["model"]
    assert all(torch.equal(msra[k], torch.from_numpy(v)) for k, v in arrays.items())


def test_convert_weights_knows_resnets_by_every_naming_it_reads():
    """torchvision (renamed first), Detectron2 and Caffe2 (model zoo .pkl) names; not VGG."""
    tv = convert_to_detectron2_resnet(_random_torchvision_resnet(18).state_dict())
    assert is_resnet_state(tv)
    assert is_resnet_state({"res2.0.conv1.weight": 0})
    assert is_resnet_state({"conv1_w": 0, "res_conv1_bn_s": 0})
    assert is_resnet_state({"res2_0_branch2a_w": 0})
    assert not is_resnet_state({"features.0.weight": 0, "classifier.0.weight": 0})
    assert not is_resnet_state({"backbone.bottom_up.res2.0.conv1.weight": 0})


class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("bad", ["truncated", "os.system"])
def test_bad_weights_files_are_one_line_exit_2(tmp_path, capsys, bad):
    marker = tmp_path / "code_ran"
    data = pickle.dumps({"w": np.ones(2), "x": _RunsCommand(f"touch {marker}")}, protocol=2)
    if bad == "truncated":
        data = pickle.dumps({"w": np.ones((8, 8))}, protocol=2)[:60]
    (tmp_path / "bad.pkl").write_bytes(data)
    code, captured = run_script_main(CONVERT, capsys, tmp_path / "bad.pkl", tmp_path / "o.pth")
    assert code == 2 and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert ("is truncated or not a pickle of NumPy weights" if bad == "truncated"
            else f"names {os.system.__module__}.system") in captured.err
    assert not (tmp_path / "o.pth").exists() and not marker.exists()


def test_prune_report_refuses_weights_of_another_model(baseline_weights, tmp_path, capsys):
    code, captured = run_script_main(
        ROOT / "tools" / "prune_report.py", capsys, "--config-file",
        QUICK / "semantic_2d_quick.yaml", "--weights", baseline_weights, "--dataset",
        "liver_val", "--output", tmp_path / "report")
    assert code == 2 and "matches none" in captured.err and "Traceback" not in captured.err


def _train_net(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train_net.py"), *args],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_torchvision_checkpoint_trains_through_train_net_and_only_the_flag_unpickles(tmp_path):
    net = _random_torchvision_resnet(18)
    # a training checkpoint whose extra entry needs full unpickling (a datetime.date)
    torch.save({"state_dict": net.state_dict(), "saved_on": date(2024, 1, 31)},
               tmp_path / "tv.pth")
    args = ["--config-file", QUICK_PP, "MODEL.WEIGHTS", str(tmp_path / "tv.pth"), *FROZEN_BN,
            "SOLVER.MAX_ITER", "1", "SOLVER.BASE_LR", "0.0", "OUTPUT_DIR", str(tmp_path / "run")]
    refused = _train_net(*args)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "tv.pth: it does not load with torch.load(weights_only=True)" in refused.stderr
    assert "--allow-unsafe-pickle" in refused.stderr.strip().splitlines()[-1]

    proc = _train_net("--allow-unsafe-pickle", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trunk_size = len(_trunk_sources(net))
    assert f"backbone.bottom_up: {trunk_size} matched, 0 missing" in proc.stdout + proc.stderr
    final = torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)["model"]
    assert torch.equal(final["backbone.bottom_up.res5.1.conv2.norm.running_var"],
                       net.layer4[1].bn2.running_var)


@pytest.mark.slow
def test_eval_only_refuses_the_baseline_weights_for_the_pp_config(baseline_weights, tmp_path):
    proc = _train_net("--config-file", QUICK_PP, "--eval-only", "MODEL.WEIGHTS",
                      str(baseline_weights), "OUTPUT_DIR", str(tmp_path / "eval"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "does not fit the model" in last and "are not in it (backbone." in last


def test_a_dict_without_weights_is_refused_not_a_traceback(tmp_path):
    torch.save({"epoch": 3, "notes": "not weights"}, tmp_path / "meta.pth")
    with pytest.raises(MismatchedCheckpointError, match="meta.pth matches none"):
        SafeCheckpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / "meta.pth"), [])
