"""Bootstrap intervals for the comparisons of a study: differences of two models, and
weighted contrasts of several (e.g. a main effect of a 2x2 ablation).

A comparison's value is ``sum_m w_m * mean_m``, ``mean_m`` being model ``m``'s metric
averaged over its seeds. Each resample draws the images (or the groups that
``group_pattern`` names) with replacement, jointly for every model, recomputes every run's
metric on them, and averages each model's seeds; its two intervals differ in the seeds:

- *images* keeps the trained seeds: how much would the value change on other images like
  these, for these training runs;
- *images + seeds* also draws each model's seeds with replacement: the variation between
  training runs counts too (the interval a study's decision uses).

Per-image means (DSB mAP, AJI, Dice, ...) are recomputed from the resampled per-image
values, COCO AP from the resampled per-image matches (``CocoMatches``, fewer resamples
where its cost matters), semantic IoU and Dice from the resampled pixel counts.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..utils.errors import UserError
from .evaluation import COCO_METRICS, RunEval

__all__ = ["Comparison", "bootstrap_positions", "summarize", "comparisons_of"]


@dataclass(frozen=True)
class Comparison:
    """A named weighted sum of models; ``pair`` is set for a plain difference A - B."""

    name: str
    weights: dict[str, float]
    pair: tuple[str, str] | None = None


def comparisons_of(models: Sequence[str], pairs: Sequence[tuple[str, str]],
                   contrasts: dict[str, dict[str, float]]) -> list[Comparison]:
    """The study's pairs (every pair of models when it names none) and contrasts."""
    if not pairs:
        pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    return ([Comparison(f"{a} − {b}", {a: 1.0, b: -1.0}, (a, b)) for a, b in pairs]
            + [Comparison(name, dict(weights)) for name, weights in contrasts.items()])


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


def _interval(values: Sequence[float], alpha: float) -> tuple[float, float]:
    low, high = np.quantile(np.asarray(values), [alpha, 1 - alpha])
    return float(low), float(high)


def summarize(evals: dict[str, dict[int, RunEval]], models: Sequence[str],
              comparisons: Sequence[Comparison], group_pattern: str | None = None,
              resamples: int = 2000, ap_resamples: int = 200, seed: int = 0,
              confidence: float = 0.95) -> tuple[dict, dict]:
    """Per-model mean/std over seeds and every comparison with its two intervals, for one
    data set at one evaluation point. ``evals[model][seed]`` are the runs' results on the
    same images. Returns the JSON-ready summary and, apart, the arrays the figures need
    (``{(comparison, metric): (per-image values or None, bootstrap values)}``)."""
    present = [m for m in models if evals.get(m)]
    if not present:
        return {"models": {}, "comparisons": []}, {}
    reference = next(iter(evals[present[0]].values()))
    for model in present:
        for run_seed, run_eval in evals[model].items():
            if run_eval.keys != reference.keys:
                raise UserError(f"{model} seed {run_seed} was evaluated on other images than "
                                f"{present[0]}: delete its study_eval folder and rerun")
    full = np.arange(len(reference.keys))
    groups = _groups(reference.file_names, group_pattern)
    rng = np.random.default_rng(seed)
    total = max(resamples, ap_resamples)
    positions = bootstrap_positions(groups, total, rng)
    per_seed = {m: {s: e.scores(full) for s, e in sorted(evals[m].items())} for m in present}
    summary: dict[str, Any] = {"images": len(full), "groups": len(set(groups)),
                               "models": {}, "comparisons": []}
    for model in present:
        table = per_seed[model]
        metrics = list(next(iter(table.values())))
        summary["models"][model] = {
            "seeds": list(table),
            "per_seed": {k: [table[s][k] for s in table] for k in metrics},
            "mean": {k: float(np.mean([table[s][k] for s in table])) for k in metrics},
            "std": {k: float(np.std([table[s][k] for s in table], ddof=1))
                    if len(table) > 1 else None for k in metrics}}
    # Every run scored on every resample: boot[model][metric] is (resamples, seeds).
    boot: dict[str, dict[str, list[list[float]]]] = {m: {} for m in present}
    for b, pos in enumerate(positions):
        for model in present:
            runs = [e.scores(pos, with_coco=b < ap_resamples) for _, e in
                    sorted(evals[model].items())]
            for key in runs[0]:
                if b >= resamples and key not in COCO_METRICS:
                    continue
                boot[model].setdefault(key, []).append([r[key] for r in runs])
    seed_draws = {m: rng.integers(0, len(evals[m]), (total, len(evals[m]))) for m in present}
    alpha = (1 - confidence) / 2
    plots: dict[tuple[str, str], tuple[np.ndarray | None, np.ndarray]] = {}
    for comparison in comparisons:
        if not all(m in summary["models"] for m in comparison.weights):
            continue
        common = set.intersection(*(set(summary["models"][m]["mean"])
                                    for m in comparison.weights))
        for key in [k for k in summary["models"][present[0]]["mean"] if k in common]:
            point = sum(w * summary["models"][m]["mean"][key]
                        for m, w in comparison.weights.items())
            samples = len(boot[present[0]][key])
            images_only = np.zeros(samples)
            with_seeds = np.zeros(samples)
            for model, weight in comparison.weights.items():
                values = np.asarray(boot[model][key])                  # (samples, seeds)
                images_only += weight * values.mean(axis=1)
                drawn = np.take_along_axis(values, seed_draws[model][:samples], axis=1)
                with_seeds += weight * drawn.mean(axis=1)
            entry = {"name": comparison.name, "metric": key, "value": float(point),
                     "weights": comparison.weights, "resamples": int(samples)}
            entry["ci_low"], entry["ci_high"] = _interval(with_seeds, alpha)
            entry["images_ci_low"], entry["images_ci_high"] = _interval(images_only, alpha)
            if comparison.pair:
                a, b = comparison.pair
                entry["a"], entry["b"] = a, b
                seeds_a, seeds_b = summary["models"][a]["seeds"], summary["models"][b]["seeds"]
                entry["per_seed"] = {str(s): summary["models"][a]["per_seed"][key][
                    seeds_a.index(s)] - summary["models"][b]["per_seed"][key][seeds_b.index(s)]
                    for s in seeds_a if s in seeds_b}
            summary["comparisons"].append(entry)
            per_image = [_seed_mean_per_image(evals[m], key) for m in comparison.weights]
            plots[(comparison.name, key)] = (
                None if any(v is None for v in per_image) else
                sum(w * v for w, v in zip(comparison.weights.values(), per_image)),
                with_seeds)
    return summary, plots


def _seed_mean_per_image(runs: dict[int, RunEval], metric: str) -> np.ndarray | None:
    values = [e.per_image(metric) for e in runs.values()]
    return None if any(v is None for v in values) else np.mean(values, axis=0)
