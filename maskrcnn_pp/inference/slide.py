"""Whole-slide prediction: a slide cut into blocks, each run through a predictor, in bounded
memory, resumable, on one process or a dask cluster (``predictor.predict_slide``,
``tools/predict.py SLIDES...``).

1. **Scale.** With ``INPUT.PIXEL_SIZE_UM`` (the pixel size the model was trained at) the
   pyramid level closest to it, but not coarser, is read and resampled, so nuclei reach the
   network at their trained size (:func:`choose_scale`). The blocks live on that
   *processing grid*; every output is in level-0 pixels.
2. **Tissue.** An Otsu threshold on a thumbnail (or a mask image given by the user) says
   which blocks hold tissue; the others are never read or run (:func:`otsu_tissue_mask`).
3. **Blocks.** The processing grid is cut into blocks (default 4096 pixels a side). Each is
   read with a context margin around it (at least the largest nucleus; default the
   predictor's tile overlap) and run through the predictor's own ``prepare`` -> ``run``
   (tiles, seam merge, one instance per pixel). A block keeps the nuclei whose box centre
   lies in it, and only those: the centre is the same whichever block sees a nucleus whole,
   and a nucleus cut by a context edge has its centre outside the block, so every nucleus
   is kept by exactly one block, whole, and no global stitching pass is needed.
4. **Outputs** are written block by block in block order (:mod:`.slide_outputs`), so ids are
   1, 2, ... over the slide and the same whatever order blocks finish in. A block that
   finishes before its turn waits on disk (``progress/spool``), not in memory.
5. **Resume.** ``progress/blocks.jsonl`` records each written block with the byte offsets of
   the streamed files; a killed run restarted with ``resume=True`` cuts the files back to
   the last record, clears half-written label pixels, takes the spooled blocks as done, and
   runs only the rest: it loses at most the blocks in flight and repeats none, and its
   outputs are those of an uninterrupted run.
6. **Workers.** ``workers=N`` starts a ``dask.distributed.LocalCluster`` of N processes;
   ``client=`` uses an existing cluster (``Client("tcp://host:port")``). Each worker builds
   the predictor once (from a loader, or the predictor sent once) and opens the slide
   itself, so only block results travel. Outputs are those of one process.

A block whose pixels cannot be decoded (a corrupt tile) is skipped, named with its block and
listed in ``slide.json``; ``strict=True`` stops instead.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import cv2
import numpy as np

from ..data.image_io import Intensity, UnreadableImageError, array_to_rgb8, read_label
from ..data.slide import Slide, SlideRegionError, open_slide, resize
from ..utils.errors import UserError
from ..utils.io import (
    PathLike,
    atomic_write_json,
    atomic_write_stream,
    check_output_dir,
    cut_json_lines,
    fsync_folder,
)
from ..utils.progress import ProgressBar
from .batch import check_resumable, run_settings
from .outputs import WriteOptions
from .predictor import DegenerateImageError, Predictor
from .slide_outputs import (
    COCO_NAME,
    GEOJSON_NAME,
    LABELS_NAME,
    PARTIAL,
    TABLE_NAME,
    SlideInstance,
    SlideOutputs,
    write_overview,
)

__all__ = ["predict_slide", "SlideRun", "SlideScale", "Block", "choose_scale",
           "otsu_tissue_mask", "block_grid", "read_processing_region", "DEFAULT_BLOCK_SIZE",
           "SUMMARY_NAME", "PROGRESS_NAME"]

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 4096
# The smallest block side and context margin accepted (processing pixels).
MIN_BLOCK_SIZE = 64
# A pyramid level within this fraction of the wanted scale is used without resampling.
SCALE_TOLERANCE = 0.01
# The thumbnail the tissue mask, the slide-wide intensity range and the overview come from.
THUMBNAIL_SIDE = 1024
SUMMARY_NAME = "slide.json"
OVERVIEW_NAME = "overview.png"
PROGRESS_NAME = "progress"
RUN_RECORD = "run.json"
BLOCKS_RECORD = "blocks.jsonl"
SPOOL = "spool"
RECORD_VERSION = 1
# Blocks submitted to a cluster per worker thread, so results stream back in bounded memory.
IN_FLIGHT_PER_THREAD = 2
# Slides a worker keeps open at once.
OPEN_SLIDES = 4

PredictorOrLoader = Union[Predictor, Callable[[], Predictor]]


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class SlideScale:
    """The processing grid: pyramid ``level`` read, ``level_pixels`` of it per processing
    pixel (1: read as it is), ``downsample`` level-0 pixels per processing pixel, and the
    grid's ``height`` x ``width``."""

    level: int
    level_pixels: float
    downsample: float
    height: int
    width: int


def choose_scale(slide: Slide, model_pixel_size_um: Optional[float],
                 slide_pixel_size_um: Optional[float] = None) -> SlideScale:
    """The processing grid that shows the model pixels of ``model_pixel_size_um`` (None:
    level 0 as it is): the coarsest level not coarser than that (so nothing is enlarged that
    a finer level holds), resampled unless it is within :data:`SCALE_TOLERANCE`.
    ``slide_pixel_size_um`` replaces the slide's own pixel size."""
    height0, width0 = slide.shape
    if model_pixel_size_um is None:
        return SlideScale(0, 1.0, 1.0, height0, width0)
    pixel_size = slide_pixel_size_um or slide.pixel_size_um
    if not pixel_size:
        raise UserError(f"{slide.path}: the slide does not say its pixel size (no OME "
                        "PhysicalSizeX, TIFF resolution or OpenSlide mpp), and "
                        f"INPUT.PIXEL_SIZE_UM {model_pixel_size_um} needs it to choose the "
                        "scale: give it (--slide-pixel-size UM), or unset INPUT.PIXEL_SIZE_UM "
                        "to use the pixels as they are")
    target = model_pixel_size_um / pixel_size
    usable = [i for i, lv in enumerate(slide.levels)
              if lv.downsample <= target * (1 + SCALE_TOLERANCE)] or [0]
    level = max(usable, key=lambda i: slide.levels[i].downsample)
    chosen = slide.levels[level]
    level_pixels = target / chosen.downsample
    if abs(level_pixels - 1) <= SCALE_TOLERANCE:
        return SlideScale(level, 1.0, chosen.downsample, chosen.height, chosen.width)
    return SlideScale(level, level_pixels, target, max(1, round(chosen.height / level_pixels)),
                      max(1, round(chosen.width / level_pixels)))


def read_processing_region(slide: Slide, scale: SlideScale, top: int, left: int,
                           bottom: int, right: int) -> np.ndarray:
    """Processing-grid pixels ``top:bottom, left:right`` (h, w, channels), read from the
    scale's level and resampled to the grid when it is not the level's own."""
    if scale.level_pixels == 1:
        return slide.read_region(scale.level, top, left, bottom - top, right - left)
    level = slide.levels[scale.level]
    s = scale.level_pixels
    row0 = min(int(top * s), level.height - 1)
    col0 = min(int(left * s), level.width - 1)
    row1 = max(min(math.ceil(bottom * s), level.height), row0 + 1)
    col1 = max(min(math.ceil(right * s), level.width), col0 + 1)
    region = slide.read_region(scale.level, row0, col0, row1 - row0, col1 - col0)
    return resize(region, bottom - top, right - left)


@dataclass(frozen=True)
class Block:
    """Rows ``top:bottom`` and columns ``left:right`` of the processing grid; ``index`` in
    row-major order over the slide's blocks."""

    index: int
    top: int
    left: int
    bottom: int
    right: int

    def context(self, margin: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The block grown by ``margin`` on every side, inside the grid."""
        return (max(self.top - margin, 0), max(self.left - margin, 0),
                min(self.bottom + margin, height), min(self.right + margin, width))


def block_grid(height: int, width: int, size: int) -> list[Block]:
    """Blocks of ``size`` squared covering the grid, row by row (the last ones smaller)."""
    columns = math.ceil(width / size)
    return [Block(row * columns + col, top, left, min(top + size, height),
                  min(left + size, width))
            for row, top in enumerate(range(0, height, size))
            for col, left in enumerate(range(0, width, size))]


def otsu_tissue_mask(thumbnail: np.ndarray) -> np.ndarray:
    """Where a slide thumbnail (h, w, channels) holds tissue: Otsu's threshold on its mean
    over channels, the side of the threshold that most of the border is on taken as
    background (bright on brightfield slides, dark on fluorescence ones). A thumbnail
    without contrast holds no tissue."""
    gray = thumbnail.astype(np.float32).mean(axis=2)
    finite = np.isfinite(gray)
    if not finite.any():
        return np.zeros(gray.shape, bool)
    low, high = float(gray[finite].min()), float(gray[finite].max())
    if high <= low:
        return np.zeros(gray.shape, bool)
    scaled = np.rint((np.where(finite, gray, low) - low) * (255 / (high - low)))
    gray8 = scaled.astype(np.uint8)
    threshold, _ = cv2.threshold(gray8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([gray8[0], gray8[-1], gray8[:, 0], gray8[:, -1]])
    if np.median(border) > threshold:
        return gray8 <= threshold
    return gray8 > threshold


def _mask_from_file(path: PathLike, shape0: tuple[int, int]) -> np.ndarray:
    """A user's tissue mask (any image; nonzero is tissue) of the slide's aspect ratio."""
    mask = read_label(path) != 0
    ratio = (shape0[0] / mask.shape[0]) / (shape0[1] / mask.shape[1])
    if abs(ratio - 1) > 0.02:
        raise UserError(f"tissue mask {path}: {mask.shape[0]} x {mask.shape[1]} pixels does "
                        f"not have the slide's aspect ratio ({shape0[0]} x {shape0[1]})")
    return mask


def _tissue_blocks(blocks: Sequence[Block], mask: np.ndarray, mask_downsample: tuple,
                   scale: SlideScale) -> list[Block]:
    """The blocks whose area holds tissue in ``mask`` (level-0 pixels per mask pixel
    ``mask_downsample``, rows and columns)."""
    kept = []
    for block in blocks:
        rows = [block.top * scale.downsample / mask_downsample[0],
                block.bottom * scale.downsample / mask_downsample[0]]
        cols = [block.left * scale.downsample / mask_downsample[1],
                block.right * scale.downsample / mask_downsample[1]]
        r0, c0 = int(rows[0]), int(cols[0])
        r1, c1 = max(math.ceil(rows[1]), r0 + 1), max(math.ceil(cols[1]), c0 + 1)
        if mask[r0:r1, c0:c1].any():
            kept.append(block)
    return kept


def _slide_intensity(thumbnail: np.ndarray, intensity: Intensity, dtype: np.dtype
                     ) -> Optional[Intensity]:
    """One intensity range for every block of a slide that is not 8-bit (a block's own
    percentiles would differ from its neighbours'): the thumbnail's. None: use the
    predictor's as it is (8-bit slides, or a fixed range)."""
    if dtype == np.uint8 or intensity.mode == "range":
        return None
    values = thumbnail[np.isfinite(thumbnail)] if thumbnail.dtype.kind == "f" else thumbnail
    if not values.size:
        return None
    if intensity.mode == "minmax":
        low, high = float(values.min()), float(values.max())
    else:
        low, high = (float(v) for v in np.percentile(values, [intensity.low, intensity.high]))
    return Intensity("range", low, high if high > low else low + 1)


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class SlideSource:
    """How a worker opens the slide itself."""

    path: str
    backend: str


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to predict one block."""

    source: SlideSource
    scale: SlideScale
    block: Block
    context: tuple[int, int, int, int]
    channel: Optional[int]
    intensity: Optional[Intensity]
    threads: Optional[int] = None

    def level0_box(self) -> tuple[int, int, int, int]:
        """The block's (top, left, bottom, right) in level-0 pixels."""
        return tuple(round(v * self.scale.downsample) for v in (
            self.block.top, self.block.left, self.block.bottom, self.block.right))

    def name(self) -> str:
        top, left, bottom, right = self.level0_box()
        return f"block {self.block.index} (level-0 rows {top}:{bottom}, columns {left}:{right})"


@dataclass
class BlockResult:
    """The nuclei a block keeps (processing-grid coordinates), or why it was skipped."""

    index: int
    instances: list[SlideInstance] = field(default_factory=list)
    error: Optional[str] = None

    def save(self, path: Path) -> None:
        """Spool the result to ``path`` (NumPy arrays only, written atomically)."""
        items = self.instances
        arrays = {
            "index": np.array(self.index), "error": np.array(self.error or ""),
            "skipped": np.array(self.error is not None),
            "boxes": np.array([[i.top, i.left, *i.mask.shape] for i in items],
                              np.int64).reshape(-1, 4),
            "scores": np.array([i.score for i in items], np.float64),
            "classes": np.array([i.category for i in items], np.int64),
            "masks": np.concatenate([i.mask.ravel() for i in items] or [np.zeros(0, bool)]),
            "values": (np.concatenate([i.values for i in items]) if items
                       else np.zeros((0, 1), np.uint8))}
        atomic_write_stream(path, lambda file: np.savez(file, **arrays))

    @classmethod
    def load(cls, path: Path) -> BlockResult:
        with np.load(path, allow_pickle=False) as data:
            if bool(data["skipped"]):
                return cls(int(data["index"]), error=str(data["error"]))
            instances, mask_at, value_at = [], 0, 0
            masks, values = data["masks"], data["values"]
            for (top, left, height, width), score, category in zip(
                    data["boxes"], data["scores"], data["classes"]):
                mask = masks[mask_at:mask_at + height * width].reshape(height, width)
                count = int(np.count_nonzero(mask))
                instances.append(SlideInstance(int(top), int(left), mask, float(score),
                                               int(category), values[value_at:value_at + count]))
                mask_at += height * width
                value_at += count
            return cls(int(data["index"]), instances)


def predict_block(slide: Slide, predictor: Predictor, job: BlockJob) -> BlockResult:
    """The nuclei of one block (those whose box centre lies in it), with the slide's pixel
    values under each mask; a block that cannot be read is returned with its error."""
    top, left, bottom, right = job.context
    try:
        pixels = read_processing_region(slide, job.scale, top, left, bottom, right)
    except SlideRegionError as err:
        return BlockResult(job.block.index, error=f"{job.name()}: {err}")
    if job.intensity is not None and predictor.intensity != job.intensity:
        predictor = copy.copy(predictor)
        predictor.intensity = job.intensity
    try:
        prepared = predictor.prepare(pixels, job.channel)
    except DegenerateImageError:
        return BlockResult(job.block.index)     # one value everywhere: no nucleus
    result = predictor.run(prepared)
    block = job.block
    kept = []
    for t, crop_left, crop, score, category in zip(result.tops, result.lefts, result.crops,
                                                   result.scores, result.classes):
        row = top + int(t) + (crop.shape[0] - 1) // 2
        col = left + int(crop_left) + (crop.shape[1] - 1) // 2
        if not (block.top <= row < block.bottom and block.left <= col < block.right):
            continue
        under = pixels[int(t):int(t) + crop.shape[0], int(crop_left):int(crop_left)
                       + crop.shape[1]]
        kept.append(SlideInstance(top + int(t), left + int(crop_left), crop, float(score),
                                  int(category), under[crop]))
    return BlockResult(block.index, kept)


_CACHE_LOCK = threading.Lock()
_WORKER_PREDICTORS: dict[str, Predictor] = {}
_WORKER_SLIDES: OrderedDict[SlideSource, Slide] = OrderedDict()


def _block_on_worker(job: BlockJob, predictor: PredictorOrLoader, token: str) -> BlockResult:
    """:func:`predict_block` in a dask worker: the predictor is built (or received) once
    per worker and the slide opened once, then kept for the next blocks."""
    with _CACHE_LOCK:
        if job.threads:
            import torch

            if torch.get_num_threads() != job.threads:
                torch.set_num_threads(job.threads)
        if not isinstance(predictor, Predictor):
            if token not in _WORKER_PREDICTORS:
                _WORKER_PREDICTORS[token] = predictor()
            predictor = _WORKER_PREDICTORS[token]
        slide = _WORKER_SLIDES.pop(job.source, None) or open_slide(job.source.path,
                                                                   job.source.backend)
        _WORKER_SLIDES[job.source] = slide
        while len(_WORKER_SLIDES) > OPEN_SLIDES:
            _WORKER_SLIDES.popitem(last=False)[1].close()
    return predict_block(slide, predictor, job)


def _run_jobs(jobs: Sequence[BlockJob], slide: Slide, local: Predictor,
              predictor: PredictorOrLoader, client: Any) -> Iterator[BlockResult]:
    """Block results as they finish: in this process one after the other, or on the
    cluster of ``client`` with a bounded number in flight."""
    if client is None:
        for job in jobs:
            yield predict_block(slide, local, job)
        return
    from distributed import as_completed

    token = uuid.uuid4().hex
    shipped = (predictor if not isinstance(predictor, Predictor)
               else client.scatter(predictor, broadcast=True, hash=False))
    window = IN_FLIGHT_PER_THREAD * max(1, sum(client.nthreads().values()))
    waiting = iter(jobs)
    running = as_completed()

    def submit_next() -> None:
        job = next(waiting, None)
        if job is not None:
            running.add(client.submit(_block_on_worker, job, shipped, token, pure=False))

    for _ in range(window):
        submit_next()
    try:
        for future in running:
            result = future.result()
            future.release()
            submit_next()
            yield result
    finally:
        for future in running.futures:
            future.cancel()


# --------------------------------------------------------------------------- the run


@dataclass
class SlideRun:
    """What :func:`predict_slide` did for one slide."""

    folder: Path
    instances: int = 0
    blocks: int = 0             # blocks of the slide
    tissue_blocks: int = 0      # blocks run (all with the tissue mask off)
    resumed_blocks: int = 0     # done by an earlier run
    skipped: list[str] = field(default_factory=list)   # blocks that could not be read
    already_done: bool = False
    summary: dict = field(default_factory=dict)


def _file_identity(path: PathLike) -> dict[str, Any]:
    stat = os.stat(path)
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def _earlier_outputs(folder: Path) -> list[Path]:
    names = (PROGRESS_NAME, SUMMARY_NAME, OVERVIEW_NAME, LABELS_NAME, GEOJSON_NAME,
             TABLE_NAME, COCO_NAME)
    candidates = [folder / n for n in names] + [folder / (n + PARTIAL) for n in names]
    return [p for p in candidates if p.exists()]


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


class _RunRecord:
    """``progress/``: the settings, one line per written block, and the spooled blocks."""

    def __init__(self, folder: Path):
        self.folder = folder / PROGRESS_NAME
        self.blocks_file = self.folder / BLOCKS_RECORD
        self.spool = self.folder / SPOOL

    def start(self, settings: dict) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / RUN_RECORD,
                          {"version": RECORD_VERSION, "settings": settings}, indent=1)
        self.blocks_file.write_bytes(b"")

    def check_settings(self, settings: dict) -> None:
        check_resumable(self.folder / RUN_RECORD, settings, version=RECORD_VERSION,
                        what="slide run", redo="the slide", folder=self.folder.parent)

    def written(self, order: Sequence[int]) -> list[dict]:
        """The records of written blocks, which are the first blocks of ``order``."""
        records = cut_json_lines(self.blocks_file)
        for position, record in enumerate(records):
            if not (isinstance(record, dict) and position < len(order)
                    and record.get("block") == order[position]
                    and isinstance(record.get("offsets"), dict)):
                raise UserError(f"--resume: {self.blocks_file} line {position + 1} is not "
                                "a record of the slide's next block; --overwrite predicts the "
                                "slide again")
        return records

    def spooled(self) -> set[int]:
        return {int(p.stem) for p in self.spool.glob("*.npz") if p.stem.isdigit()}

    def spool_path(self, index: int) -> Path:
        return self.spool / f"{index}.npz"

    def append(self, record: dict) -> None:
        with open(self.blocks_file, "a", encoding="utf-8") as lines:
            lines.write(json.dumps(record) + "\n")
            lines.flush()
            os.fsync(lines.fileno())


def _channel_names(slide: Slide) -> list[str]:
    return list("RGB") if slide.channels == 3 else [str(c) for c in range(slide.channels)]


def predict_slide(predictor: PredictorOrLoader, path: PathLike, output_dir: PathLike, *,
                  metadata: Any = None, block_size: int = DEFAULT_BLOCK_SIZE,
                  block_margin: Optional[int] = None,
                  tissue_mask: Union[bool, PathLike] = True,
                  slide_pixel_size_um: Optional[float] = None, channel: Optional[int] = None,
                  backend: str = "auto", coco: bool = False, overview: bool = True,
                  resume: bool = False, overwrite: bool = False, strict: bool = False,
                  client: Any = None, workers: Optional[int] = None,
                  worker_threads: Optional[int] = None, progress: bool = True) -> SlideRun:
    """Predict the nuclei of one whole slide into ``output_dir`` (see the module docstring
    and :mod:`.slide_outputs` for what is written).

    ``predictor``: an instance predictor (``load_predictor(...)``), or a picklable function
    that builds one, which each dask worker calls once. ``tissue_mask``: True (Otsu on a
    thumbnail), False (every block), or a mask image file. ``block_margin``: context around
    each block, at least the largest nucleus (processing pixels; default the predictor's
    tile overlap). ``slide_pixel_size_um`` replaces the slide's pixel size; ``channel``
    predicts on one channel. ``resume`` continues a killed run, ``overwrite`` replaces an
    earlier one (a folder holding one is refused otherwise); ``strict`` stops at a block
    that cannot be read instead of skipping it. ``workers`` starts a local dask cluster of
    that many processes; ``client`` runs on an existing one; ``worker_threads``: torch
    threads of each worker (default: the cores shared among ``workers``; dask's own
    setting, one, on a cluster).
    """
    local = predictor if isinstance(predictor, Predictor) else predictor()
    if local.kind != "instance":
        raise UserError("whole-slide prediction needs an instance model (Mask R-CNN++ or the "
                        f"baseline); this predictor is {local.kind}")
    if resume and overwrite:
        raise UserError("--resume continues an earlier run, --overwrite replaces it: give one")
    margin = local.tile_overlap if block_margin is None else block_margin
    if block_size < MIN_BLOCK_SIZE or margin < 0:
        raise UserError(f"block size must be at least {MIN_BLOCK_SIZE} and block margin at "
                        f"least 0, got {block_size} and {margin}")
    if slide_pixel_size_um is not None and not (0 < slide_pixel_size_um < math.inf):
        raise UserError(f"slide pixel size must be a positive number of micrometres, got "
                        f"{slide_pixel_size_um}")
    if workers is not None and client is None:
        with local_cluster(workers) as own_client:
            return predict_slide(
                predictor, path, output_dir, metadata=metadata, block_size=block_size,
                block_margin=block_margin, tissue_mask=tissue_mask,
                slide_pixel_size_um=slide_pixel_size_um, channel=channel, backend=backend,
                coco=coco, overview=overview, resume=resume, overwrite=overwrite,
                strict=strict, client=own_client, progress=progress,
                worker_threads=worker_threads or max(1, (os.cpu_count() or 1) // workers))
    with open_slide(path, backend) as slide:
        folder = check_output_dir(output_dir, "output folder")
        return _predict_open_slide(
            local, predictor, slide, folder, metadata=metadata, block_size=block_size,
            margin=margin, tissue_mask=tissue_mask, slide_pixel_size_um=slide_pixel_size_um,
            channel=channel, coco=coco, overview=overview, resume=resume,
            overwrite=overwrite, strict=strict, client=client, threads=worker_threads,
            progress=progress)


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A ``Client`` of a new local dask cluster of ``workers`` single-threaded processes,
    closed on leaving the ``with`` block."""
    from distributed import Client, LocalCluster

    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


def _predict_open_slide(local: Predictor, predictor: PredictorOrLoader, slide: Slide,
                        folder: Path, *, metadata, block_size, margin, tissue_mask,
                        slide_pixel_size_um, channel, coco, overview, resume, overwrite,
                        strict, client, threads, progress) -> SlideRun:
    model_pixel_size = local.cfg.INPUT.get("PIXEL_SIZE_UM") if local.cfg is not None else None
    scale = choose_scale(slide, model_pixel_size, slide_pixel_size_um)
    pixel_size = slide_pixel_size_um or slide.pixel_size_um
    if channel is not None and not 0 <= channel < slide.channels:
        raise UserError(f"{slide.path}: has no channel {channel}: it has {slide.channels}")
    thumbnail, thumbnail_downsample = slide.thumbnail(THUMBNAIL_SIDE)
    blocks = block_grid(scale.height, scale.width, block_size)
    if tissue_mask is True:
        mask = otsu_tissue_mask(thumbnail)
        grow = math.ceil(margin * scale.downsample / thumbnail_downsample) + 1
        mask = cv2.dilate(mask.astype(np.uint8), np.ones((2 * grow + 1,) * 2, np.uint8)) > 0
        mask_downsample = (slide.shape[0] / mask.shape[0], slide.shape[1] / mask.shape[1])
        run_blocks = _tissue_blocks(blocks, mask, mask_downsample, scale)
        mask_setting: Any = "otsu"
    elif tissue_mask is False:
        run_blocks, mask_setting = blocks, "none"
    else:
        try:
            mask = _mask_from_file(tissue_mask, slide.shape)
        except UnreadableImageError as err:
            raise UserError(f"tissue mask {err}") from None
        mask_downsample = (slide.shape[0] / mask.shape[0], slide.shape[1] / mask.shape[1])
        run_blocks = _tissue_blocks(blocks, mask, mask_downsample, scale)
        mask_setting = _file_identity(tissue_mask)
    intensity = _slide_intensity(thumbnail, local.intensity, slide.dtype)
    settings = {**run_settings(local, WriteOptions(), None),
                "slide": _file_identity(slide.path), "slide.backend": slide.backend,
                "slide.pixel_size_um": pixel_size, "slide.channel": channel,
                "blocks.size": block_size, "blocks.margin": margin,
                "blocks.tissue_mask": mask_setting, "outputs.coco": coco}
    settings = json.loads(json.dumps(settings))
    record = _RunRecord(folder)
    run = SlideRun(folder, blocks=len(blocks), tissue_blocks=len(run_blocks))
    order = [b.index for b in run_blocks]
    earlier = _earlier_outputs(folder)
    written: list[dict] = []
    if resume and (record.folder / RUN_RECORD).exists():
        record.check_settings(settings)
        summary_file = folder / SUMMARY_NAME
        if summary_file.exists():
            run.summary = json.loads(summary_file.read_text(encoding="utf-8"))
            run.already_done, run.resumed_blocks = True, len(order)
            run.instances = run.summary.get("instances", 0)
            run.skipped = run.summary.get("skipped_blocks", [])
            return run
        written = record.written(order)
    elif earlier and not overwrite:
        shown = ", ".join(p.name for p in earlier[:3])
        raise UserError(f"{folder} holds an earlier slide prediction ({shown}) "
                        + ("but no record of its settings; --overwrite predicts it again"
                           if resume else "; --resume continues it, --overwrite replaces it"))
    else:
        _remove(earlier)
    if not written:
        record.start(settings)
    offsets = written[-1]["offsets"] if written else None
    outputs = SlideOutputs(folder, slide.shape, pixel_size, scale.downsample,
                           _channel_names(slide), local.categories(metadata), coco, offsets)
    next_id = 1 + sum(r.get("instances", 0) for r in written)
    run.skipped = [r["skipped"] for r in written if "skipped" in r]
    skipped_blocks = {r["block"] for r in written if "skipped" in r}
    run.resumed_blocks = len(written)
    jobs_by_index = {b.index: BlockJob(SlideSource(str(slide.path), slide.backend), scale, b,
                                       b.context(margin, scale.height, scale.width),
                                       channel, intensity, threads) for b in run_blocks}
    position = len(written)
    spooled = record.spooled() - set(order[:position])
    run.resumed_blocks += len(spooled)
    min_visible = getattr(local, "min_visible_fraction", 0.0)
    started = time.perf_counter()
    bar = ProgressBar(total=len(order), initial=run.resumed_blocks, desc=slide.path.name,
                      unit="block", disable=not progress, dynamic_ncols=True)

    def write(result: BlockResult) -> None:
        nonlocal next_id
        job = jobs_by_index[result.index]
        if result.error is not None:
            if strict:
                raise UserError(f"{result.error} (--strict stops at the first block that "
                                "cannot be read)")
            logger.warning("skipped %s", result.error)
            run.skipped.append(result.error)
            skipped_blocks.add(result.index)
            record.append({"block": result.index, "skipped": result.error,
                           "offsets": outputs.sync()})
            return
        count = outputs.write_block(result.instances, next_id, job.context, min_visible)
        record.append({"block": result.index, "instances": count, "first_id": next_id,
                       "offsets": outputs.sync()})
        next_id += count

    def drain() -> None:
        nonlocal position
        while position < len(order) and order[position] in spooled:
            spool_file = record.spool_path(order[position])
            write(BlockResult.load(spool_file))
            spool_file.unlink()
            spooled.discard(order[position])
            position += 1

    try:
        drain()
        pending = [jobs_by_index[i] for i in order[position:] if i not in spooled]
        for result in _run_jobs(pending, slide, local, predictor, client):
            bar.update(1)
            if result.index == order[position]:
                write(result)
                position += 1
                drain()
            else:
                result.save(record.spool_path(result.index))
                spooled.add(result.index)
    finally:
        bar.close()
        if position < len(order):
            outputs.close()
    outputs.finish()
    run.instances = next_id - 1
    if overview:
        boxes = {i: jobs_by_index[i].level0_box() for i in order}
        write_overview(folder / OVERVIEW_NAME,
                       array_to_rgb8(thumbnail, intensity or local.intensity, channel),
                       folder / LABELS_NAME, slide.shape,
                       [boxes[i] for i in order if i not in skipped_blocks],
                       [boxes[i] for i in skipped_blocks])
    run.summary = {
        "slide": slide.describe(), "pixel_size_um": pixel_size,
        "model_pixel_size_um": model_pixel_size,
        "scale": {"level": scale.level, "resampled": scale.level_pixels != 1,
                  "level0_pixels_per_processing_pixel": scale.downsample,
                  "processing_shape": [scale.height, scale.width]},
        "blocks": {"size": block_size, "margin": margin, "total": len(blocks),
                   "run": len(order), "background": len(blocks) - len(order),
                   "tissue_mask": mask_setting, "resumed": run.resumed_blocks},
        "instances": run.instances, "skipped_blocks": run.skipped,
        "seconds_this_run": round(time.perf_counter() - started, 3),
        "outputs": {"labels": LABELS_NAME, "geojson": GEOJSON_NAME, "table": TABLE_NAME,
                    **({"coco": COCO_NAME} if coco else {}),
                    **({"overview": OVERVIEW_NAME} if overview else {})}}
    shutil.rmtree(record.spool, ignore_errors=True)
    atomic_write_json(folder / SUMMARY_NAME, run.summary, indent=1)
    fsync_folder(folder)
    return run
