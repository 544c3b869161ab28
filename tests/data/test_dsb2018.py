"""DSB2018 conversion (real images and synthetic bad input), CLI, and lazy registration."""
from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util

from maskrcnn_pp.data.catalog import SPLITS, DatasetNotPreparedError
from maskrcnn_pp.data.coco import register_coco_instances_lazy
from maskrcnn_pp.data.dsb2018 import convert_dsb2018, register_dsb2018
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT

PREPARE = ROOT / "datasets" / "prepare_dsb2018.py"

# Real images chosen to cover what the converter must handle: overlapping masks (the first
# two), one-nucleus images, colour (af576e8e), and every non-square / large size.
REAL_IDS = [
    "0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9",  # 256x256, overlap
    "1609b1b8480ee52652a644403b3f7d5511410a016750aa3b9a4c8ddb3e893e8e",  # 360x360, overlap
    "84eeec681987753029eb83ea5f3ff7e8b5697783cdb2035f2882d40c9a3f1029",  # 256x256, 1 nucleus
    "220b37f4ca7cab486d2b71cd87a46ee7411a5aa142799d96ed98015ab5ba538a",  # 320x256
    "af576e8ec3a8d0b57eb6a311299e9e4fd2047970d3dd9d6f52e54ea6a91109da",  # 320x256, colour
    "c15c652c08153fb781a5349123ab8f80bb2a8680a41eb8e89e547ae01b7a5441",  # 696x520
    "29ea4f6eb4545f43868a9b40a60000426bf8dfd9d062546656a37bd2a2aaf9ec",  # 640x512
    "c901794d1a421d52e5734500c0a2a8ca84651fb93b19cec2f411855e70cae339",  # 1388x1040
    "b1eb0123fe2d8c825694b193efb7b923d95effac9558ee4eaf3116374c2c94fe",  # 360x360
    "df53d0b6c2c4e45d759b2c474011e2b2b32552cd100ca4b22388ab9ca1750ee2",  # 347x260
]


def _read_source_masks(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0
            for p in sorted((folder / "masks").glob("*.png"))]


def _coco(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


def _png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


def _write_sample(root: Path, image_id: str, image: bytes | None, masks: list[bytes]) -> Path:
    folder = root / image_id
    (folder / "images").mkdir(parents=True)
    if image is not None:
        (folder / "images" / f"{image_id}.png").write_bytes(image)
    if masks:
        (folder / "masks").mkdir()
    for k, mask in enumerate(masks):
        (folder / "masks" / f"m{k}.png").write_bytes(mask)
    return folder


def _square(shape, y, x, size) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[y:y + size, x:x + size] = 255
    return mask


@pytest.fixture(scope="module")
def real_src(dsb2018_root, tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("dsb_src") / "stage1_train"
    for image_id in REAL_IDS:
        shutil.copytree(dsb2018_root / image_id, src / image_id)
    return src


@pytest.fixture(scope="module")
def real_out(real_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("dsb_out")
    report = convert_dsb2018(real_src, out, val_fraction=0.2, seed=0, progress=False)
    return out, report


@pytest.mark.slow
def test_real_masks_round_trip_exactly(real_src, real_out):
    out, report = real_out
    by_name = {}
    for split in ("train", "val"):
        data = _coco(out, split)
        for image in data["images"]:
            anns = sorted((a for a in data["annotations"] if a["image_id"] == image["id"]),
                          key=lambda a: a["id"])
            by_name[image["file_name"]] = (image, anns)
    assert sorted(by_name) == sorted(f"{i}.png" for i in REAL_IDS)

    total = 0
    for image_id in REAL_IDS:
        image, anns = by_name[f"{image_id}.png"]
        source_masks = _read_source_masks(real_src / image_id)
        assert (image["height"], image["width"]) == source_masks[0].shape
        assert len(anns) == len(source_masks)
        total += len(anns)
        for ann, source in zip(anns, source_masks):
            assert isinstance(ann["segmentation"]["counts"], str)
            decoded = mask_util.decode(ann["segmentation"]).astype(bool)
            np.testing.assert_array_equal(decoded, source)
            ys, xs = np.nonzero(source)
            assert ann["area"] == source.sum()
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1]
            assert ann["iscrowd"] == 0 and ann["category_id"] == 1
    assert report.objects == total
    assert _coco(out, "train")["categories"] == [{"id": 1, "name": "nucleus"}]


@pytest.mark.slow
def test_real_images_become_rgb_without_alpha(real_src, real_out):
    out, _ = real_out
    for image_id in (REAL_IDS[0], REAL_IDS[4], REAL_IDS[7]):
        source = cv2.imread(str(real_src / image_id / "images" / f"{image_id}.png"),
                            cv2.IMREAD_UNCHANGED)
        assert source.shape[2] == 4
        converted = cv2.imread(str(out / "images" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(converted, source[..., :3])


@pytest.mark.slow
def test_real_report_counts_overlaps(real_src, real_out):
    out, report = real_out
    expected = {}
    for image_id in REAL_IDS:
        coverage = np.sum(_read_source_masks(real_src / image_id), axis=0)
        if (coverage > 1).any():
            expected[image_id] = int((coverage > 1).sum())
    assert set(expected) == set(REAL_IDS[:2])
    saved = json.loads((out / "report.json").read_text())
    assert {w["file"]: (w["kind"], w["reason"]) for w in saved["warnings"]} == {
        str(real_src / image_id): ("overlapping_masks",
                                   f"{pixels} pixel(s) lie in more than one mask")
        for image_id, pixels in expected.items()}
    assert saved["items_found"] == saved["items_converted"] == len(REAL_IDS)
    assert saved["problems"] == [] and saved["items_skipped"] == 0
    assert saved["samples"] == {"train": 8, "val": 2}


@pytest.mark.slow
def test_split_is_deterministic_and_disjoint(real_src, real_out, tmp_path):
    out, _ = real_out
    train, val = _coco(out, "train"), _coco(out, "val")
    image_ids = [i["id"] for i in train["images"] + val["images"]]
    ann_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(set(image_ids)) == len(REAL_IDS) and len(set(ann_ids)) == len(ann_ids)

    convert_dsb2018(real_src, tmp_path / "same", val_fraction=0.2, seed=0, progress=False)
    for split in ("train", "val"):
        assert _coco(tmp_path / "same", split) == _coco(out, split)
    convert_dsb2018(real_src, tmp_path / "other", val_fraction=0.2, seed=1, progress=False)
    names = {i["file_name"] for i in val["images"]}
    assert {i["file_name"] for i in _coco(tmp_path / "other", "val")["images"]} != names

    convert_dsb2018(real_src, tmp_path / "all", val_fraction=0.0, progress=False)
    assert len(_coco(tmp_path / "all", "train")["images"]) == len(REAL_IDS)
    assert _coco(tmp_path / "all", "val")["images"] == []
    assert _coco(tmp_path / "all", "val")["annotations"] == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archives_convert_like_folders(real_src, tmp_path, kind):
    picked = REAL_IDS[:3]
    folder = tmp_path / "folder" / "stage1_train"
    for image_id in picked:
        shutil.copytree(real_src / image_id, folder / image_id)
    archive = tmp_path / f"stage1_train.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted(folder.rglob("*")):
                zf.write(path, path.relative_to(folder.parent))
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(folder, arcname="stage1_train")
    convert_dsb2018(folder, tmp_path / "from_folder", progress=False)
    report = convert_dsb2018(archive, tmp_path / "from_archive", progress=False)
    assert report.items_converted == 3
    for split in ("train", "val"):
        assert _coco(tmp_path / "from_archive", split) == _coco(tmp_path / "from_folder", split)


def test_unreadable_or_missing_source_is_a_user_error(tmp_path):
    broken = tmp_path / "stage1_train.zip"
    broken.write_bytes(b"this is not an archive")
    with pytest.raises(UserError, match="cannot read archive .*stage1_train.zip"):
        convert_dsb2018(broken, tmp_path / "out", progress=False)
    truncated = tmp_path / "stage1_train.tar.gz"
    with tarfile.open(truncated, "w:gz") as tf:
        payload = tmp_path / "payload.bin"
        payload.write_bytes(np.random.default_rng(0).bytes(200_000))
        tf.add(payload, arcname="stage1_train/x/images/x.png")
    truncated.write_bytes(truncated.read_bytes()[:50_000])
    with pytest.raises(UserError, match="cannot read archive .*stage1_train.tar.gz"):
        convert_dsb2018(truncated, tmp_path / "out", progress=False)
    with pytest.raises(UserError, match="does not exist"):
        convert_dsb2018(tmp_path / "nowhere", tmp_path / "out", progress=False)
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(UserError, match="no image folders .* found in .*empty_folder"):
        convert_dsb2018(tmp_path / "empty_folder", tmp_path / "out", progress=False)


# --------------------------------------------------------------------------- bad input

SHAPE = (12, 16)


@pytest.fixture
def bad_src(tmp_path) -> Path:
    """One good sample beside one of each problem the converter must survive."""
    src = tmp_path / "src"
    gray = np.arange(np.prod(SHAPE), dtype=np.uint8).reshape(SHAPE)
    rgba = np.dstack([gray, gray // 2, gray // 3, np.full(SHAPE, 255, np.uint8)])
    good_masks = [_png(_square(SHAPE, 1, 1, 4)), _png(_square(SHAPE, 4, 4, 4))]  # overlap 1 px
    _write_sample(src, "good_rgba", _png(rgba), good_masks)
    gray16 = np.full(SHAPE, 1000, np.uint16)
    gray16[0, 0], gray16[0, 1] = 3000, 2000
    _write_sample(src, "gray16", _png(gray16), [_png(_square(SHAPE, 5, 5, 3))])
    _write_sample(src, "corrupt_image", b"\x89PNG\r\n\x1a\n garbage",
                  [_png(_square(SHAPE, 0, 0, 2))])
    truncated = _png(_square(SHAPE, 0, 0, 5))[:30]
    _write_sample(src, "corrupt_mask", _png(gray), [_png(_square(SHAPE, 0, 0, 2)), truncated])
    _write_sample(src, "size_mismatch", _png(gray), [_png(_square((16, 12), 0, 0, 3))])
    _write_sample(src, "no_masks", _png(gray), [])
    _write_sample(src, "empty_mask", _png(gray),
                  [_png(np.zeros(SHAPE, np.uint8)), _png(_square(SHAPE, 2, 2, 3))])
    return src


def test_bad_input_is_skipped_and_reported(bad_src, tmp_path):
    out = tmp_path / "out"
    report = convert_dsb2018(bad_src, out, val_fraction=0.0, progress=False)
    problems = {(Path(p.file).relative_to(bad_src).as_posix(), p.kind) for p in report.problems}
    assert problems == {
        ("corrupt_image/images/corrupt_image.png", "unreadable_image"),
        ("corrupt_mask/masks/m1.png", "unreadable_mask"),
        ("size_mismatch/masks/m0.png", "size_mismatch"),
        ("no_masks", "no_masks"),
        ("empty_mask/masks/m0.png", "empty_mask"),
    }
    train = _coco(out, "train")
    assert sorted(i["file_name"] for i in train["images"]) == [
        "empty_mask.png", "good_rgba.png", "gray16.png"]
    per_image = {i["file_name"]: [a for a in train["annotations"] if a["image_id"] == i["id"]]
                 for i in train["images"]}
    assert [len(per_image[n]) for n in ("empty_mask.png", "good_rgba.png", "gray16.png")] == [
        1, 2, 1]
    saved = json.loads((out / "report.json").read_text())
    assert saved["items_found"] == 7 and saved["items_converted"] == 3
    assert saved["items_skipped"] == 4 and saved["objects"] == 4
    assert saved["warnings"] == [{"file": str(bad_src / "good_rgba"), "kind": "overlapping_masks",
                                  "reason": "1 pixel(s) lie in more than one mask"}]
    assert saved["problem_counts"]["empty_mask"] == 1

    rgb = cv2.imread(str(out / "images" / "good_rgba.png"), cv2.IMREAD_UNCHANGED)
    assert rgb.shape == (*SHAPE, 3)
    source = cv2.imread(str(bad_src / "good_rgba" / "images" / "good_rgba.png"),
                        cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(rgb, source[..., :3])
    # 16-bit grayscale: min..max (1000..3000) stretched to 0..255, repeated on 3 channels.
    gray8 = cv2.imread(str(out / "images" / "gray16.png"), cv2.IMREAD_UNCHANGED)
    assert gray8.shape == (*SHAPE, 3) and gray8.dtype == np.uint8
    assert gray8[0, 0].tolist() == [255] * 3 and gray8[0, 1].tolist() == [128] * 3
    assert gray8[5, 5].tolist() == [0] * 3


def _run_prepare(*args: str) -> subprocess.CompletedProcess:
    """The preparer's run, its output decoded as written (text mode would turn carriage
    returns into newlines)."""
    done = subprocess.run([sys.executable, str(PREPARE), *args], capture_output=True, cwd=ROOT,
                          timeout=300)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


@pytest.mark.slow
def test_cli_names_bad_files_and_exits_zero(bad_src, tmp_path):
    result = _run_prepare(str(bad_src), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    for name in ("corrupt_image.png", "corrupt_mask/masks/m1.png", "size_mismatch/masks/m0.png",
                 "no_masks", "empty_mask/masks/m0.png"):
        assert name in result.stderr
    assert "dsb2018: 100%" in result.stderr          # the progress bar,
    assert "\r" not in result.stderr                  # as lines: stderr is not a terminal
    assert "3 of 7 images" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_strict_fails_without_annotations(bad_src, tmp_path):
    out = tmp_path / "out"
    result = _run_prepare(str(bad_src), str(out), "--strict")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0])
    assert errors[0].startswith("error: 5 problem(s)") and "--strict" in errors[0]
    assert (out / "report.json").is_file()
    assert not (out / "annotations").exists()
    assert "Traceback" not in result.stderr


def test_cli_missing_source_one_line_exit_2(tmp_path, capsys):
    main = runpy.run_path(str(PREPARE), run_name="prepare_dsb2018")["main"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.zip"), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: source {tmp_path / 'missing.zip'} does not exist (expected a DSB2018 "
        "stage1_train folder, or a .zip / .tar.gz / .tar of one)\n")


@pytest.mark.slow
def test_strict_passes_on_clean_real_data(real_src, tmp_path):
    report = convert_dsb2018(real_src, tmp_path / "out", strict=True, progress=False)
    assert report.problems == [] and len(report.warnings) == 2   # overlaps are not errors


# --------------------------------------------------------------------------- registration


@pytest.fixture
def restore_dsb2018_registration():
    yield
    register_dsb2018()


@pytest.mark.slow
def test_registration_is_lazy_and_explains_missing_files(tmp_path, real_out,
                                                          restore_dsb2018_registration):
    root = tmp_path / "datasets" / "dsb2018"
    register_dsb2018(root)               # nothing exists yet: registering must not read
    meta = MetadataCatalog.get("dsb2018_val")
    assert meta.thing_classes == ["nucleus"] and meta.evaluator_type == "coco"
    assert meta.json_file == str(root / "annotations" / "instances_val.json")
    with pytest.raises(DatasetNotPreparedError) as err:
        DatasetCatalog.get("dsb2018_train")
    assert isinstance(err.value, FileNotFoundError)
    assert f"python datasets/prepare_dsb2018.py PATH/TO/stage1_train.zip {root}" in str(
        err.value)
    assert "instances_train.json" in str(err.value)

    out, _ = real_out
    shutil.copytree(out, root)
    dicts = DatasetCatalog.get("dsb2018_val")
    assert len(dicts) == 2
    assert dicts[0]["file_name"].startswith(str(root / "images"))
    assert all(a["category_id"] == 0 and isinstance(a["segmentation"], dict)
               for a in dicts[0]["annotations"])


def test_default_root_follows_detectron2_datasets(monkeypatch, tmp_path,
                                                  restore_dsb2018_registration):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_dsb2018()
    assert MetadataCatalog.get("dsb2018_train").image_root == str(tmp_path / "dsb2018" / "images")


def test_registration_is_idempotent(restore_dsb2018_registration):
    register_dsb2018()                   # what a second import of the module does
    register_dsb2018()
    assert "dsb2018_train" in DatasetCatalog.list() and "dsb2018_val" in DatasetCatalog.list()
    register_coco_instances_lazy("dsb2018_test_twice", "a.json", "img")
    register_coco_instances_lazy("dsb2018_test_twice", "b.json", "img")
    assert MetadataCatalog.get("dsb2018_test_twice").json_file == "b.json"
    DatasetCatalog.remove("dsb2018_test_twice")
    MetadataCatalog.remove("dsb2018_test_twice")


# --------------------------------------------------------------------------- study splits


@pytest.mark.slow
def test_confirmation_split_of_the_real_data(dsb2018_root, tmp_path, capsys, monkeypatch):
    """Issue #20 item 6: 66 images drawn with seed 1 from the 598 images of dsb2018_train
    (none of dsb2018_val) validate the confirmation study, the other 598 train; the folder
    registers itself as dsb2018_split1_train / _val, with the nuclei metrics."""
    from maskrcnn_pp.data.instances import register_prepared_instances
    from maskrcnn_pp.engine import load_config
    from maskrcnn_pp.engine.trainer import Trainer
    from maskrcnn_pp.evaluation.nuclei import NucleiEvaluator
    from tests.helpers import run_script_main

    datasets = tmp_path / "datasets"
    first = convert_dsb2018(dsb2018_root, datasets / "dsb2018", val_fraction=0.1, seed=0,
                            progress=False)
    code, captured = run_script_main(
        PREPARE, capsys, dsb2018_root, datasets / "dsb2018_split1", "--val-fraction", "0.1",
        "--seed", "1", "--keep-in-train",
        datasets / "dsb2018" / "annotations" / "instances_val.json")
    assert code == 0, captured.err[-2000:]
    assert first.samples == {"train": 598, "val": 66} and first.problems == []
    second = json.loads((datasets / "dsb2018_split1" / "report.json").read_text())
    assert second["samples"] == {"train": 598, "val": 66} and second["problems"] == []

    def names(folder: str, split: str) -> set[str]:
        return {i["file_name"] for i in _coco(datasets / folder, split)["images"]}

    assert not names("dsb2018", "val") & names("dsb2018_split1", "val")
    assert names("dsb2018_split1", "val") <= names("dsb2018", "train")
    assert names("dsb2018_split1", "train") == (names("dsb2018", "train")
                                                 - names("dsb2018_split1", "val")
                                                 | names("dsb2018", "val"))
    # the same annotations, only split differently
    assert (sorted(a["area"] for s in SPLITS for a in _coco(datasets / "dsb2018_split1",
                                                              s)["annotations"])
            == sorted(a["area"] for s in SPLITS for a in _coco(datasets / "dsb2018",
                                                                 s)["annotations"]))

    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets))
    register_prepared_instances()
    try:
        assert len(DatasetCatalog.get("dsb2018_split1_val")) == 66
        assert len(DatasetCatalog.get("dsb2018_split1_train")) == 598
        assert MetadataCatalog.get("dsb2018_split1_val").nuclei is True
        evaluator = Trainer.build_evaluator(
            load_config(str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")),
            "dsb2018_split1_val", str(tmp_path / "eval"))
        assert any(isinstance(e, NucleiEvaluator) for e in evaluator._evaluators)
    finally:
        for split in SPLITS:
            DatasetCatalog.remove(f"dsb2018_split1_{split}")
            MetadataCatalog.remove(f"dsb2018_split1_{split}")


def test_jpeg_masks_are_read_at_half_range_and_reported_lossy(tmp_path):
    """``masks/*.jpg`` are read, not ignored; JPEG ringing is not counted as nucleus."""
    truth = np.zeros((64, 64), np.uint8)
    cv2.circle(truth, (32, 32), 12, 255, -1)
    jpeg = cv2.imencode(".jpg", truth, [cv2.IMWRITE_JPEG_QUALITY, 75])[1].tobytes()
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    true_area = int((truth > 0).sum())
    assert (decoded > 0).sum() > 1.2 * true_area  # what "> 0" would have made of it
    sample = tmp_path / "src" / "s1"
    (sample / "images").mkdir(parents=True)
    (sample / "masks").mkdir()
    image = cv2.imencode(".png", np.full((64, 64, 3), 80, np.uint8))[1].tobytes()
    (sample / "images" / "s1.png").write_bytes(image)
    (sample / "masks" / "m0.jpg").write_bytes(jpeg)

    convert_dsb2018(tmp_path / "src", tmp_path / "out", val_fraction=0.0, progress=False)
    coco = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())
    assert [a["area"] for a in coco["annotations"]] == [int((decoded > 127).sum())]
    assert abs(coco["annotations"][0]["area"] - true_area) < 0.05 * true_area
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    lossy = [w for w in saved["warnings"] if w["kind"] == "lossy_mask"]
    assert [Path(w["file"]).name for w in lossy] == ["m0.jpg"]
