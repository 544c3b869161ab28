"""Whole-slide prediction (issue #21): blocks give the in-memory label image, outputs open in
the viewers' libraries, background is skipped, scale follows the pixel size, resume and
workers change nothing, unreadable blocks are skipped and listed."""
from __future__ import annotations

import csv
import functools
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import zarr
from detectron2.config import get_cfg

import maskrcnn_pp.inference.slide as slide_module
from maskrcnn_pp.config import add_maskrcnn_pp_config
from maskrcnn_pp.inference.slide import predict_slide
from maskrcnn_pp.inference.slide_outputs import SlideInstance, SlideOutputs
from maskrcnn_pp.studies.slide_benchmark import perfect_predictor
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT
from tests.inference.test_slide_fixtures import corrupt_tile, synthetic_slide

pytestmark = pytest.mark.slow     # each runs a slide end to end (seconds)

SIZE = 2000
TILE, OVERLAP, MARGIN = 512, 64, 40      # nuclei are at most 19 pixels across


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path, layout = synthetic_slide(tmp_path_factory.mktemp("slide"), SIZE)
    with tifffile.TiffFile(path) as tif:
        level0 = tif.series[0].levels[0].asarray()
    in_memory = perfect_predictor(TILE, OVERLAP)(level0).label_image
    return path, layout, level0, in_memory


def _labels(folder, level: int = 0) -> np.ndarray:
    return zarr.open_array(folder / "labels.ome.zarr" / "labels" / "nuclei" / str(level),
                           mode="r")[...]


def _outputs(folder) -> dict:
    group = zarr.open_group(folder / "labels.ome.zarr" / "labels" / "nuclei", mode="r")
    outputs = {name: (folder / name).read_bytes()
               for name in ("nuclei.geojson", "nuclei.csv", "nuclei_coco.json")
               if (folder / name).exists()}
    outputs.update({f"labels/{k}": group[k][...].tobytes() for k in sorted(group.array_keys())})
    return outputs


def assert_same_partition(labels: np.ndarray, reference: np.ndarray) -> None:
    """The same pixels labelled, and ids that map one to one."""
    np.testing.assert_array_equal(labels > 0, reference > 0)
    inside = labels > 0
    pairs = np.unique(np.stack([labels[inside], reference[inside]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _predict(path, folder, **options):
    options = {"block_margin": MARGIN, "progress": False, **options}
    return predict_slide(perfect_predictor(TILE, OVERLAP), path, folder, **options)


@pytest.mark.parametrize("block_size", [256, 450])
def test_blocks_cutting_nuclei_give_the_in_memory_label_image(slide, tmp_path, block_size):
    import shapely
    from ome_zarr_models.v04 import ImageLabel, Labels

    path, layout, _, in_memory = slide
    cut = [k for k in np.unique(in_memory)[1:]
           if any(len({i // block_size for i in np.flatnonzero((in_memory == k).any(axis))}) > 1
                  for axis in (0, 1))]
    assert len(cut) >= 5                     # the block seams cut through nuclei
    run = _predict(path, tmp_path / "out", block_size=block_size, coco=True)
    labels = _labels(tmp_path / "out")
    assert labels.shape == (SIZE, SIZE) and labels.dtype == np.uint32
    assert_same_partition(labels, in_memory)
    assert run.instances == layout.nuclei == len(np.unique(in_memory)) - 1
    assert sorted(np.unique(labels)[1:]) == list(range(1, run.instances + 1))
    assert 0 < run.tissue_blocks < run.blocks

    collection = json.loads((tmp_path / "out" / "nuclei.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert [f["properties"]["measurements"]["label"] for f in features] == list(
        range(1, run.instances + 1))
    for feature in features:
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        assert properties["classification"]["name"] == "nucleus"
        geometry = shapely.geometry.shape(feature["geometry"])
        assert geometry.is_valid and geometry.area > 0
        label = properties["measurements"]["label"]
        rows, cols = np.nonzero(labels == label)
        assert properties["measurements"]["area_px"] == len(rows)
        # the polygon lies on its nucleus's pixels, in level-0 coordinates
        assert geometry.bounds[0] >= cols.min() and geometry.bounds[2] <= cols.max() + 1
        assert geometry.bounds[1] >= rows.min() and geometry.bounds[3] <= rows.max() + 1
    with open(tmp_path / "out" / "nuclei.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == run.instances
    first = rows[0]
    mask = labels == int(first["label"])
    assert float(first["area_um2"]) == pytest.approx(mask.sum() * 0.25 ** 2)
    ys, xs = np.nonzero(mask)
    assert float(first["centroid_x"]) == pytest.approx(xs.mean() + 0.5, abs=1e-3)
    level0 = slide[2]
    assert float(first["mean_R"]) == pytest.approx(level0[mask][:, 0].mean(), abs=1e-3)
    assert len(json.loads((tmp_path / "out" / "nuclei_coco.json").read_text())) == run.instances

    group = zarr.open_group(tmp_path / "out" / "labels.ome.zarr" / "labels", mode="r")
    assert Labels.from_zarr(group).ome_attributes.labels == ["nuclei"]
    image_label = ImageLabel.from_zarr(group["nuclei"])
    scales = [d.coordinateTransformations[0].scale
              for d in image_label.ome_attributes.multiscales[0].datasets]
    assert scales[:2] == [[0.25, 0.25], [0.5, 0.5]]
    np.testing.assert_array_equal(_labels(tmp_path / "out", 1), labels[::2, ::2])
    summary = json.loads((tmp_path / "out" / "slide.json").read_text())
    assert summary["instances"] == run.instances and summary["skipped_blocks"] == []
    assert (tmp_path / "out" / "overview.png").stat().st_size > 0
    assert not list((tmp_path / "out").glob("*.partial"))


def test_background_blocks_are_never_read_or_run(slide, tmp_path, monkeypatch):
    path, layout, _, in_memory = slide
    seen = []
    original = slide_module.predict_block
    monkeypatch.setattr(slide_module, "predict_block",
                        lambda s, p, job: seen.append(job.block) or original(s, p, job))
    run = _predict(path, tmp_path / "masked", block_size=256)
    near_tissue = {block.index for block in slide_module.block_grid(SIZE, SIZE, 256)
                   for row, col in layout.origins
                   if block.top < row + layout.region + 64 and block.bottom > row - 64
                   and block.left < col + layout.region + 64 and block.right > col - 64}
    assert {b.index for b in seen} <= near_tissue and len(seen) == run.tissue_blocks
    assert run.tissue_blocks < run.blocks
    assert_same_partition(_labels(tmp_path / "masked"), in_memory)
    seen.clear()
    everything = _predict(path, tmp_path / "all", block_size=256, tissue_mask=False)
    assert len(seen) == everything.tissue_blocks == everything.blocks
    np.testing.assert_array_equal(_labels(tmp_path / "all"), _labels(tmp_path / "masked"))


def test_a_user_mask_selects_the_blocks(slide, tmp_path):
    path, layout, _, in_memory = slide
    mask = np.zeros((SIZE // 10, SIZE // 10), np.uint8)        # any size, same aspect
    row, col = layout.origins[0]
    mask[row // 10 + 2:(row + layout.region) // 10 - 2,
         col // 10 + 2:(col + layout.region) // 10 - 2] = 255
    mask_file = tmp_path / "mask.png"
    import cv2

    cv2.imwrite(str(mask_file), mask)
    run = _predict(path, tmp_path / "out", block_size=256, tissue_mask=mask_file)
    labels = _labels(tmp_path / "out")
    found = np.unique(in_memory[labels > 0])
    region = np.unique(in_memory[row:row + layout.region, col:col + layout.region])[1:]
    assert set(region) <= set(found) and run.tissue_blocks <= 4
    assert found.size < np.unique(in_memory).size - 1           # other regions not run
    with pytest.raises(UserError, match="aspect ratio"):
        cv2.imwrite(str(tmp_path / "thin.png"), np.ones((10, 50), np.uint8))
        _predict(path, tmp_path / "thin", tissue_mask=tmp_path / "thin.png")


def _with_pixel_size(predictor, pixel_size_um):
    cfg = add_maskrcnn_pp_config(get_cfg())
    cfg.INPUT.PIXEL_SIZE_UM = pixel_size_um
    predictor.cfg = cfg
    return predictor


def _centroids(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)[1:]
    rows, cols = np.nonzero(labels)
    found = labels[rows, cols]
    counts = np.bincount(found, minlength=ids.max() + 1)[ids]
    return np.stack([np.bincount(found, rows)[ids] / counts,
                     np.bincount(found, cols)[ids] / counts], axis=1)


@pytest.mark.parametrize("model_um, level, resampled", [(0.5, 1, False), (0.375, 0, True)])
def test_the_pixel_size_picks_the_level_and_outputs_stay_in_level0(slide, tmp_path, model_um,
                                                                   level, resampled):
    path, layout, _, in_memory = slide
    predictor = _with_pixel_size(perfect_predictor(TILE, OVERLAP), model_um)
    run = predict_slide(predictor, path, tmp_path / "out", block_size=200, block_margin=30,
                        progress=False)
    summary = json.loads((tmp_path / "out" / "slide.json").read_text())
    assert summary["scale"]["level"] == level and summary["scale"]["resampled"] == resampled
    assert summary["scale"]["level0_pixels_per_processing_pixel"] == pytest.approx(
        model_um / 0.25)
    labels = _labels(tmp_path / "out")
    assert labels.shape == (SIZE, SIZE) and run.instances == layout.nuclei
    expected, found = _centroids(in_memory), _centroids(labels)
    distance = np.linalg.norm(expected[:, None] - found[None], axis=2).min(axis=1)
    assert distance.max() < 1.5              # every nucleus where it is at level 0
    overlap = (labels > 0) & (in_memory > 0)
    assert overlap.sum() > 0.8 * (in_memory > 0).sum()


def test_a_pixel_size_is_required_when_the_model_has_one(tmp_path):
    from tests.inference.test_slide_fixtures import slide_without_pixel_size

    predictor = _with_pixel_size(perfect_predictor(TILE, OVERLAP), 0.5)
    with pytest.raises(UserError, match="nosize.tif: the slide does not say its pixel size"):
        predict_slide(predictor, slide_without_pixel_size(tmp_path), tmp_path / "out")
    run = predict_slide(predictor, tmp_path / "nosize.tif", tmp_path / "out",
                        slide_pixel_size_um=0.25, progress=False)
    assert run.instances == 1


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import maskrcnn_pp.inference.slide as slide_module
    from maskrcnn_pp.studies.slide_benchmark import perfect_predictor

    original, calls = slide_module.predict_block, []
    def dies_at_block(slide, predictor, job):
        calls.append(job)
        if len(calls) == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(slide, predictor, job)
    slide_module.predict_block = dies_at_block
    slide_module.predict_slide(perfect_predictor(512, 64), sys.argv[1], sys.argv[2],
                               block_size=256, block_margin=40, coco=True, progress=False)
""")


def test_a_killed_run_resumes_to_identical_outputs_repeating_no_block(slide, tmp_path,
                                                                      monkeypatch):
    path = slide[0]
    reference = _predict(path, tmp_path / "reference", block_size=256, coco=True)
    folder = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(path), str(folder), "9"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    records = (folder / "progress" / "blocks.jsonl").read_text().splitlines()
    assert len(records) == 8           # every block before the one in flight was kept
    # A kill while writing leaves bytes past the last record and label pixels of ids
    # that were not recorded; the resumed run must clear both.
    with open(folder / "nuclei.geojson.partial", "ab") as partial:
        partial.write(b'{"type": "Feature", "geometry": {"type": "Poly')
    with open(folder / "nuclei.csv.partial", "ab") as partial:
        partial.write(b"999,nucleus,0.9,1")
    last = json.loads(records[-1])
    stale = last["first_id"] + last["instances"] + 3
    labels = zarr.open_array(folder / "labels.ome.zarr" / "labels" / "nuclei" / "0", mode="r+")
    in_flight = json.loads((tmp_path / "reference" / "progress" / "blocks.jsonl")
                           .read_text().splitlines()[8])["block"]
    region = slide_module.block_grid(SIZE, SIZE, 256)[in_flight]
    labels[region.top:region.top + 5, region.left:region.left + 5] = stale
    with pytest.raises(UserError, match="holds an earlier slide prediction"):
        _predict(path, folder, block_size=256, coco=True)
    ran = []
    original = slide_module.predict_block
    monkeypatch.setattr(slide_module, "predict_block",
                        lambda s, p, job: ran.append(job.block.index) or original(s, p, job))
    resumed = _predict(path, folder, block_size=256, coco=True, resume=True)
    assert resumed.resumed_blocks == 8 and len(ran) == reference.tissue_blocks - 8
    assert not {json.loads(r)["block"] for r in records} & set(ran)
    assert _outputs(folder) == _outputs(tmp_path / "reference")
    again = _predict(path, folder, block_size=256, coco=True, resume=True)
    assert again.already_done and again.instances == reference.instances
    with pytest.raises(UserError, match="other settings: blocks.size 256 -> 300"):
        _predict(path, folder, block_size=300, coco=True, resume=True)


def test_two_dask_workers_give_the_outputs_of_one_process(slide, tmp_path):
    path = slide[0]
    _predict(path, tmp_path / "one", block_size=256)
    loader = functools.partial(perfect_predictor, TILE, OVERLAP)   # each worker builds it
    run = predict_slide(loader, path, tmp_path / "two", block_size=256, block_margin=MARGIN,
                        workers=2, progress=False)
    assert run.instances > 0
    assert _outputs(tmp_path / "two") == _outputs(tmp_path / "one")


def test_an_unreadable_block_is_skipped_and_listed_unless_strict(slide, tmp_path):
    path = tmp_path / "corrupt.ome.tif"
    path.write_bytes(slide[0].read_bytes())
    layout = slide[1]
    row, col = layout.origins[0]
    tiles_per_row = -(-SIZE // 256)
    corrupt_tile(path, (row + 40) // 256 * tiles_per_row + (col + 40) // 256)
    run = _predict(path, tmp_path / "out", block_size=256)
    # every block whose context holds the tile (a tile at a block corner: up to 4)
    assert 1 <= len(run.skipped) <= 4
    assert all(message.startswith("block ") and "cannot be decoded" in message
               for message in run.skipped)
    summary = json.loads((tmp_path / "out" / "slide.json").read_text())
    assert summary["skipped_blocks"] == run.skipped
    assert 0 < run.instances < layout.nuclei
    with pytest.raises(UserError, match=r"block \d+ \(level-0 rows .*cannot be decoded.*"
                                        r"--strict"):
        _predict(path, tmp_path / "strict", block_size=256, strict=True)


def test_the_predictor_api_and_its_progress_bar(slide, tmp_path, capsys):
    path = slide[0]
    predictor = perfect_predictor(TILE, OVERLAP)
    run = predictor.predict_slide(path, tmp_path / "api", block_size=700, block_margin=MARGIN)
    assert run.instances == slide[1].nuclei
    bar = capsys.readouterr().err
    assert f"{run.tissue_blocks}/{run.tissue_blocks}" in bar and "block" in bar


def test_a_nucleus_over_pixels_an_earlier_block_wrote_keeps_only_free_pixels(tmp_path):
    outputs = SlideOutputs(tmp_path, (64, 64), 0.5, 1.0, ["gray"],
                           [{"id": 1, "name": "nucleus"}])
    square = np.ones((10, 10), bool)
    first = SlideInstance(10, 10, square, 0.9, 0, np.full((100, 1), 7, np.uint8))
    assert outputs.write_block([first], 1, (0, 0, 32, 64), 0.5) == 1
    values = np.arange(100, dtype=np.uint8)[:, None]
    shifted = SlideInstance(10, 16, square, 0.95, 0, values)        # 40 of 100 taken
    barely = SlideInstance(10, 12, square, 0.95, 0, values)         # 80 of 100 taken
    assert outputs.write_block([shifted, barely], 2, (0, 8, 40, 64), 0.5) == 1
    outputs.finish()
    labels = _labels(tmp_path)
    assert (labels == 1).sum() == 100 and (labels == 2).sum() == 60
    assert (labels[10:20, 20:26] == 2).all()
    with open(tmp_path / "nuclei.csv", newline="") as table:
        second = list(csv.DictReader(table))[1]
    assert second["area_px"] == "60" and float(second["area_um2"]) == 15.0
    kept = values.reshape(10, 10)[:, 4:]
    assert float(second["mean_gray"]) == pytest.approx(kept.mean())
    assert second["left"] == "20" and second["right"] == "26"


def test_refuses_an_earlier_run_unless_resumed_or_overwritten(slide, tmp_path):
    path = slide[0]
    _predict(path, tmp_path / "out", block_size=700)
    with pytest.raises(UserError, match="holds an earlier slide prediction"):
        _predict(path, tmp_path / "out", block_size=700)
    run = _predict(path, tmp_path / "out", block_size=700, overwrite=True)
    assert run.instances == slide[1].nuclei and not run.already_done
    assert not (tmp_path / "out" / "progress" / "spool").exists()
