"""ROIAlign on the CPU as two sparse matrix products, for training.

torchvision's CPU ROIAlign backward walks every (box, channel, bin, sample) and scatters
four bilinear weights into the feature map one value at a time, recomputing the weights
for every channel; with 512 sampled boxes per step it is the largest single item of a CPU
training step after the convolutions. The operation is linear in the features: output bin
``(r, p)`` is ``sum_k w[r, p, k] * feature[index[r, p, k]]`` over the sample points of the
bin. This module builds that weight matrix ``W`` once per call (the same sample points,
weights and averaging as torchvision's kernel with ``aligned``, adaptive or fixed sampling
ratio) and computes the forward pass as ``W @ features`` and the backward pass as
``W^T @ grad`` with sparse kernels, over all channels at once. The results equal
torchvision's to float rounding (the sums are ordered differently).
"""
from __future__ import annotations

import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from torch import nn

__all__ = ["SparseROIAlign", "sparse_roi_align", "use_sparse_roi_align"]


def _axis_samples(start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor,
                  pooled: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis: for each (box, bin, sample, corner) the feature index and the
    bilinear weight, (R, pooled, G, 2) each; samples beyond a box's own grid weigh 0."""
    dtype = start.dtype
    samples = int(grid.max().clamp(min=1))
    bins = torch.arange(pooled, dtype=dtype)[None, :, None]
    steps = torch.arange(samples, dtype=dtype)[None, None, :]
    coord = (start[:, None, None] + bins * bin_size[:, None, None]
             + (steps + 0.5) * bin_size[:, None, None] / grid.clamp(min=1)[:, None, None])
    valid = (steps < grid[:, None, None]) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    coord = torch.where(at_edge, low.to(dtype), coord)
    frac = coord - low
    weights = torch.stack([1 - frac, frac], -1) * valid[..., None]
    return torch.stack([low, high], -1), weights


def _sample_matrix(rois: torch.Tensor, spatial_scale: float, output_size: tuple[int, int],
                   sampling_ratio: int, aligned: bool, batch: int, height: int, width: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows of ``W`` (one per output bin, R * PH * PW) in CSR form: (row offsets,
    column = flat feature index b * H * W + y * W + x, weight)."""
    ph, pw = output_size
    offset = 0.5 if aligned else 0.0
    boxes = rois[:, 1:] * spatial_scale - offset
    x0, y0, x1, y1 = boxes.unbind(1)
    box_w, box_h = x1 - x0, y1 - y0
    if not aligned:
        box_w, box_h = box_w.clamp(min=1.0), box_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(box_h, sampling_ratio, dtype=torch.long)
    else:
        grid_h, grid_w = torch.ceil(box_h / ph).long(), torch.ceil(box_w / pw).long()
    count = (grid_h * grid_w).clamp(min=1).to(rois.dtype)
    index_y, weight_y = _axis_samples(y0, box_h / ph, grid_h, ph, height)
    index_x, weight_x = _axis_samples(x0, box_w / pw, grid_w, pw, width)
    # (R, PH, PW, Gy, 2, Gx, 2): every sample point's four corners.
    weight = (weight_y[:, :, None, :, :, None, None] * weight_x[:, None, :, None, None, :, :]
              / count[:, None, None, None, None, None, None])
    image = rois[:, 0].long()[:, None, None, None, None, None, None]
    column = ((image * height + index_y[:, :, None, :, :, None, None]) * width
              + index_x[:, None, :, None, None, :, :])
    rows = len(rois) * ph * pw
    weight, column = weight.reshape(rows, -1), column.reshape(rows, -1)
    keep = weight != 0
    offsets = torch.zeros(rows + 1, dtype=torch.long)
    offsets[1:] = keep.sum(1).cumsum(0)
    return offsets, column[keep], weight[keep]


class _SparseROIAlign(torch.autograd.Function):
    """Forward ``W @ x`` and backward ``W^T @ grad``, with ``W`` built once per call."""

    @staticmethod
    def forward(ctx, features, rois, output_size, spatial_scale, sampling_ratio, aligned):
        batch, channels, height, width = features.shape
        offsets, columns, weights = _sample_matrix(rois, spatial_scale, output_size,
                                                   sampling_ratio, aligned, batch, height, width)
        ctx.save_for_backward(offsets, columns, weights)
        ctx.shape = (batch, channels, height, width, len(rois), *output_size)
        matrix = torch.sparse_csr_tensor(offsets, columns, weights,
                                         (len(offsets) - 1, batch * height * width))
        pixels = features.permute(0, 2, 3, 1).reshape(-1, channels)
        pooled = matrix @ pixels
        return pooled.view(len(rois), *output_size, channels).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        offsets, columns, weights = ctx.saved_tensors
        batch, channels, height, width, boxes, ph, pw = ctx.shape
        # The CSR arrays of W read as CSC are W^T's.
        transposed = torch.sparse_csc_tensor(offsets, columns, weights,
                                             (batch * height * width, boxes * ph * pw))
        grad_pixels = transposed @ grad.permute(0, 2, 3, 1).reshape(-1, channels)
        grad_features = grad_pixels.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return grad_features, None, None, None, None, None


def sparse_roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                     spatial_scale: float, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """``torchvision.ops.roi_align`` (rois as (R, 5) with the image index first) computed
    as sparse matrix products; CPU, float32."""
    return _SparseROIAlign.apply(features, rois, tuple(output_size), float(spatial_scale),
                                 int(sampling_ratio), bool(aligned))


class SparseROIAlign(ROIAlign):
    """Detectron2's ``ROIAlign`` that runs :func:`sparse_roi_align` on CPU float32 inputs
    with boxes, and Detectron2's kernel otherwise (GPU, tracing, export, no boxes)."""

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if (input.device.type != "cpu" or input.dtype != torch.float32 or len(rois) == 0
                or torch.jit.is_tracing() or torch.jit.is_scripting()):
            return super().forward(input, rois)
        return sparse_roi_align(input, rois.to(input.dtype), self.output_size,
                                self.spatial_scale, self.sampling_ratio, self.aligned)


def use_sparse_roi_align(model: nn.Module) -> int:
    """Replace, in place, the ROIAlign of every ``ROIPooler`` of ``model`` by
    :class:`SparseROIAlign` with the same settings; returns how many were replaced."""
    replaced = 0
    for pooler in model.modules():
        if not isinstance(pooler, ROIPooler):
            continue
        for i, layer in enumerate(pooler.level_poolers):
            if type(layer) is ROIAlign:
                pooler.level_poolers[i] = SparseROIAlign(
                    layer.output_size, layer.spatial_scale, layer.sampling_ratio,
                    aligned=layer.aligned)
                replaced += 1
    return replaced
