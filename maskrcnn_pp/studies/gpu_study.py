"""``make gpu-study``: items 4 and 7 of the claim at full width on one GPU, within a budget.

Runs the two GPU study descriptions side by side on the one GPU (the detector's six
trainings and the semantic nets' nine share it, several processes at a time), after
preparing DSB2018 and its nuclei patches from ``$MASKRCNN_PP_DATA`` where they are
missing, then writes a section with the GPU's name, the wall time, the headline tables
and their intervals into ``docs/results.md`` between :data:`MARKERS`.

``dry_run`` runs the same code path on the CPU in a minute or two: six DSB2018 images
(prepared under the run's own folder, so a user's data sets are never touched), one
seed, two iterations, a smaller test size; its section says it is a dry run.
"""
from __future__ import annotations

import os
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.catalog import datasets_root
from ..data.dsb2018 import convert_dsb2018, register_dsb2018
from ..data.prepare import prepare_nuclei_patches
from ..model_zoo import get_config_file
from ..utils.errors import UserError
from ..utils.io import replace_between_markers
from .description import load_spec
from .study import run_study
from .timing import machine_description

__all__ = ["MARKERS", "STUDIES", "run_gpu_study"]

MARKERS = ("<!-- gpu-study:begin (written by `make gpu-study`) -->", "<!-- gpu-study:end -->")
STUDIES = {"instance": "studies/dsb2018_claim_gpu.yaml",
           "semantic": "studies/nuclei_semantic_claim_gpu.yaml"}
ARCHIVE = "dsb2018_stage1_train.tar.gz"
JOBS = {"instance": 6, "semantic": 3}
DRY_RUN_IMAGES = 6
DRY_RUN_OVERRIDES = {
    "instance": {"SOLVER.MAX_ITER": 2, "SOLVER.STEPS": [], "SOLVER.WARMUP_ITERS": 0,
                 "SOLVER.CHECKPOINT_PERIOD": 1, "SOLVER.IMS_PER_BATCH": 1,
                 "INPUT.CROP.SIZE": [128, 128], "INPUT.MIN_SIZE_TEST": 256,
                 "INPUT.MAX_SIZE_TEST": 512, "DATALOADER.NUM_WORKERS": 0},
    "semantic": {"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 1,
                 "SOLVER.IMS_PER_BATCH": 2, "DATALOADER.NUM_WORKERS": 0}}
KEY_METRICS = {"instance": ("dsb_map", "segm_AP", "bbox_AP", "aji", "dice"),
               "semantic": ("IoU", "Dice", "IoU_L4")}


def _archive(data_dir: Path) -> Path:
    path = data_dir / ARCHIVE
    if not path.is_file():
        raise UserError(f"{path} does not exist: set MASKRCNN_PP_DATA to the folder that holds "
                        f"{ARCHIVE} (the DSB2018 stage-1 training archive)")
    return path


def _subset(archive: Path, folder: Path, images: int) -> Path:
    """The first ``images`` samples of a stage-1 archive, extracted (streamed)."""
    wanted: list[str] = []
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if len(parts) < 2 or parts[0] != "stage1_train":
                continue
            if parts[1] not in wanted:
                if len(wanted) == images:
                    continue
                wanted.append(parts[1])
            tar.extract(member, folder, filter="data")
    return folder / "stage1_train"


def prepare_data(data_dir: Path, root: Path, dry_run: bool,
                 progress: Callable[[str], None] = print) -> None:
    """DSB2018 (90/10, seed 0, as the CPU studies) and its nuclei patches under ``root``,
    unless already there; a dry run uses a few images only."""
    source = _archive(data_dir)
    if dry_run:
        source = _subset(source, root / "source", DRY_RUN_IMAGES)
    if not (root / "dsb2018" / "annotations" / "instances_val.json").is_file():
        progress(f"preparing DSB2018 under {root}")
        convert_dsb2018(source, root / "dsb2018", val_fraction=0.34 if dry_run else 0.1,
                        seed=0, progress=False)
    if not (root / "nuclei_patches" / "val").is_dir():
        progress(f"preparing the nuclei patches under {root}")
        prepare_nuclei_patches(source, root, val_fraction=0.34 if dry_run else 0.1, seed=0)


def _register_dsb2018(root: Path) -> None:
    for split in ("train", "val"):
        name = f"dsb2018_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_dsb2018(root / "dsb2018")


def _fmt(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else f"{value:{'+' if signed else ''}.2f}"


def _section(kind: str, report: dict, path: str) -> list[str]:
    title = ("Mask R-CNN++ vs Mask R-CNN" if kind == "instance"
             else "UNet++ vs U-Net vs wide U-Net")
    lines = [f"#### {title} (`configs/{path}`)", ""]
    for dataset, points in report["eval_sets"].items():
        for label, summary in points.items():
            if not summary["models"]:
                continue
            metrics = [m for m in KEY_METRICS[kind]
                       if any(m in s["mean"] for s in summary["models"].values())]
            lines += [f"{dataset}, {label} iterations, mean ± std over seeds (%):", "",
                      "| model | seeds | " + " | ".join(metrics) + " |",
                      "|---|---|" + "---|" * len(metrics)]
            for model, stats in summary["models"].items():
                lines.append(f"| {model} | {len(stats['seeds'])} | " + " | ".join(
                    f"{_fmt(stats['mean'].get(m))} ± {_fmt(stats['std'].get(m))}"
                    for m in metrics) + " |")
            lines += ["", "| comparison | metric | value | 95% CI (images + seeds) |",
                      "|---|---|---|---|"]
            for c in summary["comparisons"]:
                if c["metric"] in metrics:
                    lines.append(f"| {c['name']} | {c['metric']} | {_fmt(c['value'], True)} | "
                                 f"[{_fmt(c['ci_low'], True)}, {_fmt(c['ci_high'], True)}] |")
            lines.append("")
    return lines


def run_gpu_study(doc: Path | None, data_dir: Path, dry_run: bool = False,
                  output: Path = Path("output/studies"),
                  progress: Callable[[str], None] = print) -> str:
    """Prepare, train, evaluate and report both GPU studies; returns the section written
    between the markers of ``doc`` (when given)."""
    if not dry_run and not torch.cuda.is_available():
        raise UserError("the GPU study needs a CUDA device (torch sees none); "
                        "--dry-run runs its code path on the CPU")
    start = time.time()
    root = output / "gpu_study_dry_run" / "datasets" if dry_run else datasets_root()
    if dry_run:
        os.environ["DETECTRON2_DATASETS"] = str(root.resolve())
    prepare_data(data_dir, root, dry_run, progress)
    _register_dsb2018(root)
    prepared = time.time() - start
    reports: dict[str, dict] = {}
    failures: list[str] = []

    def run(kind: str) -> None:
        try:
            changes = {"output": output / ("gpu_study_dry_run" if dry_run else "") /
                       Path(STUDIES[kind]).stem}
            if dry_run:
                changes.update(seeds=[0], eval_iters=[1, 2])
            spec = load_spec(get_config_file(STUDIES[kind]),
                             more_overrides={**(DRY_RUN_OVERRIDES[kind] if dry_run else {}),
                                             **({"MODEL.DEVICE": "cpu"} if dry_run else {})},
                             **changes)
            reports[kind] = run_study(spec, jobs=1 if dry_run else JOBS[kind],
                                      threads=1 if dry_run else 2 * JOBS[kind],
                                      resamples=200 if dry_run else 2000,
                                      ap_resamples=20 if dry_run else 200,
                                      command=f"make gpu-study ({STUDIES[kind]})",
                                      progress=progress)
        except BaseException as err:           # reported after both studies stopped
            failures.append(f"{kind}: {err}")

    threads = [threading.Thread(target=run, args=(kind,)) for kind in STUDIES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise UserError("GPU study failed: " + "; ".join(failures))
    wall = time.time() - start
    device = torch.cuda.get_device_name(0) if not dry_run else "CPU (dry run)"
    lines = [f"Machine: {machine_description()}; device: **{device}**. Wall time "
             f"{wall / 60:.1f} min (data preparation {prepared / 60:.1f} min) for both "
             "studies, trained side by side on the one device."]
    if dry_run:
        lines += ["", f"**Dry run** (`--dry-run`): {DRY_RUN_IMAGES} DSB2018 images, one seed, "
                  "two iterations on the CPU. It checks the code path only; its numbers mean "
                  "nothing."]
    lines.append("")
    for kind in STUDIES:
        lines += _section(kind, reports[kind], STUDIES[kind])
    text = "\n".join(lines).rstrip() + "\n"
    if doc is not None:
        replace_between_markers(doc, text, MARKERS)
    return text
