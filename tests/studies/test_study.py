"""tools/study.py: description checks, bootstrap statistics, and a tiny study end to end."""
from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as mask_util

from maskrcnn_pp.evaluation.coco_resampling import CocoMatches
from maskrcnn_pp.evaluation.nuclei import coco_ap, coco_from_dict, coco_image_evaluation
from maskrcnn_pp.studies.bootstrap import Comparison, bootstrap_positions, summarize
from maskrcnn_pp.studies.description import load_spec
from maskrcnn_pp.studies.evaluation import RunEval
from maskrcnn_pp.studies.runs import plan_runs
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT, process_alive

QUICK = ROOT / "configs" / "quick_schedules"
STUDY = ROOT / "tools" / "study.py"


def write_spec(tmp_path, **fields):
    spec = {"output": str(tmp_path / "out"),
            "models": {"pp": str(QUICK / "mask_rcnn_pp_synthetic.yaml"),
                       "base": str(QUICK / "mask_rcnn_baseline_synthetic.yaml")},
            "seeds": [0, 1], "eval_sets": ["nuclei_synthetic_val"], **fields}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("fields, message", [
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"models": {"pp": "nope.yaml"}}, "models.pp: config file nope.yaml does not exist"),
    ({"seeds": [0, 0]}, "'seeds' must be a list of distinct integers"),
    ({"overrides": {"SEED": 3}}, "overrides.SEED is set by the study"),
    ({"eval_sets": ["no_such_set"]}, "eval_sets: unknown data set 'no_such_set'"),
    ({"group_pattern": "_\\d+"}, "needs a (group)"),
    ({"eval_iters": [0]}, "'eval_iters' must be a list of distinct integers >= 1"),
    ({"pairs": [["pp", "pp"]]}, "pairs: ['pp', 'pp'] must be two different models"),
    ({"contrasts": {"c": {"pp": 1, "base": 1}}}, "contrasts.c: weights sum to 2, not 0"),
    ({"contrasts": {"c": {"pp": 1, "nope": -1}}}, "contrasts.c: unknown model 'nope'"),
    ({"models": {"a": {"runs_of": "b"}}}, "models.a: runs_of 'b' is not a trained model"),
    ({"models": {"a": {"config": "x.yaml", "colour": 1}}}, "models.a: unknown key(s) colour"),
])
def test_bad_descriptions_name_the_file_and_key(tmp_path, fields, message):
    path = write_spec(tmp_path, **fields)
    with pytest.raises(UserError, match=str(path).replace(".", r"\.")) as err:
        load_spec(path)
    assert message in str(err.value)


def test_runs_follow_the_layout_and_overrides_reach_the_command(tmp_path):
    spec = load_spec(write_spec(tmp_path, overrides={"SOLVER.STEPS": [2, 3]}),
                     more_overrides={"SOLVER.MAX_ITER": 4}, seeds=[5])
    runs = plan_runs(spec)
    assert [(r.model, r.seed, r.run_dir) for r in runs] == [
        ("pp", 5, tmp_path / "out" / "runs" / "pp" / "seed5"),
        ("base", 5, tmp_path / "out" / "runs" / "base" / "seed5")]
    cfg = runs[0].config()
    assert (cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER, cfg.SEED) == ((2, 3), 4, 5)
    assert cfg.OUTPUT_DIR == str(runs[0].run_dir) and cfg.DATASETS.TEST == ()
    assert "--resume" in runs[0].train_command()


def test_eval_iters_need_checkpoints_and_variants_share_runs(tmp_path):
    pp = str(QUICK / "mask_rcnn_pp_synthetic.yaml")
    models = {"pp": pp,
              "wide": {"config": pp, "overrides": {"MODEL.ROI_MASK_HEAD.WIDTHS": [64, 64, 64]}},
              "fast": {"runs_of": "pp",
                       "eval_overrides": {"MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL": 2}}}
    spec = load_spec(write_spec(tmp_path, models=models, seeds=[0], eval_iters=[200, 360],
                                overrides={"SOLVER.CHECKPOINT_PERIOD": 100}))
    runs = {r.model: r for r in plan_runs(spec)}
    assert runs["fast"].run_dir == runs["pp"].run_dir and not runs["fast"].trains
    assert runs["fast"].config(evaluation=True).MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL == 2
    assert runs["fast"].config().MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL == 0
    assert runs["wide"].config().MODEL.ROI_MASK_HEAD.WIDTHS == [64, 64, 64]
    assert runs["pp"].checkpoint(200, 360).name == "model_0000199.pth"
    assert runs["pp"].checkpoint(360, 360).name == "model_final.pth"
    bad = load_spec(write_spec(tmp_path, eval_iters=[150]))
    with pytest.raises(UserError, match=r"eval_iters 150 has no checkpoint .*CHECKPOINT_PERIOD"):
        plan_runs(bad)


def test_bootstrap_draws_whole_groups():
    groups = ["a", "a", "a", "b", "c"]
    drawn_a = 0
    for positions in bootstrap_positions(groups, 50, np.random.default_rng(0)):
        counts = np.bincount(positions, minlength=5)
        assert counts[0] == counts[1] == counts[2]          # all images of "a", or none
        assert counts[0] + counts[3] + counts[4] == 3       # three groups drawn
        drawn_a += counts[0]
    assert 0 < drawn_a < 150


def _square(y, x, size=4, shape=(32, 32)):
    mask = np.zeros(shape, np.uint8)
    mask[y:y + size, x:x + size] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    return rle


def _coco_case(images):
    """A ground truth and detections from ``images``: per image, a list of (true square,
    detection offset, score); offset None means a miss."""
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "nucleus"}]}
    dets = []
    for image_id, objects in enumerate(images, start=1):
        gt["images"].append({"id": image_id, "height": 32, "width": 32})
        for y, x, offset, score in objects:
            rle = _square(y, x)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id,
                                      "category_id": 1, "segmentation": rle, "area": 16,
                                      "bbox": [x, y, 4, 4], "iscrowd": 0})
            if offset is not None:
                dets.append({"image_id": image_id, "category_id": 1, "score": score,
                             "segmentation": _square(y + offset, x),
                             "bbox": [x, y + offset, 4, 4]})
    return gt, dets


IMAGES = [[(2, 2, 0, 0.9), (10, 10, 1, 0.8)], [(4, 4, 2, 0.95), (20, 20, None, 0.0)],
          [(8, 8, 0, 0.3), (16, 3, 3, 0.7), (25, 25, 0, 0.6)]]


def test_resampled_ap_equals_cocoeval_on_the_resampled_images():
    gt, dets = _coco_case(IMAGES)
    coco = coco_from_dict(gt, "gt")
    full = coco_image_evaluation(coco, dets, [1, 2, 3], 100)
    matches = CocoMatches(full)
    assert matches.ap(np.arange(3)) == coco_ap(copy.deepcopy(full))
    # a subset: the same as evaluating those images only
    subset = matches.ap(np.array([0, 2]))
    assert subset == coco_ap(coco_image_evaluation(coco, dets, [1, 3], 100))
    # repeats: the same as a data set where image 3 really appears twice
    twice_gt, twice_dets = _coco_case([IMAGES[0], IMAGES[2], IMAGES[2]])
    twice = coco_image_evaluation(coco_from_dict(twice_gt, "gt2"), twice_dets, [1, 2, 3], 100)
    assert matches.ap(np.array([0, 2, 2])) == coco_ap(twice)
    assert subset != coco_ap(copy.deepcopy(full))      # the resample really changes AP
    # maxDets cuts each image's detections before the matches are pooled
    one = coco_image_evaluation(coco, dets, [1, 2, 3], 1)
    assert CocoMatches(one).ap(np.array([2, 0, 1])) == coco_ap(
        coco_image_evaluation(coco, dets, [1, 2, 3], 1))


def _mean_eval(values, names=None):
    names = names or [f"img{i}" for i in range(len(values))]
    return RunEval("instance", keys=names, file_names=names,
                   values={"dsb_map": np.asarray(values, float)})


def test_paired_bootstrap_of_per_image_means():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.6, 40)
    evals = {"a": {0: _mean_eval(base + 0.10), 1: _mean_eval(base + 0.12)},
             "b": {0: _mean_eval(base), 1: _mean_eval(base + 0.02)}}
    pair_ab = [Comparison("a − b", {"a": 1.0, "b": -1.0}, ("a", "b"))]
    summary, plots = summarize(evals, ["a", "b"], pair_ab, resamples=300, ap_resamples=1)
    pair, = summary["comparisons"]
    # Every image gains 0.10 in both seeds' mean: over images alone no spread at all; the
    # seeds (a: +0.10, +0.12 over b's 0, +0.02) add the spread of drawing them.
    assert pair["value"] == pytest.approx(0.10)
    assert pair["images_ci_low"] == pytest.approx(0.10)
    assert pair["images_ci_high"] == pytest.approx(0.10)
    assert pair["ci_low"] == pytest.approx(0.08) and pair["ci_high"] == pytest.approx(0.12)
    assert pair["per_seed"] == pytest.approx({"0": 0.10, "1": 0.10})
    stats = summary["models"]["a"]
    assert stats["per_seed"]["dsb_map"] == pytest.approx([base.mean() + 0.10, base.mean() + 0.12])
    assert stats["std"]["dsb_map"] == pytest.approx(np.std([0.10, 0.12], ddof=1))
    plotted, _ = plots[("a − b", "dsb_map")]
    assert plotted == pytest.approx(np.full(40, 0.10))

    noisy = {"a": {0: _mean_eval(base + rng.normal(0, 0.1, 40))}, "b": {0: _mean_eval(base)}}
    pair, = summarize(noisy, ["a", "b"], pair_ab, resamples=500, ap_resamples=1)[0][
        "comparisons"]
    assert pair["ci_low"] < pair["value"] < pair["ci_high"]
    assert pair["ci_high"] - pair["ci_low"] > 0.02


def test_contrasts_weigh_the_models_means():
    """A main effect of a 2x2: the mean of two cells minus the mean of the other two."""
    base = np.linspace(0.2, 0.6, 30)
    evals = {name: {0: _mean_eval(base + shift)}
             for name, shift in (("pp", 0.3), ("neck", 0.1), ("head", 0.2), ("base", 0.0))}
    neck = Comparison("neck", {"pp": 0.5, "neck": 0.5, "head": -0.5, "base": -0.5})
    interaction = Comparison("interaction", {"pp": 1, "base": 1, "head": -1, "neck": -1})
    summary, _ = summarize(evals, list(evals), [neck, interaction], resamples=200,
                           ap_resamples=1)
    values = {c["name"]: c for c in summary["comparisons"]}
    assert values["neck"]["value"] == pytest.approx(0.1)            # (0.3+0.1-0.2-0)/2
    assert values["interaction"]["value"] == pytest.approx(0.0)
    assert values["neck"]["ci_low"] == pytest.approx(0.1)           # shifts: no spread
    assert "per_seed" not in values["neck"]


def test_semantic_scores_pool_pixels_and_refuse_other_images():
    counts = np.array([[10, 10, 10], [0, 0, 0], [5, 10, 5]])
    run = RunEval("semantic", keys=["p0", "p1", "p2"], file_names=["p0", "p1", "p2"],
                  counts={"output": counts})
    scores = run.scores(np.arange(3))
    assert scores["IoU"] == pytest.approx(100 * 15 / 20)      # pooled, not a mean of images
    assert run.scores(np.array([1, 1]))["Dice"] == 100.0      # nothing to find, nothing found
    assert run.per_image("IoU") == pytest.approx([100, 100, 50])
    other = RunEval("semantic", keys=["p0", "p1", "x"], file_names=["p0", "p1", "x"],
                    counts={"output": counts})
    with pytest.raises(UserError, match="other images"):
        summarize({"a": {0: run}, "b": {0: other}}, ["a", "b"], [])


def test_semantic_evaluator_keeps_the_counts_of_every_image():
    from maskrcnn_pp.evaluation.semantic import SemanticEvaluator

    evaluator = SemanticEvaluator("unused", distributed=False)
    truth = torch.zeros(4, 4, dtype=torch.long)
    truth[:2] = 1                                   # 8 true pixels
    probs = torch.zeros(1, 4, 4)
    probs[0, :1] = 0.9                              # 4 predicted, all true
    empty = torch.zeros(1, 4, 4)
    evaluator.process([{"sem_seg": truth, "file_name": "a_0_0.png"},
                       {"sem_seg": truth, "file_name": "a_0_96.png"}],
                      [{"sem_seg": probs}, {"sem_seg": empty}])
    assert evaluator.per_image == {"output": [("a_0_0.png", 4, 4, 8), ("a_0_96.png", 0, 0, 8)]}
    run = RunEval("semantic", keys=["a_0_0.png", "a_0_96.png"],
                  file_names=["a_0_0.png", "a_0_96.png"],
                  counts={"output": np.array([r[1:] for r in evaluator.per_image["output"]])})
    assert run.scores(np.arange(2)) == pytest.approx(evaluator.evaluate()["sem_seg"])


# --------------------------------------------------------------------------- end to end

TINY = {"SOLVER.MAX_ITER": 10, "SOLVER.CHECKPOINT_PERIOD": 2, "SOLVER.IMS_PER_BATCH": 1,
        "SOLVER.WARMUP_ITERS": 0, "SOLVER.BASE_LR": 0.005, "INPUT.MIN_SIZE_TRAIN": [64],
        "INPUT.MAX_SIZE_TRAIN": 64, "INPUT.MIN_SIZE_TEST": 64, "INPUT.MAX_SIZE_TEST": 64,
        "TEST.DETECTIONS_PER_IMAGE": 50}


def _study(spec, *args, **kwargs):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(STUDY), str(spec), "--resamples", "200",
                           "--ap-resamples", "20", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600, **kwargs)


@pytest.mark.slow
def test_tiny_study_survives_a_kill_and_reports_learning_curves(tmp_path):
    spec = write_spec(tmp_path, overrides=TINY, eval_iters=[4, 10])
    out = tmp_path / "out"
    run = {(m, s): out / "runs" / m / f"seed{s}" for m in ("pp", "base") for s in (0, 1)}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    study = subprocess.Popen([sys.executable, str(STUDY), str(spec), "--jobs", "2"], cwd=ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)

    def finished():
        return {key for key, folder in run.items() if (folder / "model_final.pth").is_file()}

    def midway():
        return {key for key, folder in run.items()
                if (folder / "last_checkpoint").is_file() and key not in finished()}

    def early():
        """Midway runs with at least 4 of their 10 iterations left, which no trainer can
        finish in the moment between the check and the kill."""
        return {key for key in midway() if (saved := re.fullmatch(
            r"model_(\d{7})\.pth", (run[key] / "last_checkpoint").read_text().strip()))
            and int(saved.group(1)) <= 5}

    # Kill the study alone once a run is finished and another is early in its training: its
    # trainings (each holding its run folder's lock, with its PID) end with it.
    deadline = time.time() + 400
    while not (finished() and early()):
        assert study.poll() is None and time.time() < deadline, "study ended or hung"
        time.sleep(0.05)
    trainers = {int(text) for folder in run.values() if (folder / "train.lock").is_file()
                and (text := (folder / "train.lock").read_text().strip())}
    study.send_signal(signal.SIGKILL)
    study.wait()
    assert trainers
    while any(process_alive(pid) for pid in trainers):
        assert time.time() < deadline + 10, "a training outlived its killed study"
        time.sleep(0.05)
    done, interrupted = finished(), midway()
    assert done and interrupted
    finished_before = {key: (run[key] / "model_final.pth").stat().st_mtime_ns for key in done}

    resumed = _study(spec, "--jobs", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for model, seed in interrupted:
        assert f"resuming {model} seed {seed}" in resumed.stdout
        log = (run[model, seed] / "log.txt").read_text()
        assert "Starting training from iteration 0" in log
        # From a periodic checkpoint; from iteration 10 when killed between the last one
        # and model_final.pth (the resumed run then only writes the final model).
        assert any(f"Starting training from iteration {i}" in log for i in range(2, 11, 2))
    for (model, seed), mtime in finished_before.items():     # finished: not trained again
        assert f"{model} seed {seed} (" not in resumed.stdout
        assert (run[model, seed] / "model_final.pth").stat().st_mtime_ns == mtime

    report = json.loads((out / "study.json").read_text())
    points = report["eval_sets"]["nuclei_synthetic_val"]
    assert list(points) == ["4", "10"] and report["missing"] == []
    for label, summary in points.items():
        assert summary["images"] == 16
        for model in ("pp", "base"):
            stats = summary["models"][model]
            assert stats["seeds"] == [0, 1]
            for i, seed in enumerate((0, 1)):
                nuclei = json.loads((run[model, seed] / "study_eval" / "nuclei_synthetic_val"
                                     / f"iter{label}" / "nuclei_metrics.json").read_text())
                assert stats["per_seed"]["dsb_map"][i] == pytest.approx(100 * nuclei["dsb_map"])
                assert stats["per_seed"]["segm_AP"][i] == pytest.approx(
                    100 * (nuclei["coco_segm"]["AP"] or 0.0))
        comparisons = {c["metric"]: c for c in summary["comparisons"]}
        assert comparisons["aji"]["name"] == "pp − base"
        assert comparisons["segm_AP"]["resamples"] == 20
        assert comparisons["aji"]["resamples"] == 200
        assert all(c["ci_low"] <= c["value"] <= c["ci_high"] or c["ci_low"] == c["ci_high"]
                   for c in comparisons.values())
    # The checkpoint after 4 iterations is not the final model: its scores differ.
    assert points["4"]["models"]["pp"]["per_seed"] != points["10"]["models"]["pp"]["per_seed"]
    for name in ("segm_AP", "dsb_map", "aji", "dsb_map_curve", "aji_curve"):
        assert (out / f"nuclei_synthetic_val_{name}.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "study.md").read_text()
    assert "| pp − base | aji |" in markdown and "nuclei_synthetic_val_aji_curve.png" in markdown
    assert "At 4 iterations" in markdown

    again = _study(spec, "--no-train")                       # cached evaluations
    assert again.returncode == 0 and "evaluating" not in again.stdout

    changed = _study(spec, "--override", "SOLVER.BASE_LR=0.02")
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    last = changed.stderr.strip().splitlines()[-1]
    assert "config.yaml differs" in last and "SOLVER.BASE_LR" in last
