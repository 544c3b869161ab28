"""Detectron2's DatasetMapper reading images and labels through ``data/image_io.py`` (the
path prediction uses, so 16-bit TIFFs give the network the same pixels); a file that fails
to decode is named, never hidden.

With ``MODEL.FAST_PATHS`` (default) a training item costs what its crop holds: objects whose
mask lies wholly outside the crop are not decoded (Detectron2 decodes every mask of the
image at full size, then drops the empty ones), and the masks reach the model as
:class:`IndexedBitMasks`. The instances are the same, in the same order.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks
from pycocotools import mask as mask_util

from .. import compat
from .image_io import Intensity, UnreadableImageError, read_image, read_label
from .indexed_masks import IndexedBitMasks

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
                 intensity: Intensity | None = None, fast_paths: bool = True, **kwargs):
        super().__init__(is_train, **kwargs)
        self.skip_bad_images = skip_bad_images
        self.intensity = intensity or Intensity()
        self.fast_paths = fast_paths
        self.skipped = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        args = super().from_config(cfg, is_train)
        args["skip_bad_images"] = cfg.DATALOADER.SKIP_BAD_IMAGES
        args["intensity"] = Intensity.from_config(cfg)
        args["fast_paths"] = cfg.MODEL.FAST_PATHS
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
            if self.fast_paths and self.recompute_boxes:
                annotations = dataset_dict["annotations"]
                # One hidden object is kept when no object shows, so that the instances
                # still get their (empty) mask field, as Detectron2's path gives them.
                dataset_dict["annotations"] = [
                    a for a in annotations if _may_show(a, transforms, image_shape)
                ] or annotations[:1]
            compat.transform_annotations(self, dataset_dict, transforms, image_shape)
            instances = dataset_dict["instances"]
            if self.fast_paths and instances.has("gt_masks") \
                    and isinstance(instances.gt_masks, BitMasks):
                instances.gt_masks = IndexedBitMasks(instances.gt_masks.tensor)
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


def _may_show(annotation: dict, transforms, image_shape) -> bool:
    """False when an object's mask (compressed RLE) lies wholly outside the transformed
    image: its box, read from the RLE without decoding it and carried through
    ``transforms``, does not overlap the image. Such an object becomes an empty mask that
    Detectron2 drops (boxes are recomputed from the masks). Other objects, and other mask
    formats, are kept."""
    segmentation = annotation.get("segmentation")
    if not (isinstance(segmentation, dict)
            and isinstance(segmentation.get("counts"), (str, bytes))):
        return True
    x, y, w, h = mask_util.toBbox(segmentation)
    if w <= 0 or h <= 0:
        return True
    box = transforms.apply_box(np.array([[x, y, x + w, y + h]], dtype=np.float64))[0]
    height, width = image_shape
    return bool(min(box[2], width) > max(box[0], 0) and min(box[3], height) > max(box[1], 0))
