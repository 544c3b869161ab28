"""``load_predictor``: a predictor for whatever a config builds, or for an exported model."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
from detectron2.config import CfgNode

from ..config import check_config_values
from ..engine.checkpoint import load_trained_model
from ..engine.config import is_semantic, load_config
from ..utils.errors import UserError
from .instance import MIN_VISIBLE_FRACTION, DetectronModelRunner, InstancePredictor
from .predictor import Predictor
from .semantic import SemanticModelRunner, SemanticPredictor

__all__ = ["load_predictor", "predictor_from_model_fn", "EXPORTED_SUFFIXES"]

EXPORTED_SUFFIXES = (".ts", ".onnx")


def predictor_from_model_fn(cfg: CfgNode, model_fn, *, score_thresh: float = 0.5,
                            threshold: float = 0.5,
                            min_visible_fraction: float = MIN_VISIBLE_FRACTION,
                            **options) -> Predictor:
    """The predictor of ``cfg``'s model kind around a network callable (eager or exported;
    the signatures are in :mod:`maskrcnn_pp.inference`)."""
    if is_semantic(cfg):
        return SemanticPredictor.from_config(cfg, model_fn, threshold=threshold, **options)
    return InstancePredictor.from_config(cfg, model_fn, score_thresh=score_thresh,
                                         min_visible_fraction=min_visible_fraction, **options)


def load_predictor(config: Union[str, os.PathLike, CfgNode], weights: Optional[str] = None,
                   *, score_thresh: float = 0.5, threshold: float = 0.5,
                   tile_size: Optional[int] = None, tile_overlap: Optional[int] = None,
                   device: Optional[str] = None, level: Optional[int] = None,
                   min_visible_fraction: float = MIN_VISIBLE_FRACTION,
                   allow_unsafe_pickle: bool = False, progress: bool = False,
                   opts: Optional[list[str]] = None) -> Predictor:
    """A predictor for Mask R-CNN++, the baseline, or semantic UNet++ / U-Net (2D or 3D).

    ``config`` is a YAML file (with ``opts``, ``KEY VALUE`` overrides) or a CfgNode, and
    ``weights`` the .pth written by training; or ``config`` is an exported ``model.ts`` /
    ``model.onnx`` alone (``tools/export_model.py``). Options: ``score_thresh`` (instances),
    ``threshold`` (semantic foreground), ``tile_size`` / ``tile_overlap`` (image pixels; the
    network sees them at its training scale), ``device`` (``MODEL.DEVICE``), ``level``
    (inference level of UNet++ outputs: 0 accurate, j the pruned sub-network j;
    ``MODEL.SEMANTIC`` or ``MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL``), ``min_visible_fraction``
    (instances: where masks overlap, the higher score keeps the pixels, and an instance
    left with less than this fraction of its mask is dropped).
    Calling the predictor on a numpy array returns an
    :class:`~maskrcnn_pp.inference.instance.InstanceResult` or a
    :class:`~maskrcnn_pp.inference.semantic.SemanticResult`.
    """
    options = dict(score_thresh=score_thresh, threshold=threshold, tile_size=tile_size,
                   tile_overlap=tile_overlap, progress=progress,
                   min_visible_fraction=min_visible_fraction)
    if not isinstance(config, CfgNode) and str(config).endswith(EXPORTED_SUFFIXES):
        if weights is not None:
            raise UserError(f"{config} is an exported model: give it alone, without weights")
        from .export import load_exported_model

        exported = load_exported_model(Path(config), score_thresh=score_thresh)
        predictor = predictor_from_model_fn(exported.cfg, exported.model_fn, **options)
        predictor.source = {"exported": str(config)}
        return predictor
    cfg = config.clone() if isinstance(config, CfgNode) else load_config(str(config), opts)
    if not weights:
        raise UserError("no weights given: pass the .pth file written by training")
    cfg.defrost()
    if device is not None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but no CUDA device is available")
        cfg.MODEL.DEVICE = device
    if level is not None:
        (cfg.MODEL.SEMANTIC if is_semantic(cfg) else cfg.MODEL.ROI_MASK_HEAD
         ).INFERENCE_LEVEL = level
        check_config_values(cfg, f"level {level}")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    cfg.MODEL.WEIGHTS = weights
    # Thresholds and tiling are checked before the slow model build.
    predictor_from_model_fn(cfg, None, **options)
    model = load_trained_model(cfg, weights, allow_unsafe_pickle=allow_unsafe_pickle,
                               weights_key="weights")
    model_fn = (SemanticModelRunner(model) if is_semantic(cfg)
                else DetectronModelRunner(model, cfg))
    predictor = predictor_from_model_fn(cfg, model_fn, **options)
    predictor.source = {"weights": os.fspath(weights)}
    return predictor
