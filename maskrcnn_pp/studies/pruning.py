"""UNet++ pruned to L1..L4 (the paper's Fig. 3): parameters, time and scores per level of a
trained network, as a table, JSON and a figure (``tools/prune_report.py``)."""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from torch import nn

from ..data.semantic_mapper import build_semantic_test_loader
from ..engine.checkpoint import load_trained_model
from ..engine.inference_modes import InferenceModes
from ..evaluation.semantic import SemanticEvaluator, mode_name
from ..utils.errors import UserError
from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["pruning_rows", "write_pruning_report", "prune_report"]


PRUNING_NEEDS = ("pruning needs UNet++ with deep supervision (MODEL.SEMANTIC.ARCH 'unetpp', "
                 "DEEP_SUPERVISION True)")


def _prunable(model: nn.Module) -> nn.Module:
    """The semantic network inside ``model``, if it has pruning levels to compare."""
    net_owner = getattr(model, "module", model)
    if len(net_owner.levels) < 2:
        raise UserError(PRUNING_NEEDS)
    return net_owner


def pruning_rows(model: nn.Module, data_loader, dataset_name: str) -> list[dict]:
    """Fig. 3 of the paper as rows: parameters, ms per image, IoU and Dice (%) of UNet++
    L1..L_L and of the accurate mode, measured on ``data_loader``."""
    net_owner = _prunable(model)
    modes = InferenceModes(model, SemanticEvaluator(dataset_name), timed=True)
    scores = inference_on_dataset(model, data_loader, modes)["sem_seg"]
    rows = []
    for mode in modes.modes:
        name = mode_name(mode)
        rows.append({"mode": name,
                     "parameters": net_owner.net.parameter_count(mode),
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
                 allow_unsafe_pickle: bool = False, weights_key: str = "MODEL.WEIGHTS"
                 ) -> dict[str, Path]:
    """Load the trained model of ``cfg`` from ``cfg.MODEL.WEIGHTS`` (named ``weights_key`` in
    errors), measure every pruning level on ``dataset_name`` and write the report (see
    :func:`write_pruning_report`)."""
    if dataset_name not in DatasetCatalog.list():
        semantic = [n for n in DatasetCatalog.list()
                    if MetadataCatalog.get(n).get("evaluator_type") == "semantic"]
        raise UserError(f"unknown data set {dataset_name!r}; semantic sets: {', '.join(semantic)}")
    sem = cfg.MODEL.SEMANTIC   # a config that cannot be pruned is the first thing to say
    if sem.ARCH.lower() != "unetpp" or not sem.DEEP_SUPERVISION:
        raise UserError(PRUNING_NEEDS)
    if not cfg.MODEL.WEIGHTS:
        raise UserError(f"{weights_key} is empty: the report needs trained weights")
    model = load_trained_model(cfg, cfg.MODEL.WEIGHTS, allow_unsafe_pickle=allow_unsafe_pickle,
                               weights_key=weights_key)
    rows = pruning_rows(model, build_semantic_test_loader(cfg, dataset_name), dataset_name)
    title = f"UNet++ pruning on {dataset_name} ({cfg.MODEL.DEVICE})"
    return write_pruning_report(rows, output_dir, title)
