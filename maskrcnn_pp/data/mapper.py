"""Detectron2's DatasetMapper reading images and labels through ``data/image_io.py`` (the
path prediction uses, so 16-bit TIFFs give the network the same pixels); a file that fails
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
from .image_io import Intensity, UnreadableImageError, read_image, read_label

logger = logging.getLogger(__name__)

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """``DatasetMapper`` whose read/decode failure is an :class:`UnreadableImageError`
    naming the file and the way out.

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
        """DatasetMapper's work with the image read by :func:`read_image` and the label by
        :func:`read_label`."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], self.image_format, self.intensity)
        utils.check_image_size(dataset_dict, image)
        sem_seg = dataset_dict.pop("sem_seg_file_name", None)
        aug_input = T.AugInput(image, sem_seg=None if sem_seg is None
                               else read_label(sem_seg))
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
        except UnreadableImageError as err:
            if not self.skip_bad_images:
                what = ("label" if str(err.path) == str(dataset_dict.get("sem_seg_file_name"))
                        else "image")
                raise UnreadableImageError(
                    err.path, f"cannot read {what} ({err.reason}); fix or remove it, or set "
                              "DATALOADER.SKIP_BAD_IMAGES True to skip such images") from err
            self.skipped += 1
            logger.warning("Skipped image %s that cannot be read (%s); %d skipped so far in "
                           "this loader", err.path, err.reason, self.skipped)
            return None
