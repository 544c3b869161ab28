"""Every CLI on bad input: exit code 2, one line naming the file or key, no traceback, no
hang, and no output left that looks valid (issue 14).

One table, :data:`CASES`; to cover a new tool, add rows. Each row runs the tool's script as
``__main__`` in its own process with a timeout. A fresh interpreter spends ~4 s importing
torch and Detectron2, so by default each case runs in a child forked from a server process
that has imported them already (:func:`serve`): same script, ``argv``, exit code, stdout
and stderr as a user gets, a fraction of the cost. Rows marked ``fresh`` (one per tool, so
each script's own entry point is checked too) start a new interpreter; with
``BAD_INPUTS_FRESH=1`` every row does.
"""
from __future__ import annotations

import json
import os
import pickle
import queue
import re
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Union

import cv2
import nibabel as nib
import numpy as np
import pytest
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
FRESH_ALL = os.environ.get("BAD_INPUTS_FRESH") == "1"
# Lines that libraries print on their own at import (torch's C++ logger, e.g. "No CUDA
# runtime is found"); they are not the tool's answer, and the fork server prints them once.
LIBRARY_LOG = re.compile(r"^[WI]\d{4} \d\d:\d\d:\d\d")

Text = Union[str, Callable[[SimpleNamespace, Path], str]]


@dataclass(frozen=True)
class Case:
    """A tool run on one bad input. ``args`` and ``names`` get the shared fixture files
    ``f`` and the case's own scratch folder ``w``; after the run nothing may match the glob
    patterns ``absent`` (relative to ``w``). ``noisy``: the tool legitimately logs before
    failing (a converter names each bad file and shows progress), so only the last stderr
    line is checked to be the one error line."""

    tool: str
    id: str
    args: Callable[[SimpleNamespace, Path], list]
    names: Text
    absent: tuple = ()
    noisy: bool = False
    fresh: bool = False
    timeout: float = 120.0


def _text(value: Text, f: SimpleNamespace, w: Path) -> str:
    return value(f, w) if callable(value) else value


E, V, C, P, B, T = ("tools/eval_nuclei.py", "tools/visualize.py", "tools/compare_runs.py",
                    "tools/prune_report.py", "tools/benchmark.py", "tools/train_net.py")
DSB, PATCHES, POLYP, LIVER, NODULE, INST = (f"datasets/prepare_{n}.py" for n in (
    "dsb2018", "nuclei_patches", "polyp", "liver", "nodule", "instances"))
PRED, CONVERT = "tools/predict.py", "tools/convert_weights.py"


def _eval(pred: str, gt: str = "gt", *extra) -> Callable:
    return lambda f, w: ["--gt", f.json[gt], "--pred", f.json[pred], "--json", w / "m.json",
                         *extra]


def _vis(pred: str, gt: str = "gt", *extra) -> Callable:
    return lambda f, w: ["--gt", f.json[gt], "--pred", f.json[pred], "--image-root", f.images,
                         "--output", w / "vis", *extra]


def _train(*opts, config=QUICK_PP, flags=(), weights=None) -> Callable:
    """train_net arguments; ``weights`` names a fixture weights file for MODEL.WEIGHTS."""
    return lambda f, w: ["--config-file", config(f) if callable(config) else config, *flags,
                         *opts, *(("MODEL.WEIGHTS", f.weights[weights]) if weights else ()),
                         "OUTPUT_DIR", w / "out"]


NO_METRICS = ("m.json",)
NO_PICTURES = ("vis/*.png",)
NO_MODEL = ("out/model_*.pth", "out/last_checkpoint", "out/inference/*")
NO_PREDICTIONS = ("p/*",)


def _predict(*extra, weights="pp", inputs=lambda f, w: [f.images / "1.png"]) -> Callable:
    return lambda f, w: ["--config-file", QUICK_PP, "--weights", f.weights[weights],
                         *inputs(f, w), "--output", w / "p", *extra]


def _empty_folder(w: Path) -> Path:
    (w / "empty").mkdir()
    return w / "empty"


def _resumable_run(f: SimpleNamespace, w: Path) -> Path:
    """OUTPUT_DIR holding a baseline run's checkpoint (with optimizer state) and its tag."""
    shutil.copytree(f.baseline_run, w / "out")
    return w / "out"

CASES = [
    # ---- eval_nuclei: COCO results
    Case(E, "rle_garbage_counts", _eval("garbage_counts"), "garbage_counts.json: detection 1",
         NO_METRICS, fresh=True),
    Case(E, "rle_runs_too_long", _eval("huge_counts"), "add up to 1000000000", NO_METRICS),
    Case(E, "rle_runs_too_short", _eval("short_counts"), "not to the image's 32x32", NO_METRICS),
    Case(E, "rle_counts_str_in_list", _eval("mixed_counts"), "non-integer run length",
         NO_METRICS),
    Case(E, "rle_counts_int", _eval("int_counts"), "'counts' is of type int", NO_METRICS),
    Case(E, "rle_counts_negative", _eval("negative_counts"), "negative run length", NO_METRICS),
    Case(E, "rle_counts_bad_char", _eval("bad_char_counts"), "has the character", NO_METRICS),
    Case(E, "rle_counts_cut_short", _eval("cut_counts"), "ends inside a run length", NO_METRICS),
    Case(E, "rle_size_differs", _eval("wrong_size"), "mask of size [16, 16]", NO_METRICS),
    Case(E, "rle_size_not_list", _eval("size_string"), "mask of size '32x32'", NO_METRICS),
    Case(E, "image_id_list", _eval("list_image_id"), "detection 1 has image_id [1]",
         NO_METRICS),
    Case(E, "image_id_unknown", _eval("unknown_image"), "image_id 7, which is not in",
         NO_METRICS),
    Case(E, "image_id_string", _eval("string_image_id"), "image_id '1', which is not in",
         NO_METRICS),
    Case(E, "category_unknown", _eval("unknown_category"), "category_id 5", NO_METRICS),
    Case(E, "score_nan_counted", _eval("nan_scores"), "2 detection(s) have a NaN",
         NO_METRICS),
    Case(E, "score_infinite", _eval("inf_score"), "1 detection(s) have a NaN or infinite",
         NO_METRICS),
    Case(E, "score_string", _eval("string_score"), "non-numeric score '0.9'", NO_METRICS),
    Case(E, "score_bool", _eval("bool_score"), "non-numeric score True", NO_METRICS),
    Case(E, "polygon_as_result", _eval("polygon_result"), "has no RLE mask", NO_METRICS),
    Case(E, "result_lacks_key", _eval("no_score"), "detection 0 lacks one of", NO_METRICS),
    Case(E, "results_not_list", _eval("gt"), "gt.json: not a COCO results file", NO_METRICS),
    Case(E, "results_truncated", _eval("truncated_pred"), "truncated_pred.json: not valid JSON",
         NO_METRICS),
    Case(E, "results_missing", lambda f, w: ["--gt", f.json["gt"], "--pred", w / "nope.json"],
         "nope.json: file not found"),
    Case(E, "results_binary", _eval("binary"), "binary.json: cannot be read", NO_METRICS),
    # ---- eval_nuclei: COCO ground truth
    Case(E, "gt_no_images", _eval("pred", "no_images"), "no_images.json: holds no images",
         NO_METRICS),
    Case(E, "gt_mask_size_differs", _eval("pred", "gt_wrong_size"),
         "gt_wrong_size.json: annotation 0 (image 1): the mask of size [16, 16]", NO_METRICS),
    Case(E, "gt_rle_garbage", _eval("pred", "gt_garbage"), "gt_garbage.json: annotation 1",
         NO_METRICS),
    Case(E, "gt_image_id_list", _eval("pred", "gt_list_id"), "image 0 has id [1]", NO_METRICS),
    Case(E, "gt_image_id_repeated", _eval("pred", "gt_repeated_id"), "image id 1 is used twice",
         NO_METRICS),
    Case(E, "gt_height_string", _eval("pred", "gt_string_height"), "not positive integers",
         NO_METRICS),
    Case(E, "gt_annotation_unknown_image", _eval("pred", "gt_stray_annotation"),
         "annotation 0 has image_id 9", NO_METRICS),
    Case(E, "gt_annotation_id_repeated", _eval("pred", "gt_repeated_ann_id"),
         "missing or repeated id 1", NO_METRICS),
    Case(E, "gt_polygon_odd", _eval("pred", "gt_odd_polygon"), "even list of at least 6",
         NO_METRICS),
    Case(E, "gt_not_coco", _eval("pred", "not_coco"), "not a COCO instances file", NO_METRICS),
    Case(E, "gt_top_level_list", _eval("pred", "pred"), "pred.json: not a COCO instances file",
         NO_METRICS),
    Case(E, "score_thresh_nan", _eval("pred", "gt", "--score-thresh", "nan"),
         "--score-thresh must be a finite number, got nan", NO_METRICS),
    # ---- eval_nuclei: output location
    Case(E, "json_is_a_folder",
         lambda f, w: ["--gt", f.json["gt"], "--pred", f.json["pred"], "--json", f.folder],
         lambda f, w: f"--json {f.folder}: is a folder"),
    Case(E, "json_under_a_file",
         lambda f, w: ["--gt", f.json["gt"], "--pred", f.json["pred"], "--json",
                       f.file / "m.json"],
         lambda f, w: f"--json {f.file}: cannot be created or written"),
    Case(E, "json_read_only",
         lambda f, w: ["--gt", f.json["gt"], "--pred", f.json["pred"], "--json",
                       f.read_only / "m.json"],
         lambda f, w: f"--json {f.read_only}: cannot be created or written"),
    # ---- visualize
    Case(V, "vis_rle_garbage_counts", _vis("garbage_counts"), "garbage_counts.json: detection 1",
         NO_PICTURES, fresh=True),
    Case(V, "vis_rle_runs_too_long", _vis("huge_counts"), "add up to 1000000000", NO_PICTURES),
    Case(V, "vis_score_nan", _vis("nan_scores"), "2 detection(s) have a NaN", NO_PICTURES),
    Case(V, "vis_score_thresh_nan", _vis("pred", "gt", "--score-thresh", "nan"),
         "--score-thresh must be a finite number", NO_PICTURES),
    Case(V, "vis_gt_no_images", _vis("pred", "no_images"), "holds no images", NO_PICTURES),
    Case(V, "vis_gt_mask_size_differs", _vis("pred", "gt_wrong_size"), "mask of size [16, 16]",
         NO_PICTURES),
    Case(V, "vis_unknown_image_name", _vis("pred", "gt", "--images", "nope.png"),
         "has no image named nope.png", NO_PICTURES),
    Case(V, "vis_max_images_zero", _vis("pred", "gt", "--max-images", "0"),
         "--max-images must be at least 1", NO_PICTURES),
    Case(V, "vis_output_is_a_file",
         lambda f, w: ["--gt", f.json["gt"], "--pred", f.json["pred"], "--image-root",
                       f.images, "--output", f.file],
         lambda f, w: f"--output {f.file}: cannot be created"),
    Case(V, "vis_output_read_only",
         lambda f, w: ["--gt", f.json["gt"], "--pred", f.json["pred"], "--image-root",
                       f.images, "--output", f.read_only / "vis"],
         lambda f, w: f"--output {f.read_only / 'vis'}: cannot be created"),
    Case(V, "vis_two_modes",
         lambda f, w: ["--gt", f.json["gt"], "--pred", f.json["pred"], "--image-root", f.images,
                       "--config-file", QUICK_PP, "--output", w / "vis"],
         "give either --pred, --gt and --image-root, or --config-file", NO_PICTURES),
    # ---- compare_runs
    Case(C, "results_of_wrong_type", lambda f, w: [f.runs / "list_results"],
         "list_results/inference/liver_val/semantic_results.json: not a semantic evaluation",
         fresh=True),
    Case(C, "results_with_text_scores", lambda f, w: [f.runs / "text_scores"],
         "text_scores/inference/liver_val/semantic_results.json: not a semantic evaluation"),
    Case(C, "run_results_truncated", lambda f, w: [f.runs / "truncated_results"],
         "semantic_results.json: not valid JSON"),
    Case(C, "instance_run", lambda f, w: [f.runs / "instance"],
         "instance/config.yaml: MODEL.META_ARCHITECTURE is GeneralizedRCNN"),
    Case(C, "not_a_run_folder", lambda f, w: [f.folder],
         lambda f, w: f"{f.folder}: no config.yaml"),
    Case(C, "run_config_top_level_list", lambda f, w: [f.runs / "list_config"],
         "list_config/config.yaml: the top level is list"),
    Case(C, "compare_output_is_a_folder",
         lambda f, w: [f.runs / "good", "--output", f.folder],
         lambda f, w: f"--output {f.folder}: is a folder"),
    # ---- prune_report
    Case(P, "prune_instance_config",
         lambda f, w: ["--config-file", QUICK_PP, "--weights", f.file, "--output", w / "p"],
         "MODEL.META_ARCHITECTURE is GeneralizedRCNN", ("p/*",), fresh=True),
    Case(P, "prune_missing_weights",
         lambda f, w: ["--config-file", SEMANTIC_2D, "--weights", w / "no.pth", "--output",
                       w / "p"], "no.pth' is not a file", ("p/*",)),
    Case(P, "prune_output_under_a_file",
         lambda f, w: ["--config-file", SEMANTIC_2D, "--weights", f.file, "--output",
                       f.file / "p"], lambda f, w: f"--output {f.file / 'p'}: cannot be"),
    Case(P, "prune_base_missing",
         lambda f, w: ["--config-file", f.configs["base_missing"], "--weights", f.file,
                       "--output", w / "p"], "_BASE_ names no_such_base.yaml, which does not",
         ("p/*",)),
    # ---- benchmark
    Case(B, "bench_output_is_a_file",
         lambda f, w: ["--group", "semantic", "--output", f.file],
         lambda f, w: f"--output {f.file}: cannot be created", fresh=True),
    Case(B, "bench_zero_repeats",
         lambda f, w: ["--group", "semantic", "--repeats", "0", "--output", w / "b"],
         "--repeats must be at least 1", ("b/*",)),
    # ---- train_net: configs
    Case(T, "base_missing", _train(config=lambda f: f.configs["base_missing"]),
         "base_missing.yaml: _BASE_ names no_such_base.yaml, which does not exist",
         NO_MODEL, fresh=True),
    Case(T, "base_includes_itself", _train(config=lambda f: f.configs["base_self"]),
         "base_self.yaml: _BASE_ base_self.yaml includes itself", NO_MODEL),
    Case(T, "base_not_a_name", _train(config=lambda f: f.configs["base_list"]),
         "_BASE_ must be a file name", NO_MODEL),
    Case(T, "config_top_level_list", _train(config=lambda f: f.configs["top_list"]),
         "top_list.yaml: the top level is list, not a mapping", NO_MODEL),
    Case(T, "config_empty", _train(config=lambda f: f.configs["empty"]),
         "empty.yaml: is empty", NO_MODEL),
    Case(T, "config_not_yaml", _train(config=lambda f: f.configs["not_yaml"]),
         "not_yaml.yaml: not a safe YAML config", NO_MODEL),
    Case(T, "config_python_tag", _train(config=lambda f: f.configs["python_tag"]),
         "python_tag.yaml: not a safe YAML config", NO_MODEL),
    Case(T, "config_missing", _train(config=lambda f: f.folder / "none.yaml"),
         "none.yaml does not exist", NO_MODEL),
    Case(T, "unknown_key", _train("SOLVER.NOT_A_KEY", "3"), "SOLVER.NOT_A_KEY", NO_MODEL),
    Case(T, "value_of_wrong_type", _train("SOLVER.MAX_ITER", "many"), "SOLVER.MAX_ITER",
         NO_MODEL),
    Case(T, "unknown_data_set", _train("DATASETS.TRAIN", "('no_such_set',)"),
         "unknown data set 'no_such_set' in DATASETS.TRAIN", NO_MODEL),
    Case(T, "group_norm_width", _train("MODEL.UNETPP.WIDTHS", "[128, 100, 128, 128]"),
         "MODEL.UNETPP.WIDTHS = [128, 100, 128, 128]: 100 is not a multiple of 32", NO_MODEL),
    Case(T, "group_norm_fpn_width",
         _train("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone", "MODEL.FPN.OUT_CHANNELS",
                "200"), "MODEL.FPN.OUT_CHANNELS = 200 is not a multiple of 32", NO_MODEL),
    Case(T, "registered_annotations_truncated",
         _train(*TINY, "DATASETS.TRAIN", "('dsb2018_train',)"),
         "dsb2018/annotations/instances_train.json: not valid JSON", NO_MODEL),
    Case(T, "registered_annotations_bad_rle",
         _train(*TINY, "DATASETS.TRAIN", "('dsb2018_val',)"),
         "instances_val.json: annotation 0 (image 1): the mask's run lengths", NO_MODEL),
    # ---- train_net: weights and output
    Case(T, "eval_only_without_weights", _train(flags=["--eval-only"]),
         "--eval-only needs trained weights, but MODEL.WEIGHTS is empty", NO_MODEL),
    Case(T, "weights_missing", _train("MODEL.WEIGHTS", "no_such.pth"),
         "MODEL.WEIGHTS file no_such.pth does not exist", NO_MODEL),
    Case(T, "output_dir_is_a_file",
         lambda f, w: ["--config-file", QUICK_PP, "OUTPUT_DIR", f.file],
         lambda f, w: f"OUTPUT_DIR {f.file}: cannot be created"),
    Case(T, "output_dir_read_only",
         lambda f, w: ["--config-file", QUICK_PP, "OUTPUT_DIR", f.read_only / "out"],
         lambda f, w: f"OUTPUT_DIR {f.read_only / 'out'}: cannot be created"),
    # ---- train_net: the training loop
    Case(T, "divergence_named_without_checkpoint",
         _train(*TINY, "SOLVER.BASE_LR", "1e6", "SOLVER.MAX_ITER", "20"),
         "no checkpoint was written", NO_MODEL, timeout=240),
    Case(T, "weights_model_not_a_dict",
         lambda f, w: ["--config-file", QUICK_PP, "--eval-only", "MODEL.WEIGHTS",
                       f.weights["not_dict_pth"], "OUTPUT_DIR", w / "out"],
         "not_dict.pth: its 'model' entry is a list, not a dict of weights", NO_MODEL),
    Case(T, "weights_of_another_architecture", _train(weights="vgg_pth"),
         "vgg.pth matches none of the", NO_MODEL),
    Case(T, "weights_pkl_truncated", _train(weights="truncated_pkl"),
         "truncated.pkl is truncated or not a pickle", NO_MODEL),
    Case(T, "weights_pkl_runs_code", _train(weights="system_pkl"),
         lambda f, w: f"refusing to load {f.weights['system_pkl']}", NO_MODEL),
    Case(T, "weights_pth_runs_code", _train(weights="system_pth"),
         lambda f, w: f"refusing to load {f.weights['system_pth']}", NO_MODEL),
    Case(T, "resume_after_architecture_change",
         lambda f, w: ["--config-file", QUICK_PP, "--resume", *TINY, "SOLVER.MAX_ITER", "3",
                       "OUTPUT_DIR", _resumable_run(f, w)],
         "model_0000001.pth does not fit the model",
         ("out/model_final.pth", "out/model_0000002.pth", "out/inference/*")),
    Case(T, "config_allows_unsafe_pickle", _train(config=lambda f: f.configs["unsafe"]),
         "unsafe.yaml: MODEL.ALLOW_UNSAFE_PICKLE cannot be set", NO_MODEL),
    Case(T, "override_allows_unsafe_pickle", _train("MODEL.ALLOW_UNSAFE_PICKLE", "True"),
         "MODEL.ALLOW_UNSAFE_PICKLE cannot be set", NO_MODEL),
    Case(T, "pixel_mean_for_gray_input", _train("INPUT.FORMAT", "L"),
         "MODEL.PIXEL_MEAN has 3 value(s)", NO_MODEL),
    Case(DSB, "dsb_out_is_a_file", lambda f, w: [f.dsb_src, f.file],
         lambda f, w: f"OUT {f.file}: cannot be created", fresh=True),
    Case(DSB, "dsb_strict_leaves_no_stale_annotations",
         lambda f, w: [f.dsb_src, _stale_out(w), "--strict"],
         "1 problem(s) in", ("out/annotations/*.json",), noisy=True),
    Case(DSB, "dsb_source_missing", lambda f, w: [w / "nowhere", w / "out"], "does not exist",
         ("out/annotations/*",)),
    Case(DSB, "dsb_val_fraction", lambda f, w: [f.dsb_src, w / "out", "--val-fraction", "1.5"],
         "--val-fraction must be in [0, 1)", ("out/annotations/*",)),
    Case(PATCHES, "patches_output_read_only",
         lambda f, w: ["--source", f.dsb_src, "--output", f.read_only / "d"],
         lambda f, w: f"--output {f.read_only / 'd'}: cannot be created", fresh=True),
    Case(PATCHES, "patches_source_missing",
         lambda f, w: ["--source", w / "nowhere", "--output", w / "d"], "does not exist",
         ("d/nuclei_patches/*",)),
    Case(POLYP, "polyp_output_is_a_file",
         lambda f, w: ["--source", f.folder, "--name", "kvasir", "--output", f.file],
         lambda f, w: f"--output {f.file}: cannot be created", fresh=True),
    Case(POLYP, "polyp_source_without_images",
         lambda f, w: ["--source", f.folder, "--name", "kvasir", "--output", w / "d"],
         "expected the folders", ("d/polyp_kvasir/*",)),
    Case(LIVER, "liver_output_under_a_file",
         lambda f, w: ["--source", f.folder, "--output", f.file / "d"],
         lambda f, w: f"--output {f.file / 'd'}: cannot be created", fresh=True),
    Case(LIVER, "liver_source_missing",
         lambda f, w: ["--source", w / "nowhere", "--output", w / "d"], "does not exist",
         ("d/liver/*",)),
    Case(NODULE, "nodule_output_is_a_file",
         lambda f, w: ["--source", f.folder, "--output", f.file],
         lambda f, w: f"--output {f.file}: cannot be created", fresh=True),
    Case(NODULE, "nodule_source_without_images",
         lambda f, w: ["--source", f.folder, "--output", w / "d"], "expected the folders",
         ("d/nodule/*",)),
    Case(INST, "instances_source_missing", lambda f, w: [w / "nowhere", w / "out"],
         "nowhere does not exist", ("out/annotations/*",), fresh=True),
    Case(INST, "instances_source_without_masks", lambda f, w: [f.folder, w / "out"],
         "no images/ folder beside a masks/ folder", ("out/annotations/*",)),
    Case(INST, "instances_strict_size_mismatch",
         lambda f, w: [f.label_src, _stale_out(w), "--strict"],
         "1 problem(s) in", ("out/annotations/*.json",), noisy=True),
    Case(INST, "instances_out_is_a_file", lambda f, w: [f.label_src, f.file],
         lambda f, w: f"OUT {f.file}: cannot be created"),
    Case(INST, "instances_out_read_only", lambda f, w: [f.label_src, f.read_only / "o"],
         lambda f, w: f"OUT {f.read_only / 'o'}: cannot be created"),
    Case(INST, "instances_val_fraction",
         lambda f, w: [f.label_src, w / "out", "--val-fraction", "-0.1"],
         "--val-fraction must be in [0, 1)", ("out/annotations/*",)),
    # ---- convert_weights
    Case(CONVERT, "convert_input_missing", lambda f, w: [w / "none.pth", w / "o.pth"],
         "none.pth does not exist", ("o.pth",), fresh=True),
    Case(CONVERT, "convert_not_a_resnet", lambda f, w: [f.weights["vgg_pth"], w / "o.pth"],
         "vgg.pth: holds no ResNet weights", ("o.pth",)),
    Case(CONVERT, "convert_runs_code", lambda f, w: [f.weights["system_pkl"], w / "o.pth"],
         lambda f, w: f"refusing to load {f.weights['system_pkl']}", ("o.pth",)),
    Case(CONVERT, "convert_output_read_only",
         lambda f, w: [f.weights["resnet_pth"], f.read_only / "o.pth"],
         lambda f, w: f"output {f.read_only}: cannot be created"),
    Case(CONVERT, "convert_output_under_a_file",
         lambda f, w: [f.weights["resnet_pth"], f.file / "o.pth"],
         lambda f, w: f"output {f.file}: cannot be created"),
    # ---- predict
    Case(PRED, "predict_output_is_a_file",
         lambda f, w: ["--config-file", QUICK_PP, "--weights", f.weights["pp"],
                       f.images / "1.png", "--output", f.file],
         lambda f, w: f"--output {f.file}: cannot be created", fresh=True),
    Case(PRED, "predict_output_read_only",
         lambda f, w: ["--config-file", QUICK_PP, "--weights", f.weights["pp"],
                       f.images / "1.png", "--output", f.read_only / "p"],
         lambda f, w: f"--output {f.read_only / 'p'}: cannot be created"),
    Case(PRED, "predict_config_missing",
         lambda f, w: ["--config-file", f.folder / "none.yaml", "--weights", f.weights["pp"],
                       f.images / "1.png", "--output", w / "p"],
         "none.yaml does not exist", NO_PREDICTIONS),
    Case(PRED, "predict_baseline_weights_into_pp", _predict(weights="baseline"),
         "model_0000001.pth does not fit the model", NO_PREDICTIONS),
    Case(PRED, "predict_semantic_weights_into_detector", _predict(weights="semantic"),
         "semantic.pth matches none of the", NO_PREDICTIONS),
    Case(PRED, "predict_weights_missing",
         lambda f, w: ["--config-file", QUICK_PP, "--weights", w / "none.pth",
                       f.images / "1.png", "--output", w / "p"],
         "none.pth does not exist", NO_PREDICTIONS),
    Case(PRED, "predict_weights_truncated", _predict(weights="truncated_pth"),
         "truncated.pth is truncated", NO_PREDICTIONS),
    Case(PRED, "predict_weights_run_code", _predict(weights="system_pth"),
         lambda f, w: f"refusing to load {f.weights['system_pth']}: it does not load with "
                      f"torch.load(weights_only=True) (Trying to load unsupported GLOBAL "
                      f"{os.system.__module__}.system", NO_PREDICTIONS),
    Case(PRED, "predict_tile_overlap_too_large",
         _predict("--tile-size", "64", "--tile-overlap", "64"),
         "tile overlap in [0, tile size), got tile size 64, overlap 64", NO_PREDICTIONS),
    Case(PRED, "predict_score_thresh_nan", _predict("--score-thresh", "nan"),
         "--score-thresh must be a finite number, got nan", NO_PREDICTIONS),
    # the deprecated scalar key still works (with a FutureWarning) and the error names the new one
    Case(PRED, "predict_group_norm_width", _predict("MODEL.UNETPP.WIDTH", "100"),
         "MODEL.UNETPP.WIDTHS = [100, 100, 100, 100]: 100 is not a multiple of 32",
         NO_PREDICTIONS, noisy=True),
    Case(PRED, "predict_page_out_of_range",
         _predict("--page", "5", inputs=lambda f, w: [f.multipage]),
         "pages.tif: has no page 5: it holds 2", NO_PREDICTIONS, noisy=True),
    Case(PRED, "predict_multipage_without_page", _predict(inputs=lambda f, w: [f.multipage]),
         "pages.tif", NO_PREDICTIONS, noisy=True),
    Case(PRED, "predict_no_input", _predict(inputs=lambda f, w: []), "no INPUT",
         NO_PREDICTIONS),
    Case(PRED, "predict_folder_without_images",
         _predict(inputs=lambda f, w: [_empty_folder(w)]), "empty holds no", NO_PREDICTIONS),
    Case(PRED, "predict_volume_into_2d_model", _predict(inputs=lambda f, w: [f.volume]),
         "volume.nii.gz: a NIfTI volume needs a 3D semantic model", NO_PREDICTIONS,
         noisy=True),
    Case(PRED, "predict_all_inputs_unreadable",
         _predict(inputs=lambda f, w: [f.unreadable, f.empty_image]),
         "none of the 2 inputs could be read", NO_PREDICTIONS, noisy=True),
]


def _stale_out(w: Path) -> Path:
    """An OUT folder holding the annotations of an earlier, successful run."""
    out = w / "out"
    (out / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (out / "annotations" / f"instances_{split}.json").write_text('{"images": []}')
    return out


# --------------------------------------------------------------------------- input files


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


def _write_inputs(root: Path) -> SimpleNamespace:
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


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    how: str = "fork"
    work: Path = field(default_factory=Path)


def serve() -> None:
    """Fork server: import what the tools import, then run each requested script (one JSON
    line on stdin) in a forked child as ``__main__``; answer with its exit code."""
    import detectron2.engine  # noqa: F401

    import maskrcnn_pp.data.prepare  # noqa: F401
    import maskrcnn_pp.engine.train  # noqa: F401
    import maskrcnn_pp.evaluation.visualization  # noqa: F401
    import maskrcnn_pp.studies.benchmark  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(request)
        deadline = time.monotonic() + request["timeout"]
        status, timed_out = None, False
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif time.monotonic() > deadline:
                timed_out = True
                os.killpg(pid, signal.SIGKILL)
            else:
                time.sleep(0.02)
        print(json.dumps({"returncode": status, "timed_out": timed_out}), flush=True)


def _run_child(request: dict) -> None:
    """In the forked child: become ``python SCRIPT ARGV...`` and exit as it would."""
    code = 1
    try:
        os.setpgrp()
        for fd, path in ((0, os.devnull), (1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = [request["script"], *request["argv"]]
        try:
            runpy.run_path(request["script"], run_name="__main__")
            code = 0
        except SystemExit as exit:
            if exit.code is None or isinstance(exit.code, int):
                code = exit.code or 0
            else:
                print(exit.code, file=sys.stderr)
        except BaseException:  # what the interpreter does with an uncaught exception
            traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkServer:
    def __init__(self, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.tools.test_bad_inputs import serve; serve()"],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, script: str, argv: list[str], work: Path, timeout: float) -> Result:
        out, err = work / "stdout.txt", work / "stderr.txt"
        start = time.monotonic()
        self.proc.stdin.write(json.dumps({"script": str(ROOT / script), "argv": argv,
                                          "stdout": str(out), "stderr": str(err),
                                          "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return Result(answer["returncode"], out.read_text(errors="replace"),
                      err.read_text(errors="replace"), time.monotonic() - start,
                      answer["timed_out"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _run_fresh(script: str, argv: list[str], env: dict, timeout: float) -> Result:
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as expired:
        return Result(None, str(expired.stdout or ""), str(expired.stderr or ""),
                      time.monotonic() - start, True, "fresh")
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start,
                  how="fresh")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> SimpleNamespace:
    return _write_inputs(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory, request) -> dict[str, Result]:
    """Every case, run once, on ``workers`` fork servers (or fresh interpreters) in
    parallel threads."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DETECTRON2_DATASETS": str(inputs.datasets),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    workers = max(2, min(4, os.cpu_count() or 1))
    use_fork = hasattr(os, "fork") and not FRESH_ALL
    servers: queue.Queue = queue.Queue()
    if use_fork:
        with ThreadPoolExecutor(workers) as pool:
            for server in pool.map(lambda _: ForkServer(env), range(workers)):
                servers.put(server)
    scratch = tmp_path_factory.mktemp("bad_input_runs")
    lock = threading.Lock()
    done: dict[str, Result] = {}

    def run(case: Case) -> None:
        work = scratch / case.id
        work.mkdir()
        argv = [str(a) for a in case.args(inputs, work)]
        if case.fresh or not use_fork:
            result = _run_fresh(case.tool, argv, env, case.timeout)
        else:
            server = servers.get()
            try:
                result = server.run(case.tool, argv, work, case.timeout)
            finally:
                servers.put(server)
        result.work = work
        with lock:
            done[case.id] = result

    selected = {item.callspec.params["case"].id for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    start = time.monotonic()
    slow_first = sorted((c for c in CASES if c.id in selected), key=lambda c: -c.timeout)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, slow_first))
    while not servers.empty():
        servers.get().close()
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    forked = sum(r.how == "fork" for r in done.values())
    line = (f"bad-input suite: {len(done)} of {len(CASES)} cases on "
            f"{len({c.tool for c in slow_first})} tools ({forked} forked, {len(done) - forked} "
            "fresh interpreters) in "
            f"{time.monotonic() - start:.0f} s with {workers} workers; slowest: "
            + ", ".join(f"{k} {v.seconds:.1f} s" for k, v in
                        sorted(done.items(), key=lambda kv: -kv[1].seconds)[:3]))
    if reporter is not None:  # shown even while pytest captures output
        with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    return done


def test_the_table_covers_every_tool_and_the_issue():
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)
    tools = {case.tool for case in CASES}
    assert tools == {E, V, C, P, B, T, DSB, PATCHES, POLYP, LIVER, NODULE, INST,
                     PRED, CONVERT}
    assert {case.tool for case in CASES if case.fresh} == tools


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_exit_2(case, results, inputs):
    result = results[case.id]
    assert not result.timed_out, f"{case.tool} hung (> {case.timeout} s): {result.stderr[-500:]}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if not LIBRARY_LOG.match(line)]
    assert lines, f"exit {result.returncode}, nothing on stderr; stdout: {result.stdout[-500:]}"
    assert result.returncode == 2, result.stderr[-3000:]
    if not case.noisy:
        assert len(lines) == 1, result.stderr
    error = lines[-1]
    assert error.startswith("error: ") and sum(x.startswith("error:") for x in lines) == 1
    if case.tool != T:  # Detectron2 logs training set-up on stdout; other tools print results
        assert result.stdout == "", result.stdout[-500:]
    assert _text(case.names, inputs, result.work) in error


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.absent], ids=lambda c: c.id)
def test_bad_input_leaves_no_valid_looking_output(case, results):
    work = results[case.id].work
    left = [str(p.relative_to(work)) for pattern in case.absent for p in work.glob(pattern)]
    assert not left, f"{case.id} left {left}"


# --------------------------------------------------------------------------- in-process


def test_jpeg_masks_are_read_at_half_range_and_reported_lossy(tmp_path):
    """``masks/*.jpg`` are read, not ignored; JPEG ringing is not counted as nucleus."""
    from maskrcnn_pp.data.dsb2018 import convert_dsb2018

    truth = np.zeros((64, 64), np.uint8)
    cv2.circle(truth, (32, 32), 12, 255, -1)
    jpeg = cv2.imencode(".jpg", truth, [cv2.IMWRITE_JPEG_QUALITY, 75])[1].tobytes()
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    true_area = int((truth > 0).sum())
    assert (decoded > 0).sum() > 1.2 * true_area  # what "> 0" would have made of it
    sample = tmp_path / "src" / "s1"
    (sample / "images").mkdir(parents=True)
    (sample / "masks").mkdir()
    (sample / "images" / "s1.png").write_bytes(_png(np.full((64, 64, 3), 80, np.uint8)))
    (sample / "masks" / "m0.jpg").write_bytes(jpeg)

    report = convert_dsb2018(tmp_path / "src", tmp_path / "out", val_fraction=0.0,
                             progress=False)
    coco = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())
    assert [a["area"] for a in coco["annotations"]] == [int((decoded > 127).sum())]
    assert abs(coco["annotations"][0]["area"] - true_area) < 0.05 * true_area
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["lossy_masks"] == report.lossy_masks
    assert [Path(name).name for name in saved["lossy_masks"]] == ["m0.jpg"]


class _ExplodingModel(torch.nn.Module):
    """Fails in its forward pass as Detectron2's RPN does when weights became non-finite."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Parameter(torch.ones(2))
        self.second = torch.nn.Parameter(torch.tensor([1.0, float("inf")]))

    def forward(self, batch):
        raise FloatingPointError("Predicted boxes or scores contain Inf/NaN. Training has "
                                 "diverged.")


def test_divergence_caught_by_detectron2_names_iteration_weight_and_last_loss():
    from detectron2.utils.events import EventStorage

    from maskrcnn_pp.engine.trainer import CheckedSimpleTrainer, NonFiniteLossError

    model = _ExplodingModel()
    trainer = CheckedSimpleTrainer(model, iter(lambda: [torch.ones(2)], None),
                                   torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.iter = 7
    with EventStorage(6) as storage:
        storage.put_scalars(loss_a=2.0, loss_b=3e9)
        storage.step()
        with pytest.raises(NonFiniteLossError) as caught:
            trainer.run_step()
    assert str(caught.value) == (
        "diverged at iteration 7: non-finite predicted boxes or scores (Detectron2: Predicted "
        "boxes or scores contain Inf/NaN. Training has diverged.) with the first non-finite "
        "weight second; the losses of iteration 6 were finite, the largest loss_b=3e+09")


def test_user_error_from_a_data_loader_worker_is_its_own_line(capsys):
    """torch re-raises a worker's exception with the worker's traceback as its message."""
    from torch._utils import ExceptionWrapper

    from maskrcnn_pp.data.image_io import UnreadableImageError
    from maskrcnn_pp.utils.errors import exit_on_user_error

    try:
        raise UnreadableImageError("/data/x.png: cannot read image")
    except UnreadableImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")

    @exit_on_user_error
    def main():
        wrapped.reraise()

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: /data/x.png: cannot read image\n"
