"""Binary foreground IoU and Dice for the semantic tasks, per UNet++ pruning level.

Both scores are accumulated over the whole data set, as one confusion count of every
pixel (voxel): ``IoU = sum|P & G| / sum|P | G|`` and ``Dice = 2 sum|P & G| / (sum|P| +
sum|G|)``, in percent, so large images weigh more than small ones. A data set where neither
prediction nor truth has any foreground scores 100. Foreground is probability > 0.5 for a
one-class network and any class but 0 (arg-max) otherwise.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils import comm
from torch import nn

from ..data.semantic import build_semantic_test_loader
from ..engine.checkpoint import load_inference_weights
from ..modeling.semantic_arch import build_semantic_net
from ..utils.errors import UserError
from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["SemanticEvaluator", "foreground", "overlap_scores", "pruning_rows",
           "write_pruning_report", "prune_report", "RESULTS_FILE", "comparison_row",
           "comparison_markdown"]

logger = logging.getLogger(__name__)

HEADLINE = "output"
RESULTS_FILE = "semantic_results.json"


def foreground(probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Boolean foreground of a ``(C, *spatial)`` probability map."""
    if probabilities.shape[0] == 1:
        return probabilities[0] > threshold
    return probabilities.argmax(dim=0) > 0


def overlap_scores(intersection: int, predicted: int, truth: int) -> dict[str, float]:
    """IoU and Dice in percent from accumulated pixel counts (100 when both are empty)."""
    total = predicted + truth
    if total == 0:
        return {"IoU": 100.0, "Dice": 100.0}
    return {"IoU": 100.0 * intersection / (total - intersection),
            "Dice": 200.0 * intersection / total}


def _mode_name(level: int) -> str:
    return f"L{level}" if level else "accurate"


class SemanticEvaluator(DatasetEvaluator):
    """IoU and Dice of the model's outputs and, given the model, of every inference mode.

    Args:
        dataset_name: the data set (for the log and the results file).
        model: a :class:`SemanticUNetPP` (or a DDP wrapper of one). When given, each batch
            is also predicted in the accurate mode and in every fast mode UNet++ L_j the
            network offers, each timed (CUDA is synchronized around it); the results gain
            ``IoU_<mode>``, ``Dice_<mode>`` and ``ms_per_image_<mode>``.
        threshold: foreground probability threshold of one-class networks.
        distributed: gather counts from every process (Detectron2's ``comm``).
        output_dir: if given, the results are also written to ``semantic_results.json``.

    ``per_image[mode]`` keeps this process's ``(file_name, intersection, predicted, truth)``
    of every image, for statistics over images (``tools/study.py`` bootstraps them).
    """

    def __init__(self, dataset_name: str, model: nn.Module | None = None, *,
                 threshold: float = 0.5, distributed: bool = True,
                 output_dir: str | None = None):
        self.dataset_name = dataset_name
        self.model = getattr(model, "module", model)
        if self.model is not None and not hasattr(self.model, "inference"):
            raise TypeError(f"{type(self.model).__name__} has no inference(inputs, level); "
                            "pass a SemanticUNetPP")
        # Fast modes L1..L_L, then the accurate mode (0), as the paper's Fig. 3.
        self.modes: tuple[int, ...] = ((*self.model.levels, 0) if self.model is not None
                                       else ())
        self.threshold = threshold
        self.distributed = distributed
        self.output_dir = output_dir
        self.reset()

    def reset(self) -> None:
        names = [HEADLINE] + [_mode_name(m) for m in self.modes]
        # Per mode: [intersection, predicted, truth] pixels, seconds, images.
        self._counts = {name: np.zeros(3, np.int64) for name in names}
        self._seconds = {name: 0.0 for name in names}
        self._images = {name: 0 for name in names}
        self.per_image: dict[str, list[tuple[str, int, int, int]]] = {name: [] for name in names}

    def _accumulate(self, name: str, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            if "sem_seg" not in inp:
                raise KeyError(f"input {inp.get('file_name', '?')} has no 'sem_seg' target; "
                               "use the semantic test mapper")
            truth = inp["sem_seg"].to(out["sem_seg"].device) > 0
            pred = foreground(out["sem_seg"], self.threshold)
            if pred.shape != truth.shape:
                raise ValueError(f"{inp.get('file_name', '?')}: prediction {tuple(pred.shape)} "
                                 f"and truth {tuple(truth.shape)} differ in size")
            counts = (int((pred & truth).sum()), int(pred.sum()), int(truth.sum()))
            self._counts[name] += counts
            self._images[name] += 1
            self.per_image[name].append((str(inp.get("file_name", "")), *counts))

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        self._accumulate(HEADLINE, inputs, outputs)
        for mode in self.modes:
            name = _mode_name(mode)
            cuda = self.model.device.type == "cuda"
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                predictions = self.model.inference(inputs, level=mode)
            if cuda:
                torch.cuda.synchronize()
            self._seconds[name] += time.perf_counter() - start
            self._accumulate(name, inputs, predictions)

    def evaluate(self) -> dict:
        state = (self._counts, self._seconds, self._images)
        if self.distributed:
            comm.synchronize()
            gathered = comm.gather(state, dst=0)
            if not comm.is_main_process():
                return {}
        else:
            gathered = [state]
        results: dict[str, float] = {}
        for name in self._counts:
            counts = sum(g[0][name] for g in gathered)
            images = sum(g[2][name] for g in gathered)
            suffix = "" if name == HEADLINE else f"_{name}"
            results.update({f"{k}{suffix}": v for k, v in overlap_scores(*counts).items()})
            if name != HEADLINE:
                seconds = sum(g[1][name] for g in gathered)
                results[f"ms_per_image{suffix}"] = 1000.0 * seconds / max(images, 1)
        logger.info("Semantic evaluation of %s: %s", self.dataset_name, results)
        if self.output_dir:
            atomic_write_json(Path(self.output_dir) / RESULTS_FILE, results, indent=2)
        return {"sem_seg": results}


def _prunable(model: nn.Module) -> nn.Module:
    """The semantic network inside ``model``, if it has pruning levels to compare."""
    net_owner = getattr(model, "module", model)
    if len(net_owner.levels) < 2:
        raise UserError("pruning needs UNet++ with deep supervision "
                         "(MODEL.SEMANTIC.ARCH 'unetpp', DEEP_SUPERVISION True)")
    return net_owner


def pruning_rows(model: nn.Module, data_loader, dataset_name: str) -> list[dict]:
    """Fig. 3 of the paper as rows: parameters, ms per image, IoU and Dice of UNet++ L1..L_L
    and of the accurate mode, measured on ``data_loader``."""
    net_owner = _prunable(model)
    evaluator = SemanticEvaluator(dataset_name, model)
    scores = inference_on_dataset(model, data_loader, evaluator)["sem_seg"]
    rows = []
    for mode in evaluator.modes:
        name = _mode_name(mode)
        rows.append({"mode": name,
                     "parameters": net_owner.net.parameter_count(mode or None),
                     "ms_per_image": scores[f"ms_per_image_{name}"],
                     "IoU": scores[f"IoU_{name}"], "Dice": scores[f"Dice_{name}"]})
    return rows


def _markdown(rows: Sequence[dict], title: str) -> str:
    lines = [f"# {title}", "",
             "| mode | parameters (M) | ms / image | IoU (%) | Dice (%) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['parameters'] / 1e6:.3f} | {r['ms_per_image']:.2f} | "
              f"{r['IoU']:.2f} | {r['Dice']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def _figure_png(rows: Sequence[dict], title: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [r["mode"] for r in rows]
    panels = [("parameters (M)", [r["parameters"] / 1e6 for r in rows]),
              ("inference time (ms / image)", [r["ms_per_image"] for r in rows]),
              ("IoU (%)", [r["IoU"] for r in rows])]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (label, values) in zip(axes, panels):
        bars = ax.bar(names, values, color=["#4c72b0"] * (len(rows) - 1) + ["#dd8452"])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(label)
        ax.set_ylim(0, max(values) * 1.15 if max(values) > 0 else 1)
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_pruning_report(rows: Sequence[dict], output_dir: Path, title: str) -> dict[str, Path]:
    """``prune_report.md``, ``.json`` and ``.png`` in ``output_dir``; returns their paths."""
    output_dir = Path(output_dir)
    paths = {ext: output_dir / f"prune_report.{ext}" for ext in ("md", "json", "png")}
    atomic_write_text(paths["md"], _markdown(rows, title))
    atomic_write_json(paths["json"], {"title": title, "rows": list(rows)}, indent=2)
    atomic_write_bytes(paths["png"], _figure_png(rows, title))
    return paths


def prune_report(cfg: CfgNode, dataset_name: str, output_dir: Path, *,
                 allow_unsafe_pickle: bool = False) -> dict[str, Path]:
    """Build the model of ``cfg``, load all of it from ``cfg.MODEL.WEIGHTS``, measure every
    pruning level on ``dataset_name`` and write the report (see :func:`write_pruning_report`)."""
    if dataset_name not in DatasetCatalog.list():
        semantic = [n for n in DatasetCatalog.list()
                    if MetadataCatalog.get(n).get("evaluator_type") == "semantic"]
        raise UserError(f"unknown data set {dataset_name!r}; semantic sets: {', '.join(semantic)}")
    weights = cfg.MODEL.WEIGHTS
    if not weights or not Path(weights).is_file():
        raise UserError(f"MODEL.WEIGHTS {weights!r} is not a file: the report needs trained "
                        "weights")
    model = build_model(cfg)
    _prunable(model)  # a config that cannot be pruned is the first thing to say
    load_inference_weights(model, weights, allow_unsafe_pickle=allow_unsafe_pickle)
    rows = pruning_rows(model, build_semantic_test_loader(cfg, dataset_name), dataset_name)
    title = f"UNet++ pruning on {dataset_name} ({cfg.MODEL.DEVICE})"
    return write_pruning_report(rows, output_dir, title)


def _network_name(cfg: CfgNode) -> str:
    sem = cfg.MODEL.SEMANTIC
    if sem.ARCH.lower() == "unetpp":
        return "UNet++ " + ("w/ DS" if sem.DEEP_SUPERVISION else "w/o DS")
    return "U-Net"


def comparison_row(run: str, cfg: CfgNode, results: dict) -> dict:
    """One trained network of a comparison: what it is (from its config), its size, and
    the scores an evaluation wrote (:data:`RESULTS_FILE`). ``ms_per_image`` is the time of
    the configured inference mode; ``IoU_L<j>`` are present for the levels the run measured."""
    mode = _mode_name(cfg.MODEL.SEMANTIC.INFERENCE_LEVEL)
    row = {"run": run, "network": _network_name(cfg),
           "widths": list(cfg.MODEL.SEMANTIC.WIDTHS),
           "parameters": build_semantic_net(cfg).parameter_count(),
           "IoU": results["IoU"], "Dice": results["Dice"],
           "ms_per_image": results.get(f"ms_per_image_{mode}")}
    row.update({key: value for key, value in results.items()
                if key.startswith("IoU_L") and key[len("IoU_L"):].isdigit()})
    return row


def comparison_markdown(rows: Sequence[dict]) -> str:
    """A table of :func:`comparison_row` rows, with one column per measured pruning level."""
    levels = sorted({int(k[len("IoU_L"):]) for r in rows for k in r if k.startswith("IoU_L")})
    head = ["run", "network", "widths", "parameters (M)", "IoU (%)", "Dice (%)",
            *(f"IoU L{j} (%)" for j in levels), "ms / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], r["network"], "/".join(map(str, r["widths"])),
                 f"{r['parameters'] / 1e6:.3f}", f"{r['IoU']:.2f}", f"{r['Dice']:.2f}"]
        cells += [f"{r[f'IoU_L{j}']:.2f}" if f"IoU_L{j}" in r else "-" for j in levels]
        cells.append("-" if r["ms_per_image"] is None else f"{r['ms_per_image']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
