"""Export a trained model as a TorchScript or ONNX graph, and load such a graph back as the
network callable of a predictor.

* Detectors (Mask R-CNN++ and the baseline) are traced through Detectron2's
  ``TracingAdapter``. The graph takes one image tensor ``(C, H, W)``, float32 on the 0..255
  scale, in ``INPUT.FORMAT`` channel order and already through the test resize, and returns
  the raw outputs of ``model.inference(..., do_postprocess=False)``: boxes in the input's
  coordinates, classes, 28x28 (``POOLER_RESOLUTION`` x 2) ROI mask probabilities and scores.
  The loader pastes the masks with Detectron2's ``detector_postprocess``, as the eager model
  does. Graphs are traced with score threshold 0, so every detection the model keeps is in
  their output, and the loader drops those at or below the config's
  ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``: NMS never lets a lower score suppress a higher one,
  so this equals the eager model at that threshold, and the threshold stays a choice of the
  user, not of the graph.
* Semantic networks are traced at one inference level with the model's pixel
  normalization: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` as the semantic test mapper makes
  it, to probabilities ``(N, K, ...)``. A pruned level L_j is exported from a copy of the
  network that holds only the nodes and head L_j uses, so the file is the smaller network.

Every graph ``<stem>.ts`` / ``<stem>.onnx`` gets a sidecar ``<stem>.ts.json`` /
``<stem>.onnx.json`` (both formats may share a folder): the full config, format, kind,
level, input layout and output names, and the versions that wrote it. Graphs are traced
and run on the CPU; ONNX files run with onnxruntime (``pip install -e .[export]``).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from .. import __version__
from ..compat import DETECTRON2_VERSION, detectron2_export
from ..config import add_maskrcnn_pp_config
from ..data.synthetic import SyntheticNucleiSpec, render_image
from ..engine.checkpoint import load_trained_model
from ..modeling.semantic import NestedSegmentationNet
from ..modeling.semantic_arch import SemanticUNetPP
from ..utils.errors import UserError
from ..utils.io import PathLike, atomic_write_bytes, atomic_write_json, check_output_dir
from .instance import DetectronModelRunner, limits_tile_size

__all__ = ["FORMATS", "ONNX_OPSET", "ExportedModel", "export_model", "load_exported_model",
           "sidecar_path"]

FORMATS = {"torchscript": ".ts", "onnx": ".onnx"}
ONNX_OPSET = 17   # RoIAlign with aligned=True needs 16
SIDECAR_VERSION = 1
_INSTANCE_FIELDS = ["pred_boxes", "pred_classes", "pred_masks", "scores"]


# --------------------------------------------------------------------------- export


def sidecar_path(graph: Path) -> Path:
    """``model.ts`` -> ``model.ts.json``: each format its own, so both can share a folder."""
    return graph.with_name(graph.name + ".json")


def _earlier_graphs(fmt: str, output_dir: Path) -> list[Path]:
    """The graphs of format ``fmt`` an earlier export left in ``output_dir``, and their
    sidecars (the other format's files may share the folder)."""
    suffix = FORMATS[fmt]
    return sorted([*output_dir.glob(f"model*{suffix}"), *output_dir.glob(f"model*{suffix}.json")])


def _check_request(fmt: str, weights: str, output_dir: Path, overwrite: bool) -> None:
    """Refuse a wrong format, no weights, an unwritable folder or one holding an earlier
    export of the format (unless ``overwrite``) before any work."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not weights:
        raise UserError("no weights given: pass the .pth file written by training")
    check_output_dir(output_dir, "output folder")
    earlier = _earlier_graphs(fmt, output_dir)
    if earlier and not overwrite:
        raise UserError(f"{output_dir} holds an earlier {fmt} export "
                        f"({', '.join(p.name for p in earlier)}); --overwrite replaces it")


class _SemanticGraph(nn.Module):
    """What ``SemanticUNetPP`` runs on a test batch at one level: pixel normalization, then
    the network's probabilities (level 0: the accurate mode, the mean of all outputs)."""

    def __init__(self, model: SemanticUNetPP, level: int):
        super().__init__()
        self.net = _pruned(model.net, level)
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone())
        self.register_buffer("pixel_std", model.pixel_std.detach().clone())
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.predict((x - self.pixel_mean) / self.pixel_std, self.level)


def _pruned(net: NestedSegmentationNet, level: int) -> NestedSegmentationNet:
    """A copy of ``net`` without the nodes, up-samplings and heads L_j does not use, so that
    the exported file holds the pruned network only (level 0 keeps everything)."""
    if not level:
        return net
    net = copy.deepcopy(net)
    keep = {net.pathways.key(node) for node in net.pruned_nodes(level)}
    for modules in (net.pathways.nodes, net.pathways.upsamples):
        for key in [k for k in modules if k not in keep]:
            del modules[key]
    for key in [k for k in net.heads if k != str(level)]:
        del net.heads[key]
    return net


def _semantic_example(cfg: CfgNode, net: NestedSegmentationNet) -> torch.Tensor:
    """A batch of one patch of the training size (rounded up to a multiple of 2^L)."""
    multiple = 2 ** net.pathways.depth
    size = max(int(cfg.INPUT.SEMANTIC_SIZE) or 64, multiple)
    size = -(-size // multiple) * multiple
    generator = torch.Generator().manual_seed(0)
    return torch.rand((1, net.in_channels) + (size,) * net.dims, generator=generator) * 255


class _Captured(Exception):
    """Carries the tensor a ``DetectronModelRunner`` hands its model out of the runner."""


class _Recorder:
    """Stands in for the detector inside ``DetectronModelRunner`` and stops it with the
    tensor its pre-processing made, so the trace sees exactly what the predictor feeds."""

    def eval(self) -> _Recorder:
        return self

    def inference(self, batched_inputs: list[dict], **kwargs):
        raise _Captured(batched_inputs[0]["image"])

    __call__ = inference   # whichever entry point the runner calls


def _detector_example(cfg: CfgNode) -> torch.Tensor:
    """A synthetic nuclei tile of the size the detector's test-time limits are meant for
    (what the exported predictor's tiles default to), pre-processed as the predictor
    does."""
    size = limits_tile_size(cfg)
    tile, _ = render_image(np.random.default_rng(0), SyntheticNucleiSpec(size=size), False)
    try:
        DetectronModelRunner(_Recorder(), cfg)(tile)
    except _Captured as captured:
        return captured.args[0]
    raise AssertionError("DetectronModelRunner did not call its model")


def _raw_instances(model: nn.Module, inputs: list[dict]) -> list[dict]:
    """Detectron2's inference without its resize-and-paste post-processing (the loader
    does that), as its own deployment example traces it."""
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def _detector_graph(cfg: CfgNode, model: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    example = _detector_example(cfg)
    adapter = detectron2_export().TracingAdapter(model, [{"image": example}], _raw_instances)
    adapter.eval()
    with torch.no_grad():
        adapter(example)   # fills in outputs_schema
    fields = adapter.outputs_schema.schemas[0].schemas[0].keys
    if fields != _INSTANCE_FIELDS:
        raise UserError(f"{cfg.MODEL.META_ARCHITECTURE} returns instance fields {fields}; "
                        f"export supports detectors that return {_INSTANCE_FIELDS}")
    return adapter, example


@contextlib.contextmanager
def _tracing():
    """No gradients, and no TracerWarnings: the shape checks in Detectron2 and in our
    modules become constants of the graph, as intended, and torch warns at every one."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _trace_torchscript(graph: nn.Module, example: torch.Tensor) -> bytes:
    with _tracing():
        traced = torch.jit.trace(graph, (example,), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


@contextlib.contextmanager
def _native_stdout_silenced():
    """Drop what C++ code writes to stdout: torch's ONNX exporter prints the whole graph
    there when an operator fails (its log switch is always on), burying the one-line error."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _trace_onnx(graph: nn.Module, example: torch.Tensor, what: str, batched: bool
                ) -> bytes:
    """The ONNX graph, batch and spatial sizes free; an operator ONNX cannot express
    becomes one line naming it."""
    axes = [0, *range(2, example.dim())] if batched else [*range(1, example.dim())]
    buffer = io.BytesIO()
    try:
        with _tracing(), _native_stdout_silenced():
            torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"],
                              dynamic_axes={"input": {axis: f"dim{axis}" for axis in axes}})
    except (torch.onnx.errors.UnsupportedOperatorError,
            torch.onnx.errors.SymbolicValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{what} cannot be exported to ONNX (opset {ONNX_OPSET}): {first}; "
                        "use --format torchscript") from None
    return buffer.getvalue()


def _sidecar(cfg: CfgNode, fmt: str, file_name: str, kind: str, level: int | None,
             example: torch.Tensor, outputs: Sequence[str]) -> dict[str, Any]:
    if kind == "instance":
        layout = (f"CHW {str(example.dtype).removeprefix('torch.')} on the 0..255 scale in "
                  "INPUT.FORMAT channel order, after the test resize (INPUT.MIN_SIZE_TEST / "
                  "MAX_SIZE_TEST)")
    else:
        layout = ("NC" + "DHW"[-(example.dim() - 2):] + " float32 as the semantic test "
                  "mapper makes it (0..255 scale; the graph applies MODEL.PIXEL_MEAN / "
                  "PIXEL_STD); spatial sizes multiples of 2^L, L = len(MODEL.SEMANTIC.WIDTHS) - 1")
    return {"sidecar_version": SIDECAR_VERSION, "format": fmt, "file": file_name,
            "kind": kind, "meta_architecture": cfg.MODEL.META_ARCHITECTURE, "level": level,
            "input": {"layout": layout, "example_shape": list(example.shape)},
            "outputs": list(outputs), "traced_score_thresh": 0.0 if kind == "instance" else None,
            "versions": {"maskrcnn_pp": __version__, "detectron2": DETECTRON2_VERSION,
                         "torch": torch.__version__},
            "config": cfg.dump()}


def export_model(cfg: CfgNode, weights: str, fmt: str, output_dir: PathLike,
                 levels: Sequence[int] | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``model.ts`` / ``model.onnx`` (semantic networks with ``levels``:
    ``model_L<j>`` for each, 0 being the accurate mode) and their JSON sidecars under
    ``output_dir``; returns the graph files. With ``overwrite``, the graphs of an earlier
    export of this format that this one does not rewrite are removed once it is written.

    Raises :class:`UserError` for a wrong format, missing weights, an unwritable folder, a
    folder holding an export of this format (without ``overwrite``), a level the network
    does not have, levels for a detector, or an operator ONNX cannot express.
    """
    output_dir = Path(output_dir)
    _check_request(fmt, weights, output_dir, overwrite)
    earlier = _earlier_graphs(fmt, output_dir)
    semantic = cfg.MODEL.META_ARCHITECTURE == SemanticUNetPP.__name__
    if levels and not semantic:
        raise UserError(f"--levels applies to semantic networks; "
                        f"{cfg.MODEL.META_ARCHITECTURE} has none")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    traced_cfg = cfg.clone()
    traced_cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model = load_trained_model(traced_cfg, weights, weights_key="weights")
    if semantic:
        for level in levels or ():
            try:
                model.net.heads.check_level(level, "--levels")
            except ValueError as err:
                raise UserError(str(err)) from None
        requests = [(f"model_L{j}", j) for j in levels] if levels else \
            [("model", cfg.MODEL.SEMANTIC.INFERENCE_LEVEL)]
    else:
        requests = [("model", None)]
    written = []
    for stem, level in requests:
        if semantic:
            graph: nn.Module = _SemanticGraph(model, level).eval()
            example, outputs = _semantic_example(cfg, model.net), ["probabilities"]
            what = f"{cfg.MODEL.SEMANTIC.ARCH} level {level}"
        else:
            graph, example = _detector_graph(cfg, model)
            outputs, what = _INSTANCE_FIELDS, cfg.MODEL.META_ARCHITECTURE
        data = (_trace_torchscript(graph, example) if fmt == "torchscript"
                else _trace_onnx(graph, example, what, batched=semantic))
        path = output_dir / f"{stem}{FORMATS[fmt]}"
        atomic_write_bytes(path, data)
        atomic_write_json(sidecar_path(path),
                          _sidecar(cfg, fmt, path.name, "semantic" if semantic else "instance",
                                   level, example, outputs), indent=1)
        written.append(path)
    for stale in set(earlier) - {p for graph in written for p in (graph, sidecar_path(graph))}:
        stale.unlink()
    return written


# --------------------------------------------------------------------------- loading


@dataclass
class ExportedModel:
    """An exported graph ready to predict with.

    ``model_fn``: for detectors an RGB tile ``(H, W, 3)`` uint8 -> Detectron2 ``Instances``
    of that size (``pred_masks`` bool, ``scores``, ``pred_classes``, ``pred_boxes``); for
    semantic networks a float32 tensor ``(N, C, ...)`` as the semantic test mapper makes it
    -> probabilities ``(N, K, ...)``. ``cfg`` is the config the graph was exported from.
    """

    path: Path
    cfg: CfgNode
    info: dict
    model_fn: Callable


class _GraphDetector:
    """An exported detector behind ``GeneralizedRCNN``'s inference interface, so that
    ``DetectronModelRunner`` pre- and post-processes graph and eager model alike."""

    def __init__(self, run: Callable[[torch.Tensor], Sequence[torch.Tensor]],
                 fields: Sequence[str], score_thresh: float):
        self.run, self.fields, self.score_thresh = run, list(fields), score_thresh

    def eval(self) -> _GraphDetector:
        return self

    def _raw(self, image: torch.Tensor) -> Instances:
        raw = Instances(tuple(image.shape[1:]), **dict(zip(self.fields, self.run(image))))
        raw.pred_boxes = Boxes(raw.pred_boxes)
        return raw[raw.scores > self.score_thresh]

    def inference(self, batched_inputs: list[dict], do_postprocess: bool = True) -> list:
        """Raw ``Instances`` at the input's size, or (``do_postprocess``) Detectron2's
        ``[{"instances": ...}]`` at each dict's ``height`` x ``width``."""
        raws = [self._raw(inputs["image"]) for inputs in batched_inputs]
        if not do_postprocess:
            return raws
        return [{"instances": detector_postprocess(
            raw, inputs.get("height", raw.image_size[0]), inputs.get("width", raw.image_size[1]))}
            for raw, inputs in zip(raws, batched_inputs)]

    __call__ = inference   # a Detectron2 model in eval mode: forward is inference


def _read_sidecar(path: Path) -> dict:
    sidecar = sidecar_path(path)
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: its sidecar {sidecar.name} is missing; export the model "
                        "with tools/export_model.py, which writes both") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{sidecar}: not a readable export sidecar ({err})") from None
    expected = {"format", "kind", "outputs", "config"}
    if not isinstance(info, dict) or not expected <= info.keys():
        raise UserError(f"{sidecar}: not an export sidecar (needs {sorted(expected)})")
    if FORMATS.get(info["format"]) != path.suffix:
        raise UserError(f"{sidecar}: says format {info['format']!r}, but the file is "
                        f"{path.name}")
    return info


def _config_from(info: dict, sidecar: Path) -> CfgNode:
    cfg = add_maskrcnn_pp_config(get_cfg())
    try:
        cfg.merge_from_other_cfg(CfgNode.load_cfg(info["config"]))
    except Exception as err:   # yaml and yacs raise many types for a bad config
        raise UserError(f"{sidecar}: its config does not load here ({err})") from None
    cfg.freeze()
    return cfg


def _graph_runner(path: Path, fmt: str) -> Callable[[torch.Tensor], Any]:
    """A function from the input tensor to the graph's output tensor(s)."""
    if fmt == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as err:
            raise UserError(f"{path}: not a TorchScript file "
                            f"({str(err).strip().splitlines()[0]})") from None

        def run_torchscript(x: torch.Tensor):
            with torch.no_grad():
                return module(x)

        return run_torchscript
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"{path}: running ONNX files needs onnxruntime "
                        "(pip install -e .[export])") from None
    try:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()   # as many as torch uses
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
    except Exception as err:   # onnxruntime raises its own exception types
        raise UserError(f"{path}: onnxruntime cannot load it ({err})") from None
    input_name = session.get_inputs()[0].name

    def run_onnx(x: torch.Tensor):
        outputs = [torch.from_numpy(o) for o in
                   session.run(None, {input_name: x.detach().cpu().numpy()})]
        return outputs if len(outputs) > 1 else outputs[0]

    return run_onnx


def _sized_semantic(run: Callable[[torch.Tensor], torch.Tensor], cfg: CfgNode, path: Path
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The semantic graph, refusing spatial sizes it was not traced for: the eager network
    crops or pads odd-sized levels, which a trace fixes to the traced case."""
    multiple = 2 ** (len(cfg.MODEL.SEMANTIC.WIDTHS) - 1)

    def model_fn(x: torch.Tensor) -> torch.Tensor:
        if any(size % multiple for size in x.shape[2:]):
            raise UserError(f"{path}: input spatial size {tuple(x.shape[2:])} is not a "
                            f"multiple of {multiple}, which the exported network needs")
        return run(x)

    return model_fn


def load_exported_model(path: PathLike, score_thresh: float | None = None) -> ExportedModel:
    """Load ``model*.ts`` / ``model*.onnx`` and its sidecar (see :class:`ExportedModel`).

    ``score_thresh`` overrides the exported config's ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``
    for detectors. Raises :class:`UserError` for a missing or wrong file.
    """
    path = Path(path)
    if path.suffix not in FORMATS.values():
        raise UserError(f"{path}: an exported model ends in {' or '.join(FORMATS.values())}")
    if not path.is_file():
        raise UserError(f"exported model {path} does not exist")
    info = _read_sidecar(path)
    cfg = _config_from(info, sidecar_path(path))
    run = _graph_runner(path, info["format"])
    if info["kind"] == "semantic":
        return ExportedModel(path, cfg, info, _sized_semantic(run, cfg, path))
    if score_thresh is None:
        score_thresh = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    detector = _GraphDetector(run, info["outputs"], score_thresh)
    return ExportedModel(path, cfg, info, DetectronModelRunner(detector, cfg))
