"""Kvasir-SEG and CVC-ClinicDB (``images/``, ``masks/``) as square image/label PNGs (the
polyp task)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...utils.errors import UserError
from ...utils.io import PathLike
from ..catalog import datasets_root
from ..image_io import IMAGE_EXTENSIONS, read_image
from .base import (
    Converted,
    Preparation,
    PreparationReport,
    SampleProblem,
    SplitPlan,
    read_sample_file,
    write_png,
)
from .semantic_output import SemanticPreparer, folder_with, resize_2d

__all__ = ["PolypPreparer", "prepare_polyp"]

NAMES = ("kvasir", "clinicdb")
# First frame of each of the 29 video sequences of CVC-ClinicDB (its README.txt).
CLINICDB_SEQUENCE_STARTS = (1, 26, 51, 68, 79, 104, 127, 152, 178, 200, 206, 228, 253, 278, 298,
                            318, 343, 364, 384, 409, 429, 448, 467, 479, 504, 529, 547, 572, 592)


def _read_bgr(path: Path) -> np.ndarray:
    """An 8-bit BGR (OpenCV order) image, as written back by :func:`write_png`."""
    return read_image(path, "BGR")


def _read_gray(path: Path) -> np.ndarray:
    """An 8-bit gray (H, W) mask."""
    return read_image(path, "L")[..., 0]


def _clinicdb_sequence(stem: str) -> str:
    """The video sequence of a CVC-ClinicDB frame number (frames of one sequence are
    near-duplicates and must not be split between train and val)."""
    if not stem.isdigit():
        return stem
    return str(int(np.searchsorted(CLINICDB_SEQUENCE_STARTS, int(stem), side="right")))


class PolypPreparer(SemanticPreparer):
    """Kvasir-SEG or CVC-ClinicDB (``images/``, ``masks/`` at the source's top or in one
    sub-folder such as ``Kvasir-SEG/``) to ``size`` x ``size`` PNGs.

    Masks are thresholded at 127 (they are JPEG in both releases), after resizing the gray
    mask, which keeps the border where the JPEG put it. Frames without any polyp pixel are
    skipped and reported. CVC-ClinicDB is split by video sequence, Kvasir-SEG by frame.
    """

    name = "polyp"
    folder = "polyp_<name>"
    description = "Resize Kvasir-SEG or CVC-ClinicDB (images/, masks/) to square image/label PNGs"
    source_help = ("a folder or archive (.zip, .tar.gz, as downloaded) holding images/ and "
                   "masks/ (JPEG masks are thresholded at 127)")
    items = "image/mask pairs"
    val_fraction = 0.2
    val_help = "share of frames (ClinicDB: video sequences) in the validation split"

    def __init__(self, name: str = "kvasir", size: int = 224):
        if name not in NAMES:
            raise UserError(f"--name must be 'kvasir' or 'clinicdb', got {name!r}")
        super().__init__(name=name, size=size)
        self.dataset, self.size = name, size

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--name", required=True, choices=NAMES,
                            help="which data set (CVC-ClinicDB is split by video sequence)")
        parser.add_argument("--size", type=int, default=224, help="output side (default 224)")

    @classmethod
    def settings_from(cls, args) -> dict:
        return {"name": args.name, "size": args.size}

    def folder_name(self, source: Path) -> str:
        return f"polyp_{self.dataset}"

    def find_items(self, root: Path, run: Preparation) -> list[Path]:
        folder = folder_with(root, run.source, "images", "masks")
        self.masks = {p.stem: p for p in (folder / "masks").iterdir()
                      if p.suffix.lower() in IMAGE_EXTENSIONS}
        return sorted(p for p in (folder / "images").iterdir()
                      if p.suffix.lower() in IMAGE_EXTENSIONS)

    def convert_item(self, image_path: Path, run: Preparation) -> Converted:
        mask_path = self.masks.get(image_path.stem)
        if mask_path is None:
            raise SampleProblem(image_path, "missing_mask", "no mask with the same name in "
                                                            "masks/")
        image = read_sample_file(image_path, "unreadable_image", _read_bgr)
        mask = read_sample_file(mask_path, "unreadable_mask", _read_gray)
        if image.shape[:2] != mask.shape:
            raise SampleProblem(image_path, "size_mismatch",
                                f"image {image.shape[1]}x{image.shape[0]} and mask "
                                f"{mask.shape[1]}x{mask.shape[0]} differ in size")
        label = (resize_2d(mask, self.size, is_label=False) > 127).astype(np.uint8)
        if not label.any():
            raise SampleProblem(mask_path, "empty_mask", "empty mask: every frame must show a "
                                                         "polyp")
        out_name = f"{image_path.stem}.png"
        run.claim(out_name, image_path)
        write_png(run.path("images", out_name), resize_2d(image, self.size, is_label=False))
        write_png(run.path("labels", out_name), label)
        group = _clinicdb_sequence(image_path.stem) if self.dataset == "clinicdb" else out_name
        return Converted(group=group, samples=[out_name])


def prepare_polyp(source: PathLike, output_root: PathLike | None = None, *,
                  name: str = "kvasir", size: int = 224, val_fraction: float | None = None,
                  seed: int = 0, strict: bool = False, progress: bool = False
                  ) -> PreparationReport:
    """Kvasir-SEG or CVC-ClinicDB to ``<output_root>/polyp_<name>`` (default root
    ``$DETECTRON2_DATASETS``); see :class:`PolypPreparer`. ``val_fraction`` defaults to 0.2."""
    preparer = PolypPreparer(name, size)
    plan = SplitPlan.of(val_fraction, preparer.val_fraction, seed)
    root = Path(output_root) if output_root is not None else datasets_root()
    return preparer.prepare(source, root / preparer.folder_name(Path(source)), plan,
                            strict=strict, progress=progress)
