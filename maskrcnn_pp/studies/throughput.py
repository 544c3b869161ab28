"""Training and inference throughput (images/s) of Mask R-CNN++ vs Mask R-CNN on one device.

The GPU question is "how many images per second at realistic settings", so the training
step is the project's own (``CheckedAMPTrainer`` with AMP on CUDA, as ``Trainer`` picks it;
``CheckedSimpleTrainer`` elsewhere) fed the same batch of synthetic nuclei crops over and
over, and inference is the model in eval mode on that batch. The two models are timed
interleaved by the loop of :mod:`maskrcnn_pp.studies.timing`. ``make gpu-check`` writes the
table into docs/benchmarks.md between :data:`MARKERS`.
"""
from __future__ import annotations

import itertools
import statistics

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ..engine.config import load_config
from ..engine.optim import build_optimizer
from ..engine.trainer import CheckedAMPTrainer, CheckedSimpleTrainer
from ..utils.errors import UserError
from .model_speed import nuclei_batch
from .timing import interleaved_times, machine_description

__all__ = ["MARKERS", "measure_throughput", "throughput_markdown"]

MARKERS = ("<!-- gpu-check:begin (written by `make gpu-check`) -->", "<!-- gpu-check:end -->")


def _candidate(config_file: str, size: int, batch: int, device: str, amp: bool):
    torch.manual_seed(0)
    cfg = load_config(config_file, ["MODEL.DEVICE", device, "SOLVER.AMP.ENABLED", str(amp)])
    model = build_model(cfg)
    inputs = nuclei_batch(size, batch, device)
    trainer_class = CheckedAMPTrainer if amp and device.startswith("cuda") else CheckedSimpleTrainer
    trainer = trainer_class(model, itertools.repeat(inputs), build_optimizer(cfg, model))
    trainer.iter = 0        # named by the non-finite-loss check
    test_inputs = [{k: v for k, v in d.items() if k != "instances"} for d in inputs]

    def train_step():
        model.train()
        trainer.run_step()

    def infer():
        model.eval()
        with torch.no_grad():
            model(test_inputs)

    return train_step, infer


def measure_throughput(configs: dict[str, str], size: int = 512, batch: int = 8,
                       device: str = "cuda", amp: bool = True, steps: int = 10,
                       warmup: int = 3, progress=print) -> list[dict]:
    """Median images/s of a training step and of inference for each ``{name: config}``."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} but no CUDA device is available")
    built = {}
    for name, config in configs.items():
        progress(f"building {name}")
        built[name] = _candidate(config, size, batch, device, amp)
    calls = {(name, kind): functions[index] for kind, index in (("train", 0), ("infer", 1))
             for name, functions in built.items()}
    with EventStorage():
        times = interleaved_times(calls, steps, warmup, device, progress)
    return [{"model": name, "train_images_per_s": batch / statistics.median(times[name, "train"]),
             "infer_images_per_s": batch / statistics.median(times[name, "infer"]),
             "size": size, "batch": batch, "amp": amp, "device": device,
             "machine": machine_description(device)}
            for name in built]


def throughput_markdown(rows: list[dict]) -> str:
    reference = rows[0]
    lines = ["| model | train images/s | train ratio | inference images/s | inference ratio |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['train_images_per_s']:.1f} | "
            f"{row['train_images_per_s'] / reference['train_images_per_s']:.2f}x | "
            f"{row['infer_images_per_s']:.1f} | "
            f"{row['infer_images_per_s'] / reference['infer_images_per_s']:.2f}x |")
    return "\n".join(lines)
