"""Semantic UNet++ and U-Net (Zhou et al. 2018, Table 2), both on :class:`NestedSkipPathways`.

The two networks differ only in the core's ``dense`` flag and in which nodes feed a 1x1
output head. UNet++ supervises every top node ``X^{0,1..L}`` (deep supervision) and can
either average them (accurate mode, level 0) or run only the nodes one output depends on
(fast mode, level j: the pruned sub-network ``UNet++ L_j``); the heads, the loss
reduction and the two modes are :class:`DeepSupervisionHeads`, shared with the mask head.
Parameter counts with the defaults (one input channel, one class, BN,
transposed-convolution up-sampling as in the reference Keras code):

- UNet++ with four 1x1 heads: 9.045M (paper 9.04M)
- U-Net 32..512: 7.762M (paper 7.76M)
- wide U-Net 35..560: 9.285M (paper 9.13M)
- pruned UNet++ L1 / L2 / L3 / L4: 0.101M / 0.512M / 2.207M / 9.045M
  (paper, Fig. 3: 0.1M / 0.5M / 2.2M / 9.0M)

The wide U-Net is 0.155M over the paper: scaling every width by 35/32 scales the
parameters by about (35/32)^2 = 1.196 (7.762M -> 9.285M), while the paper's 9.13 / 7.76 is
1.177. None of the variants we tried (with or without BN, transposed or interpolating
up-sampling) gives 9.13M, and the paper does not say how it counted, so we keep the widths
it states and report the count they give.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .deep_supervision import (
    ACCURATE,
    DeepSupervisionHeads,
    mean_probabilities,
    supervision_weights,
    weighted_losses,
)
from .nested import NestedSkipPathways, Node, NormSpec, required_nodes

__all__ = ["NestedSegmentationNet", "UNetPlusPlus", "UNet", "WIDE_UNET_WIDTHS",
           "segmentation_loss", "deep_supervision_losses"]

PAPER_WIDTHS: tuple[int, ...] = (32, 64, 128, 256, 512)
WIDE_UNET_WIDTHS: tuple[int, ...] = (35, 70, 140, 280, 560)


class NestedSegmentationNet(nn.Module):
    """A segmentation network made of the nested core plus 1x1 heads on top nodes.

    Args:
        in_channels: image channels.
        num_classes: 1 for a sigmoid foreground map, K >= 2 for a softmax over K classes.
        widths: node channels per level, finest first (``L = len(widths) - 1``).
        dims: 2 for images, 3 for volumes.
        dense: True for UNet++'s dense skip pathways, False for U-Net's plain skips.
        deep_supervision: a head on every ``X^{0,j}``, ``j = 1..L`` (needs ``dense``);
            otherwise one head on ``X^{0,L}``.
        norm, upsample, node_convs, activation: the node block and up-sampling of the core.
        loss_weights: ``w_j`` of each supervised output's loss; empty means ``1/K``.
    """

    def __init__(self, *, in_channels: int, num_classes: int, widths: Sequence[int], dims: int,
                 dense: bool, deep_supervision: bool, norm: NormSpec = "BN",
                 upsample: str = "transpose", node_convs: int = 2,
                 activation: Callable[[], nn.Module] = nn.ReLU,
                 loss_weights: Sequence[float] = (), node_init: str = ""):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if deep_supervision and not dense:
            raise ValueError("deep supervision needs the dense skip pathways: U-Net has no "
                             "intermediate top nodes X^{0,j}, j < L")
        self.pathways = NestedSkipPathways(widths, in_channels=in_channels, dims=dims,
                                           node_convs=node_convs, norm=norm,
                                           activation=activation, upsample=upsample,
                                           dense=dense, node_init=node_init)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dims = dims
        depth = self.pathways.depth
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        self.heads = DeepSupervisionHeads(
            range(1, depth + 1) if deep_supervision else (depth,),
            lambda: conv(self.pathways.widths[0], num_classes, 1),
            loss_weights=loss_weights, config_prefix="MODEL.SEMANTIC")

    @property
    def levels(self) -> tuple[int, ...]:
        """The trained outputs ``j`` (loss weight > 0), i.e. the fast-mode levels this
        network offers."""
        return self.heads.trained_levels

    def logits(self, x: torch.Tensor, level: int = ACCURATE, *, training: bool = False
               ) -> dict[int, torch.Tensor]:
        """Logits of the outputs a level reads (every trained output for 0; every output
        when ``training``), keyed by ``j``; only the nodes they depend on are computed."""
        values = self.pathways(x, outputs=self.heads.nodes_of(level, training=training))
        return self.heads(values, self.heads.outputs_of(level, training=training))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every output, shallowest first (train and eval alike), weight 0
        included: the raw network, as the losses see it."""
        return list(self.logits(x, training=True).values())

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid for one class, softmax over the class channel otherwise."""
        return torch.sigmoid(logits) if self.num_classes == 1 else logits.softmax(dim=1)

    def predict(self, x: torch.Tensor, level: int = ACCURATE) -> torch.Tensor:
        """Probabilities. ``level=0``: the mean over all outputs (accurate mode);
        ``level=j``: output ``X^{0,j}`` alone, computing only the nodes it depends on
        (fast mode, UNet++ L_j)."""
        return mean_probabilities(self.probabilities(z) for z in self.logits(x, level).values())

    def losses(self, x: torch.Tensor, target: torch.Tensor, **loss_kwargs
               ) -> dict[str, torch.Tensor]:
        """``loss_seg_j``: the weighted loss of every supervised output (Eq. 2 each)."""
        return deep_supervision_losses(self.logits(x, training=True), target,
                                       weights=self.heads.loss_weights, **loss_kwargs)

    def pruned_nodes(self, level: int) -> list[Node]:
        """The nodes UNet++ L_j keeps: every node output ``X^{0,j}`` depends on (level 0:
        every node of the network)."""
        return sorted(required_nodes(self.heads.nodes_of(level), self.pathways.dense))

    def parameter_count(self, level: int = ACCURATE) -> int:
        """Parameters of the whole network (level 0, the accurate mode) or of the
        sub-network L_j: its nodes, their up-sampling layers and head ``j``."""
        if self.heads.check_level(level) == ACCURATE:
            return sum(p.numel() for p in self.parameters())
        modules: list[nn.Module] = [self.heads[str(level)]]
        for node in self.pruned_nodes(level):
            key = self.pathways.key(node)
            modules.append(self.pathways.nodes[key])
            if key in self.pathways.upsamples:
                modules.append(self.pathways.upsamples[key])
        return sum(p.numel() for m in modules for p in m.parameters())


class UNetPlusPlus(NestedSegmentationNet):
    """UNet++ (dense nested skips). ``deep_supervision=False`` keeps only the head on
    ``X^{0,L}`` (the paper's "UNet++ w/o DS"); the other nodes are still built and used."""

    def __init__(self, in_channels: int = 1, num_classes: int = 1,
                 widths: Sequence[int] = PAPER_WIDTHS, dims: int = 2,
                 deep_supervision: bool = True, norm: NormSpec = "BN",
                 upsample: str = "transpose", node_convs: int = 2,
                 activation: Callable[[], nn.Module] = nn.ReLU,
                 loss_weights: Sequence[float] = (), node_init: str = ""):
        super().__init__(in_channels=in_channels, num_classes=num_classes, widths=widths,
                         dims=dims, dense=True, deep_supervision=deep_supervision, norm=norm,
                         upsample=upsample, node_convs=node_convs, activation=activation,
                         loss_weights=loss_weights, node_init=node_init)


class UNet(NestedSegmentationNet):
    """U-Net: the core without dense links builds exactly the decoder path ``X^{i,L-i}``.

    The wide U-Net of the paper is ``UNet(widths=WIDE_UNET_WIDTHS)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1,
                 widths: Sequence[int] = PAPER_WIDTHS, dims: int = 2, norm: NormSpec = "BN",
                 upsample: str = "transpose", node_convs: int = 2,
                 activation: Callable[[], nn.Module] = nn.ReLU, node_init: str = ""):
        super().__init__(in_channels=in_channels, num_classes=num_classes, widths=widths,
                         dims=dims, dense=False, deep_supervision=False, norm=norm,
                         upsample=upsample, node_convs=node_convs, activation=activation,
                         node_init=node_init)


def _soft_dice(probs: torch.Tensor, onehot: torch.Tensor, smooth: float) -> torch.Tensor:
    """Per-image, per-class soft Dice ``(2 sum(Y Yhat) + s) / (sum(Y) + sum(Yhat) + s)``."""
    dims = tuple(range(2, probs.dim()))
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return (2 * inter + smooth) / (total + smooth)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, *, bce_weight: float = 0.5,
                      smooth: float = 1.0) -> torch.Tensor:
    """Eq. 2 of the paper for one output: ``bce_weight * BCE + (1 - Dice)``.

    Dice is computed per image and averaged over the batch, with the reference code's
    smoothing of 1. The paper writes ``-Dice``; ``1 - Dice`` has the same gradient and keeps
    the loss non-negative. For K >= 2 classes: cross-entropy plus one minus the mean soft
    Dice of the foreground classes ``1..K-1`` (class 0 is background).

    Args:
        logits: ``(N, C, *spatial)``.
        target: class ids ``(N, *spatial)`` (0/1 when ``C == 1``).
    """
    if logits.shape[2:] != target.shape[1:] or logits.shape[0] != target.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                         "differ in batch or spatial size")
    num_classes = logits.shape[1]
    if num_classes == 1:
        truth = target.unsqueeze(1).to(logits.dtype)
        ce = F.binary_cross_entropy_with_logits(logits, truth)
        dice = _soft_dice(torch.sigmoid(logits), truth, smooth)
    else:
        ce = F.cross_entropy(logits, target.long())
        onehot = F.one_hot(target.long(), num_classes).movedim(-1, 1).to(logits.dtype)
        dice = _soft_dice(logits.softmax(dim=1), onehot, smooth)[:, 1:]
    return bce_weight * ce + (1 - dice.mean())


def deep_supervision_losses(outputs: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                            target: torch.Tensor, *, weights: Mapping[int, float] | None = None,
                            **kwargs) -> dict[str, torch.Tensor]:
    """``{"loss_seg_j": w_j * loss of output j}``, Eq. 2 for each output.

    ``outputs`` are keyed by ``j`` (a sequence is numbered 1..K, shallowest first) and the
    weights ``w_j`` default to ``1/K``: the mean, the one reduction of
    :mod:`~maskrcnn_pp.modeling.deep_supervision`. Detectron2 sums the terms and logs each.
    """
    if not isinstance(outputs, Mapping):
        outputs = dict(enumerate(outputs, start=1))
    weights = weights or supervision_weights(list(outputs))
    return weighted_losses({j: segmentation_loss(z, target, **kwargs)
                            for j, z in outputs.items()}, weights, "loss_seg")
