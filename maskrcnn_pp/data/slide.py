"""Whole-slide images (pyramidal TIFF / OME-TIFF, SVS, NDPI, MRXS, ...), read lazily.

A slide is far larger than memory, so nothing here reads it whole: :func:`open_slide` gives a
:class:`Slide` that knows its pyramid levels, shape, channels and pixel size (micrometres
per pixel, from the OME metadata, the TIFF resolution tags or OpenSlide's ``mpp``
properties) and reads any region of any level (:meth:`Slide.read_region`).

Two backends (the ``[wsi]`` extra installs both):

* ``tifffile``: TIFF and OME-TIFF, each pyramid level opened as a zarr array over the file's
  tiles (``aszarr``), so a read decodes only the tiles it touches. OME-TIFF pyramids stored
  in SubIFDs are read here: OpenSlide sees only their first level.
* ``openslide``: the vendor formats (SVS, NDPI, MRXS, SCN, ...) through ``openslide-python``
  and the ``openslide-bin`` wheel (no system library). Transparent pixels (outside the
  scanned area) take the slide's background colour.

A tile that cannot be decoded raises :class:`SlideRegionError`, which names the slide, the
level and the region, so a caller can skip that part of the slide and list it.
"""
from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ElementTree
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from ..utils.errors import UserError
from ..utils.io import PathLike
from .image_io import UnreadableImageError, open_tiff

__all__ = ["SlideLevel", "Slide", "SlideRegionError", "open_slide", "is_slide_file",
           "slide_stem", "resize", "SLIDE_BACKENDS", "OPENSLIDE_EXTENSIONS",
           "OME_TIFF_SUFFIXES"]

SLIDE_BACKENDS = ("auto", "tifffile", "openslide")
# Formats only OpenSlide reads; TIFF and OME-TIFF go to tifffile.
OPENSLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
OME_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
# Micrometres per unit of an OME length unit.
_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4,
                 "m": 1e6, "Å": 1e-4, "pm": 1e-6}
# Micrometres per TIFF ResolutionUnit (2: inch, 3: centimetre; 1 means no unit).
_TIFF_UNITS_UM = {2: 25400.0, 3: 10000.0}
# Source pixels read at once when a thumbnail is made from a large level, and read again in
# pieces this small around a tile that cannot be decoded.
_THUMBNAIL_READ_SIDE = 4096
_RETRY_SIDE = 256
# Pixel types cv2.resize takes as they are; others are resized as float32.
_RESIZABLE = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
# Errors a decoder raises for a damaged tile (imagecodecs' errors are RuntimeErrors).
_DECODE_ERRORS = (RuntimeError, ValueError, OSError, EOFError)

logger = logging.getLogger(__name__)


class SlideRegionError(UserError):
    """A region of a slide that cannot be decoded (a corrupt or missing tile)."""


@dataclass(frozen=True)
class SlideLevel:
    """One pyramid level: its size and how many level-0 pixels one of its pixels spans."""

    height: int
    width: int
    downsample: float


class Slide(ABC):
    """An open slide. ``levels[0]`` is the full resolution; ``channels`` and ``dtype`` are
    those of :meth:`read_region`'s (h, w, channels) arrays; ``pixel_size_um`` is the size of
    a level-0 pixel in micrometres, None when the file does not say."""

    backend: str
    # What the backend raises for a tile it cannot decode.
    decode_errors: tuple[type, ...] = _DECODE_ERRORS

    def __init__(self, path: Path, levels: list[SlideLevel], channels: int, dtype: np.dtype,
                 pixel_size_um: Optional[float]):
        self.path, self.levels, self.channels, self.dtype = path, levels, channels, dtype
        self.pixel_size_um = pixel_size_um

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of level 0."""
        return self.levels[0].height, self.levels[0].width

    def read_region(self, level: int, top: int, left: int, height: int, width: int
                    ) -> np.ndarray:
        """Pixels ``top:top+height, left:left+width`` of ``level`` (in that level's
        coordinates, inside it) as (height, width, channels); a tile that cannot be decoded
        is a :class:`SlideRegionError` naming the slide, level and region."""
        size = self.levels[level]
        if not (0 <= top and 0 <= left and height > 0 and width > 0
                and top + height <= size.height and left + width <= size.width):
            raise ValueError(f"region rows {top}:{top + height}, columns {left}:{left + width} "
                             f"is not inside level {level} ({size.height} x {size.width})")
        try:
            return self._read(level, top, left, height, width)
        except self.decode_errors as err:
            raise SlideRegionError(
                f"{self.path}: level {level} rows {top}:{top + height}, columns "
                f"{left}:{left + width} cannot be decoded ({type(err).__name__}: "
                f"{err})") from None

    @abstractmethod
    def _read(self, level: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """The region, read by the backend (decoder errors propagate)."""

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """The slide shrunk so that its longer side is at most ``max_side``, and the
        level-0 pixels per thumbnail pixel. It is made from the smallest level at least
        that large, read in pieces of at most :data:`_THUMBNAIL_READ_SIDE` squared, so
        memory stays bounded even for a slide without a pyramid; tiles that cannot be
        decoded stay 0 (:meth:`_read_readable`)."""
        height0, width0 = self.shape
        downsample = max(1.0, max(height0, width0) / max_side)
        out_h, out_w = max(1, round(height0 / downsample)), max(1, round(width0 / downsample))
        level = max((i for i, lv in enumerate(self.levels) if lv.downsample <= downsample),
                    key=lambda i: self.levels[i].downsample)
        source = self.levels[level]
        factor_y, factor_x = source.height / out_h, source.width / out_w
        piece = max(1, int(_THUMBNAIL_READ_SIDE / max(factor_y, factor_x)))
        out = np.zeros((out_h, out_w, self.channels), self.dtype)
        for row in range(0, out_h, piece):
            for col in range(0, out_w, piece):
                rows = (row, min(row + piece, out_h))
                cols = (col, min(col + piece, out_w))
                top, bottom = int(rows[0] * factor_y), min(math.ceil(rows[1] * factor_y),
                                                           source.height)
                left, right = int(cols[0] * factor_x), min(math.ceil(cols[1] * factor_x),
                                                           source.width)
                region = self._read_readable(level, top, left, bottom - top, right - left)
                out[rows[0]:rows[1], cols[0]:cols[1]] = resize(
                    region, rows[1] - rows[0], cols[1] - cols[0])
        return out, height0 / out_h

    def _read_readable(self, level: int, top: int, left: int, height: int, width: int
                       ) -> np.ndarray:
        """:meth:`read_region`, with the parts that cannot be decoded left at 0 (read again
        in pieces of :data:`_RETRY_SIDE` to find them) and a warning naming them."""
        try:
            return self.read_region(level, top, left, height, width)
        except SlideRegionError:
            pass
        out = np.zeros((height, width, self.channels), self.dtype)
        for row in range(0, height, _RETRY_SIDE):
            for col in range(0, width, _RETRY_SIDE):
                size = (min(_RETRY_SIDE, height - row), min(_RETRY_SIDE, width - col))
                try:
                    out[row:row + size[0], col:col + size[1]] = self.read_region(
                        level, top + row, left + col, *size)
                except SlideRegionError as err:
                    logger.warning("thumbnail left blank where %s", err)
        return out

    def describe(self) -> dict[str, Any]:
        """What a prediction records about the slide (JSON values)."""
        return {"path": str(self.path), "backend": self.backend,
                "levels": [[lv.height, lv.width, lv.downsample] for lv in self.levels],
                "channels": self.channels, "dtype": str(self.dtype),
                "pixel_size_um": self.pixel_size_um}

    @abstractmethod
    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, C) pixels resized to (height, width, C): area averaging when shrinking,
    bilinear when enlarging; any channel count, any pixel type OpenCV resizes."""
    if pixels.shape[:2] == (height, width):
        return pixels
    shrinking = height <= pixels.shape[0] and width <= pixels.shape[1]
    method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    source = pixels if pixels.dtype in _RESIZABLE else pixels.astype(np.float32)
    channels = [cv2.resize(np.ascontiguousarray(source[..., c]), (width, height),
                           interpolation=method) for c in range(pixels.shape[2])]
    return np.stack(channels, axis=2).astype(pixels.dtype, copy=False)


class _TiffSlide(Slide):
    """TIFF / OME-TIFF through tifffile, each level a zarr array over the tiles."""

    backend = "tifffile"

    def __init__(self, path: Path):
        import zarr  # the [wsi] extra

        self._tif = open_tiff(path)
        try:
            series = self._tif.series[0]
            axes = series.axes
            self._index, channels = _axes_index(path, axes, series.shape)
            self._arrays = [zarr.open_array(series.aszarr(level=i), mode="r")
                            for i in range(len(series.levels))]
            shapes = [(lv.shape[axes.index("Y")], lv.shape[axes.index("X")])
                      for lv in series.levels]
            pixel_size = _ome_pixel_size(self._tif) or _tiff_resolution(series.keyframe)
        except UserError:
            self._tif.close()
            raise
        except Exception as err:  # tifffile and zarr raise many types for broken files
            self._tif.close()
            raise UnreadableImageError(path, f"cannot be read as a tiled TIFF ({err})") from None
        levels = [SlideLevel(h, w, (shapes[0][0] / h + shapes[0][1] / w) / 2)
                  for h, w in shapes]
        super().__init__(path, levels, channels, np.dtype(series.dtype), pixel_size)

    def _read(self, level, top, left, height, width):
        spans = {"Y": slice(top, top + height), "X": slice(left, left + width),
                 "C": slice(None)}
        index = tuple(spans.get(a, a) for a in self._index)
        region = np.asarray(self._arrays[level][index])
        order = [a for a in self._index if isinstance(a, str)]   # Y, X and channels, kept
        region = region.transpose([order.index(a) for a in ("Y", "X", "C") if a in order])
        return region if region.ndim == 3 else region[..., None]

    def close(self):
        self._tif.close()


def _axes_index(path: Path, axes: str, shape: tuple) -> tuple[list, int]:
    """How to index a level of a series with ``axes``: "Y", "X", "C" (the one sample or
    channel axis) or 0 (an axis of length 1); and the channel count. A series that holds
    more than one 2D image (Z, T, or two channel axes) is refused."""
    index, channels = [], 1
    for axis, size in zip(axes, shape):
        if axis in "YX":
            index.append(axis)
        elif axis in "SC" and size > 1 and "C" not in index:
            index.append("C")
            channels = size
        elif size == 1:
            index.append(0)
        else:
            raise UnreadableImageError(path, f"has axes {axes} (shape {tuple(shape)}): a "
                                             "slide must hold one 2D image, with channels")
    if "Y" not in index or "X" not in index:
        raise UnreadableImageError(path, f"has axes {axes}: no YX image")
    return index, channels


def _ome_pixel_size(tif) -> Optional[float]:
    """PhysicalSizeX of the first OME image, in micrometres (None if absent)."""
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except ElementTree.ParseError:
        return None
    pixels = next((node for node in root.iter() if node.tag.split("}")[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    unit = _OME_UNITS_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
    size = float(pixels.get("PhysicalSizeX"))
    return size * unit if unit and size > 0 and math.isfinite(size) else None


def _tiff_resolution(page) -> Optional[float]:
    """Micrometres per pixel from the TIFF XResolution and ResolutionUnit tags."""
    resolution, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    unit_um = _TIFF_UNITS_UM.get(int(unit.value) if unit is not None else 2)
    if resolution is None or unit_um is None:
        return None
    numerator, denominator = resolution.value
    return unit_um * denominator / numerator if numerator > 0 and denominator > 0 else None


class _OpenSlide(Slide):
    """SVS, NDPI, MRXS, ... through OpenSlide; RGB, transparent pixels on the background."""

    backend = "openslide"

    def __init__(self, path: Path):
        self._module = _import_openslide(path)
        self.decode_errors = (*_DECODE_ERRORS, self._module.OpenSlideError)
        self._handle = self._open(path)
        properties = self._handle.properties
        mpp = properties.get(self._module.PROPERTY_NAME_MPP_X)
        try:
            pixel_size = float(mpp) if mpp is not None and float(mpp) > 0 else None
        except ValueError:
            pixel_size = None
        colour = properties.get(self._module.PROPERTY_NAME_BACKGROUND_COLOR) or "FFFFFF"
        self._background = np.array([int(colour[i:i + 2], 16) for i in (0, 2, 4)], np.uint16)
        levels = [SlideLevel(h, w, float(d)) for (w, h), d in zip(
            self._handle.level_dimensions, self._handle.level_downsamples)]
        super().__init__(path, levels, 3, np.dtype(np.uint8), pixel_size)

    def _open(self, path: Path):
        try:
            return self._module.OpenSlide(str(path))
        except (self._module.OpenSlideError, OSError) as err:
            raise UnreadableImageError(path, f"is not a slide OpenSlide can read "
                                             f"({type(err).__name__}: {err})") from None

    def _read(self, level, top, left, height, width):
        downsample = self.levels[level].downsample
        location = (round(left * downsample), round(top * downsample))
        try:
            rgba = np.asarray(self._handle.read_region(location, level, (width, height)))
        except self._module.OpenSlideError:
            # OpenSlide refuses every later read of a handle that failed once.
            self._handle.close()
            self._handle = self._open(self.path)
            raise
        alpha = rgba[..., 3:].astype(np.uint16)
        blended = (rgba[..., :3] * alpha + self._background * (255 - alpha) + 127) // 255
        return blended.astype(np.uint8)

    def close(self):
        self._handle.close()


def _import_openslide(path: Path):
    try:
        import openslide
    except ImportError:
        raise UserError(f"{path}: reading this slide format needs OpenSlide; install the "
                        "[wsi] extra: pip install 'maskrcnn_pp[wsi]'") from None
    return openslide


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def is_slide_file(path: PathLike) -> bool:
    """A file to predict slide by slide: an OpenSlide format, an OME-TIFF, or a TIFF whose
    first series is a pyramid (more than one level)."""
    path = Path(path)
    if _has_suffix(path, OPENSLIDE_EXTENSIONS + OME_TIFF_SUFFIXES):
        return True
    if not _has_suffix(path, TIFF_SUFFIXES):
        return False
    try:
        with open_tiff(path) as tif:
            return len(tif.series) > 0 and len(tif.series[0].levels) > 1
    except UnreadableImageError:
        return False


def open_slide(path: PathLike, backend: str = "auto") -> Slide:
    """Open a slide for lazy reads: ``backend`` ``"tifffile"`` (TIFF, OME-TIFF),
    ``"openslide"`` (vendor formats, generic tiled TIFF) or ``"auto"`` (TIFFs to tifffile,
    everything else to OpenSlide). A file that is not a slide is an
    :class:`UnreadableImageError` naming it."""
    path = Path(path)
    if backend not in SLIDE_BACKENDS:
        raise UserError(f"slide backend must be one of {', '.join(SLIDE_BACKENDS)}, got "
                        f"{backend!r}")
    if not path.is_file():
        raise UnreadableImageError(path, "does not exist" if not path.exists()
                                   else "is not a file")
    if backend == "auto":
        backend = "tifffile" if _has_suffix(path, TIFF_SUFFIXES) else "openslide"
    try:
        return _TiffSlide(path) if backend == "tifffile" else _OpenSlide(path)
    except ImportError as err:
        raise UserError(f"{path}: reading slides needs the [wsi] extra "
                        f"(pip install 'maskrcnn_pp[wsi]'): {err}") from None


def slide_stem(path: PathLike) -> str:
    """The file name without its slide suffix (both parts of ``.ome.tif``)."""
    return re.sub(r"(\.ome)?\.[^.]+$", "", Path(path).name, flags=re.IGNORECASE)
