"""Ground-truth masks that proposals index without copying pixels.

Detectron2's ROI heads give every sampled proposal its matched ground truth by indexing
the image's ``gt_masks`` (``gt_masks[matched]``): with ``BitMasks`` that copies a full-image
mask per proposal (512 proposals of a 256x256 crop: 33 MB per image and step), and the
mask loss then converts the foreground ones to float to crop their targets. On crowded
nuclei images this copying is a visible part of a CPU training step.
:class:`IndexedBitMasks` keeps the image's masks once and an index per proposal;
``crop_and_resize`` reads each proposal's target straight from its ground-truth mask,
with the same ROIAlign on the same pixels, so the targets are identical.
"""
from __future__ import annotations

from typing import Any

import torch
from detectron2.layers import ROIAlign
from detectron2.structures import BitMasks

__all__ = ["IndexedBitMasks"]


class IndexedBitMasks(BitMasks):
    """``BitMasks`` whose masks are ``masks[index]``, kept unmaterialized.

    Indexing composes the index; ``crop_and_resize`` works on the referenced masks only;
    ``tensor`` (and every other ``BitMasks`` method) materializes the masks on access.
    """

    def __init__(self, masks: torch.Tensor, index: torch.Tensor | None = None):
        if masks.dim() != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
        self.masks = masks
        self.index = (torch.arange(len(masks), device=masks.device) if index is None
                      else index.to(device=masks.device, dtype=torch.long))
        self.image_size = masks.shape[1:]

    @property
    def tensor(self) -> torch.Tensor:
        return self.masks[self.index]

    def to(self, *args: Any, **kwargs: Any) -> IndexedBitMasks:
        return IndexedBitMasks(self.masks.to(*args, **kwargs), self.index)

    @property
    def device(self) -> torch.device:
        return self.masks.device

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item) -> IndexedBitMasks:
        if isinstance(item, int):
            return IndexedBitMasks(self.masks, self.index[item:item + 1] if item != -1
                                   else self.index[-1:])
        return IndexedBitMasks(self.masks, self.index[item])

    def nonempty(self) -> torch.Tensor:
        return self.masks.flatten(1).any(dim=1)[self.index]

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """``BitMasks.crop_and_resize`` (ROIAlign of each box on its mask, thresholded at
        0.5), reading each box's mask through the index instead of a copy per box."""
        if len(boxes) != len(self):
            raise ValueError(f"{len(boxes)} boxes for {len(self)} masks")
        used, position = torch.unique(self.index, return_inverse=True)
        rois = torch.cat([position.to(boxes.dtype)[:, None], boxes.to(self.masks.device)], 1)
        masks = self.masks[used].to(dtype=torch.float32)[:, None]
        output = ROIAlign((mask_size, mask_size), 1.0, 0, aligned=True).forward(masks, rois)
        return output.squeeze(1) >= 0.5
