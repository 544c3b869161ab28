"""What the instance converters (:mod:`.dsb2018`, :mod:`.instances`) share: per-file problem
records, the report, the seeded train/val split (which the semantic preparers use too, so
equal settings pick the same validation images), COCO ids, and the written files."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from ..utils.errors import UserError
from ..utils.io import atomic_write_json
from .catalog import SPLITS
from .image_io import UnreadableImageError, decode_image_file
from .sources import display_name

__all__ = [
    "NUCLEUS_CATEGORY", "Problem", "ConversionReport", "SampleProblem", "Sample",
    "read_sample_file", "record_problem", "split_val_ids", "write_conversion",
]

logger = logging.getLogger(__name__)

NUCLEUS_CATEGORY = {"id": 1, "name": "nucleus"}

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One input file that was skipped (or, for ``empty_mask``, ignored), and why."""

    file: str
    kind: str
    reason: str


@dataclass
class ConversionReport:
    """What a conversion did; written to ``OUT/report.json``."""

    source: str
    val_fraction: float
    seed: int
    images_found: int = 0
    images_converted: int = 0
    annotations: int = 0
    split_images: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # One entry per image whose masks share pixels: {"image": id, "overlap_pixels": n}.
    overlaps: list[dict] = field(default_factory=list)
    # JPEG masks: read, but compression changed their pixels (thresholded at half range).
    lossy_masks: list[str] = field(default_factory=list)

    @property
    def images_skipped(self) -> int:
        return self.images_found - self.images_converted

    def problem_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.kind] = counts.get(problem.kind, 0) + 1
        return counts

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(images_skipped=self.images_skipped, problem_counts=self.problem_counts(),
                    images_with_overlaps=len(self.overlaps))
        return data


class SampleProblem(Exception):
    """Raised inside the per-image conversion; becomes a :class:`Problem`, and the image is
    skipped. A file that does not decode has the reader's
    :class:`~maskrcnn_pp.data.image_io.UnreadableImageError` as its ``__cause__``."""

    def __init__(self, path: Path, kind: str, reason: str):
        super().__init__(reason)
        self.path, self.kind, self.reason = path, kind, reason


@dataclass
class Sample:
    """One converted image and its annotations (COCO ids come at the end)."""

    image_id: str
    height: int
    width: int
    annotations: list[dict] = field(default_factory=list)
    empty_masks: list[Path] = field(default_factory=list)
    lossy_masks: list[Path] = field(default_factory=list)
    overlap_pixels: int = 0
    coco_id: int = 0


def read_sample_file(path: Path, kind: str,
                     read: Callable[[Path], T] = decode_image_file) -> T:
    """``read(path)`` (by default the file's pixels as stored, RGB(A) order), or
    :class:`SampleProblem` of ``kind`` with the reader's reason."""
    try:
        return read(path)
    except UnreadableImageError as err:
        raise SampleProblem(path, kind, err.reason) from err


def record_problem(report: ConversionReport, root: Path, problem: SampleProblem) -> None:
    """Log and keep a problem; files inside an archive are named ``ARCHIVE:member/path``."""
    name = display_name(problem.path, root, Path(report.source))
    report.problems.append(Problem(file=name, kind=problem.kind, reason=problem.reason))
    action = "ignored" if problem.kind == "empty_mask" else "skipped"
    logger.warning("%s %s: %s", action, name, problem.reason)


def split_val_ids(image_ids: Sequence[str], val_fraction: float, seed: int) -> set:
    """A seeded random ``val_fraction`` of the ids; independent of the order they were found."""
    ordered = sorted(image_ids)
    count = int(round(val_fraction * len(ordered)))
    chosen = np.random.default_rng(seed).permutation(len(ordered))[:count]
    return {ordered[i] for i in chosen}


def _assign_coco_ids(samples: list[Sample]) -> None:
    """Integer ids unique across both splits, in image-id order, so the files can be merged."""
    samples.sort(key=lambda s: s.image_id)
    next_ann_id = 1
    for number, sample in enumerate(samples, start=1):
        sample.coco_id = number
        for annotation in sample.annotations:
            annotation["id"], annotation["image_id"] = next_ann_id, number
            next_ann_id += 1


def write_conversion(samples: list[Sample], report: ConversionReport, out: Path, strict: bool,
                     coco_dict: Callable[[list[Sample]], dict]) -> ConversionReport:
    """The end every instance converter shares: COCO ids, the seeded train/val split,
    ``report.json``, then (unless ``strict`` and something was skipped) one COCO file per
    split made by ``coco_dict``."""
    _assign_coco_ids(samples)
    val_ids = split_val_ids([s.image_id for s in samples], report.val_fraction, report.seed)
    splits = {split: [s for s in samples if (s.image_id in val_ids) == (split == "val")]
              for split in SPLITS}
    report.images_converted = len(samples)
    report.annotations = sum(len(s.annotations) for s in samples)
    report.split_images = {split: len(chosen) for split, chosen in splits.items()}
    if report.lossy_masks:
        logger.warning("%d JPEG mask(s) are lossy: thresholded at half range, listed in %s",
                       len(report.lossy_masks), out / "report.json")
    atomic_write_json(out / "report.json", report.to_dict(), indent=2)
    if strict and report.problems:
        for split in SPLITS:  # an earlier run's annotations must not pass for this one's
            (out / "annotations" / f"instances_{split}.json").unlink(missing_ok=True)
        raise UserError(f"{len(report.problems)} problem(s) in {report.source} (--strict); "
                        f"annotations not written, see {out / 'report.json'}")
    for split, chosen in splits.items():
        atomic_write_json(out / "annotations" / f"instances_{split}.json", coco_dict(chosen))
    return report
