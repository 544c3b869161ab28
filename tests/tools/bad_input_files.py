"""The files the bad-input suite's cases read (``tests/tools/test_bad_inputs.py``): valid
inputs and one file per kind of mistake, written once per test module."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import cv2
import nibabel as nib
import numpy as np
import tifffile
import torch
from pycocotools import mask as mask_util

from tests.helpers import ROOT

QUICK_PP = ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml"
SEMANTIC_2D = ROOT / "configs" / "quick_schedules" / "semantic_2d_quick.yaml"
BASELINE = ROOT / "configs" / "quick_schedules" / "mask_rcnn_baseline_synthetic.yaml"
TINY = ["SOLVER.IMS_PER_BATCH", "1", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN",
        "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "DATASETS.TEST", "()",
        "SOLVER.WARMUP_ITERS", "0"]
SHAPE = (32, 32)


def _rle(y: int, x: int, size: int, shape=SHAPE) -> dict:
    mask = np.zeros(shape, np.uint8)
    mask[y:y + size, x:x + size] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _ground_truth() -> dict:
    return {"images": [{"id": i, "file_name": f"{i}.png", "height": SHAPE[0],
                        "width": SHAPE[1]} for i in (1, 2)],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 64,
                 "bbox": [2, 2, 8, 8], "segmentation": _rle(2, 2, 8)},
                {"id": 2, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 25,
                 "bbox": [5, 5, 5, 5], "segmentation": _rle(5, 5, 5)}],
            "categories": [{"id": 1, "name": "nucleus"}]}


def _json_inputs() -> dict[str, object]:
    """Name -> content of every COCO file the cases read (valid ones, then one per mistake)."""
    gt = _ground_truth()
    good = {"image_id": 1, "category_id": 1, "segmentation": _rle(2, 2, 8), "score": 0.9}

    def pred(**change):
        return [good, {**good, **change}]

    def segm(**change):
        return pred(segmentation={**good["segmentation"], **change})

    def gt_with(images=None, annotation=None, index=0):
        data = json.loads(json.dumps(gt))
        if images is not None:
            data["images"] = images
        if annotation is not None:
            data["annotations"][index].update(annotation)
        return data

    image = gt["images"][0]
    return {
        "gt": gt, "pred": [good],
        "garbage_counts": segm(counts="garbage!!"),
        "huge_counts": segm(counts=[1000000000]),
        "short_counts": segm(counts=[10, 5]),
        "mixed_counts": segm(counts=[1, "a"]),
        "int_counts": segm(counts=5),
        "negative_counts": segm(counts=[-5, 1029]),
        "bad_char_counts": segm(counts="0\x01"),
        "cut_counts": segm(counts="P"),            # 'P' = 48 + 0x20: "more" bit, then nothing
        "wrong_size": pred(segmentation=_rle(1, 1, 4, (16, 16))),
        "size_string": segm(size="32x32"),
        "list_image_id": pred(image_id=[1]),
        "unknown_image": pred(image_id=7),
        "string_image_id": pred(image_id="1"),
        "unknown_category": pred(category_id=5),
        "nan_scores": [good, {**good, "score": float("nan")}, {**good, "score": float("nan")}],
        "inf_score": pred(score=float("inf")),
        "string_score": pred(score="0.9"),
        "bool_score": pred(score=True),
        "polygon_result": pred(segmentation=[[1, 1, 5, 1, 5, 5]]),
        "no_score": [{k: v for k, v in good.items() if k != "score"}],
        "no_images": {**gt, "images": [], "annotations": []},
        "gt_wrong_size": gt_with(annotation={"segmentation": _rle(1, 1, 4, (16, 16))}),
        "gt_garbage": gt_with(annotation={"segmentation": {"size": [32, 32],
                                                            "counts": "zzzzzzzzzz"}}, index=1),
        "gt_list_id": gt_with(images=[{**image, "id": [1]}]),
        "gt_repeated_id": gt_with(images=[image, image]),
        "gt_string_height": gt_with(images=[{**image, "height": "32"}, gt["images"][1]]),
        "gt_stray_annotation": gt_with(annotation={"image_id": 9}),
        "gt_repeated_ann_id": gt_with(annotation={"id": 1}, index=1),
        "gt_odd_polygon": gt_with(annotation={"segmentation": [[1, 1, 5, 1, 5]]}),
        "not_coco": {"hello": "world"},
    }


def write_inputs(root: Path) -> SimpleNamespace:
    f = SimpleNamespace(json={}, configs={})
    coco = root / "coco"
    coco.mkdir()
    for name, content in _json_inputs().items():
        f.json[name] = coco / f"{name}.json"
        f.json[name].write_text(json.dumps(content))
    f.json["truncated_pred"] = coco / "truncated_pred.json"
    f.json["truncated_pred"].write_text(json.dumps([{"image_id": 1}])[:10])
    f.json["binary"] = coco / "binary.json"
    f.json["binary"].write_bytes(b"\xff\xfe\x00\x81garbage")

    f.images = root / "images"
    f.images.mkdir()
    for i in (1, 2):
        cv2.imwrite(str(f.images / f"{i}.png"), np.full((*SHAPE, 3), 60 * i, np.uint8))
    f.folder = root / "a_folder"
    f.folder.mkdir()
    f.file = root / "a_file"
    f.file.write_text("not a folder")
    f.read_only = _read_only_folder(root)

    configs = root / "configs"
    configs.mkdir()
    for name, text in {"base_missing": "_BASE_: no_such_base.yaml\n",
                       "base_self": "_BASE_: base_self.yaml\n",
                       "base_list": "_BASE_: [a.yaml]\n",
                       "top_list": "- MODEL\n- SOLVER\n", "empty": "",
                       "not_yaml": "MODEL: [unclosed\n",
                       "python_tag": "SOLVER:\n  MAX_ITER: !!python/object/apply:os.getpid []\n",
                       }.items():
        f.configs[name] = configs / f"{name}.yaml"
        f.configs[name].write_text(text)

    f.runs = root / "runs"
    _write_runs(f.runs)
    f.dsb_src = root / "dsb_src"
    _write_dsb_source(f.dsb_src)
    f.datasets = root / "datasets"
    _write_registered_sets(f.datasets)
    f.configs["unsafe"] = configs / "unsafe.yaml"
    f.configs["unsafe"].write_text(f"_BASE_: {QUICK_PP}\nMODEL:\n  ALLOW_UNSAFE_PICKLE: True\n")
    f.configs["twice"] = configs / "twice.yaml"
    f.configs["twice"].write_text(f"_BASE_: {QUICK_PP}\nSOLVER:\n  MAX_ITER: 7\nSOLVER:\n"
                                  "  BASE_LR: 0.1\n")
    f.weights, f.baseline_run = _write_weights(root / "weights")
    f.label_src = root / "label_src"
    _write_label_source(f.label_src)
    f.multipage = root / "pages.tif"
    tifffile.imwrite(f.multipage, np.zeros((2, *SHAPE), np.uint8))
    f.volume = root / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), f.volume)
    f.unreadable = root / "unreadable.png"
    f.unreadable.write_bytes(_png(np.zeros(SHAPE, np.uint8))[:30])
    f.empty_image = root / "empty.tif"
    f.empty_image.write_bytes(b"")
    return f


def _write_weights(folder: Path) -> tuple[dict[str, Path], Path]:
    """Weights files by name: untrained models of three configs, saved as training saves
    them, and files that are wrong in each way a weights file can be; and the baseline's
    run folder (checkpoint with optimizer state, ``last_checkpoint``)."""
    from detectron2.modeling import build_model

    from maskrcnn_pp.engine import load_config
    from maskrcnn_pp.engine.checkpoint import SafeCheckpointer

    folder.mkdir()
    torch.manual_seed(0)
    run = folder / "baseline_run"
    baseline = build_model(load_config(str(BASELINE)))
    SafeCheckpointer(baseline, str(run), optimizer=torch.optim.SGD(
        baseline.parameters(), lr=0.1)).save("model_0000001")
    files = {"baseline": run / "model_0000001.pth"}
    for name, config in (("pp", QUICK_PP), ("semantic", SEMANTIC_2D)):
        SafeCheckpointer(build_model(load_config(str(config))), str(folder)).save(name)
        files[name] = folder / f"{name}.pth"
    resnet = {k: v for k, v in baseline.state_dict().items() if ".bottom_up." in k}
    contents = {
        "truncated_pth": files["pp"].read_bytes()[:5000],
        "not_dict_pth": {"model": [1, 2, 3]},
        "vgg_pth": {"features.0.weight": torch.zeros(8, 3, 3, 3),
                    "classifier.0.weight": torch.zeros(10, 8)},
        "resnet_pth": {"model": {k.split(".bottom_up.")[1]: v for k, v in resnet.items()}},
        "system_pth": {"model": {"w": torch.ones(1)}, "hook": os.system},
        "system_pkl": pickle.dumps({"w": np.ones(2), "hook": os.system}, protocol=2),
        "truncated_pkl": pickle.dumps({"w": np.ones((8, 8))}, protocol=2)[:60],
        "int_key_pkl": pickle.dumps({"w": np.ones(2), 3: np.ones(2)}, protocol=2),
        "blobs_list_pkl": pickle.dumps({"blobs": [np.ones(2)]}, protocol=2),
        "strings_pkl": pickle.dumps({"model": {"w": np.array(["a", "b"])}}, protocol=2),
    }
    for key, content in contents.items():
        name, suffix = key.rsplit("_", 1)
        path = files[key] = folder / f"{name}.{suffix}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)   # a reference to os.system, never a call
    return files, run


def _write_label_source(src: Path) -> None:
    """Instance label images: a good pair, and an image whose label image is smaller."""
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    labels = np.zeros((16, 16), np.uint16)
    labels[2:6, 2:6], labels[9:14, 8:12] = 1, 2
    for name, shape in (("good", (16, 16)), ("small", (8, 8))):
        (src / "images" / f"{name}.png").write_bytes(_png(np.full((16, 16), 90, np.uint8)))
        (src / "masks" / f"{name}.png").write_bytes(_png(labels[:shape[0], :shape[1]]))


def _read_only_folder(root: Path) -> Path:
    """A folder nobody here can write to; root ignores permissions, so it gets /sys."""
    if os.geteuid() == 0:
        return Path("/sys/maskrcnn_pp_bad_inputs")
    folder = root / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def _write_runs(runs: Path) -> None:
    """Training output folders as compare_runs reads them, with results of each wrong kind."""
    from maskrcnn_pp.engine import load_config

    semantic = load_config(str(SEMANTIC_2D)).dump()
    instance = load_config(str(QUICK_PP)).dump()
    for name, config, results in (
            ("good", semantic, {"IoU": 80.0, "Dice": 88.0}),
            ("list_results", semantic, [80.0, 88.0]),
            ("text_scores", semantic, {"IoU": "80", "Dice": 88.0}),
            ("truncated_results", semantic, None),
            ("instance", instance, {"IoU": 80.0, "Dice": 88.0}),
            ("list_config", "- a\n- b\n", None)):
        folder = runs / name / "inference" / "liver_val"
        folder.mkdir(parents=True)
        (runs / name / "config.yaml").write_text(config)
        text = json.dumps(results) if results is not None else '{"IoU": 8'
        (folder / "semantic_results.json").write_text(text)


def _png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


def _write_dsb_source(src: Path) -> None:
    """Two DSB2018 samples: a good one, and one whose mask file is corrupt."""
    image = np.full((16, 16, 3), 90, np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:9, 4:9] = 255
    for sample, mask_bytes in (("good", _png(mask)), ("bad", _png(mask)[:40])):
        (src / sample / "images").mkdir(parents=True)
        (src / sample / "masks").mkdir()
        (src / sample / "images" / f"{sample}.png").write_bytes(_png(image))
        (src / sample / "masks" / "m0.png").write_bytes(mask_bytes)


def _write_registered_sets(datasets: Path) -> None:
    """``$DETECTRON2_DATASETS`` of the runs: dsb2018_train's annotation file cut short,
    dsb2018_val's holding a mask whose runs do not cover its image."""
    annotations = datasets / "dsb2018" / "annotations"
    annotations.mkdir(parents=True)
    (datasets / "dsb2018" / "images").mkdir()
    text = json.dumps(_ground_truth())
    (annotations / "instances_train.json").write_text(text[:len(text) // 2])
    bad = _ground_truth()
    bad["annotations"][0]["segmentation"] = {"size": [32, 32], "counts": [100, 5]}
    (annotations / "instances_val.json").write_text(json.dumps(bad))

