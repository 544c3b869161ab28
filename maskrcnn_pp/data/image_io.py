"""The one reader of image files: every decode of an image, label or volume file in the
package happens here, and a file that cannot be used raises :class:`UnreadableImageError`
naming it and saying why (``tests/data/test_unreadable_images.py`` checks both).

Images become network pixels the same way in training and prediction. Files are PNG, JPEG,
BMP or TIFF; TIFF goes through ``tifffile`` so 16-bit, float and multi-page stacks keep
their values. A stack never gives its first page silently: one page must be chosen
(``page``), else the error says how many there are. Pixels become 8-bit by
:func:`normalize_intensity` under the config's ``INPUT.INTENSITY`` (8-bit images pass
unchanged unless a fixed range is asked for, because the models are trained on 8-bit data),
then gray, RGB or BGR as ``INPUT.FORMAT`` asks. Label images (:func:`read_label`) keep
their values exactly; NIfTI volumes (:func:`read_nifti`) come in RAS+ orientation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import nibabel as nib
import numpy as np
import tifffile
from PIL import Image

from ..utils.errors import UserError
from ..utils.io import PathLike

__all__ = [
    "IMAGE_EXTENSIONS", "TIFF_EXTENSIONS", "NIFTI_SUFFIXES", "UnreadableImageError",
    "Intensity", "decode_image_file", "normalize_intensity", "to_format", "read_image",
    "read_image_rgb", "read_label", "is_nifti", "nifti_stem", "read_nifti", "nifti_affine",
    "array_to_rgb8", "open_tiff",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
INTENSITY_MODES = ("percentile", "minmax", "range")
NOT_AN_IMAGE = ("cannot be decoded as an image (corrupt, truncated or not one of "
                f"{', '.join(IMAGE_EXTENSIONS)})")


class UnreadableImageError(UserError):
    """An image, label or volume file that is missing, empty, corrupt, or of a pixel type
    or shape its reader cannot use; the message names the file and says why."""

    def __init__(self, path: PathLike, reason: Optional[str] = None):
        # One argument is a whole message: torch re-creates a DataLoader worker's error so.
        super().__init__(str(path) if reason is None else f"{path}: {reason}")
        self.path = None if reason is None else Path(path)
        self.reason = str(path) if reason is None else reason


@dataclass(frozen=True)
class Intensity:
    """How pixels become 0..255 (``cfg.INPUT.INTENSITY``).

    ``percentile``: 16-bit/float from the ``low``..``high`` percentiles (Cellpose's robust
    choice: one hot pixel does not darken the image); ``minmax``: from the minimum..maximum;
    ``range``: from the fixed values ``low``..``high`` for every pixel type (a camera's bit
    depth, a CT window). Values outside are clipped.
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.0

    def __post_init__(self):
        if self.mode not in INTENSITY_MODES:
            raise UserError(f"INPUT.INTENSITY.MODE must be one of {', '.join(INTENSITY_MODES)}, "
                            f"got {self.mode!r}")
        if not self.low < self.high or (self.mode == "percentile"
                                         and not 0 <= self.low < self.high <= 100):
            raise UserError(f"INPUT.INTENSITY {self.mode} needs low < high"
                            f"{' within 0..100' if self.mode == 'percentile' else ''}, got "
                            f"{self.low}, {self.high}")

    @classmethod
    def from_config(cls, cfg) -> Intensity:
        node = cfg.INPUT.INTENSITY
        low, high = node.PERCENTILES if node.MODE == "percentile" else node.RANGE
        return cls(node.MODE, float(low), float(high))


def normalize_intensity(pixels: np.ndarray, intensity: Intensity | None = None) -> np.ndarray:
    """Any numeric array as uint8 by ``intensity`` (default: percentile 1..99)."""
    intensity = intensity or Intensity()
    if pixels.dtype == np.uint8 and intensity.mode != "range":
        return pixels
    if pixels.dtype == bool or not np.issubdtype(pixels.dtype, np.number):
        raise ValueError(f"unsupported pixel type {pixels.dtype}")
    values = pixels.astype(np.float32)
    if intensity.mode == "range":
        low, high = intensity.low, intensity.high
    else:
        finite = values[np.isfinite(values)]
        if not finite.size:
            return np.zeros(pixels.shape, np.uint8)
        if intensity.mode == "minmax":
            low, high = float(finite.min()), float(finite.max())
        else:
            low, high = (float(v) for v in np.percentile(finite, [intensity.low, intensity.high]))
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = np.clip((np.nan_to_num(values, nan=low) - low) * scale, 0, 255)
    return np.rint(scaled).astype(np.uint8)


def _tiff_stack(path: PathLike) -> tuple[np.ndarray, str]:
    """All images of a TIFF as (N, H, W[, S]) and the file's axes.

    tifffile keeps the axes and, through ``imagecodecs``, decodes every common compression
    (LZW, JPEG, zstd, ...); OpenCV decodes, one page per image, what tifffile refuses.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, pixels = series.axes, series.asarray()
    except (tifffile.TiffFileError, ValueError, KeyError, IndexError, OSError) as err:
        ok, pages = cv2.imdecodemulti(_file_bytes(path), cv2.IMREAD_UNCHANGED)
        if not ok or not pages:
            raise UnreadableImageError(path, f"cannot be decoded as a TIFF ({err})") from None
        pages = [_bgr_to_rgb(page) for page in pages]
        return np.stack(pages), "IYXS" if pages[0].ndim == 3 else "IYX"
    if "Y" not in axes or "X" not in axes:
        raise UnreadableImageError(path, f"TIFF axes {axes} hold no YX image")
    image_axes = [axes.index(a) for a in "YXS" if a in axes]
    other = [i for i in range(len(axes)) if i not in image_axes]
    stack = pixels.transpose(other + image_axes).reshape(
        (-1, *(pixels.shape[i] for i in image_axes)))
    return stack, axes


def _read_tiff(path: PathLike, page: Optional[int]) -> np.ndarray:
    """One image (H, W) or (H, W, S) of a TIFF; ``page`` indexes the stack's other axes."""
    stack, axes = _tiff_stack(path)
    if page is None and len(stack) > 1:
        raise UnreadableImageError(
            path, f"holds {len(stack)} images (axes {axes}, shape {stack.shape}); choose one "
                  "with page=K (--page K in tools/predict.py)")
    page = page or 0
    if not 0 <= page < len(stack):
        raise UnreadableImageError(path, f"has no page {page}: it holds {len(stack)} image(s)")
    return stack[page]


def open_tiff(path: PathLike) -> tifffile.TiffFile:
    """A TIFF opened for lazy reads (whole-slide pyramids, :mod:`.slide`), to be closed by
    the caller; a file that is not a readable TIFF is an :class:`UnreadableImageError`."""
    _file_head(path)
    try:
        return tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, KeyError, IndexError, OSError) as err:
        raise UnreadableImageError(path, f"cannot be read as a TIFF ({err})") from None


def _bgr_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) colour order to RGB(A); gray as it is."""
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB if pixels.shape[2] == 3
                            else cv2.COLOR_BGRA2RGBA)
    return pixels


def _file_bytes(path: PathLike) -> np.ndarray:
    """The bytes of a file that exists and is not empty."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as err:
        raise UnreadableImageError(path, f"cannot be read ({err.strerror or err})") from None
    if data.size == 0:
        raise UnreadableImageError(path, "file is empty")
    return data


def _file_head(path: PathLike) -> bytes:
    """The first bytes of a file that exists and is not empty. The decoders then read the
    file themselves, as a stream: a copy of all its bytes would add the file's size to the
    memory that its pixels take."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError as err:
        raise UnreadableImageError(path, f"cannot be read ({err.strerror or err})") from None
    if not head:
        raise UnreadableImageError(path, "file is empty")
    return head


def _is_tiff(path: PathLike, head: bytes) -> bool:
    return str(path).lower().endswith(TIFF_EXTENSIONS) or head in (
        b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def decode_image_file(path: PathLike, page: Optional[int] = None) -> np.ndarray:
    """The file's pixels as stored (any depth), colour channels in RGB(A) order."""
    if _is_tiff(path, _file_head(path)):
        return _read_tiff(path, page)
    if page:
        raise UnreadableImageError(path, f"has no page {page}: only TIFF files hold several")
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise UnreadableImageError(path, NOT_AN_IMAGE)
    return _bgr_to_rgb(pixels)


def read_label(path: PathLike) -> np.ndarray:
    """A label image (class or object ids) as a 2-D array of its stored values, never
    rescaled: integer, or float as a TIFF stores it (callers decide about fractions).

    Palette PNGs give their indices (Pillow reads them; OpenCV would give the colours),
    TIFFs go through ``tifffile``; more than one channel is an :class:`UnreadableImageError`.
    """
    if _is_tiff(path, _file_head(path)):
        labels = _read_tiff(path, None)
    else:
        try:
            with Image.open(path) as image:
                labels = np.asarray(image)
        except Image.UnidentifiedImageError:
            raise UnreadableImageError(path, NOT_AN_IMAGE) from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise UnreadableImageError(path, f"cannot be decoded as an image ({err})") from None
    if labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise UnreadableImageError(path, f"has shape {labels.shape}; a label image has one "
                                         "channel of class or object ids")
    if labels.dtype == bool:  # a 1-bit file: background 0, object 1
        return labels.astype(np.uint8)
    if labels.dtype.kind not in "uif":
        raise UnreadableImageError(path, f"has pixel type {labels.dtype}, not a label type")
    return labels


def is_nifti(path: PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: PathLike) -> str:
    """The file name without ``.nii.gz`` / ``.nii`` (or, for other files, its suffix)."""
    path = Path(path)
    for suffix in NIFTI_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _load_nifti(path: PathLike):
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises many types for broken files
        raise UnreadableImageError(path, f"not a readable NIfTI file ({err})") from None


def read_nifti(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume in the closest canonical (RAS+) orientation, and that affine; a file
    that cannot be read or is not 3D is an :class:`UnreadableImageError`."""
    img = _load_nifti(path)
    try:
        img = nib.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # the header reads but the voxels do not (a truncated file)
        raise UnreadableImageError(path, f"not a readable NIfTI file ({err})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UnreadableImageError(path, f"expected a 3D volume, got shape {data.shape}")
    return data, img.affine


def nifti_affine(path: PathLike) -> np.ndarray:
    """The affine a NIfTI file stores (its own voxel order, before :func:`read_nifti`'s
    reorientation), to write outputs in the input's space."""
    return _load_nifti(path).affine


def _rgb8(pixels: np.ndarray, intensity: Intensity | None, channel: Optional[int]
          ) -> np.ndarray:
    """8-bit RGB (H, W, 3) of an (H, W) or (H, W, 1/3/4) array; ValueError says why not."""
    if pixels.ndim == 3 and pixels.shape[2] in (1, 3, 4):
        channels = pixels.shape[2]
    elif pixels.ndim == 2:
        channels = 1
    else:
        raise ValueError(f"shape {pixels.shape} is not (H, W) or (H, W, 1/3/4)")
    if channel is not None:
        if not 0 <= channel < channels:
            raise ValueError(f"has no channel {channel}: it has {channels}")
        pixels, channels = pixels[..., channel] if pixels.ndim == 3 else pixels, 1
    elif channels == 4:
        pixels, channels = pixels[..., :3], 3
    pixels = normalize_intensity(np.asarray(pixels), intensity)
    if channels == 1:
        return np.repeat(pixels.reshape(pixels.shape[:2])[..., None], 3, axis=2)
    return np.ascontiguousarray(pixels)


def to_format(rgb: np.ndarray, image_format: str) -> np.ndarray:
    """(H, W, 3) RGB as Detectron2's ``INPUT.FORMAT``: RGB, BGR, or L (H, W, 1)."""
    if image_format == "RGB":
        return rgb
    if image_format == "BGR":
        return np.ascontiguousarray(rgb[..., ::-1])
    if image_format == "L":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None]
    raise UserError(f"INPUT.FORMAT {image_format!r} is not supported; use RGB, BGR or L")


def read_image(path: PathLike, image_format: str = "RGB", intensity: Intensity | None = None,
               page: Optional[int] = None, channel: Optional[int] = None) -> np.ndarray:
    """A file as 8-bit (H, W, C) network pixels in ``image_format`` (see the module doc)."""
    try:
        rgb = _rgb8(decode_image_file(path, page), intensity, channel)
    except ValueError as err:
        raise UnreadableImageError(path, str(err)) from None
    return to_format(rgb, image_format)


def read_image_rgb(path: PathLike, intensity: Intensity | None = None,
                   page: Optional[int] = None, channel: Optional[int] = None) -> np.ndarray:
    """:func:`read_image` in RGB order."""
    return read_image(path, "RGB", intensity, page, channel)


def array_to_rgb8(array: np.ndarray, intensity: Intensity | None = None,
                  channel: Optional[int] = None) -> np.ndarray:
    """An in-memory image (H, W) or (H, W, 1/3/4), uint8/uint16/float, as 8-bit RGB;
    anything else is a :class:`UserError` naming its shape and dtype."""
    array = np.asarray(array)
    if array.dtype.kind not in "uif" or array.dtype.kind == "i" and array.dtype.itemsize > 4:
        raise UserError(f"image of dtype {array.dtype} (shape {array.shape}) is not "
                        "supported: give uint8, uint16 or float pixels")
    try:
        return _rgb8(array, intensity, channel)
    except ValueError as err:
        raise UserError(f"image array of shape {array.shape}, dtype {array.dtype}: "
                        f"{err}") from None
