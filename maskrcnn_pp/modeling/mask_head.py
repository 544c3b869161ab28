"""Mask R-CNN++ mask head: a small deep-supervised UNet++ over the pooled ROI features.

The head's nested pathways run at the pooler resolution (14x14 by default); each of the
K outputs ``X^{0,1}..X^{0,K}`` has its own predictor (2x up-sampling + 1x1 conv) giving
the usual 28x28 per-class mask logits, and its own loss, ``loss_mask_j``. At inference
the head either averages the K outputs' probabilities (accurate mode) or runs only the
sub-network that output j needs (fast mode), as UNet++'s pruning does; the outputs, their
loss weights and the two modes are :class:`DeepSupervisionHeads`, shared with the
semantic UNet++.
"""
from __future__ import annotations

import re
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

from ..config import nested_core_node
from .deep_supervision import ACCURATE, DeepSupervisionHeads, mean_probabilities
from .nested import NestedSkipPathways
from .norm import nested_norm

__all__ = ["UNetPPMaskHead", "attach_mask_probabilities"]

# Checkpoints written before the heads were shared kept them in a list, "predictors.<j-1>".
_LEGACY_HEAD_KEY = re.compile(r"predictors\.(\d+)\.")


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
        node_convs, norm, upsample, node_init: the node block H and U(.) of the nested
            pathways.
        loss_weights: weight of each ``loss_mask_j``; defaults to 1/K each.
        inference_level: 0 = mean of all K outputs' probabilities, j = output j alone.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, widths: Sequence[int],
                 node_convs: int = 2, norm: str = "", upsample: str = "transpose",
                 node_init: str = "", loss_weights: Sequence[float] = (),
                 inference_level: int = ACCURATE, **kwargs):
        super().__init__(**kwargs)
        if len(widths) < 3:
            raise ValueError("MODEL.ROI_MASK_HEAD.WIDTHS needs at least 3 levels "
                             f"(K >= 2 deep-supervised outputs), got {list(widths)}")
        self.nested = NestedSkipPathways(
            widths, in_channels=input_shape.channels, node_convs=node_convs,
            norm=nested_norm(norm), upsample=upsample, node_init=node_init)
        self.heads = DeepSupervisionHeads(
            range(1, len(widths)), lambda: self._predictor(widths[0], num_classes),
            loss_weights=loss_weights, config_prefix="MODEL.ROI_MASK_HEAD")
        self.inference_level = self.heads.check_level(inference_level)

    @staticmethod
    def _predictor(channels: int, num_classes: int) -> nn.Sequential:
        upsample = ConvTranspose2d(channels, channels, 2, stride=2)
        logits = nn.Conv2d(channels, num_classes, 1)
        nn.init.kaiming_normal_(upsample.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(upsample.bias)
        nn.init.normal_(logits.weight, std=0.001)
        nn.init.zeros_(logits.bias)
        return nn.Sequential(upsample, nn.ReLU(inplace=True), logits)

    @staticmethod
    def upgrade_state_dict(state_dict: dict, prefix: str) -> None:
        """Rename, in place, the keys of checkpoints written by earlier versions
        (``predictors.<j-1>.*`` is now ``heads.<j>.*``), so that they still load; the
        project's checkpointer calls it (``engine.checkpoint.upgrade_earlier_versions``, the
        one upgrade path) before it checks the fit."""
        for key in [k for k in state_dict if k.startswith(prefix + "predictors.")]:
            rest = key[len(prefix):]
            new = _LEGACY_HEAD_KEY.sub(lambda m: f"heads.{int(m.group(1)) + 1}.", rest, count=1)
            state_dict[prefix + new] = state_dict.pop(key)

    @property
    def num_outputs(self) -> int:
        return len(self.heads.levels)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = nested_core_node(cfg, "MODEL.ROI_MASK_HEAD")
        return {
            "input_shape": input_shape,
            "num_classes": 1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "widths": list(head.WIDTHS),
            "node_convs": head.NODE_CONVS,
            "norm": head.NORM,
            "upsample": head.UPSAMPLE,
            "node_init": head.NODE_INIT,
            "loss_weights": list(head.DEEP_SUPERVISION_WEIGHTS),
            "inference_level": head.INFERENCE_LEVEL,
            "vis_period": cfg.VIS_PERIOD,
        }

    def layers(self, x: torch.Tensor, level: int = ACCURATE, *, training: bool = False
               ) -> Dict[int, torch.Tensor]:
        """Mask logits of the outputs a level reads (every trained one for 0; every output
        when ``training``), keyed by output j."""
        nodes = self.nested(x, outputs=self.heads.nodes_of(level, training=training))
        return self.heads(nodes, self.heads.outputs_of(level, training=training))

    def forward(self, x: torch.Tensor, instances: List[Instances]
                ) -> Union[Dict[str, torch.Tensor], List[Instances]]:
        if self.training:
            losses = {j: mask_rcnn_loss(logits, instances,
                                        self.vis_period if j == self.num_outputs else 0)
                      for j, logits in self.layers(x, training=True).items()}
            return self.heads.weighted_losses(losses, "loss_mask")
        logits = self.layers(x, self.inference_level).values()
        attach_mask_probabilities(mean_probabilities(z.sigmoid() for z in logits), instances)
        return instances
