"""Semantic UNet++ / U-Net: sizes against the paper, pruned inference, loss, 3D."""
from __future__ import annotations

import math

import pytest
import torch

from maskrcnn_pp.modeling.semantic import (
    WIDE_UNET_WIDTHS,
    NestedSegmentationNet,
    UNet,
    UNetPlusPlus,
    deep_supervision_losses,
    segmentation_loss,
)

PAPER = (32, 64, 128, 256, 512)
TINY = (4, 8, 16, 32, 64)


def _block(cin: int, cout: int) -> int:
    """Two 3x3 convs without bias, each followed by BN (weight and bias)."""
    return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout


def _analytic_count(widths, dense: bool, heads: int, in_channels: int = 1) -> int:
    """Parameter count written out from the paper's Eq. 1, independently of the code:
    encoder blocks, a 2x2 transposed conv (with bias) into every skip node, the node block
    on ``j`` same-level inputs (1 for U-Net) plus the up-sampled one, and 1x1 heads."""
    depth = len(widths) - 1
    total = _block(in_channels, widths[0])
    total += sum(_block(widths[i - 1], widths[i]) for i in range(1, depth + 1))
    for j in range(1, depth + 1):
        for i in range(depth - j + 1):
            if not dense and i + j != depth:
                continue
            total += 4 * widths[i + 1] * widths[i] + widths[i]
            total += _block(((j if dense else 1) + 1) * widths[i], widths[i])
    return total + heads * (widths[0] + 1)


def test_parameter_counts_match_paper_and_eq1():
    unetpp, unet, wide = UNetPlusPlus(), UNet(), UNet(widths=WIDE_UNET_WIDTHS)
    assert unetpp.parameter_count() == _analytic_count(PAPER, dense=True, heads=4) == 9_045_348
    assert unet.parameter_count() == _analytic_count(PAPER, dense=False, heads=1) == 7_762_465
    assert wide.parameter_count() == _analytic_count(WIDE_UNET_WIDTHS, False, 1) == 9_285_466
    # Table 3: 9.04M and 7.76M. The wide U-Net is 9.13M in the paper (documented gap).
    assert round(unetpp.parameter_count() / 1e6, 2) == 9.05
    assert abs(unetpp.parameter_count() - 9.04e6) < 0.01e6
    assert abs(unet.parameter_count() - 7.76e6) < 0.01e6
    assert abs(wide.parameter_count() - 9.13e6) < 0.16e6


def test_pruned_parameter_counts_match_fig3():
    net = UNetPlusPlus()
    counts = [net.parameter_count(level) for level in net.levels]
    assert [round(c / 1e6, 1) for c in counts] == [0.1, 0.5, 2.2, 9.0]
    assert counts[-1] == net.parameter_count() - 3 * (32 + 1)  # L4 drops three heads
    # L_j is the UNet++ of depth j (plus its single head): check with Eq. 1's count.
    for level, count in zip(net.levels, counts):
        assert count == _analytic_count(PAPER[:level + 1], dense=True, heads=1)


def test_outputs_shallowest_first_in_train_and_eval():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    for net, expected in [(UNetPlusPlus(widths=TINY), 4),
                          (UNetPlusPlus(widths=TINY, deep_supervision=False), 1),
                          (UNet(widths=TINY), 1)]:
        for train in (True, False):
            net.train(train)
            outputs = net(x)
            assert len(outputs) == expected
            assert all(o.shape == (2, 1, 32, 32) for o in outputs)
    assert UNet(widths=TINY).levels == (4,)


def test_fast_mode_equals_its_output_and_accurate_mode_is_the_mean():
    torch.manual_seed(0)
    net = UNetPlusPlus(widths=TINY, num_classes=3).eval()
    x = torch.randn(2, 1, 40, 40)  # not a multiple of 16: exercises the core's cropping
    with torch.no_grad():
        outputs = net(x)
        for level in net.levels:
            assert torch.allclose(net.predict(x, level=level),
                                  outputs[level - 1].softmax(dim=1), atol=1e-6)
        mean = torch.stack([o.softmax(dim=1) for o in outputs]).mean(dim=0)
        assert torch.allclose(net.predict(x), mean, atol=1e-6)
        assert torch.allclose(net.predict(x).sum(dim=1), torch.ones(2, 40, 40), atol=1e-5)
    with pytest.raises(ValueError, match="level 5"):
        net.predict(x, level=5)


def test_fast_mode_runs_only_the_nodes_it_needs():
    net = UNetPlusPlus(widths=TINY).eval()
    calls: list[str] = []
    for key, module in net.pathways.nodes.items():
        module.register_forward_hook(lambda *_, key=key: calls.append(key))
    x = torch.randn(1, 1, 32, 32)
    ran = {}
    with torch.no_grad():
        for level in net.levels:
            calls.clear()
            net.predict(x, level=level)
            ran[level] = sorted(calls)
        calls.clear()
        net.predict(x)
    # UNet++ L_j is the UNet++ of depth j: (j + 1)(j + 2) / 2 nodes.
    assert {level: len(nodes) for level, nodes in ran.items()} == {1: 3, 2: 6, 3: 10, 4: 15}
    assert ran[1] == ["x0_0", "x0_1", "x1_0"]
    assert len(calls) == 15  # the accurate mode shares nodes: each runs once


def test_unet_is_the_plain_decoder_path():
    net = UNet(widths=TINY)
    assert sorted(net.pathways.nodes) == ["x0_0", "x0_4", "x1_0", "x1_3", "x2_0", "x2_2",
                                          "x3_0", "x3_1", "x4_0"]
    with pytest.raises(ValueError, match="deep supervision needs the dense"):
        NestedSegmentationNet(in_channels=1, num_classes=1, widths=TINY, dims=2, dense=False,
                        deep_supervision=True)


def test_3d_forward_backward():
    torch.manual_seed(0)
    net = UNetPlusPlus(widths=(4, 8, 16, 32), dims=3)
    x = torch.randn(1, 1, 32, 32, 32)
    target = (torch.rand(1, 32, 32, 32) > 0.7).long()
    outputs = net(x)
    assert [o.shape for o in outputs] == [(1, 1, 32, 32, 32)] * 3
    losses = deep_supervision_losses(outputs, target)
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.parameter_count(1) < net.parameter_count(2) < net.parameter_count(3)


def test_binary_loss_known_values():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1  # 16 of 64 pixels
    perfect = (target.float() * 2 - 1).unsqueeze(1) * 50
    assert segmentation_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # p = 0.5 everywhere: BCE = ln 2, Dice = (2 * 0.5 * 16 + 1) / (0.5 * 64 + 16 + 1).
    dice = (16 + 1) / (32 + 16 + 1)
    expected = 0.5 * math.log(2) + 1 - dice
    assert segmentation_loss(torch.zeros(2, 1, 8, 8), target).item() == pytest.approx(expected)


def test_multiclass_loss_known_values():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, :] = 1  # 4 pixels of class 1, none of class 2
    # Uniform softmax over 3 classes: CE = ln 3; Dice of classes 1 and 2 (not background).
    dice_1 = (2 * 4 / 3 + 1) / (16 / 3 + 4 + 1)
    dice_2 = 1 / (16 / 3 + 1)
    expected = 0.5 * math.log(3) + 1 - (dice_1 + dice_2) / 2
    assert segmentation_loss(torch.zeros(1, 3, 4, 4), target).item() == pytest.approx(expected)


def test_deep_supervision_losses_one_per_output():
    target = torch.ones(1, 4, 4, dtype=torch.long)
    outputs = [torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 3.0)]
    losses = deep_supervision_losses(outputs, target)
    assert list(losses) == ["loss_seg_1", "loss_seg_2"]
    assert losses["loss_seg_1"] > losses["loss_seg_2"] > 0
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        segmentation_loss(torch.zeros(1, 1, 4, 4), torch.ones(1, 5, 5, dtype=torch.long))
