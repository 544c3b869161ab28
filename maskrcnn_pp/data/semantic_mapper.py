"""Semantic samples into the network's format: the mapper, the one preprocessing step that
training and prediction share (:func:`semantic_network_input`), and the loaders.

A file that does not decode is an
:class:`~maskrcnn_pp.data.image_io.UnreadableImageError` naming it; a label that is not a
class id, or of another size than its image, a
:class:`~maskrcnn_pp.data.catalog.SemanticDataError`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import build_detection_test_loader

from ..utils.io import PathLike
from .catalog import SemanticDataError
from .image_io import (
    Intensity,
    is_nifti,
    normalize_intensity,
    read_image,
    read_label,
    read_nifti,
)
from .sampling import build_resumable_train_loader

__all__ = [
    "SemanticDatasetMapper", "read_semantic_image", "semantic_network_input",
    "build_semantic_train_loader", "build_semantic_test_loader",
]


def read_semantic_image(path: PathLike, image_format: str, intensity: Intensity) -> np.ndarray:
    """Channels-first uint8 image ``(C, *spatial)`` of an image file or a NIfTI volume
    (``(1, D, H, W)`` = NIfTI ``(z, y, x)``), normalized by :mod:`.image_io`."""
    if is_nifti(path):
        return normalize_intensity(read_nifti(path)[0].transpose(2, 1, 0), intensity)[None]
    return read_image(path, image_format, intensity).transpose(2, 0, 1)


def _read_sample(dataset_dict: dict, image_format: str, intensity: Intensity
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Channels-first image ``(C, *spatial)`` and label ``(*spatial)`` of one sample; 3D
    volumes come as ``(D, H, W)`` = NIfTI ``(z, y, x)``."""
    image_path = Path(dataset_dict["file_name"])
    label_path = Path(dataset_dict["sem_seg_file_name"])
    image = read_semantic_image(image_path, image_format, intensity)
    label = (read_nifti(label_path)[0].transpose(2, 1, 0) if is_nifti(label_path)
             else read_label(label_path))
    if image.shape[1:] != label.shape:
        raise SemanticDataError(f"{image_path} {image.shape[1:]} and {label_path} "
                                f"{label.shape} differ in size")
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def _resize(tensor: torch.Tensor, size: Sequence[int], is_label: bool) -> torch.Tensor:
    """Resize ``(C, *spatial)`` (or a label ``(*spatial)``) with torch, in 2D or 3D."""
    if list(tensor.shape[-len(size):]) == list(size):
        return tensor
    if is_label:
        resized = F.interpolate(tensor[None, None].float(), size=list(size), mode="nearest")
        return resized[0, 0].to(tensor.dtype)
    mode = ("bilinear", "trilinear")[len(size) - 2]
    return F.interpolate(tensor[None], size=list(size), mode=mode, align_corners=False)[0]


def semantic_network_input(image: np.ndarray, size: int) -> torch.Tensor:
    """float32 ``(C, *spatial)`` on the 0..255 scale, resized to ``size`` in every spatial
    dimension when ``size > 0``: what the network sees, in training and in prediction."""
    tensor = torch.from_numpy(np.ascontiguousarray(image).astype(np.float32))
    return _resize(tensor, [size] * (tensor.dim() - 1), is_label=False) if size > 0 else tensor


class SemanticDatasetMapper:
    """Reads one sample into Detectron2's semantic format.

    Output: ``image`` float32 ``(C, *spatial)`` on the 0..255 scale, resized to ``size``
    in every spatial dimension when ``size > 0``; ``sem_seg`` int64 class ids; ``height``,
    ``width`` (and ``depth``) of ``sem_seg``. Training resizes the label with the image
    and flips both at random along each spatial axis; testing keeps the label at its stored
    size, so the model's prediction is resized back and scored at full resolution.
    """

    @configurable
    def __init__(self, is_train: bool, *, image_format: str, size: int, num_classes: int,
                 flip: bool, intensity: Intensity | None = None):
        self.is_train = is_train
        self.image_format = image_format
        self.intensity = intensity or Intensity()
        self.size = size
        self.num_label_classes = max(2, num_classes)
        self.flip = flip and is_train

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        return {"is_train": is_train, "image_format": cfg.INPUT.FORMAT,
                "size": cfg.INPUT.SEMANTIC_SIZE, "num_classes": cfg.MODEL.SEMANTIC.NUM_CLASSES,
                "flip": cfg.INPUT.SEMANTIC_FLIP, "intensity": Intensity.from_config(cfg)}

    def __call__(self, dataset_dict: dict) -> dict:
        image_np, label_np = _read_sample(dataset_dict, self.image_format, self.intensity)
        if label_np.size and label_np.max() >= self.num_label_classes:
            raise SemanticDataError(
                f"{dataset_dict['sem_seg_file_name']}: label value {int(label_np.max())} is "
                f"not a class id below {self.num_label_classes} (0/255 masks must be "
                "converted by a datasets/prepare_* script)")
        image = semantic_network_input(image_np, self.size)
        label = torch.from_numpy(label_np.astype(np.int64))
        spatial = image.dim() - 1
        if self.size > 0 and self.is_train:
            label = _resize(label, [self.size] * spatial, is_label=True)
        if self.flip:
            for axis in range(spatial):
                if np.random.rand() < 0.5:
                    image, label = image.flip(axis + 1), label.flip(axis)
        out = {"file_name": dataset_dict["file_name"], "image_id": dataset_dict["image_id"],
               "image": image.contiguous(), "sem_seg": label.contiguous()}
        out.update(zip(("depth", "height", "width")[-spatial:], label.shape))
        return out


def build_semantic_train_loader(cfg: CfgNode):
    """Detectron2's training loader over ``cfg.DATASETS.TRAIN`` with the semantic mapper,
    resumable (:func:`~maskrcnn_pp.data.sampling.build_resumable_train_loader`)."""
    return build_resumable_train_loader(cfg, SemanticDatasetMapper(cfg, is_train=True))


def build_semantic_test_loader(cfg: CfgNode, dataset_name: str):
    """Detectron2's test loader (one image per batch) with the semantic mapper."""
    return build_detection_test_loader(cfg, dataset_name,
                                       mapper=SemanticDatasetMapper(cfg, is_train=False))
