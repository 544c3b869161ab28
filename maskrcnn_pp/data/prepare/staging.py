"""What every semantic preparer shares: the staging folder that is swapped in whole, the
split by group, ``report.json``, and the small readers and writers of its samples.

A preparation writes into a temporary folder and swaps it in whole, so a failed run leaves
the previous data set untouched. Splits are made by group (source image, CT scan, video
sequence) so that near-identical samples never sit on both sides.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from ...utils.errors import UserError
from ...utils.io import atomic_write_json
from ..catalog import SPLITS, SemanticDataError, datasets_root
from ..conversion import split_val_ids
from ..image_io import Intensity, UnreadableImageError, normalize_intensity, read_nifti
from ..sources import display_name

__all__ = [
    "Preparation", "check_source", "folder_with", "write_png", "resize_2d", "hu_window",
    "read_nifti_pair", "iter_report_lines",
]


class Preparation:
    """One preparation run: a staging folder, the report, and the split by group.

    Samples are written to ``staging/train`` (see :meth:`path`) and recorded with their
    group; :meth:`finish` moves the groups chosen for validation and writes
    ``report.json``. Groups are drawn among the usable ones only, the way the DSB2018
    converter draws its images, so equal settings give the instance and the semantic nuclei
    data sets the same validation images. Leaving the ``with`` block normally swaps the
    staging folder in for ``<root>/<folder>``; an error leaves the old one untouched.
    """

    def __init__(self, output_root: Path | None, folder: str, source: Path, *,
                 extracted_to: Path, val_fraction: float, seed: int, **settings):
        if not 0 <= val_fraction < 1:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(output_root) if output_root is not None else datasets_root()
        self.folder = folder
        self.source, self.extracted_to = Path(source), Path(extracted_to)
        self.val_fraction, self.seed = val_fraction, seed
        self.sources_used = 0
        self.groups: dict[str, list[str]] = {}
        self.report: dict = {"dataset": folder, "source": str(source),
                             "settings": dict(settings, val_fraction=val_fraction, seed=seed),
                             "samples": {}, "sources_used": 0, "skipped": [], "warnings": []}

    def __enter__(self) -> Preparation:
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.folder}.", dir=self.root))
        self.staging.chmod(0o755)  # mkdtemp makes it private; the data set is not
        for split in SPLITS:
            for kind in ("images", "labels"):
                (self.staging / split / kind).mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                final = self.root / self.folder
                old = self.root / f".{self.folder}.old"
                shutil.rmtree(old, ignore_errors=True)
                if final.exists():
                    final.replace(old)
                self.staging.replace(final)
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def skip(self, file: Path, reason: str) -> None:
        self.report["skipped"].append({"file": self._name(file), "reason": reason})

    def warn(self, file: Path, reason: str) -> None:
        self.report["warnings"].append({"file": self._name(file), "reason": reason})

    def read(self, reader: Callable[[Path], np.ndarray], file: Path) -> np.ndarray | None:
        """``reader(file)``, or None after reporting the file as unreadable."""
        try:
            return reader(file)
        except UnreadableImageError as err:
            self.skip(file, err.reason)
            return None

    def _name(self, file: Path) -> str:
        return display_name(file, self.extracted_to, self.source)

    def path(self, kind: str, name: str) -> Path:
        """Where to write sample ``name`` (``kind`` "images" or "labels") before the split."""
        return self.staging / "train" / kind / name

    def add(self, group: str, name: str) -> None:
        self.groups.setdefault(group, []).append(name)

    def finish(self, what: str) -> dict:
        """Split, write ``report.json`` and return the report; no usable source is an error."""
        if self.sources_used == 0:
            reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in self.report["skipped"][:3])
            raise SemanticDataError(f"{self.report['source']}: no usable {what} found"
                                    + (f" ({reasons})" if reasons else ""))
        val = split_val_ids(sorted(self.groups), self.val_fraction, self.seed)
        counts = dict.fromkeys(SPLITS, 0)
        for group, names in self.groups.items():
            split = "val" if group in val else "train"
            counts[split] += len(names)
            for name in names if split == "val" else []:
                for kind in ("images", "labels"):
                    self.path(kind, name).replace(self.staging / "val" / kind / name)
        self.report.update(samples=counts, sources_used=self.sources_used)
        atomic_write_json(self.staging / "report.json", self.report, indent=2)
        return self.report


def check_source(source: Path, what: str) -> Path:
    """``source`` as a Path; a missing one is a :class:`UserError` saying what was expected."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"source {source} does not exist (expected {what})")
    return source


def folder_with(root: Path, source: Path, *names: str) -> Path:
    """The one folder at or under ``root`` that holds all the sub-folders ``names``
    (an archive usually wraps the data set in a top folder such as ``Kvasir-SEG/``)."""
    def holds(folder: Path) -> bool:
        return all((folder / n).is_dir() for n in names)

    if holds(root):
        return root
    found = sorted({d.parent for d in root.rglob(names[0]) if d.is_dir() and holds(d.parent)})
    wanted = " and ".join(f"{n}/" for n in names)
    if not found:
        raise UserError(f"{source}: expected the folders {wanted} (at its top or in one "
                        "sub-folder)")
    if len(found) > 1:
        places = ", ".join(display_name(f, root, source) for f in found[:4])
        raise UserError(f"{source}: several folders hold {wanted} ({places}); point "
                        "--source at one of them")
    return found[0]


def write_png(path: Path, array: np.ndarray) -> None:
    """PNG of a gray (H, W) or BGR (H, W, 3) uint8 array (into a staging folder, which is
    what makes the output atomic)."""
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def resize_2d(array: np.ndarray, size: int, is_label: bool) -> np.ndarray:
    """``size`` x ``size``: nearest for labels, area when shrinking an image, else linear."""
    if array.shape[:2] == (size, size):
        return array
    if is_label:
        return cv2.resize(array, (size, size), interpolation=cv2.INTER_NEAREST)
    shrink = min(array.shape[:2]) > size
    return cv2.resize(array, (size, size),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def hu_window(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip Hounsfield units to ``[low, high]`` and map them linearly to uint8 0..255: the
    "range" intensity mode of the one image path, with an error that names the window."""
    if not high > low:
        raise UserError(f"HU window needs low < high, got [{low}, {high}]")
    return normalize_intensity(np.asarray(hu), Intensity("range", float(low), float(high)))


def read_nifti_pair(image_path: Path, label_path: Path, prep: Preparation):
    """``(image, label, image affine)``, or None after reporting an unreadable file or a
    shape mismatch (the item is skipped, the preparation goes on)."""
    try:
        image, affine = read_nifti(image_path)
        label, _ = read_nifti(label_path)
    except UnreadableImageError as err:
        which = "" if err.path == Path(image_path) else f"label {err.path.name}: "
        prep.skip(image_path, which + err.reason)
        return None
    if image.shape != label.shape:
        prep.skip(image_path, f"image {image.shape} and label {label.shape} differ in shape")
        return None
    return image, label, affine


def iter_report_lines(report: dict) -> Iterable[str]:
    """Human summary of a preparation report, for the prepare CLIs."""
    samples = report["samples"]
    yield (f"{report['dataset']}: {report['sources_used']} source(s) used, "
           f"{samples['train']} train / {samples['val']} val samples")
    for item in report["skipped"]:
        yield f"skipped {item['file']}: {item['reason']}"
    if report["warnings"]:
        yield f"{len(report['warnings'])} warning(s), see report.json"
