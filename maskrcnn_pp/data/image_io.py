"""Reading the images users bring: PNG, JPEG, TIFF; 8/16-bit or float; gray, RGB, RGBA."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from ..utils.errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "UnreadableImageError", "decode_image_file", "read_image_rgb"]

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class UnreadableImageError(UserError):
    """An image file that is missing, empty, corrupt or of an unsupported pixel type."""

    def __init__(self, path: PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def decode_image_file(path: PathLike) -> np.ndarray:
    """The file's pixels as stored (any depth and channel count)."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as err:
        raise UnreadableImageError(path, f"cannot be read ({err.strerror or err})") from None
    if data.size == 0:
        raise UnreadableImageError(path, "file is empty")
    pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise UnreadableImageError(path, "cannot be decoded as an image (corrupt, truncated "
                                         f"or not one of {', '.join(IMAGE_EXTENSIONS)})")
    return pixels


def read_image_rgb(path: PathLike) -> np.ndarray:
    """Any supported image as 8-bit RGB (H, W, 3).

    Alpha is dropped, grayscale is repeated over three channels, and 16-bit or float
    images are stretched linearly from their minimum..maximum to 0..255 (microscopy
    cameras rarely fill the 16-bit range, so dividing by 257 would leave them nearly black).
    """
    pixels = decode_image_file(path)
    if pixels.dtype in (np.uint16, np.float32, np.float64):
        low, high = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        pixels = np.rint((pixels.astype(np.float64) - low) * scale).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise UnreadableImageError(path, f"unsupported pixel type {pixels.dtype}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    conversions = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
    if channels not in conversions:
        raise UnreadableImageError(path, f"unsupported channel count {channels}")
    return cv2.cvtColor(pixels.reshape(pixels.shape[:2]) if channels == 1 else pixels,
                        conversions[channels])
