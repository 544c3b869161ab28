"""The one preparer framework (data/prepare/base.py, cli/prepare.py): every preparer has the
same command line, report keys, split rules, --strict and output guarantees; named splits,
--keep-in-train, symlinked sources, and bounded memory on large archive members."""
from __future__ import annotations

import json
import os
import tracemalloc
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from detectron2.data import DatasetCatalog, MetadataCatalog

from maskrcnn_pp.data.instances import register_prepared_instances
from maskrcnn_pp.data.prepare import convert_dsb2018, convert_instances, prepare_polyp
from maskrcnn_pp.data.prepare.base import read_sample_file, split_val_ids
from maskrcnn_pp.data.sources import source_root
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import (
    ROOT,
    liver_phantom,
    nodule_phantom,
    run_script_main,
    write_lits,
    write_nodule,
)

SCRIPTS = {name: ROOT / "datasets" / f"prepare_{name}.py"
           for name in ("dsb2018", "instances", "nuclei_patches", "polyp", "liver", "nodule")}
REPORT_KEYS = {"preparer", "source", "output", "settings", "items_found", "items_converted",
               "items_skipped", "samples", "objects", "problems", "problem_counts", "warnings"}
SHAPE = (24, 32)


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)


def _disk(shape, y: int, x: int, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2


def write_dsb(root: Path, count: int, start: int = 0) -> Path:
    """``count`` DSB2018-style sample folders (two nuclei each) named ``img00``, ``img01``..."""
    for k in range(start, start + count):
        folder = root / f"img{k:02d}"
        image = np.full((*SHAPE, 3), 30, np.uint8)
        for m, (y, x) in enumerate(((6, 8), (16, 22))):
            mask = _disk(SHAPE, y, x, 3 + k % 3)
            image[mask] = 200
            _png(folder / "masks" / f"m{m}.png", mask.astype(np.uint8) * 255)
        _png(folder / "images" / f"{folder.name}.png", image)
    return root


def write_label_images(root: Path, count: int) -> Path:
    for k in range(count):
        labels = np.zeros(SHAPE, np.uint16)
        labels[_disk(SHAPE, 8, 8, 4)] = 3
        labels[_disk(SHAPE, 14, 22, 3 + k % 2)] = 9
        _png(root / "images" / f"cells{k}.png", np.where(labels > 0, 200, 20).astype(np.uint8))
        _png(root / "masks" / f"cells{k}_masks.png", labels)
    return root


def write_polyp(root: Path, count: int) -> Path:
    for k in range(count):
        mask = _disk((32, 32), 16, 16, 6 + k % 3).astype(np.uint8) * 255
        _png(root / "masks" / f"f{k}.png", mask)
        _png(root / "images" / f"f{k}.png", np.dstack([mask // 2 + 20] * 3))
    return root


def _sources(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    """A small source of every preparer, and its own flags."""
    hu, seg = liver_phantom()
    for number in (0, 1):
        write_lits(tmp / "lits", number, hu, seg)
    crop, label = nodule_phantom(size=16, radius=3)
    for name in ("a", "b"):
        write_nodule(tmp / "crops", name, crop, label)
    dsb = write_dsb(tmp / "dsb", 4)
    return {"dsb2018": (dsb, []), "instances": (write_label_images(tmp / "cells", 4), []),
            "nuclei_patches": (dsb, ["--patch-size", "16"]),
            "polyp": (write_polyp(tmp / "kvasir", 4), ["--name", "kvasir", "--size", "16"]),
            "liver": (tmp / "lits", ["--size", "16"]), "nodule": (tmp / "crops", ["--size", "16"])}


def _coco(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


# --------------------------------------------------------------------------- one framework


def test_every_preparer_has_one_command_line_and_one_report_format(tmp_path, capsys):
    for name, (source, flags) in _sources(tmp_path).items():
        out = tmp_path / "datasets" / name
        code, captured = run_script_main(SCRIPTS[name], capsys, source, out,
                                         "--val-fraction", "0.5", "--seed", "3", *flags)
        assert code == 0, (name, captured.err)
        report = json.loads((out / "report.json").read_text())
        assert set(report) == REPORT_KEYS, name
        assert report["preparer"] == name and report["output"] == str(out)
        assert report["items_found"] == report["items_converted"] == (
            2 if name in ("liver", "nodule") else 4), name
        assert report["settings"]["val_fraction"] == 0.5 and report["settings"]["seed"] == 3
        assert {"split", "keep_in_train", "strict"} <= set(report["settings"])
        assert set(report["samples"]) == {"train", "val"} and report["samples"]["val"] > 0
        assert (report["objects"] is None) == (name not in ("dsb2018", "instances")), name
        assert captured.out.startswith(f"{name}: {report['items_converted']} of "
                                       f"{report['items_found']} "), captured.out
        assert f"-> {out}: {report['samples']['train']} train / " in captured.out


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_val_fraction_is_checked_in_one_place(name, tmp_path, capsys):
    source, flags = {"polyp": (tmp_path, ["--name", "kvasir"])}.get(name, (tmp_path, []))
    code, captured = run_script_main(SCRIPTS[name], capsys, source, tmp_path / "out",
                                     "--val-fraction", "1", *flags)
    assert code == 2
    assert captured.err == "error: --val-fraction must be in [0, 1), got 1.0\n"
    assert not (tmp_path / "out").exists()


def test_the_same_groups_split_the_same_way_in_every_preparer(tmp_path):
    """DSB2018 images and their nuclei patches land in the same split (one split rule)."""
    dsb = write_dsb(tmp_path / "dsb", 10)
    convert_dsb2018(dsb, tmp_path / "instances", val_fraction=0.3, seed=5, progress=False)
    from maskrcnn_pp.data.prepare import prepare_nuclei_patches
    prepare_nuclei_patches(dsb, tmp_path / "root", patch_size=16, val_fraction=0.3, seed=5)
    val_images = {Path(i["file_name"]).stem for i in _coco(tmp_path / "instances", "val")["images"]}
    val_patches = {p.name.rsplit("_", 2)[0]
                   for p in (tmp_path / "root" / "nuclei_patches" / "val" / "images").iterdir()}
    assert len(val_images) == 3 and val_images == val_patches


def test_deprecated_spelling_works_with_one_warning_line(tmp_path, capsys):
    crop, label = nodule_phantom(size=16, radius=3)
    write_nodule(tmp_path / "crops", "a", crop, label)
    new = tmp_path / "new" / "nodule"
    assert run_script_main(SCRIPTS["nodule"], capsys, tmp_path / "crops", new, "--size", "16",
                           "--val-fraction", "0")[0] == 0
    code, captured = run_script_main(SCRIPTS["nodule"], capsys, "--source", tmp_path / "crops",
                                     "--output", tmp_path / "old", "--size", "16",
                                     "--val-fraction", "0")
    assert code == 0, captured.err
    warnings = [line for line in captured.err.splitlines() if "deprecated" in line]
    assert warnings == [
        "FutureWarning: --source is deprecated: give the source as the first argument, SRC",
        f"FutureWarning: --output is deprecated: give the data set folder as OUT (here "
        f"{tmp_path / 'old' / 'nodule'})"]
    old = tmp_path / "old" / "nodule"
    files = sorted(p.relative_to(new) for p in new.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(old) for p in old.rglob("*") if p.is_file())
    for path in files:
        if path.name != "report.json":
            assert (new / path).read_bytes() == (old / path).read_bytes(), path


def test_default_out_is_the_preparer_folder_under_detectron2_datasets(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    cells = write_label_images(tmp_path / "my_cells", 2)
    assert run_script_main(SCRIPTS["instances"], capsys, cells)[0] == 0
    assert (tmp_path / "d2" / "my_cells" / "annotations" / "instances_train.json").is_file()


# --------------------------------------------------------------------------- output rules


def test_strict_leaves_only_the_report_for_every_preparer(tmp_path, capsys):
    source = write_polyp(tmp_path / "kvasir", 3)
    out = tmp_path / "polyp_kvasir"
    assert run_script_main(SCRIPTS["polyp"], capsys, source, out, "--name", "kvasir",
                           "--size", "16")[0] == 0
    _png(source / "masks" / "f1.png", np.zeros((32, 32), np.uint8))   # a frame without polyp
    code, captured = run_script_main(SCRIPTS["polyp"], capsys, source, out, "--name", "kvasir",
                                     "--size", "16", "--strict")
    assert code == 2
    assert captured.err.splitlines()[-1] == (
        f"error: 1 problem(s) in {source} (--strict): no data set written, see "
        f"{out / 'report.json'}")
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["problems"] == [{"file": str(source / "masks" / "f1.png"), "kind": "empty_mask",
                                   "reason": "empty mask: every frame must show a polyp"}]


def test_a_failed_run_keeps_the_previous_data_set(tmp_path, capsys):
    out = tmp_path / "cells"
    assert run_script_main(SCRIPTS["instances"], capsys, write_label_images(tmp_path / "a", 3),
                           out)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = write_label_images(tmp_path / "b", 2)
    for mask in (bad / "masks").iterdir():
        _png(mask, np.zeros(SHAPE, np.uint16))                   # no objects anywhere
    code, captured = run_script_main(SCRIPTS["instances"], capsys, bad, out)
    assert code == 2
    assert captured.err.splitlines()[-1].startswith(f"error: {bad}: no usable images found (")
    assert "label image holds no object" in captured.err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging


def test_out_is_never_a_folder_a_preparer_did_not_write(tmp_path, capsys):
    cells = write_label_images(tmp_path / "cells", 2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, captured = run_script_main(SCRIPTS["instances"], capsys, cells, mine)
    assert code == 2 and captured.err == (
        f"error: OUT {mine}: holds files that no preparer wrote (no report.json); choose a new "
        "or empty folder (OUT is replaced whole)\n")
    assert (mine / "notes.txt").read_text() == "keep me"
    code, captured = run_script_main(SCRIPTS["instances"], capsys, cells / "images", cells)
    assert code == 2 and "holds the source" in captured.err
    assert len(list((cells / "masks").iterdir())) == 2


# --------------------------------------------------------------------------- splits


def test_named_split_writes_one_set_registered_as_folder_split(tmp_path, capsys):
    datasets = tmp_path / "datasets"
    cells = write_label_images(tmp_path / "cells", 5)
    code, captured = run_script_main(SCRIPTS["instances"], capsys, cells, datasets / "heldout",
                                     "--split", "test")
    assert code == 0, captured.err
    out = datasets / "heldout"
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["instances_test.json"]
    assert len(_coco(out, "test")["images"]) == 5
    assert json.loads((out / "report.json").read_text())["samples"] == {"test": 5}
    assert "5 test images" in captured.out
    register_prepared_instances(datasets)
    try:
        records = DatasetCatalog.get("heldout_test")
        assert len(records) == 5 and all(len(r["annotations"]) == 2 for r in records)
        meta = MetadataCatalog.get("heldout_test")
        assert meta.nuclei is True and meta.evaluator_type == "coco"
        assert "heldout_train" not in DatasetCatalog.list()
    finally:
        DatasetCatalog.remove("heldout_test")
        MetadataCatalog.remove("heldout_test")


@pytest.mark.parametrize("args,error", [
    (["--split", "test"], "--split needs OUT"),
    (["OUT", "--split", "test", "--val-fraction", "0.2"],
     "--split puts every item in one split: it excludes --val-fraction and --keep-in-train"),
    (["OUT", "--split", "Test set"], "--split must be a lower-case name"),
])
def test_named_split_mistakes_are_one_line(tmp_path, capsys, args, error):
    cells = write_label_images(tmp_path / "cells", 2)
    args = [tmp_path / "out" if a == "OUT" else a for a in args]
    code, captured = run_script_main(SCRIPTS["instances"], capsys, cells, *args)
    assert code == 2 and captured.err.startswith("error: ") and error in captured.err
    assert captured.err.count("\n") == 1


def test_semantic_preparers_refuse_a_named_split(tmp_path, capsys):
    code, captured = run_script_main(SCRIPTS["polyp"], capsys, write_polyp(tmp_path / "k", 2),
                                     tmp_path / "o", "--name", "kvasir", "--split", "test")
    assert code == 2 and captured.err == (
        "error: --split: the semantic data sets are registered as <folder>_train and "
        "<folder>_val only (maskrcnn_pp/data/catalog.py)\n")
    assert not (tmp_path / "o").exists()


def test_keep_in_train_draws_validation_among_the_other_images(tmp_path):
    dsb = write_dsb(tmp_path / "dsb", 20)
    first = tmp_path / "first"
    convert_dsb2018(dsb, first, val_fraction=0.2, seed=0, progress=False)
    first_val = {Path(i["file_name"]).stem for i in _coco(first, "val")["images"]}
    ids = [f"img{k:02d}" for k in range(20)]
    # a seed whose plain draw would take a validation image of the first split
    seed = next(s for s in range(1, 100) if split_val_ids(ids, 0.2, s) & first_val)
    second = tmp_path / "second"
    report = convert_dsb2018(dsb, second, val_fraction=0.2, seed=seed, progress=False,
                             keep_in_train=first / "annotations" / "instances_val.json")
    second_val = {Path(i["file_name"]).stem for i in _coco(second, "val")["images"]}
    assert len(first_val) == len(second_val) == 4 and not first_val & second_val
    assert report.samples == {"train": 16, "val": 4}
    assert report.settings["keep_in_train"] == str(first / "annotations" / "instances_val.json")
    # the draw is split_val_ids over the images not kept, so it can be reproduced
    assert split_val_ids(ids, 0.2, seed, frozenset(first_val)) == second_val


def test_keep_in_train_mistakes_are_named(tmp_path):
    dsb = write_dsb(tmp_path / "dsb", 5)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [{"id": 1, "file_name": "elsewhere.png"}]}))
    with pytest.raises(UserError, match=r"--keep-in-train .*other.json: none of its 1 images is "
                                        r"among the 5 converted images"):
        convert_dsb2018(dsb, tmp_path / "o", val_fraction=0.2, keep_in_train=other,
                        progress=False)
    all_but_one = tmp_path / "all.json"
    all_but_one.write_text(json.dumps({"images": [{"file_name": f"img{k:02d}.png"}
                                                  for k in range(4)]}))
    with pytest.raises(UserError, match="cannot draw 2 validation items from the 1 that "
                                        "--keep-in-train leaves"):
        convert_dsb2018(dsb, tmp_path / "o", val_fraction=0.4, keep_in_train=all_but_one,
                        progress=False)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(UserError, match="list.json: not a COCO instances file"):
        convert_dsb2018(dsb, tmp_path / "o", keep_in_train=tmp_path / "list.json")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- sources


def test_symlinked_sample_folders_and_layouts_are_followed(tmp_path):
    elsewhere = write_dsb(tmp_path / "elsewhere", 2)
    source = write_dsb(tmp_path / "stage1_train", 2, start=2)
    for folder in elsewhere.iterdir():
        (source / folder.name).symlink_to(folder, target_is_directory=True)
    (source / "loop").symlink_to(source, target_is_directory=True)   # a cycle ends
    report = convert_dsb2018(source, tmp_path / "dsb_out", val_fraction=0, progress=False)
    assert report.items_found == report.items_converted == 4
    assert sorted(i["file_name"] for i in _coco(tmp_path / "dsb_out", "train")["images"]) == [
        "img00.png", "img01.png", "img02.png", "img03.png"]

    wrapper = tmp_path / "wrapper"
    wrapper.mkdir()
    (wrapper / "cells").symlink_to(write_label_images(tmp_path / "cells", 2))
    report = convert_instances(wrapper, tmp_path / "cells_out", val_fraction=0, progress=False)
    assert report.items_converted == 2

    hu, seg = liver_phantom()
    write_lits(tmp_path / "scans", 7, hu, seg)
    (tmp_path / "lits").mkdir()
    (tmp_path / "lits" / "batch").symlink_to(tmp_path / "scans")
    from maskrcnn_pp.data.prepare import prepare_liver
    assert prepare_liver(tmp_path / "lits", tmp_path / "d", size=16).items_converted == 1


def test_no_label_images_is_refused_naming_the_folder(tmp_path, capsys):
    cells = write_label_images(tmp_path / "cells", 2)
    for mask in (cells / "masks").iterdir():
        mask.unlink()
    code, captured = run_script_main(SCRIPTS["instances"], capsys, cells, tmp_path / "out")
    assert code == 2
    assert captured.err == (
        f"error: {cells / 'masks'}: no label images for the 2 images of images/: expected "
        "masks/<name>.<ext> or masks/<name>_masks.<ext> (.png, .jpg, .jpeg, .tif, .tiff, "
        ".bmp), one integer id per object\n")
    assert not (tmp_path / "out").exists()


MEMBER_BYTES = 96 * 2**20


def test_archive_members_are_extracted_in_bounded_chunks(tmp_path):
    """A 96 MiB member is copied to disk without being held in memory: the peak of Python
    allocations stays below 4 MiB (a whole read would hold all 96)."""
    archive = tmp_path / "stage1_train.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("stage1_train/big/images/big.png", "w", force_zip64=True) as member:
            for _ in range(MEMBER_BYTES // 2**20):
                member.write(bytes(2**20))
    tracemalloc.start()
    try:
        with source_root(archive, scratch=tmp_path / "scratch") as root:
            extracted = root / "stage1_train" / "big" / "images" / "big.png"
            assert extracted.stat().st_size == MEMBER_BYTES
            assert root.parent == tmp_path / "scratch"          # beside the output, not /tmp
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert list((tmp_path / "scratch").iterdir()) == []


@pytest.mark.parametrize("suffix,copies", [(".bmp", 2), (".tif", 1)])
def test_large_members_are_decoded_from_the_file_not_a_copy_of_it(tmp_path, suffix, copies):
    """The converters' reader decodes from the file as a stream: its peak is the pixels it
    returns (BMP: twice, decoded in BGR then turned to RGB), where reading the whole file
    first adds the file's size, one more copy (measured: 3x and 2x)."""
    pixels = np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), np.uint8)
    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        path = tmp_path / f"image{suffix}"
        if suffix == ".tif":
            tifffile.imwrite(path, pixels)
        else:
            assert cv2.imwrite(str(path), pixels)
        zf.write(path, f"src/images/image{suffix}")
        path.unlink()
    with source_root(archive, scratch=tmp_path) as root:
        member = root / "src" / "images" / f"image{suffix}"
        assert os.path.getsize(member) >= pixels.nbytes
        tracemalloc.start()
        try:
            decoded = read_sample_file(member, "unreadable_image")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert decoded.shape == pixels.shape
    assert peak < (copies + 0.5) * pixels.nbytes, f"peak {peak / pixels.nbytes:.2f} x the pixels"


def test_polyp_api_keeps_its_signature(tmp_path):
    report = prepare_polyp(write_polyp(tmp_path / "k", 5), tmp_path / "root", size=16,
                           val_fraction=0.2, seed=0)
    assert (tmp_path / "root" / "polyp_kvasir" / "train" / "images").is_dir()
    assert report.samples == {"train": 4, "val": 1}
