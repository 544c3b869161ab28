"""The nested dense skip pathways of UNet++ (Zhou et al., Eq. 1), written once.

Node ``X^{i,j}``: ``i`` is the down-sampling level, ``j`` the position along the skip
pathway of that level::

    x^{i,0} = H(D(x^{i-1,0}))                                   (encoder)
    x^{i,j} = H([x^{i,0}, ..., x^{i,j-1}, U(x^{i+1,j-1})])      (j > 0)

This module builds every node of that topology for 1D, 2D or 3D inputs and computes only
the nodes the requested outputs depend on, which is what UNet++'s pruned fast inference
needs. It knows nothing of Detectron2: the Mask R-CNN++ backbone, the UNet++ mask head and
the semantic UNet++ each wrap it.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

Node = Tuple[int, int]
NormSpec = Union[str, None, Callable[[int], nn.Module]]

__all__ = ["Node", "NestedSkipPathways", "ConvBlock", "make_norm", "required_nodes"]


def required_nodes(outputs: Iterable[Node], dense: bool = True) -> Set[Node]:
    """All nodes (encoder nodes included) that the given output nodes depend on.

    ``dense=False`` is U-Net's plain skip: X^{i,j} sees only x^{i,0} and U(x^{i+1,j-1}).
    """
    needed: Set[Node] = set()
    stack = list(outputs)
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        i, j = node
        if j == 0:
            stack.extend((k, 0) for k in range(i))
        else:
            stack.extend((i, k) for k in range(j if dense else 1))
            stack.append((i + 1, j - 1))
    return needed


def make_norm(norm: NormSpec, channels: int, dims: int) -> nn.Module:
    """A normalization layer from a name ("BN", "GN", "IN", "" for none) or a factory."""
    if callable(norm):
        return norm(channels)
    if not norm:
        return nn.Identity()
    if norm == "BN":
        return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "GN":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if norm == "IN":
        return (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 1](
            channels, affine=True)
    raise ValueError(f"unknown norm {norm!r}; use 'BN', 'SyncBN', 'GN', 'IN', '' or a callable")


def _conv(dims: int) -> type:
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]


NODE_INITS = ("", "msra")


class ConvBlock(nn.Sequential):
    """H(.) of Eq. 1: ``node_convs`` 3x3 conv + norm + activation.

    With ``fuse_1x1`` a 1x1 conv first reduces the concatenated inputs to ``out_channels``,
    which keeps wide nodes (e.g. 256-channel feature pyramids) affordable. ``init`` ""
    keeps PyTorch's default initialization of the convolutions; "msra" is He's normal
    initialization for ReLU (fan-out, zero bias), which Detectron2's own heads use
    (``c2_msra_fill``).
    """

    def __init__(self, in_channels: int, out_channels: int, *, dims: int = 2, node_convs: int = 2,
                 norm: NormSpec = "BN", activation: Callable[[], nn.Module] = nn.ReLU,
                 fuse_1x1: bool = False, init: str = ""):
        if init not in NODE_INITS:
            raise ValueError(f"unknown node initialization {init!r}; use '' (PyTorch's "
                             "default) or 'msra'")
        conv = _conv(dims)
        has_norm = bool(norm)
        layers: List[nn.Module] = []
        specs = [(1, 0)] if fuse_1x1 else []
        specs += [(3, 1)] * node_convs
        channels = in_channels
        for kernel, padding in specs:
            layers += [conv(channels, out_channels, kernel, padding=padding, bias=not has_norm),
                       make_norm(norm, out_channels, dims), activation()]
            channels = out_channels
        super().__init__(*layers)
        if init == "msra":
            for layer in layers:
                if isinstance(layer, conv):
                    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)


def _fit(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop or zero-pad the trailing spatial dims of ``x`` to ``size`` (odd-sized levels)."""
    pads: List[int] = []
    for have, want in zip(reversed(x.shape[2:]), reversed(list(size))):
        pads += [0, want - have]
    return F.pad(x, pads) if any(pads) else x


class _Upsample(nn.Module):
    """U(.) of Eq. 1: brings a level-(i+1) node to the spatial size of level i.

    Interpolation keeps the channels; "transpose" is the reference code's learned 2x2
    transposed convolution, which also maps them to the width of level i.
    """

    def __init__(self, mode: str, in_channels: int, level_channels: int, dims: int):
        super().__init__()
        self.mode = mode
        self.out_channels = in_channels
        if mode == "transpose":
            transpose = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
            self.transpose = transpose(in_channels, level_channels, 2, stride=2)
            self.out_channels = level_channels
        elif mode == "bilinear":
            self.mode = ("linear", "bilinear", "trilinear")[dims - 1]
        elif mode != "nearest":
            raise ValueError(f"unknown upsampling {mode!r}; use 'nearest', 'bilinear' or "
                             "'transpose'")

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if self.mode == "transpose":
            return _fit(self.transpose(x), size)
        if self.mode == "nearest":
            return F.interpolate(x, size=list(size), mode="nearest")
        return F.interpolate(x, size=list(size), mode=self.mode, align_corners=False)


class NestedSkipPathways(nn.Module):
    """Nodes X^{i,j} of UNet++ for levels ``i = 0..L`` (``L = len(widths) - 1``).

    Args:
        widths: channels of every node on level ``i`` (level 0 is the finest).
        in_channels: if given, the module owns the encoder: ``x^{0,0} = H(input)`` and
            ``x^{i,0} = H(maxpool(x^{i-1,0}))``. If None, the encoder features
            ``x^{0,0}..x^{L,0}`` are passed in (e.g. from a ResNet), each with ``widths[i]``
            channels.
        max_column: the largest ``j`` built on the skip pathways (default ``L``); node
            ``X^{i,j}`` exists for ``1 <= j <= max_column`` and ``i + j <= L``.
        dims: 1, 2 or 3 spatial dimensions.
        node_convs, norm, activation, fuse_1x1, node_init: the node block H, see
            :class:`ConvBlock` (``node_init`` is its ``init``).
        upsample: "nearest", "bilinear" (trilinear in 3D) or "transpose" (learned).
        dense: False drops the dense links and builds only the nodes X^{i,L-i} of the
            decoder path: the plain U-Net, from the same code.
    """

    def __init__(self, widths: Sequence[int], *, in_channels: Optional[int] = None,
                 max_column: Optional[int] = None, dims: int = 2, node_convs: int = 2,
                 norm: NormSpec = "BN", activation: Callable[[], nn.Module] = nn.ReLU,
                 fuse_1x1: bool = False, upsample: str = "nearest", dense: bool = True,
                 node_init: str = ""):
        super().__init__()
        if len(widths) < 2:
            raise ValueError("UNet++ needs at least two levels (len(widths) >= 2)")
        if dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
        self.widths = tuple(int(w) for w in widths)
        self.depth = len(self.widths) - 1
        self.max_column = self.depth if max_column is None else int(max_column)
        if not 1 <= self.max_column <= self.depth:
            raise ValueError(f"max_column must be in 1..{self.depth}, got {max_column}")
        self.dims = dims
        self.owns_encoder = in_channels is not None
        self.dense = dense

        def block(cin: int, cout: int) -> ConvBlock:
            return ConvBlock(cin, cout, dims=dims, node_convs=node_convs, norm=norm,
                             activation=activation, fuse_1x1=fuse_1x1, init=node_init)

        self.nodes = nn.ModuleDict()
        self.upsamples = nn.ModuleDict()
        if self.owns_encoder:
            self.nodes[self.key((0, 0))] = block(in_channels, self.widths[0])
            for i in range(1, self.depth + 1):
                self.nodes[self.key((i, 0))] = block(self.widths[i - 1], self.widths[i])
            self.pool = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[dims - 1](2, ceil_mode=True)
        for i, j in self.skip_nodes():
            up = _Upsample(upsample, self.widths[i + 1], self.widths[i], dims)
            self.upsamples[self.key((i, j))] = up
            same_level = j if dense else 1
            self.nodes[self.key((i, j))] = block(same_level * self.widths[i] + up.out_channels,
                                                 self.widths[i])

    @staticmethod
    def key(node: Node) -> str:
        return f"x{node[0]}_{node[1]}"

    def skip_nodes(self) -> List[Node]:
        """Every built X^{i,j} with j >= 1, in an order where each node follows its inputs."""
        return [(i, j) for j in range(1, self.max_column + 1)
                for i in range(self.depth - j + 1)
                if self.dense or i + j == self.depth]

    def forward(self, inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
                outputs: Iterable[Node]) -> Dict[Node, torch.Tensor]:
        """Compute the requested nodes and only what they depend on.

        ``inputs`` is the image tensor when the module owns the encoder, otherwise the list
        of encoder features ``[x^{0,0}, ..., x^{L,0}]``. Returns ``{node: tensor}`` for every
        computed node, the requested ones included.
        """
        outputs = list(outputs)
        built = set(self.skip_nodes())
        for i, j in outputs:
            if not 0 <= i <= self.depth or (j != 0 and (i, j) not in built):
                raise ValueError(f"node X^{{{i},{j}}} does not exist in this UNet++ "
                                 f"(depth {self.depth}, max column {self.max_column}, "
                                 f"dense={self.dense})")
        needed = required_nodes(outputs, self.dense)
        values: Dict[Node, torch.Tensor] = {}
        if self.owns_encoder:
            x = inputs
            for i in range(max(i for i, j in needed if j == 0) + 1):
                x = self.nodes[self.key((i, 0))](x if i == 0 else self.pool(x))
                values[(i, 0)] = x
        else:
            if len(inputs) != self.depth + 1:
                raise ValueError(f"expected {self.depth + 1} encoder features, got {len(inputs)}")
            values.update({(i, 0): f for i, f in enumerate(inputs)})
        for node in self.skip_nodes():
            if node not in needed:
                continue
            i, j = node
            same_level = [values[(i, k)] for k in range(j if self.dense else 1)]
            up = self.upsamples[self.key(node)](values[(i + 1, j - 1)],
                                                same_level[0].shape[2:])
            values[node] = self.nodes[self.key(node)](torch.cat(same_level + [up], dim=1))
        return values
