"""Instance label images -> COCO (datasets/prepare_instances.py), registration by name, and a
tiny training run on the result through tools/train_net.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util

from maskrcnn_pp.data import register_nuclei_coco
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.engine.trainer import Trainer
from maskrcnn_pp.evaluation.nuclei import NucleiEvaluator
from tests.helpers import ROOT, run_script_main

PREPARE = ROOT / "datasets" / "prepare_instances.py"
QUICK_PP = str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")


def _labels(shape, seed: int, count: int = 4, dtype=np.uint16, first_id: int = 1) -> np.ndarray:
    """Non-overlapping disks with ids first_id, first_id + 7, ... (ids need not be 1..n)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for k in range(count):
        cy, cx = (shape[0] // 4) * (1 + 2 * (k // 2)), (shape[1] // 4) * (1 + 2 * (k % 2))
        radius = rng.integers(4, shape[0] // 5)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = first_id + 7 * k
    return labels


def _nuclei_image(labels: np.ndarray, dtype=np.uint8, channels: int = 3) -> np.ndarray:
    high = {np.uint8: 220, np.uint16: 40000, np.float32: 3.5}[dtype]
    image = np.where(labels > 0, high, high / 10).astype(dtype)
    return np.repeat(image[..., None], channels, axis=2) if channels > 1 else image


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    path.write_bytes(data.tobytes())


def _write_tif(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, pixels)


@pytest.fixture
def mixed_src(tmp_path) -> tuple[Path, dict[str, np.ndarray], np.ndarray]:
    """Good items in every supported depth, plus one of each bad kind."""
    src = tmp_path / "src"
    colour = _nuclei_image(_labels((48, 64), 0, dtype=np.uint8))
    colour[..., 0] //= 2  # blue differs from red: a swapped channel order shows
    good = {"rgb8": _labels((48, 64), 0, dtype=np.uint8),
            "gray16": _labels((64, 48), 1, dtype=np.uint32, first_id=70000),
            "float": _labels((40, 40), 2, dtype=np.uint16),
            "label32f": _labels((40, 40), 3, dtype=np.uint16)}
    _write_png(src / "images" / "rgb8.png", colour)
    _write_png(src / "masks" / "rgb8_masks.png", good["rgb8"])
    _write_tif(src / "images" / "gray16.tif", _nuclei_image(good["gray16"], np.uint16, 1))
    _write_tif(src / "masks" / "gray16.tif", good["gray16"])
    _write_tif(src / "images" / "float.tiff", _nuclei_image(good["float"], np.float32, 1))
    _write_png(src / "masks" / "float_masks.png", good["float"])
    _write_png(src / "images" / "label32f.png", _nuclei_image(good["label32f"]))
    _write_tif(src / "masks" / "label32f.tif", good["label32f"].astype(np.float32))

    _write_png(src / "images" / "wrong_size.png", _nuclei_image(_labels((32, 32), 4)))
    _write_png(src / "masks" / "wrong_size.png", _labels((32, 30), 4, dtype=np.uint8))
    _write_png(src / "images" / "empty.png", _nuclei_image(_labels((32, 32), 5)))
    _write_png(src / "masks" / "empty.png", np.zeros((32, 32), np.uint8))
    _write_png(src / "images" / "fractional.png", _nuclei_image(_labels((32, 32), 6)))
    _write_tif(src / "masks" / "fractional.tif", _labels((32, 32), 6).astype(np.float32) / 2)
    _write_png(src / "images" / "no_mask.png", _nuclei_image(_labels((32, 32), 7)))
    return src, good, colour


def _coco(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


def test_label_images_convert_exactly_and_bad_items_are_named(mixed_src, tmp_path, capsys):
    src, good, colour = mixed_src
    out = tmp_path / "out"
    code, captured = run_script_main(PREPARE, capsys, src, out, "--val-fraction", "0")
    assert code == 0, captured.err
    assert f"instances: 4 of 8 images converted, 16 objects -> {out}: 4 train / 0 val images; " \
           "4 problem(s)" in captured.out

    report = json.loads((out / "report.json").read_text())
    problems = {Path(p["file"]).name: p["kind"] for p in report["problems"]}
    assert problems == {"wrong_size.png": "size_mismatch", "empty.png": "no_objects",
                        "fractional.tif": "non_integer_labels", "no_mask.png": "missing_mask"}
    for name in problems:
        assert name in captured.err

    coco = _coco(out, "train")
    assert _coco(out, "val")["images"] == []
    by_stem = {Path(img["file_name"]).stem: img for img in coco["images"]}
    assert set(by_stem) == set(good)
    for stem, labels in good.items():
        image = by_stem[stem]
        assert (image["height"], image["width"]) == labels.shape
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        decoded = sorted((mask_util.decode(a["segmentation"]).astype(bool) for a in anns),
                         key=lambda m: labels[m][0])
        ids = [i for i in np.unique(labels) if i != 0]
        assert len(decoded) == len(ids)
        for label_id, mask in zip(ids, decoded):
            assert np.array_equal(mask, labels == label_id), (stem, label_id)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])


def test_deep_images_are_kept_at_full_depth_as_tiff(mixed_src, tmp_path, capsys):
    src, good, colour = mixed_src
    out = tmp_path / "out"
    assert run_script_main(PREPARE, capsys, src, out)[0] == 0
    written = {p.name for p in (out / "images").iterdir()}
    assert written == {"rgb8.png", "gray16.tif", "float.tif", "label32f.png"}
    gray16 = tifffile.imread(out / "images" / "gray16.tif")
    assert gray16.dtype == np.uint16
    assert np.array_equal(gray16, _nuclei_image(good["gray16"], np.uint16, 1))
    floats = tifffile.imread(out / "images" / "float.tif")
    assert floats.dtype == np.float32
    assert np.array_equal(floats, _nuclei_image(good["float"], np.float32, 1))
    rgb = cv2.imread(str(out / "images" / "rgb8.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(rgb, colour)


def test_strict_fails_in_one_line_and_writes_no_annotations(mixed_src, tmp_path, capsys):
    src, _, _ = mixed_src
    out = tmp_path / "out"
    code, captured = run_script_main(PREPARE, capsys, src, out, "--strict")
    assert code == 2
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("error: 4 problem(s)") and "report.json" in last
    assert "Traceback" not in captured.err
    assert (out / "report.json").is_file() and not (out / "annotations").exists()


def test_missing_layout_is_one_line(tmp_path, capsys):
    (tmp_path / "src" / "images").mkdir(parents=True)
    code, captured = run_script_main(PREPARE, capsys, tmp_path / "src", tmp_path / "out")
    assert code == 2 and "no images/ folder beside a masks/ folder" in captured.err


def _training_src(root: Path, count: int = 5) -> Path:
    for k in range(count):
        labels = _labels((96, 96), 10 + k, dtype=np.uint16)
        _write_png(root / "images" / f"cells{k}.png", _nuclei_image(labels))
        _write_tif(root / "masks" / f"cells{k}_masks.tif", labels)
    return root


def test_split_is_seeded_and_independent_of_order(tmp_path, capsys):
    src = _training_src(tmp_path / "src", count=10)
    splits = []
    for seed, out in ((1, "a"), (1, "b"), (2, "c")):
        assert run_script_main(PREPARE, capsys, src, tmp_path / out, "--val-fraction", "0.3",
                               "--seed", seed)[0] == 0
        splits.append({img["file_name"] for img in _coco(tmp_path / out, "val")["images"]})
    assert len(splits[0]) == 3 and splits[0] == splits[1] and splits[0] != splits[2]


def test_register_nuclei_coco_sets_what_the_evaluators_need(tmp_path, capsys):
    src = _training_src(tmp_path / "src")
    assert run_script_main(PREPARE, capsys, src, tmp_path / "out", "--val-fraction", "0.4")[0] == 0
    register_nuclei_coco("my_cells_val", tmp_path / "out" / "annotations" / "instances_val.json",
                         tmp_path / "out" / "images")
    try:
        records = DatasetCatalog.get("my_cells_val")
        assert len(records) == 2 and all(len(r["annotations"]) == 4 for r in records)
        assert MetadataCatalog.get("my_cells_val").thing_classes == ["nucleus"]
        evaluator = Trainer.build_evaluator(load_config(QUICK_PP), "my_cells_val",
                                            str(tmp_path / "eval"))
        assert any(isinstance(e, NucleiEvaluator) for e in evaluator._evaluators)
    finally:
        DatasetCatalog.remove("my_cells_val")
        MetadataCatalog.remove("my_cells_val")


@pytest.mark.slow
def test_prepared_label_images_train_through_train_net_by_name(tmp_path, capsys):
    datasets = tmp_path / "datasets"
    src = _training_src(tmp_path / "src")
    assert run_script_main(PREPARE, capsys, src, datasets / "cells", "--val-fraction",
                           "0.2")[0] == 0
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", QUICK_PP,
         "DATASETS.TRAIN", "('cells_train',)", "DATASETS.TEST", "('cells_val',)",
         "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "DETECTRON2_DATASETS": str(datasets), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    assert "Evaluation results for segm" in proc.stderr + proc.stdout
    assert (out / "inference" / "cells_val").is_dir()


@pytest.mark.slow
def test_real_dsb2018_masks_as_label_images_match_the_dsb_converter(dsb2018_root, tmp_path,
                                                                    capsys):
    """Label images built from DSB2018's per-nucleus PNGs convert to the same RLE masks as
    prepare_dsb2018.py (images without overlapping nuclei, where a label image is exact)."""
    from maskrcnn_pp.data.dsb2018 import convert_dsb2018

    ids = ["84eeec681987753029eb83ea5f3ff7e8b5697783cdb2035f2882d40c9a3f1029",
           "220b37f4ca7cab486d2b71cd87a46ee7411a5aa142799d96ed98015ab5ba538a",
           "af576e8ec3a8d0b57eb6a311299e9e4fd2047970d3dd9d6f52e54ea6a91109da"]
    src = tmp_path / "labels"
    for image_id in ids:
        folder = dsb2018_root / image_id
        masks = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0
                 for p in sorted((folder / "masks").glob("*.png"))]
        labels = np.zeros(masks[0].shape, np.uint16)
        for number, mask in enumerate(masks, start=1):
            labels[mask] = number
        (src / "images").mkdir(parents=True, exist_ok=True)
        (src / "images" / f"{image_id}.png").write_bytes(
            (folder / "images" / f"{image_id}.png").read_bytes())
        _write_tif(src / "masks" / f"{image_id}_masks.tif", labels)
    for image_id in ids:
        shutil.copytree(dsb2018_root / image_id, tmp_path / "dsb" / image_id)
    assert run_script_main(PREPARE, capsys, src, tmp_path / "a", "--val-fraction", "0")[0] == 0
    convert_dsb2018(tmp_path / "dsb", tmp_path / "b", val_fraction=0, progress=False)

    def masks_by_image(out: Path) -> dict[str, list[str]]:
        coco = _coco(out, "train")
        names = {img["id"]: Path(img["file_name"]).stem for img in coco["images"]}
        found: dict[str, list[str]] = {}
        for ann in coco["annotations"]:
            found.setdefault(names[ann["image_id"]], []).append(ann["segmentation"]["counts"])
        return {k: sorted(v) for k, v in found.items()}

    assert masks_by_image(tmp_path / "a") == masks_by_image(tmp_path / "b")
