"""Slide files for the slide tests and the bad-input table (imported as
``from tests.inference.test_slide_fixtures import ...``), and checks that they are what the
tests take them for."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from maskrcnn_pp.studies.slide_benchmark import SyntheticSlide, write_synthetic_slide


def synthetic_slide(folder: Path, size: int = 2000, name: str = "slide.ome.tif",
                    **options) -> tuple[Path, SyntheticSlide]:
    path = Path(folder) / name
    return path, write_synthetic_slide(path, size, **options)


def corrupt_tile(path: Path, tile: int, level: int = 0) -> None:
    """Overwrite the compressed bytes of one tile of ``level`` (its page in SubIFDs for
    level > 0) with garbage, leaving the rest of the file intact."""
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[level].keyframe
        offset, count = page.dataoffsets[tile], page.databytecounts[tile]
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(b"\x00garbage" * (count // 8) + b"\x00" * (count % 8))


def slide_without_pixel_size(folder: Path, size: int = 512) -> Path:
    """A tiled, two-level TIFF with no resolution tags and no OME metadata."""
    path = Path(folder) / "nosize.tif"
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[100:120, 100:120] = 200
    with tifffile.TiffWriter(path) as writer:
        writer.write(pixels, tile=(128, 128), compression="zlib", photometric="rgb",
                     resolutionunit="NONE")
        writer.write(pixels[::2, ::2], tile=(128, 128), compression="zlib",
                     photometric="rgb", subfiletype=1, resolutionunit="NONE")
    return path


def not_a_slide(folder: Path) -> Path:
    path = Path(folder) / "notes.svs"
    path.write_text("these are my notes, not a slide\n")
    return path


def test_the_synthetic_slide_is_a_tiled_compressed_three_level_ome_tiff(tmp_path):
    path, layout = synthetic_slide(tmp_path, 1000)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert tif.is_ome and series.axes == "YXS"
        assert [level.shape[:2] for level in series.levels] == [(1000, 1000), (500, 500),
                                                                (250, 250)]
        page = series.levels[0].keyframe
        assert page.is_tiled and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata
        pixels = series.levels[0].asarray()
    row, col = layout.origins[0]
    assert pixels[row:row + layout.region, col:col + layout.region].any()
    outside = np.ones(pixels.shape[:2], bool)
    for row, col in layout.origins:
        outside[row:row + layout.region, col:col + layout.region] = False
    assert not pixels[outside].any()        # background is black outside the regions
