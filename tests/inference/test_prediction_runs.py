"""Prediction runs (issue #23): one resolution of overlaps behind every output, degenerate
images named, earlier runs never silently replaced or mixed, results.jsonl checked when
resumed, long runs announced; and the one predictor protocol that drives them."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from detectron2.structures import Instances
from pycocotools import mask as mask_util

from maskrcnn_pp.data.validation import check_coco_results
from maskrcnn_pp.inference import (
    DegenerateImageError,
    InstancePredictor,
    Predictor,
    Prepared,
    SemanticPredictor,
    tile_windows,
)
from maskrcnn_pp.inference.batch import (
    IMAGES_INDEX_FILE,
    PROGRESS_FILE,
    RESULTS_FILE,
    RUN_FILE,
    find_inputs,
    predict_files,
)
from maskrcnn_pp.utils.errors import UserError
from tests.inference.test_predict import DISC_IMAGE_SIZE, DISCS, BrightComponents, disc_image


def bright_predictor(**options) -> InstancePredictor:
    return InstancePredictor(BrightComponents(), 128, 32, **{"score_thresh": 0.0, **options})


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[..., ::-1] if image.ndim == 3 else image)
    return path


def disc_folder(folder: Path, names=("a", "b", "c"), shift: int = 0) -> Path:
    """One PNG of three of the discs per name (``shift`` moves them, making other files
    of the same names)."""
    for number, name in enumerate(names):
        discs = [(r, c + shift, radius) for r, c, radius in DISCS[3 * number:3 * number + 3]]
        write_png(folder / f"{name}.png", disc_image(discs, DISC_IMAGE_SIZE))
    return folder


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name.startswith("maskrcnn_pp")]


def lines(out: Path) -> list:
    return [json.loads(line) for line in (out / PROGRESS_FILE).read_text().splitlines()]


# --------------------------------------------------------------------------- item 1


class CrowdedOracle:
    """A stand-in network that sees the true discs of each tile and returns their masks,
    each a little grown, plus a weaker, larger duplicate of every third one, as a detector
    does on crowded nuclei: its masks overlap."""

    def __init__(self, discs, windows):
        self.discs, self.windows = discs, iter(windows)
        self.overlapping = 0

    def __call__(self, tile):
        window = next(self.windows)
        yy, xx = np.mgrid[window.top:window.bottom, window.left:window.right]
        masks, scores = [], []
        for number, (row, col, radius) in enumerate(self.discs):
            grown = (yy - row) ** 2 + (xx - col) ** 2 <= (radius + 2) ** 2
            if grown.any():
                masks.append(grown)
                scores.append(0.5 + 0.4 * ((number * 37) % 100) / 100)
            duplicate = (yy - row) ** 2 + (xx - col - 3) ** 2 <= (radius + 3) ** 2
            if number % 3 == 0 and duplicate.any():
                masks.append(duplicate)
                scores.append(scores[-1] - 0.01 if grown.any() else 0.3)
        stack = np.array(masks, bool).reshape(-1, *tile.shape[:2])
        self.overlapping += int((stack.sum(axis=0) > 1).sum())
        instances = Instances(tile.shape[:2])
        instances.pred_masks = torch.from_numpy(stack)
        instances.scores = torch.tensor(scores, dtype=torch.float32)
        instances.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
        return instances


def crowded_discs(seed: int = 0, count: int = 90):
    """Discs packed so tightly in 300 x 340 px that neighbours overlap."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(10, 290)), int(rng.integers(10, 330)), int(rng.integers(8, 15)))
            for _ in range(count)]


def test_label_image_and_results_hold_the_same_instances_on_a_crowded_tiled_image(tmp_path):
    discs = crowded_discs()
    image = np.zeros((*DISC_IMAGE_SIZE, 3), np.uint8)
    for row, col, radius in discs:
        cv2.circle(image, (col, row), radius, (200, 200, 200), -1)
    write_png(tmp_path / "in" / "crowded.png", image)
    oracle = CrowdedOracle(discs, tile_windows(*DISC_IMAGE_SIZE, 128, 32))
    predictor = InstancePredictor(oracle, 128, 32, score_thresh=0.0)
    run = predict_files(predictor, find_inputs([tmp_path / "in"]), tmp_path / "out",
                        progress=False)
    assert oracle.overlapping > 1000                 # the network's masks overlap a lot

    labels = tifffile.imread(tmp_path / "out" / "labels" / "crowded.tif")
    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert run.num_instances == len(results) == labels.max()
    assert set(np.unique(labels)) == set(range(len(results) + 1))     # every id is listed
    masks = mask_util.decode([r["segmentation"] for r in results]).transpose(2, 0, 1)
    for k, (result, mask) in enumerate(zip(results, masks), start=1):
        np.testing.assert_array_equal(mask, labels == k)               # same pixels
        np.testing.assert_allclose(result["bbox"], mask_util.toBbox(result["segmentation"]))
    assert masks.sum(axis=0).max() == 1                                # no pixel twice
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # duplicates hidden under their original and discs mostly under higher-scoring ones
    # are dropped (119 instances would be left with a fraction of 0)
    assert len(discs) * 0.8 <= len(results) < len(discs)


# --------------------------------------------------------------------------- item 3


def test_degenerate_images_are_named_and_skipped(tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "nan.tif", np.full((40, 50), np.nan, np.float32))
    tifffile.imwrite(folder / "inf.tif", np.full((40, 50), np.inf, np.float32))
    write_png(folder / "flat.png", np.full((40, 50), 60, np.uint8))
    hot = np.zeros((40, 50), np.uint16)
    hot[0, :5] = 4000                                  # 0.25 % of the pixels: above 99 %
    tifffile.imwrite(folder / "hot.tif", hot)
    write_png(folder / "ok.png", disc_image(DISCS[:2], DISC_IMAGE_SIZE))
    with caplog.at_level(logging.WARNING, logger="maskrcnn_pp.inference"):
        run = predict_files(bright_predictor(), find_inputs([folder]), tmp_path / "out",
                            progress=False)
    assert [entry["file_name"] for entry in run.images] == ["ok.png"]
    assert run.skipped == [
        f"{folder / 'flat.png'}: no contrast (every pixel is 60)",
        f"{folder / 'hot.tif'}: no contrast after intensity normalization (INPUT.INTENSITY): "
        "every pixel becomes 0",
        f"{folder / 'inf.tif'}: no finite pixels (every value is NaN or infinite)",
        f"{folder / 'nan.tif'}: no finite pixels (every value is NaN or infinite)"]
    assert warnings(caplog) == [f"skipped {problem}" for problem in run.skipped]
    assert not (tmp_path / "out" / "labels" / "nan.tif").exists()

    with pytest.raises(DegenerateImageError, match="no finite pixels"):
        bright_predictor()(np.full((40, 50), np.nan))
    semantic = SemanticPredictor(lambda batch: batch / 255, dims=3)
    with pytest.raises(DegenerateImageError, match=r"no contrast \(every pixel is 7\)"):
        semantic(np.full((4, 8, 8), 7, np.int16))


# --------------------------------------------------------------------------- items 5 and 8


def test_an_earlier_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    images = find_inputs([disc_folder(tmp_path / "in")])
    out = tmp_path / "out"
    predict_files(bright_predictor(), images, out, progress=False)
    assert (out / RUN_FILE).exists() and (out / "labels" / "c.tif").exists()
    with pytest.raises(UserError, match=r"holds an earlier prediction \(run.json, "
                                        r"results.jsonl, coco_instances_results.json and 7 "
                                        r"more\); --resume continues it, --overwrite"):
        predict_files(bright_predictor(), images, out, progress=False)
    with pytest.raises(UserError, match="--resume continues an earlier run, --overwrite "
                                        "replaces it: give one"):
        predict_files(bright_predictor(), images, out, resume=True, overwrite=True,
                      progress=False)

    run = predict_files(bright_predictor(), images[:1], out, overwrite=True, progress=False)
    assert [entry["file_name"] for entry in run.images] == ["a.png"]
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == ["coco_instances_results.json", "images.json", "labels/a.tif",
                    "overlays/a.png", "results.jsonl", "run.json"]      # nothing orphaned
    assert {r["image_id"] for r in json.loads((out / RESULTS_FILE).read_text())} == {1}


def test_resume_refuses_other_input_files_and_other_settings(tmp_path):
    first = disc_folder(tmp_path / "in")
    out = tmp_path / "out"
    predict_files(bright_predictor(), find_inputs([first]), out, progress=False)
    (out / PROGRESS_FILE).write_text("".join(
        json.dumps(record) + "\n" for record in lines(out)[:2]))      # c.png not yet done

    other = disc_folder(tmp_path / "other", shift=-5)                  # same names
    with pytest.raises(UserError, match=r"--resume: input a.png is not the file .* was "
                                        r"predicted from \(path .*in/a.png, now .*other/a.png"):
        predict_files(bright_predictor(), find_inputs([other]), out, resume=True,
                      progress=False)
    with pytest.raises(UserError, match=r"other settings: score_thresh 0.0 -> 0.99; predict "
                                        r"into another folder, or --overwrite"):
        predict_files(bright_predictor(score_thresh=0.99), find_inputs([first]), out,
                      resume=True, progress=False)
    with pytest.raises(UserError, match=r"other settings: tile_overlap 32 -> 16; tile_size "
                                        r"128 -> 64"):
        predict_files(InstancePredictor(BrightComponents(), 64, score_thresh=0.0),
                      find_inputs([first]), out, resume=True, progress=False)
    with pytest.raises(UserError, match=r"input b.png had image id 2, now 1 \(the inputs"):
        predict_files(bright_predictor(), find_inputs([first / "b.png", first / "c.png"]),
                      out, resume=True, progress=False)
    recorded = lines(out)[0]["source"]["mtime_ns"]
    disc_folder(tmp_path / "in")                        # the same bytes, written again
    os.utime(first / "a.png", ns=(recorded + 10**9, recorded + 10**9))
    with pytest.raises(UserError, match=r"input a.png is not the file .*\(modified since\)"):
        predict_files(bright_predictor(), find_inputs([first]), out, resume=True,
                      progress=False)


def test_resume_with_the_same_settings_and_files_continues(tmp_path):
    images = find_inputs([disc_folder(tmp_path / "in")])
    out = tmp_path / "out"
    predict_files(bright_predictor(), images, out, progress=False)
    whole = json.loads((out / RESULTS_FILE).read_text())
    (out / PROGRESS_FILE).write_text(json.dumps(lines(out)[0]) + "\n")
    run = predict_files(bright_predictor(), images, out, resume=True, progress=False)
    assert run.resumed == 1 and len(run.images) == 3
    assert json.loads((out / RESULTS_FILE).read_text()) == whole


# --------------------------------------------------------------------------- item 9


def test_forged_lines_of_results_jsonl_are_named_and_predicted_again(tmp_path, caplog):
    images = find_inputs([disc_folder(tmp_path / "in")])
    out = tmp_path / "out"
    predict_files(bright_predictor(), images, out, progress=False)
    whole = json.loads((out / RESULTS_FILE).read_text())
    a, b, c = lines(out)
    a["results"][0]["segmentation"]["counts"] = "zz"
    b["results"][0]["score"] = float("nan")
    (out / PROGRESS_FILE).write_text("".join(
        json.dumps(record) + "\n" for record in (a, b, c, {"image": 5}, None)))
    with caplog.at_level(logging.WARNING, logger="maskrcnn_pp.inference"):
        run = predict_files(bright_predictor(), images, out, resume=True, progress=False)
    warned = warnings(caplog)
    assert [w.split(" dropped")[0] for w in warned] == [
        f"{out / PROGRESS_FILE} line {n}" for n in (1, 2, 4, 5)]
    assert "the mask's compressed 'counts' string has the character 'z'" in warned[0]
    assert "NaN or infinite score" in warned[1] and "not a prediction record" in warned[2]
    assert run.resumed == 1 and len(run.images) == 3
    assert [record["image"]["file_name"] for record in lines(out)] == ["c.png", "a.png",
                                                                      "b.png"]
    merged = json.loads((out / RESULTS_FILE).read_text())
    index = json.loads((out / IMAGES_INDEX_FILE).read_text())
    check_coco_results(merged, {i["id"]: i for i in index["images"]}, [1], "merged")
    key = lambda r: (r["image_id"], -r["score"])                       # noqa: E731
    assert sorted(merged, key=key) == sorted(whole, key=key)


# --------------------------------------------------------------------------- item 12


def test_an_image_of_many_tiles_is_announced_with_its_count(tmp_path, caplog):
    write_png(tmp_path / "in" / "big.png", disc_image(DISCS, (700, 700)))
    predictor = InstancePredictor(BrightComponents(), 64, 0, score_thresh=0.0)
    with caplog.at_level(logging.INFO, logger="maskrcnn_pp.inference"):
        predict_files(predictor, find_inputs([tmp_path / "in"]), tmp_path / "out",
                      progress=False)
    assert "big.png: 121 tiles to predict" in caplog.messages


# --------------------------------------------------------------------------- the protocol


class MeanPredictor(Predictor):
    """A third kind of model, unknown to the batch runner: the mean of each image."""

    kind = "mean"

    def __init__(self):
        super().__init__(None, False)
        self.calls = []

    def prepare(self, image, channel=None):
        return Prepared(np.asarray(image, np.float32))

    def steps(self, prepared):
        return 1

    def run(self, prepared):
        self.calls.append(prepared.pixels.shape)
        return float(prepared.pixels.mean())

    def write(self, result, prepared, output_dir, stem, image_id, categories, options):
        (output_dir / "labels").mkdir(exist_ok=True)
        (output_dir / "labels" / f"{stem}.txt").write_text(f"{result:.3f}")
        return {"height": prepared.pixels.shape[0], "width": prepared.pixels.shape[1]}, []

    def categories(self, metadata):
        return [{"id": 0, "name": "mean"}]

    def settings(self):
        return {"kind": self.kind}


def test_the_batch_runner_drives_any_predictor_through_prepare_run_write(tmp_path):
    images = find_inputs([disc_folder(tmp_path / "in", names=("a", "b"))])
    predictor = MeanPredictor()
    run = predict_files(predictor, images, tmp_path / "out", progress=False)
    assert predictor.calls == [(*DISC_IMAGE_SIZE, 3)] * 2
    assert [(e["file_name"], e["height"], e["width"]) for e in run.images] == [
        ("a.png", 300, 340), ("b.png", 300, 340)]
    assert float((tmp_path / "out" / "labels" / "a.txt").read_text()) > 0
    assert not (tmp_path / "out" / RESULTS_FILE).exists()              # no COCO results


def test_blocks_of_an_array_run_through_prepare_and_run_without_a_file():
    """What a whole-slide reader does: prepare and run each block it reads."""
    image = disc_image(DISCS, DISC_IMAGE_SIZE)
    instance = bright_predictor()
    for block in (image[:150], image[150:]):
        prepared = instance.prepare(block)
        assert instance.steps(prepared) == len(tile_windows(*block.shape[:2], 128, 32))
        assert len(instance.run(prepared)) == len(instance(block))
    semantic = SemanticPredictor(lambda batch: batch / 255, tile_size=64)
    block = image[:100, :100, 0]
    np.testing.assert_allclose(semantic.run(semantic.prepare(block)).probabilities[0],
                               block / 255, atol=1e-6)
