"""Mask R-CNN++ backbone: ResNet bottom-up + UNet++ nested dense skips in place of FPN.

FPN merges a level with the one above it by a single sum. Here each level's lateral
projection becomes ``x^{i,0}`` of the nested pathways (Eq. 1), and level ``i`` of the
pyramid is read from the last node on its skip pathway, ``X^{i, L-i}``: the finest level
sees every coarser level through a dense chain of nodes. Output names, strides and
channels are FPN's (``p2``..``p6``), so RPN and ROI-head configs are unchanged.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from ..config import nested_core_node
from .nested import NestedSkipPathways
from .norm import nested_norm

__all__ = ["UNetPPNeck", "build_resnet_unetpp_backbone"]


class UNetPPNeck(Backbone):
    """A feature pyramid whose top-down pathway is UNet++'s nested dense skip pathways.

    Args:
        bottom_up: a Detectron2 backbone (e.g. ResNet) producing ``in_features``.
        in_features: bottom-up feature names, finest first; each is one level.
        out_channels: channels of every output (FPN's OUT_CHANNELS).
        widths: channels of the lateral projection and of the nested nodes of each level
            (one per ``in_features``, finest first).
        norm: Detectron2 norm name ("GN", "BN", "SyncBN", "" ...).
        node_convs, fuse_1x1, upsample, node_init: the node block, see
            ``NestedSkipPathways``.
        top_block: like FPN's, e.g. ``LastLevelMaxPool`` for ``p6``.
    """

    def __init__(self, bottom_up: Backbone, in_features: List[str], out_channels: int, *,
                 widths: Sequence[int], norm: str = "GN", node_convs: int = 1,
                 fuse_1x1: bool = True, upsample: str = "nearest", node_init: str = "",
                 top_block=None):
        super().__init__()
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.UNETPP.IN_FEATURES {missing} are not produced by the "
                             f"bottom-up network (it has {sorted(shapes)})")
        if len(widths) != len(in_features):
            raise ValueError(f"MODEL.UNETPP.WIDTHS needs one width per IN_FEATURES level "
                             f"({len(in_features)}), got {list(widths)}")
        strides = [shapes[f].stride for f in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"MODEL.UNETPP.IN_FEATURES must be consecutive stride-2 levels, "
                             f"got strides {strides}")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.top_block = top_block
        use_bias = norm == ""
        self.laterals = nn.ModuleList(
            Conv2d(shapes[f].channels, w, 1, bias=use_bias, norm=get_norm(norm, w))
            for f, w in zip(in_features, widths))
        self.nested = NestedSkipPathways(
            widths, node_convs=node_convs, fuse_1x1=fuse_1x1,
            upsample=upsample, norm=nested_norm(norm), node_init=node_init)
        self.output_convs = nn.ModuleList(
            Conv2d(w, out_channels, 3, padding=1, bias=use_bias,
                   norm=get_norm(norm, out_channels))
            for w in widths)
        for conv in [*self.laterals, *self.output_convs]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

        stage = int(math.log2(strides[-1]))
        self.out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            for s in range(stage, stage + top_block.num_levels):
                self.out_feature_strides[f"p{s + 1}"] = 2 ** (s + 1)
        self.out_features = list(self.out_feature_strides)
        self.out_feature_channels = {k: out_channels for k in self.out_features}
        self._size_divisibility = strides[-1]

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def pyramid_nodes(self) -> List[tuple]:
        """The node read out at each level: X^{i, L-i}, the end of level i's skip pathway."""
        depth = len(self.in_features) - 1
        return [(i, depth - i) for i in range(depth + 1)]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        bottom_up = self.bottom_up(x)
        encoder = [lateral(bottom_up[f]) for lateral, f in zip(self.laterals, self.in_features)]
        nodes = self.pyramid_nodes()
        values = self.nested(encoder, outputs=nodes)
        results = [conv(values[node]) for conv, node in zip(self.output_convs, nodes)]
        if self.top_block is not None:
            results.extend(self.top_block(results[-1]))
        return dict(zip(self.out_features, results))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self.out_feature_channels[name],
                                stride=self.out_feature_strides[name])
                for name in self.out_features}


@BACKBONE_REGISTRY.register()
def build_resnet_unetpp_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """ResNet (any depth) + the UNet++ neck; configured by cfg.MODEL.RESNETS / UNETPP."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    opts = nested_core_node(cfg, "MODEL.UNETPP")
    return UNetPPNeck(
        bottom_up, opts.IN_FEATURES, opts.OUT_CHANNELS, widths=opts.WIDTHS, norm=opts.NORM,
        node_convs=opts.NODE_CONVS, fuse_1x1=opts.FUSE_1X1, upsample=opts.UPSAMPLE,
        node_init=opts.NODE_INIT,
        top_block=LastLevelMaxPool())
