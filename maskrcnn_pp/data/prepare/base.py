"""The one framework of every data preparer (``datasets/prepare_*.py``).

A preparer is a subclass of :class:`~.instance_output.InstancePreparer` (writes COCO
instance JSON) or :class:`~.semantic_output.SemanticPreparer` (writes image/label
folders) that says what it is (``name``, ``folder``, its words) and does two things:
:meth:`Preparer.find_items` lists what to convert in the source, and
:meth:`Preparer.convert_item` converts one item, raising :class:`SampleProblem` to skip it.
Everything else is done here, once, for all of them: the source as a folder or archive,
the progress bar, the split (:class:`SplitPlan`), ``report.json`` with the same keys
everywhere (:class:`PreparationReport`), ``--strict``, and the staging folder that replaces
the data set folder whole, only when the run succeeds. The command line is
:mod:`maskrcnn_pp.cli.prepare`. docs/architecture.md ("Adding a data preparer") walks
through a new one.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import cv2
import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from ...utils.errors import UserError
from ...utils.io import PathLike, atomic_write_json
from ...utils.progress import ProgressBar
from ..catalog import SPLITS
from ..image_io import UnreadableImageError, decode_image_file
from ..sources import display_name, source_root
from ..validation import read_json

__all__ = [
    "Problem", "SampleProblem", "read_sample_file", "write_png", "Converted",
    "PreparationReport", "SplitPlan", "split_val_ids", "check_val_fraction", "Preparation",
    "Preparer", "REPORT",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

REPORT = "report.json"
SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Problem:
    """A file and why it is in the report: skipped or left out (``problems``, which
    ``--strict`` refuses), or kept but worth knowing (``warnings``)."""

    file: str
    kind: str
    reason: str


class SampleProblem(Exception):
    """Raised while converting one item: the item is skipped and reported by file name.
    A file that does not decode has the reader's
    :class:`~maskrcnn_pp.data.image_io.UnreadableImageError` as its ``__cause__``."""

    def __init__(self, path: Path, kind: str, reason: str):
        super().__init__(reason)
        self.path, self.kind, self.reason = Path(path), kind, reason


def read_sample_file(path: Path, kind: str,
                     read: Callable[[Path], T] = decode_image_file) -> T:
    """``read(path)`` (by default the file's pixels as stored, RGB(A) order), or
    :class:`SampleProblem` of ``kind`` with the reader's reason."""
    try:
        return read(path)
    except UnreadableImageError as err:
        raise SampleProblem(path, kind, err.reason) from err


def write_png(path: Path, array: np.ndarray) -> None:
    """PNG of a gray (H, W), BGR (H, W, 3) or BGRA array, streamed to ``path`` (in a staging
    folder, which is what makes the data set appear whole or not at all)."""
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


@dataclass
class Converted:
    """What :meth:`Preparer.convert_item` made of one item: the group it is split with
    (image, CT scan, video sequence: near-identical samples never sit on both sides) and
    its samples, in the form the output kind writes."""

    group: str
    samples: list


@dataclass
class PreparationReport:
    """What a preparation did; ``OUT/report.json`` (:meth:`to_dict`) has the same keys for
    every preparer. ``samples`` counts what each split holds (images, patches, slices or
    crops), ``objects`` the instance annotations (None for semantic labels)."""

    preparer: str
    source: str
    output: str
    settings: dict
    items_found: int = 0
    items_converted: int = 0
    samples: dict[str, int] = field(default_factory=dict)
    objects: int | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def items_skipped(self) -> int:
        return self.items_found - self.items_converted

    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(problem.kind for problem in self.problems))

    def to_dict(self) -> dict:
        return {**asdict(self), "items_skipped": self.items_skipped,
                "problem_counts": self.problem_counts()}


def check_val_fraction(value: float) -> float:
    """The one check of ``--val-fraction`` (``val_fraction``): a number in [0, 1)."""
    if not 0 <= value < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {value}")
    return value


def split_val_ids(ids: Sequence[str], val_fraction: float, seed: int,
                  keep_in_train: frozenset[str] = frozenset()) -> set[str]:
    """``round(val_fraction * len(ids))`` ids drawn with ``seed`` among those not in
    ``keep_in_train``; independent of the order the ids were found in.

    Every preparer splits this way, so equal settings give the instance and the semantic
    nuclei data sets the same validation images.
    """
    ordered = sorted(ids)
    count = int(round(val_fraction * len(ordered)))
    candidates = [i for i in ordered if i not in keep_in_train]
    if count > len(candidates):
        raise UserError(f"cannot draw {count} validation items from the {len(candidates)} "
                        "that --keep-in-train leaves")
    chosen = np.random.default_rng(seed).permutation(len(candidates))[:count]
    return {candidates[i] for i in chosen}


@dataclass(frozen=True)
class SplitPlan:
    """Which split each converted group goes to: a seeded ``val_fraction`` of all groups
    for validation, drawn among those ``keep_in_train`` does not name, the rest for
    training; or every group in the one named ``split`` (a set for evaluation only)."""

    val_fraction: float = 0.1
    seed: int = 0
    split: str | None = None
    keep_in_train: Path | None = None
    kept: frozenset[str] = frozenset()

    @classmethod
    def of(cls, val_fraction: float | None, default_val_fraction: float, seed: int = 0,
           split: str | None = None, keep_in_train: PathLike | None = None) -> SplitPlan:
        """A checked plan; ``val_fraction`` None means ``default_val_fraction``. The
        ``keep_in_train`` COCO file is read now, before any slow work."""
        if split is not None:
            if not SPLIT_NAME.fullmatch(split):
                raise UserError(f"--split must be a lower-case name (letters, digits, _), "
                                f"got {split!r}")
            if val_fraction is not None or keep_in_train is not None:
                raise UserError("--split puts every item in one split: it excludes "
                                "--val-fraction and --keep-in-train")
            return cls(0.0, seed, split)
        fraction = check_val_fraction(default_val_fraction if val_fraction is None
                                      else val_fraction)
        if keep_in_train is None:
            return cls(fraction, seed)
        return cls(fraction, seed, None, Path(keep_in_train), _image_stems(keep_in_train))

    @property
    def splits(self) -> tuple[str, ...]:
        return (self.split,) if self.split else SPLITS

    def settings(self) -> dict:
        return {"val_fraction": self.val_fraction, "seed": self.seed, "split": self.split,
                "keep_in_train": None if self.keep_in_train is None else str(self.keep_in_train)}

    def assign(self, groups: Sequence[str], items: str) -> dict[str, str]:
        """``{group: split}``; ``items`` names what the groups are, for messages."""
        if self.split:
            return dict.fromkeys(groups, self.split)
        kept = self.kept & set(groups)
        if self.keep_in_train is not None:
            if not kept:
                raise UserError(f"--keep-in-train {self.keep_in_train}: none of its "
                                f"{len(self.kept)} images is among the {len(groups)} "
                                f"converted {items}")
            logger.info("--keep-in-train: %d of the %d images of %s stay in train",
                        len(kept), len(self.kept), self.keep_in_train)
        val = split_val_ids(groups, self.val_fraction, self.seed, frozenset(kept))
        return {group: "val" if group in val else "train" for group in groups}


def _image_stems(coco_file: PathLike) -> frozenset[str]:
    """The image names (file names without suffix) of a COCO instances file."""
    data = read_json(coco_file)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(
            isinstance(image, dict) and isinstance(image.get("file_name"), str)
            for image in images):
        raise UserError(f"--keep-in-train {coco_file}: not a COCO instances file (expected "
                        "\"images\", each with a \"file_name\")")
    return frozenset(Path(image["file_name"]).stem for image in images)


def _looks_prepared(folder: Path) -> bool:
    """Whether ``folder`` holds what a preparer (of this version or an earlier one) wrote."""
    return ((folder / REPORT).is_file() or any((folder / "annotations").glob("instances_*.json"))
            or any((folder / split / "labels").is_dir() for split in SPLITS))


def check_replaceable(out: Path, source: Path) -> None:
    """``out`` may be replaced whole: a folder (or nothing yet) that does not hold the
    source and is empty or a data set a preparer wrote (not e.g. the data sets root)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT {out}: is a file, expected a folder")
    resolved, source_resolved = out.resolve(), source.resolve()
    if resolved == source_resolved or resolved in source_resolved.parents:
        raise UserError(f"OUT {out}: holds the source {source}; choose another folder "
                        "(OUT is replaced whole)")
    if out.is_dir() and any(out.iterdir()) and not _looks_prepared(out):
        raise UserError(f"OUT {out}: holds files that no preparer wrote (no {REPORT}); "
                        "choose a new or empty folder (OUT is replaced whole)")


class Preparation:
    """One run: the staging folder beside ``out`` that replaces it whole at the end, the
    report, and the names of files in it (``ARCHIVE:member`` inside an archive).

    Problems and warnings met while an item converts are kept only if it converts: a
    skipped item is reported once, by the problem that stopped it.
    """

    def __init__(self, preparer: Preparer, source: Path, extracted_to: Path, out: Path,
                 report: PreparationReport):
        self.preparer, self.source, self.extracted_to = preparer, source, extracted_to
        self.out, self.report = out, report
        self.claimed: set[str] = set()
        self._pending: list[tuple[str, Problem]] = []
        self._made: set[Path] = set()
        self._replaced = False

    def __enter__(self) -> Preparation:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self.staging.chmod(0o755)  # mkdtemp makes it private; the data set is not
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self._replaced:
                self._replace_out()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _replace_out(self) -> None:
        old = self.out.parent / f".{self.out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.out.exists():
            self.out.replace(old)
        self.staging.replace(self.out)
        self._replaced = True
        shutil.rmtree(old, ignore_errors=True)

    def name_of(self, path: Path) -> str:
        return display_name(path, self.extracted_to, self.source)

    def path(self, kind: str, name: str) -> Path:
        """Where the preparer writes its output file ``name`` of ``kind`` ("images",
        "labels") in the staging folder."""
        path = self.preparer.staged_path(self.staging, kind, name)
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        return path

    def claim(self, name: str, path: Path) -> None:
        """Reserve output ``name`` for the item at ``path``: a second item that would write
        the same output is skipped instead of overwriting the first."""
        if name in self.claimed:
            raise SampleProblem(path, "duplicate_id", f"another item is already written as "
                                                      f"{name!r}")
        self.claimed.add(name)

    def ignore(self, path: Path, kind: str, reason: str) -> None:
        """A file left out of an item that is kept (an empty mask): a problem."""
        self._pending.append(("ignored", Problem(self.name_of(path), kind, reason)))

    def warn(self, path: Path, kind: str, reason: str) -> None:
        """A file kept as it is but worth knowing (a lossy mask, overlapping masks)."""
        self._pending.append(("warning", Problem(self.name_of(path), kind, reason)))

    def skip(self, problem: SampleProblem) -> None:
        self._pending.clear()
        self._add_problem("skipped", Problem(self.name_of(problem.path), problem.kind,
                                             problem.reason))

    def keep(self) -> None:
        for action, problem in self._pending:
            if action == "warning":
                self.report.warnings.append(problem)
            else:
                self._add_problem(action, problem)
        self._pending.clear()

    def _add_problem(self, action: str, problem: Problem) -> None:
        self.report.problems.append(problem)
        logger.warning("%s %s: %s", action, problem.file, problem.reason)

    def finish(self, strict: bool) -> None:
        """Write ``report.json``; with ``strict`` and a problem, OUT becomes a folder that
        holds only the report (no data set, old or new, to be mistaken for this run's)."""
        for kind, count in Counter(w.kind for w in self.report.warnings).items():
            first = next(w for w in self.report.warnings if w.kind == kind)
            logger.warning("%d warning(s) %s, e.g. %s: %s (all in %s)", count, kind,
                           first.file, first.reason, self.out / REPORT)
        atomic_write_json(self.staging / REPORT, self.report.to_dict(), indent=2)
        if strict and self.report.problems:
            for entry in self.staging.iterdir():
                if entry.name != REPORT:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            self._replace_out()
            raise UserError(f"{len(self.report.problems)} problem(s) in {self.source} "
                            f"(--strict): no data set written, see {self.out / REPORT}")


class Preparer:
    """Base of every data preparer; see the module docstring. Subclasses set the class
    attributes, take their own settings as keyword arguments of ``__init__`` (checked
    there), and implement :meth:`find_items` and :meth:`convert_item`; the output kind
    (:class:`~.instance_output.InstancePreparer`,
    :class:`~.semantic_output.SemanticPreparer`) implements the rest."""

    name: ClassVar[str]            # tool and progress-bar name, "preparer" in report.json
    folder: ClassVar[str]          # default data set folder under $DETECTRON2_DATASETS, as
                                   # --help says it (folder_name() may derive it)
    description: ClassVar[str]     # one line: what the tool does
    source_help: ClassVar[str]     # what SRC is (also said when it does not exist)
    items: ClassVar[str] = "images"    # what find_items finds, plural
    samples: ClassVar[str] = "images"  # what the data set holds, plural
    val_fraction: ClassVar[float] = 0.1
    val_help: ClassVar[str] = "share of images in the validation split"

    def __init__(self, **settings: Any):
        self.settings = settings

    @classmethod
    def add_arguments(cls, parser) -> None:
        """The preparer's own command-line flags (none by default)."""

    @classmethod
    def settings_from(cls, args) -> dict:
        """The keyword arguments of ``__init__`` from the parsed command line."""
        return {}

    def folder_name(self, source: Path) -> str:
        """The default data set folder's name (under ``$DETECTRON2_DATASETS``)."""
        return self.folder

    def find_items(self, root: Path, run: Preparation) -> list:
        """What to convert under ``root`` (the source folder, or the archive extracted), in
        a fixed order; a source that is not of the expected layout is a UserError."""
        raise NotImplementedError

    def convert_item(self, item: Any, run: Preparation) -> Converted:
        """Convert one item, writing its outputs at ``run.path(...)``; raise
        :class:`SampleProblem` to skip it."""
        raise NotImplementedError

    def check_plan(self, plan: SplitPlan) -> None:
        """Refuse a plan the output kind cannot register (none by default)."""

    def staged_path(self, staging: Path, kind: str, name: str) -> Path:
        raise NotImplementedError

    def write_splits(self, staging: Path, splits: dict[str, list[Converted]],
                     report: PreparationReport) -> None:
        """Write each split from the converted items; set ``report.samples`` (and
        ``report.objects``)."""
        raise NotImplementedError

    def prepare(self, source: PathLike, out: PathLike, plan: SplitPlan, *,
                strict: bool = False, progress: bool = True) -> PreparationReport:
        """Convert ``source`` (folder or archive) into the data set folder ``out``, which
        is replaced whole when the run succeeds and left as it was when it fails (with
        ``strict`` and a problem, it then holds only ``report.json``)."""
        self.check_plan(plan)
        source = Path(source)
        if not source.exists():
            raise UserError(f"source {source} does not exist (expected {self.source_help})")
        out = Path(out)
        out = out.resolve() if out.is_symlink() else out
        check_replaceable(out, source)
        report = PreparationReport(self.name, str(source), str(out),
                                   {**self.settings, **plan.settings(), "strict": strict})
        with source_root(source, scratch=out.parent) as root, \
                Preparation(self, source, root, out, report) as run:
            items = self.find_items(root, run)
            report.items_found = len(items)
            converted = []
            with logging_redirect_tqdm():
                for item in ProgressBar(items, desc=self.name, disable=not progress or not items):
                    try:
                        converted.append(self.convert_item(item, run))
                    except SampleProblem as problem:
                        run.skip(problem)
                        continue
                    run.keep()
            if not converted:
                reasons = "; ".join(f"{p.file}: {p.reason}" for p in report.problems[:3])
                raise UserError(f"{source}: no usable {self.items} found"
                                + (f" ({reasons})" if reasons else ""))
            assignment = plan.assign(sorted({c.group for c in converted}), self.items)
            self.write_splits(run.staging, {split: [c for c in converted
                                                    if assignment[c.group] == split]
                                            for split in plan.splits}, report)
            report.items_converted = len(converted)
            run.finish(strict)
        return report

    def summary(self, report: PreparationReport) -> str:
        """One line for the console: what was converted, where, how it was split."""
        counts = " / ".join(f"{count} {split}" for split, count in report.samples.items())
        objects = "" if report.objects is None else f", {report.objects} objects"
        warnings = f", {len(report.warnings)} warning(s)" if report.warnings else ""
        return (f"{self.name}: {report.items_converted} of {report.items_found} {self.items} "
                f"converted{objects} -> {report.output}: {counts} {self.samples}; "
                f"{len(report.problems)} problem(s){warnings}, see {REPORT}")
