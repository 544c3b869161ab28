"""Multi-seed comparisons of models with bootstrap confidence intervals (``tools/study.py``).

A study is a YAML description: ``output`` (folder), ``models`` ({name: config file}),
``seeds``, shared ``overrides`` ({KEY: value}, the schedule), ``eval_sets`` (registered data
set names; default: the models' DATASETS.TEST) and, optionally, ``group_pattern`` (a regular
expression whose first group, matched on an image's file name, names the unit images are
resampled by, e.g. the source image of a patch). Run ``(model, seed)`` lives in
``<output>/runs/<model>/seed<seed>`` and is trained by ``tools/train_net.py`` with the
overrides, ``SEED``, ``OUTPUT_DIR`` and an empty ``DATASETS.TEST`` (training evaluates
nothing). A run is finished when its ``model_final.pth`` exists; an unfinished one is
continued with ``--resume``, so a killed study picks up where it stopped.

Every finished run is evaluated once on every set; its per-image results are cached in
``<run>/study_eval/<set>/``. The report gives, per model, mean and standard deviation over
seeds, and for each pair of models the difference of their seed means with a 95%
percentile-bootstrap interval: images (or groups) are resampled jointly for both models and
the metric is recomputed on each resample for every seed, then averaged over seeds. COCO AP
is not a mean over images, so it is recomputed from pycocotools' per-image matches
(``COCOeval.evaluateImg``) on each resampled image list; that is slower, so it uses fewer
resamples (``ap_resamples``). Semantic IoU and Dice are pooled over pixels, so they are
recomputed from the resampled per-image pixel counts. Every score is reported in percent,
as the evaluators report it, and differences in percentage points.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from ..engine.config import is_semantic, load_config
from ..engine.inference_modes import InferenceModes
from ..engine.trainer import Trainer
from ..evaluation.nuclei import (
    MAIN_METRICS,
    coco_ap,
    coco_image_evaluation,
    dataset_ground_truth,
    load_coco_results,
)
from ..evaluation.semantic import HEADLINE, SemanticEvaluator, mode_scores
from ..utils.errors import UserError
from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .description import StudySpec, load_spec
from .runs import Run, check_run_config, plan_runs, train_runs

__all__ = ["StudySpec", "Run", "load_spec", "plan_runs", "check_run_config", "train_runs",
           "evaluate_run", "bootstrap_positions", "summarize", "run_study"]

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
COCO_METRICS = {"segm_AP": ("segm", "AP"), "segm_AP50": ("segm", "AP50"),
                "segm_AP75": ("segm", "AP75"), "bbox_AP": ("bbox", "AP")}
KEY_METRICS = ("segm_AP", "bbox_AP", "dsb_map", "aji", "dice", "f1_50", "IoU", "Dice")


# --------------------------------------------------------------------------- evaluation


@dataclass
class RunEval:
    """One run's per-image results on one data set, in a fixed image order."""

    kind: str                                   # "instance" or "semantic"
    keys: list[str]                             # image identities (pairing across runs)
    file_names: list[str]
    values: dict[str, np.ndarray] = field(default_factory=dict)   # per-image scores (%)
    counts: dict[str, np.ndarray] = field(default_factory=dict)   # per-image (I, P, T)
    coco: dict[str, Any] = field(default_factory=dict)            # iou type -> COCOeval

    def scores(self, positions: np.ndarray, with_coco: bool = True) -> dict[str, float]:
        """Every metric (%) on the images at ``positions`` (repeats allowed)."""
        out: dict[str, float] = {}
        if self.kind == "instance":
            if with_coco:
                for iou_type, evaluation in self.coco.items():
                    aps = _resampled_ap(evaluation, positions)
                    for name, (kind, key) in COCO_METRICS.items():
                        if kind == iou_type:
                            out[name] = 100.0 * (aps[key] if aps[key] is not None else 0.0)
            out.update({m: float(v[positions].mean()) for m, v in self.values.items()})
            return out
        for mode, counts in self.counts.items():
            out.update(mode_scores(counts[positions].sum(axis=0), mode))
        return out

    def per_image(self, metric: str) -> np.ndarray | None:
        """Per-image values of a metric (None for COCO AP, which has none)."""
        if metric in self.values:
            return self.values[metric]
        for mode, counts in self.counts.items():
            if metric in mode_scores((0, 0, 0), mode):  # one of the keys this mode reports
                return np.array([mode_scores(c, mode)[metric] for c in counts])
        return None


def _resampled_ap(evaluation, positions: np.ndarray) -> dict[str, float | None]:
    """COCO AP of an evaluated ``COCOeval`` on the image list ``positions`` (indices into
    its sorted image ids, repeats allowed): its per-image matches, accumulated again."""
    if evaluation is None:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    params = evaluation._paramsEval
    n = len(params.imgIds)
    sub = copy.copy(evaluation)
    sub.params = sub._paramsEval = copy.copy(params)
    sub.params.imgIds = [params.imgIds[i] for i in positions]
    categories = len(params.catIds) if params.useCats else 1
    sub.evalImgs = [evaluation.evalImgs[c * n + i] for c in range(categories) for i in positions]
    return coco_ap(sub)


def _fingerprint(run: Run) -> dict:
    stat = run.weights.stat()
    return {"version": CACHE_VERSION, "weights_size": stat.st_size,
            "weights_mtime_ns": stat.st_mtime_ns}


def evaluate_run(run: Run, dataset: str, progress: Callable[[str], None] = print) -> Path:
    """Evaluate a finished run on ``dataset`` unless its cache is current; returns the cache
    file (``<run>/study_eval/<dataset>/per_image.json``)."""
    folder = run.run_dir / "study_eval" / dataset
    cache = folder / "per_image.json"
    if cache.is_file():
        try:
            if json.loads(cache.read_text())["fingerprint"] == _fingerprint(run):
                return cache
        except (ValueError, KeyError):
            pass
    cfg = run.config(evaluation=True)
    cfg.MODEL.WEIGHTS = str(run.weights)
    semantic = is_semantic(cfg)
    evaluator_type = MetadataCatalog.get(dataset).get("evaluator_type", "coco")
    if semantic != (evaluator_type == "semantic"):
        raise UserError(f"eval set {dataset!r} ({evaluator_type} evaluation) does not fit "
                        f"model {run.model} ({'semantic' if semantic else 'instance'})")
    progress(f"evaluating {run.model} seed {run.seed} on {dataset}")
    model = build_model(cfg)
    Trainer.build_checkpointer(cfg, model).load(str(run.weights), checkpointables=[])
    loader = Trainer.build_test_loader(cfg, dataset)
    if semantic:
        semantic_evaluator = SemanticEvaluator(dataset, distributed=False,
                                               output_dir=str(folder))
        evaluator = InferenceModes(model, semantic_evaluator)
    else:
        evaluator = Trainer.build_evaluator(cfg, dataset, output_folder=str(folder))
    with contextlib.redirect_stdout(io.StringIO()):      # pycocotools prints its tables
        inference_on_dataset(model, loader, evaluator)
    if semantic:
        record = {"kind": "semantic",
                  "per_image": {mode: sorted(rows)
                                for mode, rows in semantic_evaluator.per_image.items()}}
    else:
        nuclei = folder / "nuclei_metrics.json"
        per_image = (sorted(json.loads(nuclei.read_text())["per_image"],
                            key=lambda m: m["image_id"]) if nuclei.is_file() else [])
        record = {"kind": "instance", "max_dets": cfg.TEST.DETECTIONS_PER_IMAGE,
                  "detections": "coco_instances_results.json",
                  "image_ids": [m["image_id"] for m in per_image],
                  "file_names": [m["file_name"] for m in per_image],
                  "values": {k: [m[k] for m in per_image] for k in MAIN_METRICS}}
        if not per_image:
            ids = sorted(d["image_id"] for d in DatasetCatalog.get(dataset))
            record.update(image_ids=ids, file_names=[str(i) for i in ids], values={})
    atomic_write_json(cache, {"fingerprint": _fingerprint(run), **record})
    return cache


def load_run_eval(cache: Path, ground_truth) -> RunEval:
    """A :class:`RunEval` from a cache file (instance runs: with their COCO matches)."""
    record = json.loads(cache.read_text())
    if record["kind"] == "semantic":
        per_image = record["per_image"]
        first = per_image[HEADLINE]
        return RunEval("semantic", keys=[r[0] for r in first],
                       file_names=[r[0] for r in first],
                       counts={mode: np.array([r[1:] for r in rows], np.int64)
                               for mode, rows in per_image.items()})
    ids = record["image_ids"]
    results = load_coco_results(cache.parent / record["detections"])
    coco = {}
    for iou_type in ("segm", "bbox"):
        coco[iou_type] = (coco_image_evaluation(ground_truth, results, ids, record["max_dets"],
                                                iou_type) if results else None)
        if coco[iou_type] is not None and list(coco[iou_type]._paramsEval.imgIds) != ids:
            raise UserError(f"{cache}: image ids differ from the ground truth's")
    return RunEval("instance", keys=[str(i) for i in ids], file_names=record["file_names"],
                   values={k: 100.0 * np.asarray(v, np.float64)
                           for k, v in record["values"].items()},
                   coco=coco)


# --------------------------------------------------------------------------- statistics


def bootstrap_positions(groups: Sequence[str], resamples: int,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """``resamples`` image index lists, each drawing as many groups as there are, with
    replacement, and taking every image of a drawn group (a group per image: plain images)."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    blocks = [np.asarray(m) for m in members.values()]
    return [np.concatenate([blocks[g] for g in rng.integers(0, len(blocks), len(blocks))])
            for _ in range(resamples)]


def _groups(file_names: Sequence[str], pattern: str | None) -> list[str]:
    if pattern is None:
        return list(file_names)
    regex = re.compile(pattern)
    out = []
    for name in file_names:
        match = regex.search(os.path.basename(name))
        out.append(match.group(1) if match else name)
    return out


def summarize(evals: dict[str, dict[int, RunEval]], models: Sequence[str],
              group_pattern: str | None = None, resamples: int = 2000,
              ap_resamples: int = 200, seed: int = 0, confidence: float = 0.95) -> dict:
    """Per-model mean/std over seeds and paired bootstrap differences, for one data set.

    ``evals[model][seed]`` are the runs' results on the same images. Returns the JSON-ready
    summary plus, under ``"_plot"``, the arrays the figures need."""
    present = [m for m in models if evals.get(m)]
    if not present:
        return {"models": {}, "pairs": []}
    reference = next(iter(evals[present[0]].values()))
    for model in present:
        for seed, run_eval in evals[model].items():
            if run_eval.keys != reference.keys:
                raise UserError(f"{model} seed {seed} was evaluated on other images than "
                                f"{present[0]}: delete its study_eval folder and rerun")
    full = np.arange(len(reference.keys))
    groups = _groups(reference.file_names, group_pattern)
    rng = np.random.default_rng(seed)
    positions = bootstrap_positions(groups, max(resamples, ap_resamples), rng)
    per_seed = {m: {s: e.scores(full) for s, e in sorted(evals[m].items())} for m in present}
    summary: dict[str, Any] = {"images": len(full), "groups": len(set(groups)),
                               "models": {}, "pairs": []}
    for model in present:
        table = per_seed[model]
        metrics = list(next(iter(table.values())))
        summary["models"][model] = {
            "seeds": list(table),
            "per_seed": {k: [table[s][k] for s in table] for k in metrics},
            "mean": {k: float(np.mean([table[s][k] for s in table])) for k in metrics},
            "std": {k: float(np.std([table[s][k] for s in table], ddof=1))
                    if len(table) > 1 else None for k in metrics}}
    # Bootstrap: every run scored on every resample (COCO AP on the first ap_resamples).
    boot: dict[str, dict[str, list[float]]] = {m: {} for m in present}
    for b, pos in enumerate(positions):
        for model in present:
            runs = [e.scores(pos, with_coco=b < ap_resamples) for e in evals[model].values()]
            if b >= resamples:
                runs = [{k: v for k, v in r.items() if k in COCO_METRICS} for r in runs]
            for key in runs[0]:
                boot[model].setdefault(key, []).append(float(np.mean([r[key] for r in runs])))
    alpha = (1 - confidence) / 2
    plots = {}
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            common = [k for k in summary["models"][a]["mean"] if k in summary["models"][b]["mean"]]
            for key in common:
                diffs = np.asarray(boot[a][key]) - np.asarray(boot[b][key])
                point = summary["models"][a]["mean"][key] - summary["models"][b]["mean"][key]
                low, high = np.quantile(diffs, [alpha, 1 - alpha])
                summary["pairs"].append({
                    "a": a, "b": b, "metric": key, "difference": float(point),
                    "ci_low": float(low), "ci_high": float(high),
                    "resamples": int(len(diffs))})
                per_a = _seed_mean_per_image(evals[a], key)
                per_b = _seed_mean_per_image(evals[b], key)
                plots[(a, b, key)] = (per_a - per_b if per_a is not None and per_b is not None
                                      else None, diffs)
    summary["_plot"] = plots
    return summary


def _seed_mean_per_image(runs: dict[int, RunEval], metric: str) -> np.ndarray | None:
    values = [e.per_image(metric) for e in runs.values()]
    return None if any(v is None for v in values) else np.mean(values, axis=0)


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, signed: bool = False) -> str:
    """A score in percent, or a difference of two in percentage points."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:{'+' if signed else ''}.2f}"


def machine_description() -> str:
    """The machine a study ran on, in words (CPU cores, GPU name, torch version)."""
    gpu = (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU")
    return (f"{platform.machine()} CPU, {os.cpu_count()} cores, {gpu}; "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def _model_words(entry: dict) -> str:
    """A model entry of the description in words."""
    if entry.get("runs_of"):
        return f"the runs of {entry['runs_of']}, evaluated with " + ", ".join(
            f"`{k} {v}`" for k, v in entry["eval_overrides"].items())
    words = f"`{entry['config']}`"
    for kind in ("overrides", "eval_overrides"):
        if entry.get(kind):
            words += f" with {kind.replace('_', ' ')} " + ", ".join(
                f"`{k} {v}`" for k, v in entry[kind].items())
    return words


def study_markdown(report: dict) -> str:
    spec = report["study"]
    lines = [f"# Study `{spec['output']}`", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}  ",
             "Models: " + ", ".join(f"{m} ({_model_words(e)})"
                                    for m, e in spec["models"].items()) + "  ",
             f"Seeds: {spec['seeds']}; overrides: "
             + (", ".join(f"`{k} {v}`" for k, v in spec["overrides"].items()) or "none"), ""]
    if report["unfinished"]:
        lines += ["**Not finished (left out):** " + ", ".join(report["unfinished"]), ""]
    lines += [f"Differences are model A minus model B of the means over seeds, with a "
              f"{report['confidence']:.0%} percentile-bootstrap interval over images "
              f"({report['resamples']} resamples; COCO AP: {report['ap_resamples']}, "
              "recomputed from pycocotools' per-image matches on each resample), images "
              "resampled jointly for both models.", ""]
    for dataset, summary in report["eval_sets"].items():
        models = summary["models"]
        if not models:
            lines += [f"## {dataset}", "", "No finished run.", ""]
            continue
        metrics = list(next(iter(models.values()))["mean"])
        for other in models.values():
            metrics += [k for k in other["mean"] if k not in metrics]
        unit = (f"{summary['images']} images in {summary['groups']} resampling groups"
                if summary["groups"] != summary["images"] else f"{summary['images']} images")
        lines += [f"## {dataset} ({unit})", "", "Mean ± std over seeds (%):", "",
                  "| model | seeds | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for model, stats in models.items():
            cells = [f"{_fmt(stats['mean'].get(k))} ± {_fmt(stats['std'].get(k))}"
                     if k in stats["mean"] else "-" for k in metrics]
            lines.append(f"| {model} | {len(stats['seeds'])} | " + " | ".join(cells) + " |")
        if summary["pairs"]:
            lines += ["", "Paired differences (A − B, percentage points):", "",
                      "| A | B | metric | A − B | 95% CI | resamples |",
                      "|---|---|---|---|---|---|"]
            for p in summary["pairs"]:
                lines.append(f"| {p['a']} | {p['b']} | {p['metric']} | "
                             f"{_fmt(p['difference'], True)} | "
                             f"[{_fmt(p['ci_low'], True)}, "
                             f"{_fmt(p['ci_high'], True)}] | {p['resamples']} |")
        for figure in summary.get("figures", []):
            lines += ["", f"![{figure}]({figure})"]
        lines.append("")
    return "\n".join(lines)


def _figure(dataset: str, metric: str, summary: dict, plots: dict) -> bytes:
    """Left: each seed's score per model; right: per-image paired differences (COCO AP:
    the bootstrap distribution of the difference), with the difference's interval."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    models = [m for m, s in summary["models"].items() if metric in s["mean"]]
    pairs = [p for p in summary["pairs"] if p["metric"] == metric]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8),
                                      gridspec_kw={"width_ratios": [1, 1.6]})
    for x, model in enumerate(models):
        values = summary["models"][model]["per_seed"][metric]
        left.scatter([x] * len(values), values, zorder=3)
        left.hlines(np.mean(values), x - 0.25, x + 0.25, color="k")
    left.set_xticks(range(len(models)), models, rotation=15)
    left.set_xlim(-0.6, len(models) - 0.4)
    left.set_title(f"{metric} (%) per seed (line: mean)")
    label = "per-image difference"
    for y, pair in enumerate(pairs):
        per_image, boot = plots[(pair["a"], pair["b"], metric)]
        values = per_image if per_image is not None else boot
        if per_image is None:
            label = "bootstrap differences"
        jitter = np.random.default_rng(y).uniform(-0.2, 0.2, len(values))
        right.scatter(values, y + jitter, s=6, alpha=0.35)
        right.errorbar([pair["difference"]], [y], xerr=[[pair["difference"] - pair["ci_low"]],
                                                        [pair["ci_high"] - pair["difference"]]],
                       fmt="D", color="k", capsize=4, zorder=3)
    right.axvline(0, color="grey", lw=0.8)
    right.set_yticks(range(len(pairs)), [f"{p['a']}\n− {p['b']}" for p in pairs])
    right.set_title(f"{label}; diamond: difference of means, 95% CI")
    fig.suptitle(f"{metric} (%) on {dataset}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the study


def run_study(spec: StudySpec, jobs: int = 1, threads: int | None = None, train: bool = True,
              evaluate: bool = True, only: Sequence[str] = (), resamples: int = 2000,
              ap_resamples: int = 200, seed: int = 0, command: str = "",
              progress: Callable[[str], None] = print) -> dict | None:
    """Train what is unfinished (unless ``train`` is False; ``only`` limits training to
    those models), then, unless ``evaluate`` is False, evaluate and write ``study.json``,
    ``study.md`` and the figures into ``spec.output``; returns the report."""
    unknown = sorted(set(only) - set(spec.models))
    if unknown:
        raise UserError(f"--only: unknown model(s) {', '.join(unknown)} (the study has "
                        f"{', '.join(spec.models)})")
    runs = plan_runs(spec)
    for run in runs:
        check_run_config(run)
    eval_sets = spec.eval_sets or list(dict.fromkeys(
        name for entry in spec.models.values()
        for name in load_config(entry.config).DATASETS.TEST))
    if not eval_sets:
        raise UserError(f"{spec.source}: no 'eval_sets' and the models' configs have no "
                        "DATASETS.TEST")
    if train:
        train_runs([r for r in runs if not only or r.model in only], jobs=jobs,
                   threads=threads, progress=progress)
    if not evaluate:
        return None
    torch.set_num_threads(threads or os.cpu_count() or 1)
    finished = [run for run in runs if run.finished]
    report: dict[str, Any] = {
        "study": spec.as_dict(), "command": command, "machine": machine_description(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "confidence": 0.95, "resamples": resamples, "ap_resamples": ap_resamples,
        "runs": [{"model": r.model, "seed": r.seed, "run_dir": str(r.run_dir),
                  "finished": r.finished} for r in runs],
        "unfinished": [str(r.run_dir) for r in runs if not r.finished], "eval_sets": {}}
    for dataset in eval_sets:
        caches = [(run, evaluate_run(run, dataset, progress)) for run in finished]
        ground_truth = (dataset_ground_truth(dataset) if any(
            json.loads(c.read_text())["kind"] == "instance" for _, c in caches) else None)
        evals: dict[str, dict[int, RunEval]] = {}
        for run, cache in caches:
            evals.setdefault(run.model, {})[run.seed] = load_run_eval(cache, ground_truth)
        progress(f"bootstrapping {dataset}")
        summary = summarize(evals, list(spec.models), spec.group_pattern, resamples,
                            ap_resamples, seed)
        plots = summary.pop("_plot", {})
        summary["figures"] = []
        for metric in KEY_METRICS:
            if any(p["metric"] == metric for p in summary["pairs"]):
                name = f"{dataset}_{metric}.png"
                atomic_write_bytes(spec.output / name, _figure(dataset, metric, summary, plots))
                summary["figures"].append(name)
        report["eval_sets"][dataset] = summary
    atomic_write_json(spec.output / "study.json", report, indent=1)
    atomic_write_text(spec.output / "study.md", study_markdown(report))
    progress(f"written: {spec.output / 'study.md'}, {spec.output / 'study.json'}")
    return report
