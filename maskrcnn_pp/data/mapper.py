"""Detectron2's DatasetMapper reading images through ``data/image_io.py`` (the path
prediction uses, so 16-bit TIFFs give the network the same pixels); an image that fails
to decode is named, never hidden."""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .. import compat
from ..utils.errors import UserError
from .image_io import Intensity, UnreadableImageError, read_image

logger = logging.getLogger(__name__)

__all__ = ["CheckedDatasetMapper", "BadImageError"]


class BadImageError(UserError):
    """A data-set image could not be read or decoded."""


class CheckedDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that turns a read/decode failure into an error naming the file.

    With ``skip_bad_images`` (cfg.DATALOADER.SKIP_BAD_IMAGES) the item is dropped instead:
    Detectron2's ``MapDataset`` then draws another one, and a warning keeps the count.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, skip_bad_images: bool = False,
                 intensity: Intensity | None = None, **kwargs):
        super().__init__(is_train, **kwargs)
        self.skip_bad_images = skip_bad_images
        self.intensity = intensity or Intensity()
        self.skipped = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        args = super().from_config(cfg, is_train)
        args["skip_bad_images"] = cfg.DATALOADER.SKIP_BAD_IMAGES
        args["intensity"] = Intensity.from_config(cfg)
        return args

    def _map(self, dataset_dict: dict) -> dict:
        """DatasetMapper's work with the image read by :func:`read_image`."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], self.image_format, self.intensity)
        utils.check_image_size(dataset_dict, image)
        sem_seg = dataset_dict.pop("sem_seg_file_name", None)
        aug_input = T.AugInput(image, sem_seg=None if sem_seg is None
                               else utils.read_image(sem_seg, "L").squeeze(2))
        transforms = self.augmentations(aug_input)
        image_shape = aug_input.image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(
            np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        if aug_input.sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms,
                                      proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
        elif "annotations" in dataset_dict:
            compat.transform_annotations(self, dataset_dict, transforms, image_shape)
        return dataset_dict

    def __call__(self, dataset_dict: dict):
        try:
            return self._map(dataset_dict)
        except (UnreadableImageError, OSError) as err:  # OSError: PIL reading a label file
            reason = err.reason if isinstance(err, UnreadableImageError) else str(err)
            file_name = dataset_dict.get("file_name", "<unknown file>")
            if not self.skip_bad_images:
                raise BadImageError(
                    f"{file_name}: cannot read image ({reason}); fix or remove it, or set "
                    "DATALOADER.SKIP_BAD_IMAGES True to skip such images") from err
            self.skipped += 1
            logger.warning("Skipped image %s that cannot be read (%s); %d skipped so far in "
                           "this loader", file_name, reason, self.skipped)
            return None
