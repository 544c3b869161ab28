"""Side-by-side speed, size and memory of the models (``tools/benchmark.py --group
mask_rcnn / semantic / export``).

Candidates in one group are timed by the one interleaved loop of :mod:`.timing`, so a busy
machine slows them alike; the report gives medians and ratios to the group's reference.
Peak memory is measured per candidate in a fresh process (CPU: peak RSS growth during
training steps; CUDA: ``max_memory_allocated``).
"""
from __future__ import annotations

import copy
import importlib.util
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage

from ..data.synthetic import SyntheticNucleiSpec, render_image
from ..engine.config import is_semantic, load_config
from ..modeling.deep_supervision import ACCURATE
from ..modeling.semantic import UNet, UNetPlusPlus, deep_supervision_losses
from .timing import interleaved_times, peak_rss_growth_mib, reset_peak_rss, run_spawned, sync

__all__ = ["Candidate", "nuclei_batch", "mask_rcnn_group", "semantic_group", "export_groups",
           "detector_input_side", "run_group", "markdown_table"]

# Whose network a semantic candidate is: this project's (its ``predict(x, level)`` and
# ``parameter_count(level)``) or MONAI's (a list of outputs with deep supervision).
OWN, MONAI = "maskrcnn_pp", "monai"


@dataclass
class Candidate:
    """One model with a training step and an inference call on fixed inputs."""

    name: str
    build: Callable[[], BuiltCandidate]
    reference: bool = False


@dataclass
class BuiltCandidate:
    model: Optional[torch.nn.Module]
    train_step: Optional[Callable[[], None]]   # None: inference only (exported graphs)
    infer: Callable[[], None]
    params: int
    flops: Optional[float] = None
    extra: Dict[str, float] = field(default_factory=dict)


def nuclei_batch(size: int, batch: int, device: str) -> List[dict]:
    """Detectron2 inputs from the synthetic generator: realistic nuclei counts and masks."""
    spec = SyntheticNucleiSpec(size=size, max_nuclei=max(12, size * size // 1000))
    rng = np.random.default_rng(0)
    inputs = []
    for k in range(batch):
        image, masks = render_image(rng, spec, he_style=k % 2 == 1)
        inst = Instances((size, size))
        bitmasks = BitMasks(torch.from_numpy(np.stack(masks)))
        inst.gt_boxes = bitmasks.get_bounding_boxes()
        inst.gt_classes = torch.zeros(len(masks), dtype=torch.int64)
        inst.gt_masks = bitmasks
        tensor = torch.from_numpy(np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)))
        inputs.append({"image": tensor.to(device), "instances": inst.to(device),
                       "height": size, "width": size})
    return inputs


def _build_mask_rcnn(config_file: str, size: int, batch: int, device: str,
                     flops: bool = True) -> BuiltCandidate:
    """Module-level (not a closure) so the peak-memory process can be spawned with it."""
    from fvcore.nn import FlopCountAnalysis

    torch.manual_seed(0)
    cfg = load_config(config_file, ["MODEL.DEVICE", device])
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    inputs = nuclei_batch(size, batch, device)
    test_inputs = [{k: v for k, v in d.items() if k != "instances"} for d in inputs[:1]]

    def train_step():
        model.train()
        with EventStorage():
            losses = model(copy.copy(inputs))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    def infer():
        model.eval()
        with torch.no_grad():
            model(test_inputs)

    class _Traceable(torch.nn.Module):
        """Tensors in, tensors out, so fvcore can trace one inference."""

        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, image):
            inst = self.net([{"image": image}])[0]["instances"]
            return inst.pred_boxes.tensor, inst.scores, inst.pred_masks

    total = None
    if flops:
        model.eval()
        with torch.no_grad():
            analysis = FlopCountAnalysis(_Traceable(), (test_inputs[0]["image"],))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = analysis.total()
    return BuiltCandidate(model, train_step, infer,
                          sum(p.numel() for p in model.parameters()), total)


def mask_rcnn_group(pp_config: str, baseline_config: str, size: int = 256, batch: int = 2,
                    device: str = "cpu") -> List[Candidate]:
    return [Candidate("Mask R-CNN (baseline)",
                      partial(_build_mask_rcnn, baseline_config, size, batch, device),
                      reference=True),
            Candidate("Mask R-CNN++", partial(_build_mask_rcnn, pp_config, size, batch, device))]


def _build_semantic(make: Callable[[], torch.nn.Module], kind: str, level: int, size: int,
                    batch: int, device: str, dims: int = 2, flops: bool = True
                    ) -> BuiltCandidate:
    from fvcore.nn import FlopCountAnalysis

    torch.manual_seed(0)
    model = make().to(device)
    shape = (batch, 1) + (size,) * dims
    x = torch.randn(shape, device=device)
    y = (torch.rand((batch,) + (size,) * dims, device=device) > 0.5).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    def outputs(inp):
        if kind == OWN:
            return model(inp)
        out = model(inp)  # MONAI returns a list with deep supervision, else a tensor
        return out if isinstance(out, (list, tuple)) else [out]

    def train_step():
        model.train()
        losses = deep_supervision_losses(outputs(x), y)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    def predict(inp):
        if kind == OWN:
            return model.predict(inp, level)
        return torch.sigmoid(outputs(inp)[-1])

    def infer():
        model.eval()
        with torch.no_grad():
            predict(x)

    class _Predict(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, inp):
            return predict(inp)

    total = None
    if flops:
        model.eval()
        analysis = FlopCountAnalysis(_Predict(), (x[:1],))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = analysis.total()
    params = (model.parameter_count(level) if kind == OWN
              else sum(p.numel() for p in model.parameters()))
    return BuiltCandidate(model, train_step, infer, params, total)


def _wide_unet() -> torch.nn.Module:
    from ..modeling.semantic import WIDE_UNET_WIDTHS

    return UNet(widths=WIDE_UNET_WIDTHS)


def _monai_unetpp() -> torch.nn.Module:
    """MONAI's BasicUNetPlusPlus at UNet++'s widths (32..512), deep supervision on."""
    from monai.networks.nets import BasicUNetPlusPlus

    return BasicUNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=1,
                             features=(32, 64, 128, 256, 512, 32), deep_supervision=True)


def semantic_group(size: int = 96, batch: int = 8, device: str = "cpu",
                   with_monai: bool = True) -> List[Candidate]:
    """UNet++ (accurate and L1..L4), U-Net, wide U-Net, and MONAI's BasicUNetPlusPlus."""
    def semantic(make, level, kind=OWN):
        return partial(_build_semantic, make, kind, level, size, batch, device)

    cands = [Candidate("UNet++ L4 (fast mode)", semantic(UNetPlusPlus, 4), reference=True)]
    cands += [Candidate(f"UNet++ L{j} (fast mode)", semantic(UNetPlusPlus, j))
              for j in (3, 2, 1)]
    cands += [Candidate("UNet++ accurate (mean of 4)", semantic(UNetPlusPlus, ACCURATE)),
              Candidate("U-Net", semantic(UNet, ACCURATE)),
              Candidate("wide U-Net", semantic(_wide_unet, ACCURATE))]
    if with_monai and importlib.util.find_spec("monai") is not None:
        cands.append(Candidate("MONAI BasicUNetPlusPlus (same widths)",
                               semantic(_monai_unetpp, ACCURATE, MONAI)))
    return cands


def _exported_candidates(name: str, model: torch.nn.Module, cfg, workdir: str,
                         eager_infer: Callable[[], None], exported_infer: Callable,
                         params: int, level: Optional[int] = None) -> List[Candidate]:
    """Eager (the reference), TorchScript and ONNX Runtime versions of one model, the graphs
    written by :func:`maskrcnn_pp.inference.export.export_model` from saved weights."""
    import os

    from ..engine.checkpoint import SafeCheckpointer
    from ..inference.export import export_model, load_exported_model

    folder = os.path.join(workdir, name.replace(" ", "_").replace("+", "p"))
    SafeCheckpointer(model, folder).save("model")
    weights = os.path.join(folder, "model.pth")

    def build(fmt):
        (path,) = export_model(cfg, weights, fmt, folder, None if level is None else [level])
        model_fn = load_exported_model(path).model_fn
        return BuiltCandidate(None, None, partial(exported_infer, model_fn), params)

    return [Candidate(f"{name} eager", lambda: BuiltCandidate(model, None, eager_infer, params),
                      reference=True),
            Candidate(f"{name} TorchScript", partial(build, "torchscript")),
            Candidate(f"{name} ONNX Runtime", partial(build, "onnx"))]


def _semantic_export_groups(config_file: str, workdir: str, size: Optional[int], batch: int
                            ) -> List[List[Candidate]]:
    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu"])
    size = size or int(cfg.INPUT.SEMANTIC_SIZE)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    shape = (batch, model.net.in_channels) + (size,) * model.net.dims
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255

    def eager(level):
        with torch.no_grad():
            model.inference([{"image": image} for image in x], level=level)

    return [_exported_candidates(f"{_config_label(config_file)} {size} px L{level}", model, cfg,
                                 workdir,
                                 partial(eager, level), lambda fn: fn(x),
                                 model.net.parameter_count(level), level)
            for level in model.levels]


def _mask_rcnn_export_group(config_file: str, workdir: str, size: Optional[int]
                            ) -> List[Candidate]:
    from ..inference.instance import DetectronModelRunner

    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu"])
    size = size or detector_input_side(cfg)
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = size, size
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tile, _ = render_image(np.random.default_rng(0), SyntheticNucleiSpec(size=size), False)
    runner = DetectronModelRunner(model, cfg)
    return _exported_candidates(f"{_config_label(config_file)} {size} px", model, cfg, workdir,
                                lambda: runner(tile), lambda fn: fn(tile),
                                sum(p.numel() for p in model.parameters()))


def _config_label(config_file: str) -> str:
    """A config's name with its folder (``cpu_study/mask_rcnn_pp``), which tells apart the
    shipped configs that share a file name."""
    path = Path(config_file)
    return f"{path.parent.name}/{path.stem}" if path.parent.name != "configs" else path.stem


def detector_input_side(cfg) -> int:
    """The side of the image a detector config predicts on: its test resize, or for a config
    that tests at the images' own size (``MIN_SIZE_TEST`` 0), its training crop."""
    if cfg.INPUT.MIN_SIZE_TEST:
        return int(cfg.INPUT.MIN_SIZE_TEST)
    return int(cfg.INPUT.CROP.SIZE[0])


def export_groups(config_files: Sequence[str], workdir: str, size: Optional[int] = None,
                  batch: int = 8) -> List[List[Candidate]]:
    """Inference latency of eager vs exported graphs on the CPU, one group per model of each
    config: a semantic UNet++ at each of its pruning levels on a batch of ``batch`` patches
    of its ``INPUT.SEMANTIC_SIZE``; a detector on one synthetic nuclei tile of the side it
    predicts on (:func:`detector_input_side`), through the predictor's network callable
    (pre-processing, graph, mask pasting). ``size`` replaces both sides. Weights are random
    (seed 0): timing does not depend on them, except through the number of detections,
    which an untrained detector fills up to ``TEST.DETECTIONS_PER_IMAGE``."""
    groups = []
    for config_file in config_files:
        if is_semantic(load_config(config_file)):
            groups += _semantic_export_groups(config_file, workdir, size, batch)
        else:
            groups.append(_mask_rcnn_export_group(config_file, workdir, size))
    return groups


def _peak_train_memory(build: Callable, device: str, steps: int) -> float:
    """Peak memory growth over the training steps (CPU: peak RSS above the RSS before,
    the high-water mark reset first; CUDA: ``max_memory_allocated``), in MiB."""
    built = build(flops=False)  # tracing would raise the peak before the steps run
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        before = reset_peak_rss()
    for _ in range(steps):
        built.train_step()
    sync(device)
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_growth_mib(before)


def peak_train_memory_mib(candidate: Candidate, device: str, steps: int = 2) -> float:
    """Peak memory of training steps, measured in a fresh process."""
    return float(run_spawned(_peak_train_memory, [(candidate.build, device, steps)])[0])


def run_group(candidates: List[Candidate], device: str = "cpu", repeats: int = 10,
              warmup: int = 2, memory: bool = True,
              progress: Callable[[str], None] = print) -> List[dict]:
    """Interleaved timing of every candidate; returns one result row per candidate."""
    built = {}
    for cand in candidates:
        progress(f"building {cand.name}")
        built[cand.name] = cand.build()
    calls = {(c.name, "train"): built[c.name].train_step for c in candidates
             if built[c.name].train_step is not None}
    calls.update({(c.name, "infer"): built[c.name].infer for c in candidates})
    measured = interleaved_times(calls, repeats, warmup, device, progress)
    times: Dict[str, Dict[str, List[float]]] = {c.name: {"train": [], "infer": []}
                                                for c in candidates}
    for (name, kind), values in measured.items():
        times[name][kind] = values
    reference = next((c.name for c in candidates if c.reference), candidates[0].name)
    rows = []
    for cand in candidates:
        b = built[cand.name]
        row = {"model": cand.name, "params_M": b.params / 1e6,
               "gflops": None if b.flops is None else b.flops / 1e9,
               "train_step_s": (statistics.median(times[cand.name]["train"])
                                if b.train_step is not None else None),
               "infer_s": statistics.median(times[cand.name]["infer"])}
        rows.append(row)
    ref = next(r for r in rows if r["model"] == reference)
    for row in rows:
        row["train_ratio"] = (row["train_step_s"] / ref["train_step_s"]
                              if row["train_step_s"] and ref["train_step_s"] else None)
        row["infer_ratio"] = row["infer_s"] / ref["infer_s"]
        row["reference"] = reference
    trains = {name for name, b in built.items() if b.train_step is not None}
    del built
    if memory:
        for cand, row in zip(candidates, rows):
            if cand.name not in trains:
                continue
            progress(f"peak memory of {cand.name}")
            row["peak_train_mem_MiB"] = peak_train_memory_mib(cand, device)
    return rows


def markdown_table(rows: List[dict]) -> str:
    cols = [("model", "model", "{}"), ("params_M", "params (M)", "{:.2f}"),
            ("gflops", "GFLOPs (inference)", "{:.1f}"),
            ("train_step_s", "train step (s)", "{:.3f}"),
            ("train_ratio", "train ratio", "{:.2f}x"), ("infer_s", "inference (s)", "{:.4f}"),
            ("infer_ratio", "inference ratio", "{:.2f}x"),
            ("peak_train_mem_MiB", "peak train mem (MiB)", "{:.0f}")]
    cols = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |",
             "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt.format(r[k]) if r.get(k) is not None else "n/a" for k, _, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


