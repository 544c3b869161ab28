"""Semantic prediction (UNet++ / U-Net, 2D images and 3D volumes) at any size.

The input is cut into windows of ``tile_size`` (the whole image or volume by default for
2D, the training patch ``INPUT.SEMANTIC_SIZE`` for 3D); each window goes through the test
mapper's steps (:func:`~maskrcnn_pp.data.semantic_mapper.semantic_network_input`: 0..255 scale,
resized to ``INPUT.SEMANTIC_SIZE``), the network callable, and back to the window's size;
overlapping windows are averaged.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode

from ..data.image_io import (
    Intensity,
    UnreadableImageError,
    array_to_rgb8,
    is_nifti,
    normalize_intensity,
    read_nifti,
    to_format,
)
from ..data.semantic_mapper import semantic_network_input
from ..evaluation.semantic import foreground
from ..utils.errors import UserError
from ..utils.io import PathLike
from ..utils.progress import ProgressBar
from ..utils.tiles import tile_starts
from .outputs import NiftiSpace, WriteOptions, write_labels_2d, write_nifti, write_tiff
from .predictor import (
    DegenerateImageError,
    Predictor,
    Prepared,
    check_unit_interval,
    degenerate_image_problem,
)
from .tiling import check_tiling

__all__ = ["SemanticModelFn", "SemanticResult", "SemanticPredictor", "SemanticModelRunner"]

SemanticModelFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SemanticResult:
    """``probabilities`` float32 (K, *spatial): one foreground map (K = 1, sigmoid) or K
    class maps (softmax); ``label_image`` uint8 (*spatial): 0/1 foreground above
    ``threshold``, or the most probable class id."""

    probabilities: np.ndarray
    threshold: float = 0.5

    @cached_property
    def label_image(self) -> np.ndarray:
        if self.probabilities.shape[0] == 1:
            return foreground(torch.from_numpy(self.probabilities),
                              self.threshold).numpy().astype(np.uint8)
        return self.probabilities.argmax(axis=0).astype(np.uint8)


class SemanticModelRunner:
    """The eager network callable of a :class:`SemanticUNetPP`: float32 (N, C, *spatial)
    on the 0..255 scale in, probabilities (N, K, *spatial) out (on the CPU), at inference
    ``level`` (None: the configured one, 0 accurate, j the pruned UNet++ L_j)."""

    def __init__(self, model: torch.nn.Module, level: Optional[int] = None):
        self.model = model.eval()
        self.level = level

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            outputs = self.model.inference([{"image": image} for image in batch], self.level)
        return torch.stack([o["sem_seg"] for o in outputs]).cpu()


class SemanticPredictor(Predictor):
    """Probabilities and labels of a whole image (2D) or volume (3D).

    Args:
        model_fn: see :class:`SemanticModelRunner`.
        dims: 2 or 3 (``MODEL.SEMANTIC.DIMS``).
        in_channels: the network's input channels (1: gray, 3: colour).
        image_format: ``INPUT.FORMAT`` of 2D inputs (L, RGB or BGR).
        network_size: ``INPUT.SEMANTIC_SIZE`` (0 keeps each window's size).
        tile_size, tile_overlap: sliding windows; None: one window (the whole input).
        threshold: foreground threshold of single-map networks.
        intensity: how 16-bit / float inputs become 0..255.
        min_tile_size: the smallest window the network's strides allow.

    3D models read NIfTI volumes (:meth:`prepare_file`) and write their outputs in the
    input's voxel order and affine.
    """

    kind = "semantic"

    def __init__(self, model_fn: SemanticModelFn, *, dims: int = 2, in_channels: int = 1,
                 image_format: str = "L", network_size: int = 0,
                 tile_size: Optional[int] = None, tile_overlap: Optional[int] = None,
                 threshold: float = 0.5, intensity: Optional[Intensity] = None,
                 progress: bool = False, min_tile_size: int = 1):
        super().__init__(intensity, progress)
        if tile_size is not None:
            tile_overlap = tile_size // 4 if tile_overlap is None else tile_overlap
            check_tiling(tile_size, tile_overlap, min_tile_size)
        self.model_fn = model_fn
        self.dims, self.in_channels = dims, in_channels
        self.image_format, self.network_size = image_format, network_size
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.threshold = check_unit_interval(threshold, "foreground threshold")

    @classmethod
    def from_config(cls, cfg: CfgNode, model_fn: Optional[SemanticModelFn], *,
                    tile_size: Optional[int] = None, **options) -> SemanticPredictor:
        """3D volumes default to windows of the training patch (``INPUT.SEMANTIC_SIZE``);
        windows are at least 2^L (L = ``len(MODEL.SEMANTIC.WIDTHS) - 1``)."""
        sem = cfg.MODEL.SEMANTIC
        if tile_size is None and sem.DIMS == 3 and cfg.INPUT.SEMANTIC_SIZE > 0:
            tile_size = cfg.INPUT.SEMANTIC_SIZE
        predictor = cls(model_fn, dims=sem.DIMS, in_channels=sem.IN_CHANNELS,
                        image_format=cfg.INPUT.FORMAT, network_size=cfg.INPUT.SEMANTIC_SIZE,
                        tile_size=tile_size, intensity=Intensity.from_config(cfg),
                        min_tile_size=2 ** (len(sem.WIDTHS) - 1), **options)
        predictor.cfg = cfg
        return predictor

    def prepare(self, image: np.ndarray, channel: Optional[int] = None) -> Prepared:
        """Channels-first uint8 network pixels (C, *spatial) of an image (2D: (H, W) or
        (H, W, 1/3/4)) or a volume (3D: (D, H, W))."""
        image = np.asarray(image)
        if self.dims == 3:
            if image.ndim != 3 or image.dtype.kind not in "uif":
                raise UserError(f"volume array of shape {image.shape}, dtype {image.dtype}: "
                                "a 3D model needs a (D, H, W) array of numbers")
            pixels = normalize_intensity(image, self.intensity)[None]
        else:
            pixels = to_format(array_to_rgb8(image, self.intensity, channel),
                               self.image_format)
            if pixels.shape[2] != self.in_channels:
                raise UserError(f"INPUT.FORMAT {self.image_format} gives {pixels.shape[2]} "
                                f"channel(s) but the network takes {self.in_channels}")
            pixels = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        problem = degenerate_image_problem(image, pixels)
        if problem:
            raise DegenerateImageError(problem)
        return Prepared(pixels)

    def prepare_file(self, path: PathLike, page: Optional[int] = None,
                     channel: Optional[int] = None) -> Prepared:
        """2D models: an image file (:meth:`Predictor.prepare_file`); 3D models: a NIfTI
        volume, seen in RAS+ voxel order as training reads volumes."""
        if self.dims != 3:
            return super().prepare_file(path, page, channel)
        if not is_nifti(path):
            raise UnreadableImageError(path, "a 3D model predicts on NIfTI volumes only")
        volume, canonical_affine = read_nifti(path)
        try:
            prepared = self.prepare(volume.transpose(2, 1, 0))
        except UserError as err:
            raise UnreadableImageError(path, str(err)) from None
        prepared.space = NiftiSpace.of_file(path, canonical_affine)
        return prepared

    def _windows(self, shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
        if self.tile_size is None:
            return [tuple(slice(0, n) for n in shape)]
        starts = [tile_starts(n, self.tile_size, self.tile_size - self.tile_overlap) for n in shape]
        return [tuple(slice(s, min(s + self.tile_size, n)) for s, n in zip(origin, shape))
                for origin in itertools.product(*starts)]

    def steps(self, prepared: Prepared) -> int:
        return len(self._windows(prepared.pixels.shape[1:]))

    def run(self, prepared: Prepared) -> SemanticResult:
        pixels = prepared.pixels
        spatial = pixels.shape[1:]
        total: Optional[torch.Tensor] = None
        counts = torch.zeros(spatial)
        windows = self._windows(spatial)
        mode = ("bilinear", "trilinear")[self.dims - 2]
        for window in ProgressBar(windows, desc="windows", unit="window", leave=False,
                                  disable=not self.progress or len(windows) == 1):
            network_input = semantic_network_input(pixels[(slice(None), *window)],
                                                   self.network_size)
            probs = torch.as_tensor(self.model_fn(network_input[None]))[0].float()
            size = [w.stop - w.start for w in window]
            if list(probs.shape[1:]) != size:
                probs = F.interpolate(probs[None], size=size, mode=mode,
                                      align_corners=False)[0]
            if total is None:
                total = torch.zeros((probs.shape[0], *spatial))
            total[(slice(None), *window)] += probs
            counts[window] += 1
        return SemanticResult((total / counts).numpy(), self.threshold)

    def _overlay_rgb(self, pixels: np.ndarray) -> np.ndarray:
        """The 8-bit RGB picture of 2D network pixels (C, H, W) in ``image_format``."""
        rgb = pixels.transpose(1, 2, 0)
        rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
        return rgb[..., ::-1] if self.image_format == "BGR" else rgb

    def write(self, result: SemanticResult, prepared: Prepared, output_dir: Path, stem: str,
              image_id: Any, categories: Sequence[dict], options: WriteOptions
              ) -> tuple[dict, list[dict]]:
        """Labels (class ids), probabilities on request, an overlay for 2D images; NIfTI
        for volumes. Semantic models have no COCO results."""
        spatial = prepared.pixels.shape[1:]
        size = dict(zip(("depth", "height", "width")[-len(spatial):], spatial))
        if prepared.space is not None:
            write_nifti(output_dir / "labels" / f"{stem}.nii.gz", result.label_image,
                        prepared.space)
            if options.probabilities:
                write_nifti(output_dir / "probabilities" / f"{stem}.nii.gz",
                            result.probabilities, prepared.space)
            return size, []
        write_labels_2d(output_dir, stem, result.label_image,
                        self._overlay_rgb(prepared.pixels), options)
        if options.probabilities:
            write_tiff(output_dir / "probabilities" / f"{stem}.tif", result.probabilities)
        return size, []

    def categories(self, metadata: Any) -> list[dict]:
        """The label values are the class ids: ``stuff_classes`` 0..K-1."""
        names = metadata.get("stuff_classes", None) if metadata is not None else None
        return [{"id": i, "name": n}
                for i, n in enumerate(names or ["background", "foreground"])]

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "threshold": self.threshold, "tile_size": self.tile_size,
                "tile_overlap": self.tile_overlap, "dims": self.dims,
                "network_size": self.network_size, "image_format": self.image_format,
                "intensity": [self.intensity.mode, self.intensity.low, self.intensity.high]}
