"""Use a trained model: predictors for every model kind, at any image size.

``load_predictor(config_or_cfg, weights, **options)`` (or ``load_predictor("model.ts")`` for
an exported model) returns an :class:`InstancePredictor` (Mask R-CNN++, the baseline) or a
:class:`SemanticPredictor` (UNet++ / U-Net, 2D or 3D); calling it on a numpy array returns
an :class:`InstanceResult` or a :class:`SemanticResult`. Both are a :class:`Predictor`:
``prepare`` (array or file -> network input), ``run`` (-> result), ``write`` (-> files), the
same steps for every kind of model (:mod:`.predictor`).

Both predictors wrap a *network callable*, so an exported graph can replace the eager
network; the pre- and post-processing around it stay the same:

* instance ``model_fn(tile) -> Instances``: ``tile`` is an 8-bit RGB (h, w, 3) uint8 array,
  already intensity-normalized by :mod:`maskrcnn_pp.data.image_io`; the result is a
  Detectron2 ``Instances`` of the tile's size with ``pred_masks`` (N, h, w) bool (tensor or
  array), ``scores``, ``pred_classes`` and ``pred_boxes`` (XYXY, bounding each mask). Eager
  version: :class:`DetectronModelRunner`, which shows the network each tile at its training
  scale with per-tile limits that grow with the tile; a callable whose limits are fixed
  (an exported graph) says so with ``scales_limits = False``.
* semantic ``model_fn(batch) -> probabilities``: ``batch`` is a float32 tensor (N, C, H, W)
  or (N, C, D, H, W) on the 0..255 scale, prepared exactly as the semantic test mapper
  does (:func:`maskrcnn_pp.data.semantic_mapper.semantic_network_input`); the result is (N, K, ...)
  foreground (K = 1) or class probabilities of the same spatial size. Eager version:
  :class:`SemanticModelRunner`.
"""
from .api import EXPORTED_SUFFIXES, load_predictor, predictor_from_model_fn
from .instance import (
    DetectronModelRunner,
    InstancePredictor,
    InstanceResult,
    crop_rle,
    resolve_overlaps,
)
from .predictor import DegenerateImageError, Predictor, Prepared
from .semantic import SemanticModelRunner, SemanticPredictor, SemanticResult
from .tiling import Window, check_tiling, tile_windows

__all__ = [
    "load_predictor", "predictor_from_model_fn", "EXPORTED_SUFFIXES",
    "Predictor", "Prepared", "DegenerateImageError",
    "InstancePredictor", "InstanceResult", "DetectronModelRunner", "crop_rle",
    "resolve_overlaps", "SemanticPredictor", "SemanticResult", "SemanticModelRunner",
    "Window", "check_tiling", "tile_windows",
]
