"""tools/eval_nuclei.py end to end: a table and a JSON file, or one error line and exit 2."""
from __future__ import annotations

import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

from tests.helpers import ROOT

EVAL = ROOT / "tools" / "eval_nuclei.py"
SHAPE = (32, 32)


def _rle(y: int, x: int, size: int) -> dict:
    mask = np.zeros(SHAPE, np.uint8)
    mask[y:y + size, x:x + size] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _write_inputs(folder: Path) -> dict[str, Path]:
    """GT of two images (two nuclei, then one) and files for each kind of mistake."""
    gt = {"images": [{"id": i, "file_name": f"{i}.png", "height": SHAPE[0], "width": SHAPE[1]}
                     for i in (1, 2)],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 64,
               "bbox": [2, 2, 8, 8], "segmentation": _rle(2, 2, 8)},
              {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 36,
               "bbox": [20, 20, 6, 6], "segmentation": _rle(20, 20, 6)},
              {"id": 3, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 25,
               "bbox": [5, 5, 5, 5], "segmentation": _rle(5, 5, 5)}],
          "categories": [{"id": 1, "name": "nucleus"}]}
    # Image 1: both nuclei found; image 2: nothing found.
    pred = [{"image_id": 1, "category_id": 1, "segmentation": _rle(2, 2, 8), "score": 0.9},
            {"image_id": 1, "category_id": 1, "segmentation": _rle(20, 20, 6), "score": 0.8}]
    files = {"gt": folder / "gt.json", "pred": folder / "pred.json",
             "truncated": folder / "truncated.json", "not_coco": folder / "not_coco.json",
             "stray": folder / "stray.json"}
    files["gt"].write_text(json.dumps(gt))
    files["pred"].write_text(json.dumps(pred))
    files["truncated"].write_text(json.dumps(gt)[:100])
    files["not_coco"].write_text(json.dumps({"hello": "world"}))
    files["stray"].write_text(json.dumps([dict(pred[0], image_id=7)]))
    return files


CASES = {
    # name: (args built from the files, expected error text)
    "ok": (lambda f: ["--gt", f["gt"], "--pred", f["pred"], "--json", f["gt"].parent / "o.json"],
           None),
    "missing_pred": (lambda f: ["--gt", f["gt"], "--pred", f["gt"].parent / "nope.json"],
                     "nope.json: file not found"),
    "truncated_gt": (lambda f: ["--gt", f["truncated"], "--pred", f["pred"]],
                     "truncated.json: not valid JSON"),
    "not_coco_gt": (lambda f: ["--gt", f["not_coco"], "--pred", f["pred"]],
                    "not_coco.json: not a COCO instances file"),
    "gt_as_pred": (lambda f: ["--gt", f["gt"], "--pred", f["gt"]],
                   "gt.json: not a COCO results file"),
    "unknown_image": (lambda f: ["--gt", f["gt"], "--pred", f["stray"]],
                      "stray.json: detection 0 has image_id 7, which is not in the ground truth"),
}


# Run as real processes (the script's own entry point, with Detectron2 imported); the other
# mistakes go through the same ``main`` in-process, which is much faster.
SUBPROCESS_CASES = ("ok", "truncated_gt", "unknown_image")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return _write_inputs(tmp_path_factory.mktemp("eval_cli"))


@pytest.fixture(scope="module")
def runs(inputs) -> dict[str, subprocess.CompletedProcess]:
    """The subprocess cases, started together so their imports overlap."""
    procs = {name: subprocess.Popen(
        [sys.executable, str(EVAL), *map(str, CASES[name][0](inputs))], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in SUBPROCESS_CASES}
    done = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return done


@pytest.mark.slow
def test_table_and_json(runs, inputs):
    result = runs["ok"]
    assert result.returncode == 0, result.stderr
    # image 1 scores 1, image 2 scores 0
    assert re.search(r"^\| dsb_map +\| +50\.00 \|$", result.stdout, re.M)
    assert re.search(r"^\| precision \(%\) +(\| 50\.00 +){10}\|$", result.stdout, re.M)
    # the report says what each number is
    notes = result.stdout.split("|\n\n")[-1]
    for line in ("dsb_map: DSB2018 score: TP / (TP + FP + FN)", "aji: Aggregated Jaccard Index",
                 "dice: Dice of the union of true nuclei and the union of predicted nuclei",
                 "f1_50: F1 = 2TP / (2TP + FP + FN), matched one to one at IoU > 0.5",
                 "segm_AP: COCO mask AP", "All in percent."):
        assert line in notes, notes
    assert "0.50:0.05:0.95" in notes and "detections with score >= 0.5" in " ".join(notes.split())
    saved = json.loads((inputs["gt"].parent / "o.json").read_text())
    assert saved["dsb_map"] == 0.5 and saved["num_images"] == 2
    assert [m["dsb_map"] for m in saved["per_image"]] == [1.0, 0.0]
    assert not list(inputs["gt"].parent.glob(".o.json.*"))   # no temporary file left behind


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in SUBPROCESS_CASES if CASES[c][1]])
def test_bad_input_one_line_exit_2(runs, case):
    result = runs[case]
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0])
    assert CASES[case][1] in errors[0]
    assert result.stdout == ""


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][1] and c not in SUBPROCESS_CASES])
def test_bad_input_in_process(inputs, capsys, case):
    main = runpy.run_path(str(EVAL), run_name="eval_nuclei")["main"]
    make_args, error = CASES[case]
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in make_args(inputs)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert error in captured.err


def test_help_explains_every_metric(capsys):
    """--help says what each metric is, how it is averaged, and its unit."""
    main = runpy.run_path(str(EVAL), run_name="eval_nuclei")["main"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for metric in ("dsb_map", "aji", "dice", "iou", "f1_50", "segm_AP"):
        assert f"{metric}: " in text
    assert "TP / (TP + FP + FN)" in text and "t = 0.50:0.05:0.95" in text
    assert "union of true nuclei and the union of predicted nuclei" in text
    assert "means over images" in text and "All in percent" in text
