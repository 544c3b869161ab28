"""Mask R-CNN++ mask head: a small deep-supervised UNet++ over the pooled ROI features.

The head's nested pathways run at the pooler resolution (14x14 by default); each of the
K outputs ``X^{0,1}..X^{0,K}`` has its own predictor (2x up-sampling + 1x1 conv) giving
the usual 28x28 per-class mask logits, and its own loss, ``loss_mask_j``. At inference
the head either averages the K outputs' probabilities (accurate mode) or runs only the
sub-network that output j needs (fast mode), as UNet++'s pruning does.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Union

import torch
from detectron2.config import configurable
from detectron2.layers import ConvTranspose2d, ShapeSpec, cat
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    BaseMaskRCNNHead,
    mask_rcnn_loss,
)
from detectron2.structures import Instances
from torch import nn

from .backbone import nested_norm
from .nested import NestedSkipPathways

__all__ = ["UNetPPMaskHead", "attach_mask_probabilities"]


def attach_mask_probabilities(mask_probs: torch.Tensor, instances: List[Instances]) -> None:
    """Set ``pred_masks`` (N, 1, M, M) from per-class probabilities, like
    ``mask_rcnn_inference`` does from logits (which cannot average probabilities)."""
    if mask_probs.shape[1] == 1:
        selected = mask_probs
    else:
        classes = cat([inst.pred_classes for inst in instances])
        selected = mask_probs[torch.arange(len(classes), device=classes.device), classes][:, None]
    for probs, inst in zip(selected.split([len(inst) for inst in instances]), instances):
        inst.pred_masks = probs


@ROI_MASK_HEAD_REGISTRY.register()
class UNetPPMaskHead(BaseMaskRCNNHead):
    """Deep-supervised UNet++ mask head (TMI 2019, "Mask RCNN++").

    Args:
        input_shape: the pooled ROI features.
        num_classes: mask classes (1 for class-agnostic masks).
        widths: node channels per level; ``K = len(widths) - 1`` supervised outputs.
        node_convs, norm: the node block H of the nested pathways.
        loss_weights: weight of each ``loss_mask_j``; defaults to 1/K each.
        inference_level: 0 = mean of all K outputs' probabilities, j = output j alone.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, widths: Sequence[int],
                 node_convs: int = 2, norm: str = "", loss_weights: Sequence[float] = (),
                 inference_level: int = 0, **kwargs):
        super().__init__(**kwargs)
        if len(widths) < 3:
            raise ValueError("MODEL.ROI_MASK_HEAD.UNETPP_WIDTHS needs at least 3 levels "
                             f"(K >= 2 deep-supervised outputs), got {list(widths)}")
        self.num_outputs = len(widths) - 1
        if loss_weights and len(loss_weights) != self.num_outputs:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.DEEP_SUPERVISION_WEIGHTS has "
                             f"{len(loss_weights)} values for {self.num_outputs} outputs")
        if not 0 <= inference_level <= self.num_outputs:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL must be in "
                             f"0..{self.num_outputs}, got {inference_level}")
        self.loss_weights = [float(w) for w in loss_weights] or [1.0 / self.num_outputs] * (
            self.num_outputs)
        self.inference_level = inference_level
        self.nested = NestedSkipPathways(
            widths, in_channels=input_shape.channels, num_convs=node_convs,
            norm=nested_norm(norm), upsample="transpose")
        self.predictors = nn.ModuleList(self._predictor(widths[0], num_classes)
                                        for _ in range(self.num_outputs))

    @staticmethod
    def _predictor(channels: int, num_classes: int) -> nn.Sequential:
        upsample = ConvTranspose2d(channels, channels, 2, stride=2)
        logits = nn.Conv2d(channels, num_classes, 1)
        nn.init.kaiming_normal_(upsample.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(upsample.bias)
        nn.init.normal_(logits.weight, std=0.001)
        nn.init.zeros_(logits.bias)
        return nn.Sequential(upsample, nn.ReLU(inplace=True), logits)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_MASK_HEAD
        return {
            "input_shape": input_shape,
            "num_classes": 1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "widths": list(head.UNETPP_WIDTHS),
            "node_convs": head.UNETPP_NODE_CONVS,
            "norm": head.NORM,
            "loss_weights": list(head.DEEP_SUPERVISION_WEIGHTS),
            "inference_level": head.INFERENCE_LEVEL,
            "vis_period": cfg.VIS_PERIOD,
        }

    def layers(self, x: torch.Tensor, levels: Sequence[int] = ()) -> Dict[int, torch.Tensor]:
        """Mask logits of the requested outputs (all K by default), keyed by output j."""
        levels = list(levels) or list(range(1, self.num_outputs + 1))
        nodes = self.nested(x, outputs=[(0, j) for j in levels])
        return {j: self.predictors[j - 1](nodes[(0, j)]) for j in levels}

    def forward(self, x: torch.Tensor, instances: List[Instances]
                ) -> Union[Dict[str, torch.Tensor], List[Instances]]:
        if self.training:
            logits = self.layers(x)
            return {
                f"loss_mask_{j}": mask_rcnn_loss(
                    logits[j], instances, self.vis_period if j == self.num_outputs else 0)
                * self.loss_weights[j - 1]
                for j in logits}
        levels = [self.inference_level] if self.inference_level else []
        probs = torch.stack([v.sigmoid() for v in self.layers(x, levels).values()]).mean(0)
        attach_mask_probabilities(probs, instances)
        return instances
