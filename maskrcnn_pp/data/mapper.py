"""Detectron2's DatasetMapper, but an image that fails to decode is named, never hidden."""
from __future__ import annotations

import logging

from detectron2.config import configurable
from detectron2.data import DatasetMapper

from ..utils.errors import UserError

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
    def __init__(self, is_train: bool = True, *, skip_bad_images: bool = False, **kwargs):
        super().__init__(is_train, **kwargs)
        self.skip_bad_images = skip_bad_images
        self.skipped = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        args = super().from_config(cfg, is_train)
        args["skip_bad_images"] = cfg.DATALOADER.SKIP_BAD_IMAGES
        return args

    def __call__(self, dataset_dict: dict):
        try:
            return super().__call__(dataset_dict)
        except OSError as err:  # PIL's UnidentifiedImageError and truncation are OSErrors
            file_name = dataset_dict.get("file_name", "<unknown file>")
            if not self.skip_bad_images:
                raise BadImageError(
                    f"{file_name}: cannot read image ({err}); fix or remove it, or set "
                    "DATALOADER.SKIP_BAD_IMAGES True to skip such images") from err
            self.skipped += 1
            logger.warning("Skipped image %s that cannot be read (%s); %d skipped so far in "
                           "this loader", file_name, err, self.skipped)
            return None
