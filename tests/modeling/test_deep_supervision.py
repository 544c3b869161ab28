"""The deep-supervision outputs shared by the UNet++ mask head and the semantic nets: one
module, one loss reduction (the mean unless weighted), one accurate mode (level 0), and
checkpoints of the earlier layout still loading."""
import re

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import maskrcnn_pp  # noqa: F401  (registers)
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.engine.checkpoint import SafeCheckpointer
from maskrcnn_pp.engine.checkpoint.checkpointer import upgrade_earlier_versions
from maskrcnn_pp.modeling import ACCURATE, DeepSupervisionHeads, UNet, UNetPlusPlus
from maskrcnn_pp.modeling.mask_head import UNetPPMaskHead
from maskrcnn_pp.modeling.semantic import segmentation_loss
from tests.helpers import ROOT

TINY = (4, 8, 16, 32)


def _mask_head(**kwargs):
    torch.manual_seed(0)
    return UNetPPMaskHead(ShapeSpec(channels=8, height=14, width=14), num_classes=1,
                          widths=(16, 32, 32, 64), norm="GN", **kwargs)


def _proposals(n=3):
    inst = Instances((64, 64))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 28.0, 28.0]] * n))
    inst.gt_classes = torch.zeros(n, dtype=torch.long)
    masks = torch.zeros(n, 64, 64, dtype=torch.bool)
    masks[:, 4:20, 6:22] = True
    inst.gt_masks = BitMasks(masks)
    return inst


def test_mask_head_and_semantic_nets_share_one_output_module():
    assert isinstance(_mask_head().heads, DeepSupervisionHeads)
    assert isinstance(UNetPlusPlus(widths=TINY).heads, DeepSupervisionHeads)
    assert isinstance(UNet(widths=TINY).heads, DeepSupervisionHeads)
    assert UNetPlusPlus(widths=TINY).levels == (1, 2, 3)
    assert UNetPlusPlus(widths=TINY, deep_supervision=False).levels == (3,)


def test_mask_head_loss_is_the_mean_of_the_outputs_losses_unless_weighted():
    x = torch.randn(3, 8, 14, 14)
    head = _mask_head().train()
    with EventStorage():
        losses = head(x, [_proposals()])
        unweighted = [mask_rcnn_loss(z, [_proposals()], 0) for z in head.layers(x).values()]
    assert sorted(losses) == ["loss_mask_1", "loss_mask_2", "loss_mask_3"]
    assert torch.allclose(sum(losses.values()), torch.stack(unweighted).mean())

    weighted = _mask_head(loss_weights=(1.0, 0.0, 2.0)).train()
    with EventStorage():
        losses = weighted(x, [_proposals()])
    assert losses["loss_mask_2"] == 0
    assert torch.allclose(losses["loss_mask_3"], 2 * unweighted[2])


def test_semantic_loss_is_the_mean_of_the_outputs_losses_unless_weighted():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    target = (torch.rand(2, 16, 16) > 0.6).long()
    net = UNetPlusPlus(widths=TINY)
    unweighted = [segmentation_loss(z, target) for z in net(x)]
    losses = net.losses(x, target)
    assert list(losses) == ["loss_seg_1", "loss_seg_2", "loss_seg_3"]
    assert torch.allclose(sum(losses.values()), torch.stack(unweighted).mean())

    net = UNetPlusPlus(widths=TINY, loss_weights=(0.5, 0.0, 2.0))
    unweighted = [segmentation_loss(z, target) for z in net(x)]
    losses = net.losses(x, target)
    for term, weight, loss in zip(losses.values(), (0.5, 0.0, 2.0), unweighted):
        assert torch.allclose(term, weight * loss)


@pytest.mark.parametrize("build", [
    lambda: _mask_head(loss_weights=(1.0, 1.0)),
    lambda: UNetPlusPlus(widths=TINY, loss_weights=(1.0, 1.0)),
])
def test_wrong_number_of_loss_weights_names_the_key(build):
    with pytest.raises(ValueError, match="DEEP_SUPERVISION_WEIGHTS has 2 value"):
        build()


def test_accurate_mode_is_level_zero_everywhere_and_none_is_deprecated():
    torch.manual_seed(0)
    net = UNetPlusPlus(widths=TINY).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        mean = torch.stack([torch.sigmoid(z) for z in net(x)]).mean(0)
        assert torch.allclose(net.predict(x), mean)
        assert torch.allclose(net.predict(x, ACCURATE), mean)
        with pytest.warns(FutureWarning, match="use level=0"):
            assert torch.allclose(net.predict(x, None), mean)
    assert net.parameter_count(ACCURATE) == sum(p.numel() for p in net.parameters())
    with pytest.raises(ValueError, match="level 5 .*MODEL.SEMANTIC.INFERENCE_LEVEL"):
        net.predict(x, 5)
    with pytest.raises(ValueError, match="MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL"):
        _mask_head(inference_level=4)


def test_an_output_trained_with_weight_zero_is_never_read_at_inference():
    """The head diagnosis's deepest-only head: output 1 gets weight 0, so it never learns;
    the accurate mode is output 2 alone, and asking for output 1 names the weight. Training
    still computes every output, so that every parameter has a gradient (DDP needs it)."""
    x = torch.randn(3, 8, 14, 14)
    head = _mask_head(loss_weights=(0.0, 0.0, 1.0))
    assert head.heads.trained_levels == (3,)
    head.train()
    with EventStorage():
        losses = head(x, [_proposals()])
    assert sorted(losses) == ["loss_mask_1", "loss_mask_2", "loss_mask_3"]
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters())
    head.eval()
    with torch.no_grad():
        accurate = head.layers(x)
        assert list(accurate) == [3]
        assert torch.equal(accurate[3], head.layers(x, 3)[3])
    with pytest.raises(ValueError, match=r"is output 1, trained with weight 0 \(MODEL.ROI_MASK_"
                                         r"HEAD.DEEP_SUPERVISION_WEIGHTS\): use 0 .* \[3\]"):
        head.layers(x, 1)

    torch.manual_seed(0)
    net = UNetPlusPlus(widths=TINY, loss_weights=(0.0, 1.0, 1.0)).eval()
    image = torch.randn(1, 1, 16, 16)
    assert net.levels == (2, 3)
    with torch.no_grad():
        first, second, third = net(image)
        expected = (torch.sigmoid(second) + torch.sigmoid(third)) / 2
        assert torch.allclose(net.predict(image), expected)
    with pytest.raises(ValueError, match="weight 0"):
        net.predict(image, 1)
    with pytest.raises(ValueError, match="every output weight 0"):
        _mask_head(loss_weights=(0.0, 0.0, 0.0))


def _legacy(state: dict) -> dict:
    """A state dict in the layout of earlier versions: the mask head's outputs in a list."""
    def rename(key):
        return re.sub(r"(^|mask_head\.)heads\.(\d+)\.",
                      lambda m: f"{m.group(1)}predictors.{int(m.group(2)) - 1}.", key)

    return {rename(key): value for key, value in state.items()}


def test_mask_head_checkpoints_of_the_earlier_layout_load():
    """The one upgrade path (what the checkpointer runs before loading) renames the keys."""
    old = _mask_head().eval()
    legacy = _legacy(old.state_dict())
    assert any(k.startswith("predictors.0.") for k in legacy)
    new = _mask_head()
    torch.manual_seed(1)
    for p in new.parameters():
        torch.nn.init.normal_(p)
    with pytest.raises(RuntimeError, match="predictors.0"):
        new.load_state_dict(legacy)          # plain torch loading does not upgrade
    upgrade_earlier_versions(new, legacy)
    new.load_state_dict(legacy)
    x = torch.randn(2, 8, 14, 14)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(old.layers(x).values(),
                                                      new.eval().layers(x).values()))


def test_checkpointer_loads_a_mask_rcnn_pp_file_of_the_earlier_layout(tmp_path):
    cfg = load_config(str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml"))
    torch.manual_seed(0)
    trained = build_model(cfg)
    legacy = _legacy(trained.state_dict())
    assert any(".mask_head.predictors.1." in k for k in legacy)
    torch.save({"model": legacy}, tmp_path / "old.pth")
    torch.manual_seed(1)
    model = build_model(cfg)
    SafeCheckpointer(model, require_all_weights=True).load(str(tmp_path / "old.pth"),
                                                           checkpointables=[])
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_every_mode_from_one_pass_equals_each_pruned_run():
    cfg = load_config(str(ROOT / "configs" / "quick_schedules" / "semantic_2d_quick.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [{"image": torch.rand(1, 32, 32) * 255, "height": 40, "width": 48}]
    with torch.no_grad():
        modes = model.inference_modes(inputs)
        assert sorted(modes) == [ACCURATE, *model.levels]
        for mode, outputs in modes.items():
            (alone,) = model.inference(inputs, level=mode)
            assert outputs[0]["sem_seg"].shape == (1, 40, 48)
            assert torch.allclose(outputs[0]["sem_seg"], alone["sem_seg"], atol=1e-6), mode
