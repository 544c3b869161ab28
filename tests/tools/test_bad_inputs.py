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

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

from tests.helpers import ROOT
from tests.tools.bad_input_files import QUICK_PP, SEMANTIC_2D, TINY, write_inputs
from tests.tools.bad_input_harness import LIBRARY_LOG, Case, Result, case_text, run_cases

E, V, C, P, B, T = ("tools/eval_nuclei.py", "tools/visualize.py", "tools/compare_runs.py",
                    "tools/prune_report.py", "tools/benchmark.py", "tools/train_net.py")
DSB, PATCHES, POLYP, LIVER, NODULE, INST = (f"datasets/prepare_{n}.py" for n in (
    "dsb2018", "nuclei_patches", "polyp", "liver", "nodule", "instances"))
PRED, CONVERT = "tools/predict.py", "tools/convert_weights.py"
EXPORT = "tools/export_model.py"


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


def _earlier_prediction(w: Path) -> Path:
    """A prediction output folder holding an earlier run's results."""
    (w / "p").mkdir()
    (w / "p" / "results.jsonl").write_text("")
    return w / "p"


def _earlier_export(w: Path) -> Path:
    """An export folder holding an earlier TorchScript graph."""
    (w / "e").mkdir()
    (w / "e" / "model.ts").write_bytes(b"an earlier export")
    return w / "e"


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
                       w / "p"], "no.pth does not exist", ("p/*",)),
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
    Case(T, "mask_head_loss_weights_of_wrong_length",
         _train("MODEL.ROI_MASK_HEAD.DEEP_SUPERVISION_WEIGHTS", "[0.5, 0.3, 0.2]"),
         "MODEL.ROI_MASK_HEAD.DEEP_SUPERVISION_WEIGHTS = [0.5, 0.3, 0.2] has 3 value(s) for 2",
         NO_MODEL),
    Case(T, "inference_level_not_an_output", _train("MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL", "9"),
         "MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL = 9 is not available", NO_MODEL),
    Case(T, "max_iter_negative", _train("SOLVER.MAX_ITER", "-5"),
         "SOLVER.MAX_ITER = -5 must be an integer >= 1", NO_MODEL),
    Case(T, "base_lr_negative", _train("SOLVER.BASE_LR", "-0.1"), "SOLVER.BASE_LR = -0.1 must be",
         NO_MODEL),
    Case(T, "config_key_given_twice", _train(config=lambda f: f.configs["twice"]),
         "twice.yaml: SOLVER is given twice (lines 2 and 4)", NO_MODEL),
    Case(T, "weights_pkl_int_key", _train(weights="int_key_pkl"), "holds the name 3 (a int)",
         NO_MODEL),
    Case(T, "weights_pkl_blobs_list", _train(weights="blobs_list_pkl"),
         "its 'blobs' entry is a list", NO_MODEL),
    Case(T, "weights_pkl_strings", _train(weights="strings_pkl"),
         "weight 'w' is an array of <U1 values, not numbers", NO_MODEL),
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
    # ---- the preparer framework: named split, --keep-in-train, what OUT may be
    Case(INST, "instances_no_label_images", lambda f, w: [_without_labels(f, w), w / "out"],
         lambda f, w: f"{w / 'src' / 'masks'}: no label images for the 2 images of images/",
         ("out",)),
    Case(DSB, "dsb_split_without_out", lambda f, w: [f.dsb_src, "--split", "test"],
         "--split needs OUT"),
    Case(DSB, "dsb_split_and_val_fraction",
         lambda f, w: [f.dsb_src, w / "out", "--split", "test", "--val-fraction", "0.2"],
         "--split puts every item in one split", ("out",)),
    Case(DSB, "dsb_keep_in_train_not_coco",
         lambda f, w: [f.dsb_src, w / "out", "--keep-in-train", f.json["pred"]],
         "pred.json: not a COCO instances file", ("out",)),
    Case(POLYP, "polyp_named_split",
         lambda f, w: [f.folder, w / "out", "--name", "kvasir", "--split", "test"],
         "--split: the semantic data sets are registered as", ("out",)),
    Case(INST, "instances_out_not_a_data_set", lambda f, w: [f.label_src, _foreign_out(w)],
         "holds files that no preparer wrote", ("out/annotations",)),
    Case(INST, "instances_out_holds_the_source",
         lambda f, w: [_label_copy(f, w) / "images", w / "cells"], "holds the source",
         ("cells/annotations",)),
    # ---- convert_weights
    Case(CONVERT, "convert_input_missing", lambda f, w: [w / "none.pth", w / "o.pth"],
         "none.pth does not exist", ("o.pth",), fresh=True),
    Case(CONVERT, "convert_not_a_resnet", lambda f, w: [f.weights["vgg_pth"], w / "o.pth"],
         "vgg.pth: holds no ResNet weights", ("o.pth",)),
    Case(CONVERT, "convert_pkl_int_key", lambda f, w: [f.weights["int_key_pkl"], w / "o.pth"],
         "int_key.pkl: holds the name 3", ("o.pth",)),
    Case(CONVERT, "convert_pkl_blobs_list",
         lambda f, w: [f.weights["blobs_list_pkl"], w / "o.pth"], "its 'blobs' entry is a list",
         ("o.pth",)),
    Case(CONVERT, "convert_pkl_strings", lambda f, w: [f.weights["strings_pkl"], w / "o.pth"],
         "weight 'w' is an array of <U1 values", ("o.pth",)),
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
    Case(PRED, "predict_level_not_an_output", _predict("--level", "9"),
         "level 9: MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL = 9 is not available", NO_PREDICTIONS),
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
    Case(PRED, "predict_all_inputs_without_contrast",
         _predict(inputs=lambda f, w: [f.images / "1.png", f.images / "2.png"]),
         lambda f, w: f"none of the 2 inputs could be read; first: {f.images / '1.png'}: no "
                      "contrast (every pixel is 60)", NO_PREDICTIONS, noisy=True),
    Case(PRED, "predict_tile_size_zero", _predict("--tile-size", "0"),
         "tile size must be > 0", NO_PREDICTIONS),
    Case(PRED, "predict_tile_size_below_the_strides", _predict("--tile-size", "1"),
         "tile size 1 is below 32, the smallest tile the network's strides allow",
         NO_PREDICTIONS),
    Case(PRED, "predict_score_thresh_above_one", _predict("--score-thresh", "1.5"),
         "--score-thresh must be a number in [0, 1], got 1.5", NO_PREDICTIONS),
    Case(PRED, "predict_min_visible_fraction_negative",
         _predict("--min-visible-fraction", "-0.1"),
         "--min-visible-fraction must be a number in [0, 1], got -0.1", NO_PREDICTIONS),
    Case(PRED, "predict_resume_and_overwrite", _predict("--resume", "--overwrite"),
         "--resume continues an earlier run, --overwrite replaces it: give one",
         NO_PREDICTIONS),
    Case(PRED, "predict_into_an_earlier_run",
         lambda f, w: [*_predict()(f, w)[:-2], "--output", _earlier_prediction(w)],
         lambda f, w: f"{w / 'p'} holds an earlier prediction (results.jsonl); --resume "
                      "continues it, --overwrite replaces it", ("p/run.json", "p/labels/*")),
    # whole slides (issue 21); slide files from tests/inference/test_slide_fixtures.py
    Case(PRED, "predict_slide_not_a_slide",
         _predict(inputs=lambda f, w: [_slides().not_a_slide(w)]),
         "notes.svs: is not a slide OpenSlide can read", NO_PREDICTIONS),
    Case(PRED, "predict_slide_without_pixel_size",
         _predict(inputs=lambda f, w: [_slides().slide_without_pixel_size(w),
                                       "INPUT.PIXEL_SIZE_UM", "0.5"]),
         "nosize.tif: the slide does not say its pixel size",
         ("p/*/slide.json", "p/*/nuclei.geojson", "p/*/nuclei.csv")),
    Case(PRED, "predict_slide_corrupt_tile_strict",
         _predict("--strict", "--block-size", "256", inputs=lambda f, w: [_corrupt_slide(w)]),
         "cannot be decoded (DeflateError",
         ("p/*/slide.json", "p/*/nuclei.geojson", "p/*/nuclei.csv"), noisy=True),
    Case(PRED, "predict_slide_output_read_only",
         lambda f, w: ["--config-file", QUICK_PP, "--weights", f.weights["pp"],
                       _slides().slide_without_pixel_size(w), "--output", f.read_only / "p"],
         lambda f, w: f"--output {f.read_only / 'p'}: cannot be created"),
    Case(PRED, "predict_slide_and_images_mixed",
         _predict(inputs=lambda f, w: [_slides().slide_without_pixel_size(w),
                                       f.images / "1.png"]),
         "the inputs mix whole slides (nosize.tif) and images (1.png)", NO_PREDICTIONS),
    Case(PRED, "predict_slide_workers_zero",
         _predict("--workers", "0",
                  inputs=lambda f, w: [_slides().slide_without_pixel_size(w)]),
         "--workers must be at least 1, got 0",
         ("p/*/slide.json", "p/*/nuclei.geojson", "p/*/nuclei.csv")),
    # ---- export_model
    Case(EXPORT, "export_into_an_earlier_export",
         lambda f, w: ["--config-file", QUICK_PP, "--weights", f.weights["pp"], "--format",
                       "torchscript", "--output", _earlier_export(w)],
         lambda f, w: f"{w / 'e'} holds an earlier torchscript export (model.ts); "
                      "--overwrite replaces it", ("e/model.ts.json",), fresh=True),
]


def _slides():
    """The slide file makers of the slide tests."""
    from tests.inference import test_slide_fixtures

    return test_slide_fixtures


def _corrupt_slide(w: Path) -> Path:
    """A small synthetic slide whose second level-0 tile (in the first block's context)
    cannot be decoded."""
    path, _ = _slides().synthetic_slide(w, 600)
    _slides().corrupt_tile(path, 1)
    return path


def _label_copy(f: SimpleNamespace, w: Path) -> Path:
    shutil.copytree(f.label_src, w / "cells")
    return w / "cells"


def _without_labels(f: SimpleNamespace, w: Path) -> Path:
    """A label-image source whose masks/ folder is empty."""
    shutil.copytree(f.label_src / "images", w / "src" / "images")
    (w / "src" / "masks").mkdir()
    return w / "src"


def _foreign_out(w: Path) -> Path:
    """An OUT folder that holds someone's files, not a prepared data set."""
    (w / "out").mkdir()
    (w / "out" / "notes.txt").write_text("not a data set")
    return w / "out"


def _stale_out(w: Path) -> Path:
    """An OUT folder holding the annotations of an earlier, successful run."""
    out = w / "out"
    (out / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (out / "annotations" / f"instances_{split}.json").write_text('{"images": []}')
    return out



@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> SimpleNamespace:
    return write_inputs(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory, request) -> dict[str, Result]:
    """Every selected case, run once (see ``bad_input_harness.run_cases``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DETECTRON2_DATASETS": str(inputs.datasets),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    selected = {item.callspec.params["case"].id for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    done, line = run_cases([c for c in CASES if c.id in selected], inputs,
                           tmp_path_factory.mktemp("bad_input_runs"), env,
                           workers=max(2, min(4, os.cpu_count() or 1)))
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    if reporter is not None:  # shown even while pytest captures output
        with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
            reporter.write_line(f"\nbad-input suite: {line} ({len(CASES)} in the table)")
    return done


def test_the_table_covers_every_tool_and_the_issue():
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)
    tools = {case.tool for case in CASES}
    assert tools == {E, V, C, P, B, T, DSB, PATCHES, POLYP, LIVER, NODULE, INST,
                     PRED, CONVERT, EXPORT}
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
    assert case_text(case.names, inputs, result.work) in error


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.absent], ids=lambda c: c.id)
def test_bad_input_leaves_no_valid_looking_output(case, results):
    work = results[case.id].work
    left = [str(p.relative_to(work)) for pattern in case.absent for p in work.glob(pattern)]
    assert not left, f"{case.id} left {left}"
