"""``SemanticUNetPP``: the semantic UNet++ / U-Net as a Detectron2 meta-architecture.

Inputs are Detectron2's batched dicts: ``"image"`` (``C,H,W`` or ``C,D,H,W``, 0..255 scale)
and, for training, ``"sem_seg"`` (class ids of the same spatial size). Training returns
``loss_seg_1..K``, one per supervised output; inference returns
``{"sem_seg": probabilities}`` per image, at the size given by the dict's ``height`` /
``width`` (/ ``depth``) when they differ from the network input.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..config import nested_core_node
from .deep_supervision import ACCURATE, mean_probabilities
from .semantic import NestedSegmentationNet, UNet, UNetPlusPlus

__all__ = ["SemanticUNetPP", "build_semantic_net"]


def build_semantic_net(cfg: CfgNode) -> NestedSegmentationNet:
    """UNet++ or (wide) U-Net from ``cfg.MODEL.SEMANTIC``."""
    sem = nested_core_node(cfg, "MODEL.SEMANTIC")
    common = dict(in_channels=sem.IN_CHANNELS, num_classes=sem.NUM_CLASSES,
                  widths=tuple(sem.WIDTHS), dims=sem.DIMS, norm=sem.NORM,
                  upsample=sem.UPSAMPLE, node_convs=sem.NODE_CONVS, node_init=sem.NODE_INIT)
    arch = sem.ARCH.lower()
    if arch == "unetpp":
        return UNetPlusPlus(deep_supervision=sem.DEEP_SUPERVISION,
                            loss_weights=tuple(sem.DEEP_SUPERVISION_WEIGHTS), **common)
    if sem.DEEP_SUPERVISION_WEIGHTS:
        raise ValueError("MODEL.SEMANTIC.DEEP_SUPERVISION_WEIGHTS applies to UNet++ with deep "
                         f"supervision; {sem.ARCH!r} has one output")
    if arch == "unet":
        return UNet(**common)
    raise ValueError(f"MODEL.SEMANTIC.ARCH must be 'unetpp' or 'unet', got {sem.ARCH!r}")


@META_ARCH_REGISTRY.register()
class SemanticUNetPP(nn.Module):
    """Normalizes and batches Detectron2 inputs for a :class:`NestedSegmentationNet`.

    Args:
        net: the network.
        pixel_mean, pixel_std: one value per input channel.
        inference_level: 0 for the accurate mode (mean of all outputs), ``j`` for the fast
            mode that runs only the pruned sub-network UNet++ L_j.
        bce_weight, dice_smooth: the loss of :func:`segmentation_loss`.
    """

    @configurable
    def __init__(self, *, net: NestedSegmentationNet, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], inference_level: int = ACCURATE,
                 bce_weight: float = 0.5, dice_smooth: float = 1.0):
        super().__init__()
        self.net = net
        for key, values in (("MODEL.PIXEL_MEAN", pixel_mean), ("MODEL.PIXEL_STD", pixel_std)):
            if len(values) != net.in_channels:
                raise ValueError(f"{key} needs one value per input channel "
                                 f"({net.in_channels}), got {list(values)}")
        shape = (-1,) + (1,) * net.dims
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(shape), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(shape), False)
        self.inference_level = net.heads.check_level(inference_level)
        self.loss_kwargs = dict(bce_weight=bce_weight, smooth=dice_smooth)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        sem = nested_core_node(cfg, "MODEL.SEMANTIC")
        return {"net": build_semantic_net(cfg), "pixel_mean": cfg.MODEL.PIXEL_MEAN,
                "pixel_std": cfg.MODEL.PIXEL_STD, "inference_level": sem.INFERENCE_LEVEL,
                "bce_weight": sem.BCE_WEIGHT, "dice_smooth": sem.DICE_SMOOTH}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def levels(self) -> tuple[int, ...]:
        """The fast-mode levels ``j`` this network offers (all of 1..L with deep supervision)."""
        return self.net.levels

    def preprocess_image(self, batched_inputs: list[dict]) -> torch.Tensor:
        """Stack the images of a batch and normalize them with the pixel mean and std."""
        images = [d["image"].to(self.device, torch.float32) for d in batched_inputs]
        channels = {img.shape[0] for img in images}
        if channels != {self.net.in_channels}:
            raise ValueError(f"images have {sorted(channels)} channel(s), the network expects "
                             f"{self.net.in_channels} (MODEL.SEMANTIC.IN_CHANNELS, INPUT.FORMAT)")
        if len({img.shape for img in images}) > 1:
            raise ValueError("images of one batch differ in size "
                             f"{sorted({tuple(img.shape) for img in images})}; set "
                             "INPUT.SEMANTIC_SIZE so the mapper resizes them")
        return (torch.stack(images) - self.pixel_mean) / self.pixel_std

    def forward(self, batched_inputs: list[dict]):
        images = self.preprocess_image(batched_inputs)
        if self.training:
            target = torch.stack([d["sem_seg"].to(self.device) for d in batched_inputs])
            return self.net.losses(images, target, **self.loss_kwargs)
        return self._postprocess(batched_inputs, self.net.predict(images, self.inference_level))

    def inference(self, batched_inputs: list[dict], level: int | None = None) -> list[dict]:
        """Predictions in a given mode: ``level`` 0 is accurate, ``j`` is UNet++ L_j; not
        given, the configured ``inference_level``."""
        level = self.inference_level if level is None else self.net.heads.check_level(level)
        return self._postprocess(batched_inputs,
                                 self.net.predict(self.preprocess_image(batched_inputs), level))

    def inference_modes(self, batched_inputs: list[dict]) -> dict[int, list[dict]]:
        """Predictions in every mode from one pass: ``{j: ...}`` for each fast mode UNet++
        L_j and ``{0: ...}`` for the accurate mode. Output ``j`` of the whole network is what
        L_j computes (the same nodes), so scoring every mode needs no pruned re-runs; timing
        them does (``studies/pruning.py``)."""
        logits = self.net.logits(self.preprocess_image(batched_inputs))
        modes = {j: self.net.probabilities(z) for j, z in logits.items()}
        modes[ACCURATE] = mean_probabilities(list(modes.values()))
        return {mode: self._postprocess(batched_inputs, probs) for mode, probs in modes.items()}

    def _postprocess(self, batched_inputs: list[dict], probs: torch.Tensor) -> list[dict]:
        """Resize each probability map to the size its input dict asks for."""
        keys = ("depth", "height", "width")[-self.net.dims:]
        mode = ("linear", "bilinear", "trilinear")[self.net.dims - 1]
        results = []
        for d, p in zip(batched_inputs, probs):
            size = [int(d.get(k, s)) for k, s in zip(keys, p.shape[1:])]
            if list(p.shape[1:]) != size:
                p = F.interpolate(p[None], size=size, mode=mode, align_corners=False)[0]
            results.append({"sem_seg": p})
        return results
