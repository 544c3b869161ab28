"""``make demo``: train Mask R-CNN++ on the embedded synthetic nuclei, evaluate, draw.

Everything runs on the CPU in minutes, with no download: the data set is generated
(``nuclei_synthetic_train`` / ``_val``), the model is the quick R-18 schedule, and the
trained model is compared with the same network untrained, so the numbers show learning.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from ..engine.checkpoint import load_trained_model  # noqa: E402
from ..engine.config import load_config  # noqa: E402
from ..engine.trainer import Trainer  # noqa: E402
from ..evaluation.visualization import render_results_file  # noqa: E402
from ..model_zoo import get_config_file  # noqa: E402
from ..utils.io import atomic_write_json  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["run_demo", "plot_training_curves"]

DEMO_CONFIG = Path(get_config_file("quick_schedules/mask_rcnn_pp_synthetic.yaml"))


def plot_training_curves(metrics_file: Path, out_png: Path) -> None:
    """Losses (each deep-supervision output on its own) and learning rate per iteration."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "total_loss" in r]
    keys = sorted({k for r in rows for k in r if k.startswith("loss_")})
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
    its = [r["iteration"] for r in rows]
    ax_loss.plot(its, [r["total_loss"] for r in rows], label="total_loss", linewidth=2)
    for key in keys:
        ax_loss.plot(its, [r.get(key) for r in rows], label=key, linewidth=1)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_title("training losses (median of 20 iterations)")
    ax_loss.legend(fontsize=7)
    ax_lr.plot(its, [r.get("lr") for r in rows])
    ax_lr.set_xlabel("iteration")
    ax_lr.set_title("learning rate")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_png)


def _evaluate(cfg, model) -> Dict[str, dict]:
    results = Trainer.test(cfg, model)
    return {task: {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in results.items()}


def run_demo(output_dir: Path, retrain: bool = False, num_pictures: int = 6) -> dict:
    """Train (unless a finished model is there), evaluate trained vs untrained, draw.

    Training output (checkpoints, TensorBoard, Detectron2's log) goes to ``output_dir/train``;
    the evaluation summary to ``output_dir/metrics.json``. Returns that summary.
    """
    output_dir = Path(output_dir)
    train_dir = output_dir / "train"
    setup_logger(str(train_dir), name="detectron2")
    setup_logger(str(train_dir), name="maskrcnn_pp")
    cfg = load_config(str(DEMO_CONFIG), ["OUTPUT_DIR", str(train_dir), "SEED", "0"])
    final = train_dir / "model_final.pth"
    if retrain or not final.is_file():
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=not retrain)
        trainer.train()
        model = trainer.model
    else:
        logger.info("Reusing %s (make demo ARGS=--retrain to train again)", final)
        model = load_trained_model(cfg, final)
    trained = _evaluate(cfg, model)

    torch.manual_seed(0)
    untrained_cfg = cfg.clone()
    untrained_cfg.OUTPUT_DIR = str(output_dir / "untrained")
    untrained = _evaluate(untrained_cfg, Trainer.build_model(untrained_cfg))

    dataset = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(dataset)
    render_results_file(
        results_json=train_dir / "inference" / dataset / "coco_instances_results.json",
        gt_json=Path(meta.json_file), image_root=Path(meta.image_root),
        output_dir=output_dir / "vis", max_images=num_pictures)
    plot_training_curves(train_dir / "metrics.json", output_dir / "training_curve.png")
    summary = {"dataset": dataset, "config": str(DEMO_CONFIG), "trained": trained,
               "untrained": untrained}
    atomic_write_json(output_dir / "metrics.json", summary, indent=2)
    return summary
