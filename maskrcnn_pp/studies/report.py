"""A study's report: ``study.md`` and its figures, from the summaries of ``bootstrap``.

Per data set: at the last evaluation point, the models' mean ± std over seeds and every
comparison with both intervals; at the earlier points, the comparisons again; per key
metric a learning-curve figure (each model's seed mean and spread against the iteration,
and each comparison's value with its interval) when the study evaluates several points, and
a figure of the last point (each seed's score; the per-image paired differences, or for
COCO AP the bootstrap distribution, with the interval).
"""
from __future__ import annotations

import io

import numpy as np

__all__ = ["study_markdown", "point_figure", "curve_figure",
           "KEY_METRICS"]

KEY_METRICS = ("segm_AP", "bbox_AP", "dsb_map", "aji", "dice", "f1_50", "IoU", "Dice")


def _fmt(value: float | None, signed: bool = False) -> str:
    """A score in percent, or a difference of two in percentage points."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:{'+' if signed else ''}.2f}"


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


def _comparison_rows(comparisons: list[dict], metrics: list[str] | None = None) -> list[str]:
    lines = ["| comparison | metric | value | 95% CI (images + seeds) | 95% CI (images) "
             "| per seed | resamples |", "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        if metrics is not None and c["metric"] not in metrics:
            continue
        seeds = " / ".join(_fmt(v, True) for v in c.get("per_seed", {}).values()) or "-"
        lines.append(f"| {c['name']} | {c['metric']} | {_fmt(c['value'], True)} | "
                     f"[{_fmt(c['ci_low'], True)}, {_fmt(c['ci_high'], True)}] | "
                     f"[{_fmt(c['images_ci_low'], True)}, {_fmt(c['images_ci_high'], True)}] "
                     f"| {seeds} | {c['resamples']} |")
    return lines


def _model_rows(models: dict) -> list[str]:
    metrics: list[str] = []
    for stats in models.values():
        metrics += [k for k in stats["mean"] if k not in metrics]
    lines = ["| model | seeds | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for model, stats in models.items():
        cells = [f"{_fmt(stats['mean'].get(k))} ± {_fmt(stats['std'].get(k))}"
                 if k in stats["mean"] else "-" for k in metrics]
        lines.append(f"| {model} | {len(stats['seeds'])} | " + " | ".join(cells) + " |")
    return lines


def study_markdown(report: dict) -> str:
    spec = report["study"]
    lines = [f"# Study `{spec['output']}`", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}  ",
             "Models: " + ", ".join(f"{m} ({_model_words(e)})"
                                    for m, e in spec["models"].items()) + "  ",
             f"Seeds: {spec['seeds']}; overrides: "
             + (", ".join(f"`{k} {v}`" for k, v in spec["overrides"].items()) or "none")
             + "  ",
             "Evaluated at: " + (", ".join(f"{i} iterations" for i in spec["eval_iters"])
                                 or "the final weights"), ""]
    if report["missing"]:
        lines += ["**Not evaluated (not trained that far yet):** "
                  + ", ".join(report["missing"]), ""]
    lines += [f"A comparison is a weighted sum of the models' means over seeds (a pair: A − B), "
              f"in percentage points, with {report['confidence']:.0%} percentile-bootstrap "
              f"intervals ({report['resamples']} resamples; COCO AP: "
              f"{report['ap_resamples']}, recomputed from pycocotools' per-image matches on "
              "each resample): images resampled jointly for all models, and in the first "
              "interval each model's seeds too.", ""]
    for dataset, points in report["eval_sets"].items():
        labels = list(points)
        if not any(points[label]["models"] for label in labels):
            lines += [f"## {dataset}", "", "No run evaluated yet.", ""]
            continue
        last = next(label for label in reversed(labels) if points[label]["models"])
        summary = points[last]
        unit = (f"{summary['images']} images in {summary['groups']} resampling groups"
                if summary["groups"] != summary["images"] else f"{summary['images']} images")
        lines += [f"## {dataset} ({unit})", "",
                  f"### At {last if last == 'final' else last + ' iterations'}", "",
                  "Mean ± std over seeds (%):", "", *_model_rows(summary["models"])]
        if summary["comparisons"]:
            lines += ["", "Comparisons (percentage points):", "",
                      *_comparison_rows(summary["comparisons"])]
        for figure in summary.get("figures", []):
            lines += ["", f"![{figure}]({figure})"]
        earlier = [label for label in labels if label != last and points[label]["models"]]
        if earlier:
            lines += ["", "### Learning curves", ""]
            for figure in points[last].get("curve_figures", []):
                lines += [f"![{figure}]({figure})", ""]
            for label in earlier:
                models = points[label]["models"]
                seeds = ", ".join(f"{m} {len(s['seeds'])}" for m, s in models.items())
                lines += [f"At {label} iterations (seeds: {seeds}), key metrics:", "",
                          *_comparison_rows(points[label]["comparisons"], list(KEY_METRICS)),
                          ""]
        lines.append("")
    return "\n".join(lines)


def _png(fig) -> bytes:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def point_figure(dataset: str, label: str, metric: str, summary: dict, plots: dict) -> bytes:
    """Left: each seed's score per model; right: per-image differences of each comparison
    (COCO AP: the bootstrap distribution), with the value and its interval."""
    plt = _pyplot()
    models = [m for m, s in summary["models"].items() if metric in s["mean"]]
    comparisons = [c for c in summary["comparisons"] if c["metric"] == metric]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.6 + 1.1 * max(len(comparisons), 2)),
                                      gridspec_kw={"width_ratios": [1, 1.6]})
    for x, model in enumerate(models):
        values = summary["models"][model]["per_seed"][metric]
        left.scatter([x] * len(values), values, zorder=3)
        left.hlines(np.mean(values), x - 0.25, x + 0.25, color="k")
    left.set_xticks(range(len(models)), models, rotation=20, ha="right")
    left.set_xlim(-0.6, len(models) - 0.4)
    left.set_title(f"{metric} (%) per seed (line: mean)")
    label_kind = "per-image difference"
    for y, c in enumerate(comparisons):
        per_image, boot = plots[(c["name"], metric)]
        values = per_image if per_image is not None else boot
        if per_image is None:
            label_kind = "bootstrap values"
        jitter = np.random.default_rng(y).uniform(-0.2, 0.2, len(values))
        right.scatter(values, y + jitter, s=6, alpha=0.35)
        right.errorbar([c["value"]], [y], xerr=[[c["value"] - c["ci_low"]],
                                                [c["ci_high"] - c["value"]]],
                       fmt="D", color="k", capsize=4, zorder=3)
    right.axvline(0, color="grey", lw=0.8)
    right.set_yticks(range(len(comparisons)), [c["name"] for c in comparisons])
    right.set_title(f"{label_kind}; diamond: value, 95% CI (images + seeds)")
    where = "final weights" if label == "final" else f"{label} iterations"
    fig.suptitle(f"{metric} (%) on {dataset}, {where}")
    fig.tight_layout()
    return _png(fig)


def curve_figure(dataset: str, metric: str, points: dict[str, dict]) -> bytes:
    """Left: each model's seed mean (line) and seed range (band) against the iteration;
    right: each comparison's value and its interval (images + seeds)."""
    plt = _pyplot()
    labels = [label for label in points if label != "final" and points[label]["models"]]
    iterations = [int(label) for label in labels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    models = list(dict.fromkeys(m for label in labels for m in points[label]["models"]))
    for model in models:
        xs, mean, low, high = [], [], [], []
        for label, x in zip(labels, iterations):
            stats = points[label]["models"].get(model)
            if stats is None or metric not in stats["mean"]:
                continue
            seeds = stats["per_seed"][metric]
            xs.append(x)
            mean.append(stats["mean"][metric])
            low.append(min(seeds))
            high.append(max(seeds))
        if xs:
            line, = left.plot(xs, mean, marker="o", label=model)
            left.fill_between(xs, low, high, alpha=0.15, color=line.get_color())
    left.set_xlabel("training iterations")
    left.set_title(f"{metric} (%): seed mean, band: seed range")
    left.legend(fontsize=8)
    names = list(dict.fromkeys(c["name"] for label in labels
                               for c in points[label]["comparisons"] if c["metric"] == metric))
    for name in names:
        xs, value, low, high = [], [], [], []
        for label, x in zip(labels, iterations):
            found = [c for c in points[label]["comparisons"]
                     if c["name"] == name and c["metric"] == metric]
            if found:
                xs.append(x)
                value.append(found[0]["value"])
                low.append(found[0]["ci_low"])
                high.append(found[0]["ci_high"])
        if xs:
            line, = right.plot(xs, value, marker="D", label=name)
            right.fill_between(xs, low, high, alpha=0.15, color=line.get_color())
    right.axhline(0, color="grey", lw=0.8)
    right.set_xlabel("training iterations")
    right.set_title("comparisons (points), band: 95% CI (images + seeds)")
    right.legend(fontsize=8)
    fig.suptitle(f"{metric} on {dataset}")
    fig.tight_layout()
    return _png(fig)
