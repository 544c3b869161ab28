"""The slide reader: lazy regions of any level, pixel size, both backends, bad files."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from maskrcnn_pp.data.image_io import UnreadableImageError
from maskrcnn_pp.data.slide import SlideRegionError, is_slide_file, open_slide, slide_stem
from tests.inference.test_slide_fixtures import (
    corrupt_tile,
    not_a_slide,
    slide_without_pixel_size,
    synthetic_slide,
)


def _pattern(height: int, width: int) -> np.ndarray:
    return (np.arange(height * width * 3) % 251).astype(np.uint8).reshape(height, width, 3)


def test_ome_tiff_pyramid_levels_pixel_size_and_regions(tmp_path):
    path, _ = synthetic_slide(tmp_path, 1200)
    with tifffile.TiffFile(path) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.shape == (1200, 1200) and slide.channels == 3
        assert [(lv.height, lv.width, lv.downsample) for lv in slide.levels] == [
            (1200, 1200, 1.0), (600, 600, 2.0), (300, 300, 4.0)]
        assert slide.pixel_size_um == pytest.approx(0.25)
        for index, pixels in enumerate(levels):
            region = slide.read_region(index, 37, 101, 90, 70)
            np.testing.assert_array_equal(region, pixels[37:127, 101:171])
        thumbnail, downsample = slide.thumbnail(256)
        assert thumbnail.shape == (256, 256, 3) and downsample == pytest.approx(1200 / 256)
        with pytest.raises(ValueError, match="not inside level 1"):
            slide.read_region(1, 590, 0, 20, 20)


def test_channels_first_ome_tiff_reads_as_height_width_channels(tmp_path):
    pixels = (np.arange(2 * 300 * 260) % 4000).astype(np.uint16).reshape(2, 300, 260)
    path = tmp_path / "fluo.ome.tif"
    tifffile.imwrite(path, pixels, tile=(128, 128), compression="zlib",
                     metadata={"axes": "CYX", "PhysicalSizeX": 650, "PhysicalSizeXUnit": "nm"})
    with open_slide(path) as slide:
        assert slide.channels == 2 and slide.dtype == np.uint16
        assert slide.pixel_size_um == pytest.approx(0.65)
        np.testing.assert_array_equal(slide.read_region(0, 10, 20, 30, 40),
                                      pixels[:, 10:40, 20:60].transpose(1, 2, 0))


def test_openslide_reads_a_generic_tiled_tiff_its_levels_and_pixel_size(tmp_path):
    pixels = _pattern(600, 500)
    path = tmp_path / "generic.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(pixels, tile=(128, 128), compression="zlib", photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
        writer.write(pixels[::2, ::2], tile=(128, 128), compression="zlib",
                     photometric="rgb", subfiletype=1)
    with open_slide(path, backend="openslide") as slide:
        assert slide.backend == "openslide"
        assert [(lv.height, lv.width) for lv in slide.levels] == [(600, 500), (300, 250)]
        assert slide.pixel_size_um == pytest.approx(0.5)
        np.testing.assert_array_equal(slide.read_region(0, 20, 10, 40, 50),
                                      pixels[20:60, 10:60])
        np.testing.assert_array_equal(slide.read_region(1, 5, 7, 30, 20),
                                      pixels[::2, ::2][5:35, 7:27])
    with open_slide(path) as slide:      # auto: TIFFs go to tifffile, same pixels
        assert slide.backend == "tifffile" and slide.pixel_size_um == pytest.approx(0.5)
        np.testing.assert_array_equal(slide.read_region(0, 20, 10, 40, 50),
                                      pixels[20:60, 10:60])


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_a_corrupt_tile_is_named_and_the_rest_stays_readable(tmp_path, backend):
    pixels = _pattern(512, 512)
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(pixels, tile=(128, 128), compression="jpeg", photometric="rgb")
        writer.write(pixels[::2, ::2], tile=(128, 128), compression="jpeg",
                     photometric="rgb", subfiletype=1)
    corrupt_tile(path, tile=5)          # row 1, column 1 of the 4 x 4 tiles
    with open_slide(path, backend) as slide:
        with pytest.raises(SlideRegionError,
                           match=r"slide.tif: level 0 rows 100:200, columns 100:200 cannot be "
                                 r"decoded"):
            slide.read_region(0, 100, 100, 100, 100)
        assert slide.read_region(0, 300, 300, 100, 100).shape == (100, 100, 3)


def test_files_that_are_not_slides_are_named(tmp_path):
    with pytest.raises(UnreadableImageError, match="notes.svs: is not a slide OpenSlide can"):
        open_slide(not_a_slide(tmp_path))
    fake = tmp_path / "fake.ome.tif"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(UnreadableImageError, match="fake.ome.tif: cannot be read as a TIFF"):
        open_slide(fake)
    with pytest.raises(UnreadableImageError, match="missing.svs: does not exist"):
        open_slide(tmp_path / "missing.svs")


def test_which_files_are_slides(tmp_path):
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((64, 64), np.uint8))
    assert not is_slide_file(flat)
    assert is_slide_file(slide_without_pixel_size(tmp_path))    # a pyramid
    assert is_slide_file(tmp_path / "any.svs") and is_slide_file(tmp_path / "a.OME.TIFF")
    assert slide_without_pixel_size(tmp_path).name == "nosize.tif"
    with open_slide(tmp_path / "nosize.tif") as slide:
        assert slide.pixel_size_um is None
    assert slide_stem("a/b/case 1.ome.tiff") == "case 1" and slide_stem("x.svs") == "x"
