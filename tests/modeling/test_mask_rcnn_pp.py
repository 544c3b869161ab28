"""Mask R-CNN++ on CPU: backbone parity with FPN, the deep-supervised mask head, configs."""
import copy

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import maskrcnn_pp  # noqa: F401  (registers)
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.modeling.mask_head import UNetPPMaskHead
from tests.helpers import ROOT, flatten_config

QUICK = ROOT / "configs" / "quick_schedules"


def quick_cfg(name="mask_rcnn_pp_synthetic", opts=()):
    return load_config(str(QUICK / f"{name}.yaml"), list(opts))


def test_backbone_matches_fpn_names_shapes_strides():
    cfg = quick_cfg()
    x = torch.randn(1, 3, 96, 160)
    unetpp = build_backbone(cfg)
    cfg_fpn = cfg.clone()
    cfg_fpn.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    fpn = build_backbone(cfg_fpn)
    assert unetpp.output_shape() == fpn.output_shape()
    assert unetpp.size_divisibility == fpn.size_divisibility == 32
    out_pp, out_fpn = unetpp(x), fpn(x)
    assert list(out_pp) == list(out_fpn) == ["p2", "p3", "p4", "p5", "p6"]
    for name in out_pp:
        assert out_pp[name].shape == out_fpn[name].shape, name


def test_backbone_gradients_reach_every_nested_node():
    backbone = build_backbone(quick_cfg())
    out = backbone(torch.randn(1, 3, 64, 64))
    sum(v.mean() for v in out.values()).backward()
    nested = backbone.nested
    assert set(nested.nodes) == {nested.key(n) for n in [(0, 1), (1, 1), (2, 1), (0, 2),
                                                         (1, 2), (0, 3)]}
    for name, p in nested.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _head(level=0, num_classes=2, widths=(16, 32, 32, 64)):
    torch.manual_seed(0)
    return UNetPPMaskHead(ShapeSpec(channels=8, height=14, width=14), num_classes=num_classes,
                          widths=widths, norm="GN", inference_level=level)


def _predicted(n, classes):
    inst = Instances((64, 64))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]] * n))
    inst.pred_classes = torch.tensor(classes)
    return inst


def test_mask_head_fast_mode_equals_full_output_at_each_level():
    x = torch.randn(3, 8, 14, 14)
    full_head = _head().eval()
    with torch.no_grad():
        full = full_head.layers(x)
        assert sorted(full) == [1, 2, 3] and full[1].shape == (3, 2, 28, 28)
        for level in (1, 2, 3):
            fast_head = _head(level).eval()
            fast_head.load_state_dict(full_head.state_dict())
            (inst,) = fast_head(x, [_predicted(3, [0, 1, 1])])
            expected = full[level].sigmoid()[torch.arange(3), torch.tensor([0, 1, 1])][:, None]
            assert torch.allclose(inst.pred_masks, expected, atol=1e-6)
        (inst,) = full_head(x, [_predicted(3, [1, 0, 1])])
        mean_prob = torch.stack([v.sigmoid() for v in full.values()]).mean(0)
        assert torch.allclose(inst.pred_masks,
                              mean_prob[torch.arange(3), torch.tensor([1, 0, 1])][:, None])


def test_mask_head_config_errors_name_the_key():
    with pytest.raises(ValueError, match="ROI_MASK_HEAD.WIDTHS"):
        _head(widths=(16, 32))
    with pytest.raises(ValueError, match="INFERENCE_LEVEL"):
        _head(level=4)


def _batch(cfg, n=2):
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:n]]


@pytest.mark.parametrize("name", ["mask_rcnn_pp_synthetic", "mask_rcnn_baseline_synthetic"])
def test_one_training_iteration_and_inference(name):
    torch.manual_seed(0)
    cfg = quick_cfg(name)
    model = build_model(cfg)
    batch = _batch(cfg)
    with EventStorage():
        losses = model(batch)
    mask_losses = sorted(k for k in losses if k.startswith("loss_mask"))
    if name.startswith("mask_rcnn_pp"):
        assert mask_losses == ["loss_mask_1", "loss_mask_2"]
    else:
        assert mask_losses == ["loss_mask"]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.roi_heads.mask_head.parameters()]
    assert all(g is not None for g in grads)
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": batch[0]["image"], "height": 128, "width": 128}])
    inst = out["instances"]
    assert inst.pred_masks.shape[1:] == (128, 128)
    assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE


@pytest.mark.parametrize("pair", [("mask_rcnn_pp", "mask_rcnn_baseline"),
                                  ("mask_rcnn_pp_imagenet", "mask_rcnn_baseline_imagenet"),
                                  ("quick_schedules/mask_rcnn_pp_synthetic",
                                   "quick_schedules/mask_rcnn_baseline_synthetic"),
                                  ("cpu_study/mask_rcnn_pp", "cpu_study/mask_rcnn_baseline")])
def test_configs_differ_only_in_backbone_and_mask_head(pair):
    pp, base = (flatten_config(load_config(str(ROOT / "configs" / f"{n}.yaml"))) for n in pair)
    differing = {k for k in pp if pp[k] != base[k]}
    assert differing == {"MODEL.BACKBONE.NAME", "MODEL.ROI_MASK_HEAD.NAME", "OUTPUT_DIR"}


@pytest.mark.parametrize("pair,component", [
    (("mask_rcnn_fpn_unetpp_head", "mask_rcnn_baseline"), "MODEL.ROI_MASK_HEAD.NAME"),
    (("mask_rcnn_fpn_unetpp_head", "mask_rcnn_pp"), "MODEL.BACKBONE.NAME"),
    (("mask_rcnn_unetpp_neck_conv_head", "mask_rcnn_pp"), "MODEL.ROI_MASK_HEAD.NAME"),
    (("mask_rcnn_unetpp_neck_conv_head", "mask_rcnn_baseline"), "MODEL.BACKBONE.NAME")])
def test_ablation_cells_differ_from_their_neighbours_in_one_component(pair, component):
    """The 2x2 {FPN, UNet++ neck} x {conv, UNet++ head} cells of the CPU study: each new
    cell differs from each main model in exactly the one component it swaps."""
    cell, other = (flatten_config(load_config(str(ROOT / "configs" / "cpu_study" / f"{n}.yaml")))
                   for n in pair)
    assert {k for k in cell if cell[k] != other[k]} == {component, "OUTPUT_DIR"}


def test_default_config_is_scratch_groupnorm_for_crowded_nuclei():
    cfg = load_config(str(ROOT / "configs" / "mask_rcnn_pp.yaml"))
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert {cfg.MODEL.RESNETS.NORM, cfg.MODEL.UNETPP.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM,
            cfg.MODEL.ROI_MASK_HEAD.NORM} == {"GN"}
    assert cfg.INPUT.MASK_FORMAT == "bitmask"
    assert cfg.TEST.DETECTIONS_PER_IMAGE >= 400
    assert cfg.DATASETS.TRAIN == ("dsb2018_train",) and cfg.DATASETS.TEST == ("dsb2018_val",)
