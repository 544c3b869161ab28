"""The one predictor protocol: prepare -> run -> write.

Every predictor (:class:`~.instance.InstancePredictor` for Mask R-CNN++ and the baseline,
:class:`~.semantic.SemanticPredictor` for UNet++ / U-Net in 2D and 3D) takes an input through
the same steps, so that ``tools/predict.py`` (:mod:`.batch`) drives any model without asking
which kind it is, and a reader of whole slides can run any model block by block:

* :meth:`Predictor.prepare` (an array) or :meth:`Predictor.prepare_file` (a file): the
  network input and what writing needs later, as a :class:`Prepared`. The array step needs
  no file; what a file adds (a TIFF page, a NIfTI volume's orientation) is the file step's.
  An image the network can learn nothing from (no finite pixel, or one value everywhere) is
  refused with :class:`DegenerateImageError`, which names the problem.
* :meth:`Predictor.run`: a :class:`Prepared` -> the result (an ``InstanceResult`` or a
  ``SemanticResult``), computed in tiles or windows as the predictor is configured.
* :meth:`Predictor.write`: the result's files under an output folder (:mod:`.outputs`), and
  the image's index fields and COCO results.

``predictor(array)`` is ``run(prepare(array))``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Optional

import numpy as np
from detectron2.config import CfgNode

from ..data.image_io import (
    TIFF_EXTENSIONS,
    Intensity,
    UnreadableImageError,
    decode_image_file,
    is_nifti,
)
from ..utils.errors import UserError
from ..utils.io import PathLike
from .outputs import NiftiSpace, WriteOptions

__all__ = ["Predictor", "Prepared", "DegenerateImageError", "check_unit_interval",
           "degenerate_image_problem"]


class DegenerateImageError(UserError):
    """An image with nothing to predict on: no finite pixel, or no contrast."""


def check_unit_interval(value: float, name: str) -> float:
    """``value`` if it is a number in [0, 1]; otherwise a :class:`UserError` naming ``name``
    (a score, a probability or a fraction)."""
    if not (isinstance(value, Real) and math.isfinite(value) and 0 <= value <= 1):
        raise UserError(f"{name} must be a number in [0, 1], got {value}")
    return value


def degenerate_image_problem(raw: np.ndarray, pixels: np.ndarray) -> Optional[str]:
    """Why an image gives the network nothing to see, or None: ``raw`` as given (any pixel
    type), ``pixels`` the 8-bit network pixels made from it."""
    if raw.dtype.kind == "f" and not np.isfinite(raw).any():
        return "no finite pixels (every value is NaN or infinite)"
    if pixels.size == 0 or pixels.min() != pixels.max():
        return None
    finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
    if finite.min() == finite.max():
        return f"no contrast (every pixel is {finite.flat[0]})"
    return (f"no contrast after intensity normalization (INPUT.INTENSITY): every pixel "
            f"becomes {pixels.flat[0]}")


@dataclass
class Prepared:
    """One input made ready for :meth:`Predictor.run`: ``pixels`` is the network input
    (instances: 8-bit RGB (H, W, 3); semantic: 8-bit channels-first (C, *spatial)) and
    ``space`` the input volume's orientation and affine for NIfTI outputs (None for 2D)."""

    pixels: np.ndarray
    space: Optional[NiftiSpace] = None


class Predictor(ABC):
    """What every predictor does (see the module docstring).

    ``results_file``: the name of the merged COCO results file of this kind of model (None
    when it writes none); ``cfg``: the config it was built from, if any; ``source``: the
    files of the model (``{"weights": path}`` or ``{"exported": path}``), recorded by a
    prediction run so that resuming it with another model is refused.
    """

    kind: str
    results_file: Optional[str] = None

    def __init__(self, intensity: Optional[Intensity], progress: bool):
        self.intensity = intensity or Intensity()
        self.progress = progress
        self.cfg: Optional[CfgNode] = None
        self.source: dict[str, str] = {}

    @abstractmethod
    def prepare(self, image: np.ndarray, channel: Optional[int] = None) -> Prepared:
        """The network input of an in-memory image (channel ``channel`` of a colour image
        as gray, if given); :class:`UserError` for an array it cannot use."""

    def prepare_file(self, path: PathLike, page: Optional[int] = None,
                     channel: Optional[int] = None) -> Prepared:
        """:meth:`prepare` of a 2D image file (``page`` of a multi-page TIFF); a file it
        cannot use is an :class:`UnreadableImageError` naming it."""
        path = Path(path)
        if is_nifti(path):
            raise UnreadableImageError(path, "a NIfTI volume needs a 3D semantic model")
        is_tiff = path.suffix.lower() in TIFF_EXTENSIONS    # only TIFFs hold pages
        pixels = decode_image_file(path, page if is_tiff else None)
        try:
            return self.prepare(pixels, channel)
        except UserError as err:
            raise UnreadableImageError(path, str(err)) from None

    @abstractmethod
    def steps(self, prepared: Prepared) -> int:
        """How many network calls (tiles, windows) :meth:`run` makes for ``prepared``."""

    @abstractmethod
    def run(self, prepared: Prepared) -> Any:
        """The result of the whole input."""

    @abstractmethod
    def write(self, result: Any, prepared: Prepared, output_dir: Path, stem: str,
              image_id: Any, categories: Sequence[dict], options: WriteOptions
              ) -> tuple[dict, list[dict]]:
        """Write ``result``'s files for input ``stem`` under ``output_dir``; return the
        image's size fields for the index (``height``, ``width``[, ``depth``]) and its COCO
        results (``categories[k]["id"]`` is the category id of class index k)."""

    @abstractmethod
    def categories(self, metadata: Any) -> list[dict]:
        """COCO categories (``id``, ``name``) of the classes, in class-index order, from a
        data set's metadata (defaults when there is none)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything besides the model and its config that changes what :meth:`run`
        returns, as JSON values."""

    def __call__(self, image: np.ndarray, channel: Optional[int] = None) -> Any:
        return self.run(self.prepare(image, channel))

    def predict_slide(self, path: PathLike, output_dir: PathLike, **options: Any) -> Any:
        """Predict a whole slide block by block into ``output_dir``
        (:func:`maskrcnn_pp.inference.slide.predict_slide`, which lists the options)."""
        from .slide import predict_slide

        return predict_slide(self, path, output_dir, **options)
