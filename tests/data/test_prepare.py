"""The semantic preparers (data/prepare/): phantoms in the LiTS / LIDC formats, real DSB2018
and polyp data, and the prepare CLIs."""
from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from maskrcnn_pp.data.prepare import (
    prepare_liver,
    prepare_nodule,
    prepare_nuclei_patches,
    prepare_polyp,
)
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT, liver_phantom, nodule_phantom, write_lits, write_nodule


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# ---------------------------------------------------------------- liver

def test_liver_slices_windowed_oriented_and_merged(tmp_path):
    hu, seg = liver_phantom()
    write_lits(tmp_path / "lits" / "batch1", 0, hu, seg)
    write_lits(tmp_path / "lits" / "batch2", 1, hu, seg, suffix=".nii")
    report = prepare_liver(tmp_path / "lits", tmp_path / "out", size=64, val_fraction=0.5)
    # Six slices with liver per scan; one scan per split.
    assert report.samples == {"train": 6, "val": 6} and report.problems == []
    root = tmp_path / "out" / "liver"
    assert json.loads((root / "report.json").read_text())["items_converted"] == 2
    names = sorted(p.name for p in (root / "train" / "labels").iterdir())
    assert len(names) == 6 and all(n.endswith(f"_z{z:04d}.png") for n, z in zip(names, range(1, 7)))
    image = read_png(root / "train" / "images" / names[0])
    label = read_png(root / "train" / "labels" / names[0])
    assert image.shape == label.shape == (64, 64) and image.dtype == np.uint8
    # Liver and tumour merge; window [-200, 250]: 60 HU -> 147, 20 HU -> 125, 40 -> 136.
    assert set(np.unique(label)) == {0, 1}
    assert label.sum() == (seg[:, :, 1] > 0).sum()
    assert set(np.unique(image[label == 1])) == {147, 125}
    assert set(np.unique(image[label == 0])) == {0, 136}
    # Radiological view: the patient's right (large x) on the image's left, anterior up.
    rows, cols = np.nonzero(label)
    assert cols.mean() < 32 and rows.mean() < 32


def test_liver_orientation_follows_the_affine(tmp_path):
    hu, seg = liver_phantom()
    write_lits(tmp_path / "ras", 0, hu, seg, affine=np.eye(4))
    flip_x = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip_x[0, 3] = hu.shape[0] - 1  # same voxel positions in the world, stored mirrored
    write_lits(tmp_path / "las", 0, hu[::-1].copy(), seg[::-1].copy(), affine=flip_x)
    for name in ("ras", "las"):
        prepare_liver(tmp_path / name, tmp_path / f"out_{name}", size=64, val_fraction=0)
    for kind in ("images", "labels"):
        for ras in sorted((tmp_path / "out_ras" / "liver" / "train" / kind).iterdir()):
            las = tmp_path / "out_las" / "liver" / "train" / kind / ras.name
            assert np.array_equal(read_png(ras), read_png(las))


def test_liver_bad_inputs_are_skipped_and_reported(tmp_path):
    hu, seg = liver_phantom()
    source = tmp_path / "lits"
    write_lits(source, 0, hu, seg)
    write_lits(source, 1, hu, seg[:, :, :4].copy())  # shape mismatch
    write_lits(source, 2, hu, np.zeros_like(seg))  # no liver
    write_lits(source, 3, hu, seg)
    (source / "segmentation-3.nii.gz").write_bytes(b"not a nifti file")  # unreadable
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(source / "volume-4.nii.gz"))  # no label
    report = prepare_liver(source, tmp_path / "out", size=32, val_fraction=0)
    reasons = {Path(item.file).name: item.reason for item in report.problems}
    assert set(reasons) == {"volume-1.nii.gz", "segmentation-2.nii.gz", "volume-3.nii.gz",
                            "volume-4.nii.gz"}
    assert "differ in shape" in reasons["volume-1.nii.gz"]
    assert reasons["segmentation-2.nii.gz"] == "no liver voxel"
    assert "segmentation-3.nii.gz: not a readable NIfTI" in reasons["volume-3.nii.gz"]
    assert "no segmentation-4" in reasons["volume-4.nii.gz"]
    assert report.samples["train"] == 6
    assert read_png(next((tmp_path / "out/liver/train/images").iterdir())).shape == (32, 32)


def test_failed_preparation_keeps_the_previous_data_set(tmp_path):
    hu, seg = liver_phantom()
    write_lits(tmp_path / "good", 0, hu, seg)
    write_lits(tmp_path / "bad", 0, hu, np.zeros_like(seg))
    prepare_liver(tmp_path / "good", tmp_path / "out", size=32, val_fraction=0)
    with pytest.raises(UserError, match="no usable CT volumes.*no liver voxel"):
        prepare_liver(tmp_path / "bad", tmp_path / "out", size=32, val_fraction=0)
    assert len(list((tmp_path / "out/liver/train/images").iterdir())) == 6
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["liver"]


# ---------------------------------------------------------------- nodules

def test_nodule_crops_windowed_padded_and_checked(tmp_path):
    source = tmp_path / "crops"
    hu, label = nodule_phantom(size=48)
    write_nodule(source, "n1", hu, label)
    write_nodule(source, "empty", hu, np.zeros_like(label))
    write_nodule(source, "mismatch", hu, label[:40].copy())
    report = prepare_nodule(source, tmp_path / "out", size=64, val_fraction=0)
    reasons = {Path(item.file).name: item.reason for item in report.problems}
    assert reasons == {"empty.nii.gz": "empty label: no nodule voxel",
                       "mismatch.nii.gz": "image (48, 48, 48) and label (40, 48, 48) differ "
                                          "in shape"}
    image = nib.load(str(tmp_path / "out/nodule/train/images/n1.nii.gz")).get_fdata()
    out_label = nib.load(str(tmp_path / "out/nodule/train/labels/n1.nii.gz")).get_fdata()
    assert image.shape == out_label.shape == (64, 64, 64)
    assert out_label.sum() == label.sum()
    # Padded by 8 on each side; window [-1000, 400]: -800 HU -> 36, 50 HU -> 191, pad -> 0.
    assert np.array_equal(out_label[8:56, 8:56, 8:56], label)
    assert set(np.unique(image[out_label == 1])) == {191}
    assert set(np.unique(image[8:56, 8:56, 8:56][label == 0])) == {36}
    assert image[:8].max() == 0
    report = prepare_nodule(source, tmp_path / "out", size=64, val_fraction=0, allow_empty=True)
    assert report.samples["train"] == 2


# ---------------------------------------------------------------- real data

@pytest.mark.slow
def test_nuclei_patches_reassemble_to_the_union_of_masks(tmp_path, dsb2018_root):
    folders = sorted(p for p in dsb2018_root.iterdir() if p.is_dir())[:3]
    source = tmp_path / "stage1_train"
    source.mkdir()
    for folder in folders:
        shutil.copytree(folder, source / folder.name)
    report = prepare_nuclei_patches(source, tmp_path / "out", val_fraction=0.34)
    assert report.items_converted == 3 and report.problems == []
    out = tmp_path / "out" / "nuclei_patches"
    for folder in folders:
        image = cv2.imread(str(folder / "images" / f"{folder.name}.png"), cv2.IMREAD_COLOR)
        union = np.zeros(image.shape[:2], np.uint8)
        for mask in (folder / "masks").glob("*.png"):
            union |= (cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
        rebuilt = np.full(union.shape, 255, np.uint8)
        rebuilt_image = np.zeros_like(image)
        patches = sorted(out.glob(f"*/labels/{folder.name}_*.png"))
        assert len({p.parts[-3] for p in patches}) == 1  # one image, one split
        for patch in patches:
            y, x = map(int, patch.stem.rsplit("_", 2)[1:])
            label = read_png(patch)
            assert label.shape == (96, 96)
            rebuilt[y:y + 96, x:x + 96] = label
            rebuilt_image[y:y + 96, x:x + 96] = read_png(patch.parent.parent / "images"
                                                         / patch.name)
        assert np.array_equal(rebuilt, union)
        assert np.array_equal(rebuilt_image, image)
    assert report.samples["val"] > 0 and report.samples["train"] > 0


@pytest.mark.slow
def test_nuclei_patches_from_an_archive(tmp_path, dsb2018_root):
    folder = sorted(p for p in dsb2018_root.iterdir() if p.is_dir())[0]
    archive = tmp_path / "small.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=f"stage1_train/{folder.name}")
    report = prepare_nuclei_patches(archive, tmp_path / "out", patch_size=128, stride=64,
                                    val_fraction=0)
    height, width = cv2.imread(str(folder / "images" / f"{folder.name}.png")).shape[:2]
    tiles = (len(range(0, height - 128 + 1, 64)) + ((height - 128) % 64 > 0)) * \
            (len(range(0, width - 128 + 1, 64)) + ((width - 128) % 64 > 0))
    assert report.samples == {"train": tiles, "val": 0}


def _polyp_subset(root: Path, stems: list[str], dest: Path) -> Path:
    for kind in ("images", "masks"):
        (dest / kind).mkdir(parents=True)
        for stem in stems:
            shutil.copy(root / kind / f"{stem}.jpg", dest / kind / f"{stem}.jpg")
    return dest


def test_kvasir_resized_and_thresholded(tmp_path, kvasir_root):
    stems = sorted(p.stem for p in (kvasir_root / "images").glob("*.jpg"))[:12]
    source = _polyp_subset(kvasir_root, stems, tmp_path / "Kvasir-SEG")
    cv2.imwrite(str(source / "masks" / f"{stems[0]}.jpg"),
                np.zeros((256, 256), np.uint8))  # a frame without polyp
    report = prepare_polyp(source, tmp_path / "out", name="kvasir", val_fraction=0.25)
    assert [Path(s.file).name for s in report.problems] == [f"{stems[0]}.jpg"]
    assert report.samples == {"train": 8, "val": 3}
    for label_path in (tmp_path / "out" / "polyp_kvasir").glob("*/labels/*.png"):
        label = read_png(label_path)
        image = read_png(label_path.parent.parent / "images" / label_path.name)
        assert label.shape == (224, 224) and image.shape == (224, 224, 3)
        assert set(np.unique(label)) <= {0, 1}
        source_mask = cv2.imread(str(source / "masks" / f"{label_path.stem}.jpg"), 0) > 127
        assert abs(label.mean() - source_mask.mean()) < 0.01


def test_polyp_from_the_released_archive_names_files_inside_it(tmp_path, kvasir_root):
    stems = sorted(p.stem for p in (kvasir_root / "images").glob("*.jpg"))[:4]
    source = _polyp_subset(kvasir_root, stems, tmp_path / "Kvasir-SEG")
    (source / "masks" / f"{stems[1]}.jpg").write_bytes(b"not a jpeg")
    archive = tmp_path / "kvasir-seg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="Kvasir-SEG")
    report = prepare_polyp(archive, tmp_path / "out", name="kvasir", size=32, val_fraction=0)
    assert report.samples == {"train": 3, "val": 0}
    assert [(p.file, p.reason) for p in report.problems] == [(
        f"{archive}:Kvasir-SEG/masks/{stems[1]}.jpg",
        "cannot be decoded as an image (corrupt, truncated or not one of .png, .jpg, .jpeg, "
        ".tif, .tiff, .bmp)")]


def test_polyp_source_layout_errors_are_named(tmp_path):
    for name in ("a", "b"):
        for kind in ("images", "masks"):
            (tmp_path / "two" / name / kind).mkdir(parents=True)
    with pytest.raises(UserError, match=r"several folders hold images/ and masks/ \(.*a, .*b\)"):
        prepare_polyp(tmp_path / "two", tmp_path / "out")
    (tmp_path / "none" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match="expected the folders images/ and masks/"):
        prepare_polyp(tmp_path / "none", tmp_path / "out")
    assert not (tmp_path / "out" / "polyp_kvasir").exists()


def test_clinicdb_split_by_video_sequence(tmp_path, clinicdb_root):
    # Frames 20..30 span sequences 1 (1-25) and 2 (26-50); 60..62 are sequence 3 (51-67).
    stems = [str(n) for n in [*range(20, 31), 60, 61, 62]]
    source = _polyp_subset(clinicdb_root, stems, tmp_path / "CVC-ClinicDB")
    report = prepare_polyp(source, tmp_path / "out", name="clinicdb", size=64,
                           val_fraction=0.34)
    assert report.items_converted == 14
    split_of = {p.stem: p.parts[-3]
                for p in (tmp_path / "out" / "polyp_clinicdb").glob("*/labels/*.png")}
    for sequence in ([20, 21, 22, 23, 24, 25], [26, 27, 28, 29, 30], [60, 61, 62]):
        assert len({split_of[str(n)] for n in sequence}) == 1
    assert set(split_of.values()) == {"train", "val"}


# ---------------------------------------------------------------- CLIs

def _cli_main(script: str):
    """``main`` of a datasets/ script, loaded in this process (fast: no second import)."""
    return runpy.run_path(str(ROOT / "datasets" / script), run_name="cli")["main"]


@pytest.mark.slow
def test_prepare_cli_user_error_exits_2_with_one_line(tmp_path):
    # fvcore warns about torch.jit.script on import; that line is not this CLI's output.
    result = subprocess.run(
        [sys.executable, "-W", "ignore::FutureWarning", str(ROOT / "datasets/prepare_liver.py"),
         "--source", str(tmp_path / "missing"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: source {tmp_path / 'missing'} does not exist (expected a folder or archive "
        "of LiTS volume-N / segmentation-N NIfTI files)"]


def test_prepare_cli_nothing_usable_exits_2(tmp_path, capsys):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        _cli_main("prepare_polyp.py")(["--name", "kvasir", str(tmp_path / "empty"),
                                       str(tmp_path / "out" / "polyp_kvasir")])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert len(stderr.splitlines()) == 1 and "no usable image/mask pairs" in stderr
    assert not (tmp_path / "out" / "polyp_kvasir").exists()


def test_prepare_nodule_cli_writes_report(tmp_path, capsys):
    hu, label = nodule_phantom(size=16, radius=3)
    write_nodule(tmp_path / "crops", "a", hu, label)
    _cli_main("prepare_nodule.py")([str(tmp_path / "crops"), str(tmp_path / "out" / "nodule"),
                                    "--size", "16", "--val-fraction", "0"])
    assert (f"nodule: 1 of 1 image/label crops converted -> {tmp_path / 'out' / 'nodule'}: "
            "1 train / 0 val crops; 0 problem(s)") in capsys.readouterr().out
    assert json.loads((tmp_path / "out/nodule/report.json").read_text())["samples"]["train"] == 1


def test_user_errors_are_named(tmp_path):
    with pytest.raises(UserError, match="--name must be"):
        prepare_polyp(tmp_path, name="asu-mayo")
    with pytest.raises(UserError, match=r"--val-fraction must be in \[0, 1\), got 1.0"):
        hu, seg = liver_phantom()
        write_lits(tmp_path / "lits", 0, hu, seg)
        prepare_liver(tmp_path / "lits", tmp_path / "out", val_fraction=1.0)
