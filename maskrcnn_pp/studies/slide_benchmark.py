"""Whole-slide prediction at scale (``tools/benchmark.py --group slide``).

A synthetic slide is written as a pyramidal OME-TIFF (tiled, compressed, with its pixel
size) tile by tile, never whole in memory: mostly background, with square tissue regions
filled with separate nuclei (:func:`~maskrcnn_pp.studies.postprocessing_scale.nuclei_grid_image`).
:func:`slide_case` predicts it with the perfect stand-in model of the scale benchmark
(:class:`~maskrcnn_pp.studies.postprocessing_scale.PerfectNucleiModel`), in a fresh process that
reports its time and peak memory; :func:`model_case` runs a real Mask R-CNN++ the same way.
"""
from __future__ import annotations

import functools
import math
import multiprocessing as mp
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import tifffile

from ..inference.instance import InstancePredictor
from ..inference.slide import predict_slide
from .postprocessing_scale import PerfectNucleiModel, nuclei_grid_image
from .timing import status_kib

__all__ = ["SyntheticSlide", "write_synthetic_slide", "perfect_predictor", "slide_case",
           "run_slide_case", "model_case", "run_model_case", "slide_table",
           "run_slide_benchmark", "PUBLISHED_THROUGHPUT"]

# Nuclei grid spacing inside tissue (pixels): discs of radius 5..9 on a jittered grid.
NUCLEUS_SPACING = 32
# Published throughput of other tools, quoted with their sources (not measured here).
PUBLISHED_THROUGHPUT = [
    ("HoVer-NeXt (MIDL 2024, their figure, one GPU)", "1.8 s/mm² at 0.5 µm/px; "
     "3.2 s/mm² at 0.25 µm/px"),
    ("HoverFast (2024, their figure, one A5000 GPU)", "a 40x slide in about 6 min (HoVer-Net "
     "about 2 h); peak RAM 12.8 GB"),
]


@dataclass(frozen=True)
class SyntheticSlide:
    """Where the tissue of a synthetic slide is: squares of ``region`` pixels at
    ``origins`` (level 0), each filled with ``nuclei_per_region`` nuclei."""

    size: int
    region: int
    origins: tuple[tuple[int, int], ...]
    nuclei_per_region: int

    @classmethod
    def layout(cls, size: int) -> SyntheticSlide:
        """Tissue in 6 of the 16 cells of a 4 x 4 grid, each a square of 1/8 of the
        slide's side: about 9% of the slide, wherever the size."""
        region = size // 8
        cells = ((0, 1), (1, 2), (1, 3), (2, 0), (2, 1), (3, 2))
        origins = tuple((row * size // 4 + size // 16, col * size // 4 + size // 16)
                        for row, col in cells)
        per_side = region // NUCLEUS_SPACING
        return cls(size, region, origins, per_side * per_side)

    @property
    def tissue_pixels(self) -> int:
        return len(self.origins) * self.region ** 2

    @property
    def nuclei(self) -> int:
        return len(self.origins) * self.nuclei_per_region

    def _region_pixels(self, index: int) -> np.ndarray:
        return _region_image(self.region, self.nuclei_per_region, index)

    def render(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """Level-0 pixels ``top:top+height, left:left+width`` (RGB, black background)."""
        out = np.zeros((height, width, 3), np.uint8)
        for index, (row, col) in enumerate(self.origins):
            r0, r1 = max(top, row), min(top + height, row + self.region)
            c0, c1 = max(left, col), min(left + width, col + self.region)
            if r0 < r1 and c0 < c1:
                out[r0 - top:r1 - top, c0 - left:c1 - left] = self._region_pixels(index)[
                    r0 - row:r1 - row, c0 - col:c1 - col]
        return out


@functools.lru_cache(maxsize=4)
def _region_image(side: int, nuclei: int, seed: int) -> np.ndarray:
    """One tissue region's pixels (kept for the next tiles that cut it)."""
    return nuclei_grid_image(side, nuclei, seed=seed)


def _tiles(slide: SyntheticSlide, level: int, tile: int):
    """The tiles of ``level`` (each level halves the one before), row by row, padded to
    full tiles as tifffile takes them."""
    factor = 2 ** level
    side = math.ceil(slide.size / factor)
    for top in range(0, side, tile):
        for left in range(0, side, tile):
            height, width = min(tile, side - top), min(tile, side - left)
            pixels = slide.render(top * factor, left * factor, min(height * factor,
                                  slide.size - top * factor), min(width * factor,
                                                                  slide.size - left * factor))
            if factor > 1:
                pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
            padded = np.zeros((tile, tile, 3), np.uint8)
            padded[:height, :width] = pixels
            yield padded


def write_synthetic_slide(path: Path, size: int, pixel_size_um: float = 0.25,
                          levels: int = 3, tile: int = 256,
                          compression: str = "zlib") -> SyntheticSlide:
    """Write a ``size`` x ``size`` synthetic slide as a pyramidal OME-TIFF (``levels``
    levels, each half the one before, in SubIFDs; tiles of ``tile`` pixels; the pixel size
    in the OME metadata and the resolution tags), one tile at a time."""
    slide = SyntheticSlide.layout(size)
    options = dict(tile=(tile, tile), compression=compression, photometric="rgb",
                   dtype=np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for level in range(levels):
            side = math.ceil(size / 2 ** level)
            pixels_per_cm = 1e4 / (pixel_size_um * 2 ** level)
            extra = (dict(subifds=levels - 1, metadata={
                "axes": "YXS", "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um,
                "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}) if level == 0
                     else dict(subfiletype=1, metadata=None))
            writer.write(_tiles(slide, level, tile), shape=(side, side, 3),
                         resolution=(pixels_per_cm, pixels_per_cm),
                         resolutionunit="CENTIMETER", **options, **extra)
    return slide


def perfect_predictor(tile_size: int = 1024, overlap: int = 128) -> InstancePredictor:
    """The scale benchmark's perfect model (every connected bright region is a nucleus)
    behind the tiled instance predictor."""
    return InstancePredictor(PerfectNucleiModel(), tile_size, overlap, score_thresh=0.5)


def _peak_rss_mib_since_reset() -> tuple[float, float]:
    """(peak RSS, current RSS) in MiB since the high-water mark was last reset."""
    return status_kib("VmHWM") / 1024, status_kib("VmRSS") / 1024


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def slide_case(slide_path: str, slide_size: int, block_size: int = 4096,
               workers: Optional[int] = None) -> dict:
    """Seconds and peak memory of predicting a synthetic slide with the perfect model
    (``workers``: a local dask cluster of that many processes; the memory is this
    process's, the one that reads thumbnails and writes every output)."""
    import torch

    torch.set_num_threads(1)
    layout = SyntheticSlide.layout(slide_size)
    with tempfile.TemporaryDirectory(prefix="slide-bench-") as output:
        _reset_peak_rss()
        start = time.perf_counter()
        run = predict_slide(perfect_predictor(), slide_path, Path(output) / "out",
                            block_size=block_size, workers=workers, progress=False,
                            overview=False)
        seconds = time.perf_counter() - start
        peak, _ = _peak_rss_mib_since_reset()
    tissue_mp = layout.tissue_pixels / 1e6
    return {"size": slide_size, "block": block_size, "workers": workers or 1,
            "nuclei": layout.nuclei, "found": run.instances, "blocks": run.blocks,
            "blocks_run": run.tissue_blocks, "tissue_MP": tissue_mp, "seconds": seconds,
            "s_per_tissue_MP": seconds / tissue_mp, "peak_rss_MiB": peak}


def _in_fresh_process(function, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_put_result, args=(function, args, queue))
    proc.start()
    row = queue.get(timeout=7200)
    proc.join()
    return row


def _put_result(function, args, queue) -> None:
    queue.put(function(*args))


def run_slide_case(slide_path: str, slide_size: int, block_size: int = 4096,
                   workers: Optional[int] = None) -> dict:
    """:func:`slide_case` in a fresh (spawned) process, so its peak memory is its own."""
    return _in_fresh_process(slide_case, slide_path, slide_size, block_size, workers)


def model_case(config_file: str, size: int = 2048, block_size: int = 1024,
               threads: Optional[int] = None) -> dict:
    """Seconds per mm² of an untrained Mask R-CNN++ of ``config_file`` on the CPU predicting
    every block of a synthetic slide at 0.5 µm/pixel (``INPUT.PIXEL_SIZE_UM`` 0.5, so no
    resampling; tissue mask off, so the whole slide counts as tissue). Untrained weights
    cost what trained ones do: the detector keeps its ``TEST.DETECTIONS_PER_IMAGE`` per
    tile either way."""
    import torch
    from detectron2.modeling import build_model

    from ..engine.checkpoint import SafeCheckpointer
    from ..engine.config import load_config
    from ..inference import load_predictor

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="slide-model-") as workdir:
        slide_path = Path(workdir) / "slide.ome.tif"
        write_synthetic_slide(slide_path, size, pixel_size_um=0.5, levels=2)
        cfg = load_config(config_file, ["MODEL.DEVICE", "cpu", "INPUT.PIXEL_SIZE_UM", "0.5"])
        torch.manual_seed(0)
        SafeCheckpointer(build_model(cfg), workdir).save("untrained")
        predictor = load_predictor(cfg, str(Path(workdir) / "untrained.pth"))
        _reset_peak_rss()
        start = time.perf_counter()
        run = predict_slide(predictor, slide_path, Path(workdir) / "out",
                            block_size=block_size, tissue_mask=False, progress=False,
                            overview=False)
        seconds = time.perf_counter() - start
        peak, _ = _peak_rss_mib_since_reset()
    tissue_mm2 = size * size * 0.5 ** 2 / 1e6
    return {"config": config_file, "size": size, "tissue_mm2": tissue_mm2,
            "blocks_run": run.tissue_blocks, "seconds": seconds,
            "s_per_mm2": seconds / tissue_mm2, "detections": run.instances,
            "threads": torch.get_num_threads(), "peak_rss_MiB": peak}


def run_model_case(config_file: str, size: int = 2048, block_size: int = 1024,
                   threads: Optional[int] = None) -> dict:
    """:func:`model_case` in a fresh (spawned) process."""
    return _in_fresh_process(model_case, config_file, size, block_size, threads)


def slide_table(rows: list[dict], model_rows: list[dict]) -> str:
    """The benchmark's Markdown tables: the perfect model by slide size and workers, the
    real model's seconds per mm², and the published figures of other tools."""
    lines = ["| slide | block | workers | tissue (MP) | nuclei | found | blocks run / all | "
             "time (s) | s per tissue MP | peak RSS (MiB) |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(f"| {r['size']}² | {r['block']} | {r['workers']} | {r['tissue_MP']:.1f} | "
                     f"{r['nuclei']} | {r['found']} | {r['blocks_run']} / {r['blocks']} | "
                     f"{r['seconds']:.1f} | {r['s_per_tissue_MP']:.2f} | "
                     f"{r['peak_rss_MiB']:.0f} |")
    if model_rows:
        lines += ["", "| model (CPU) | slide | tissue (mm² at 0.5 µm/px) | threads | time (s) | "
                  "s per mm² | peak RSS (MiB) |", "|---|---|---|---|---|---|---|"]
        for r in model_rows:
            lines.append(f"| untrained {Path(r['config']).name} (real cost) | {r['size']}² | "
                         f"{r['tissue_mm2']:.2f} | {r['threads']} | {r['seconds']:.1f} | "
                         f"{r['s_per_mm2']:.1f} | {r['peak_rss_MiB']:.0f} |")
    lines += ["", "| published (not measured here) | throughput |", "|---|---|"]
    lines += [f"| {name} | {figure} |" for name, figure in PUBLISHED_THROUGHPUT]
    return "\n".join(lines)


def run_slide_benchmark(sizes: list[int], workdir: Path, model_config: Optional[str],
                        model_size: int = 2048, block_size: int = 4096,
                        picture: Optional[Path] = None, progress=print
                        ) -> tuple[list[dict], list[dict]]:
    """The perfect model at each slide size (1 worker), 2 workers against 1 at the
    smallest size, and ``model_config``'s untrained model on a ``model_size`` slide; with
    ``picture``, the overview of a 4096-pixel slide's prediction is copied there."""
    rows = []
    for size in sizes:
        path = Path(workdir) / f"slide_{size}.ome.tif"
        progress(f"writing a {size} x {size} synthetic slide")
        write_synthetic_slide(path, size)
        for workers in ((None, 2) if size == min(sizes) else (None,)):
            progress(f"{size} x {size}, {workers or 1} worker(s)")
            rows.append(run_slide_case(str(path), size, block_size, workers))
        path.unlink()
    model_rows = []
    if model_config:
        progress(f"untrained {model_config} on a {model_size} x {model_size} slide")
        model_rows.append(run_model_case(model_config, model_size))
    if picture is not None:
        path = Path(workdir) / "picture.ome.tif"
        write_synthetic_slide(path, 4096)
        predict_slide(perfect_predictor(), path, Path(workdir) / "picture", block_size=1024,
                      progress=False)
        picture.write_bytes((Path(workdir) / "picture" / "overview.png").read_bytes())
    return rows, model_rows
