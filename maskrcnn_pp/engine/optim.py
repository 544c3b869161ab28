"""``build_optimizer(cfg, model)``: Detectron2's SGD or the paper's Adam, by ``SOLVER.OPTIMIZER``.

Detectron2 v0.6 builds only SGD; UNet++ was trained with Adam (lr 3e-4). Both share
Detectron2's parameter groups (``WEIGHT_DECAY_NORM``, bias overrides) and its optional
gradient clipping.
"""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as build_detectron2_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..utils.errors import UserError

__all__ = ["build_optimizer"]


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.SOLVER.OPTIMIZER`` ("SGD" or "ADAM", any case)."""
    name = str(cfg.SOLVER.get("OPTIMIZER", "SGD")).upper()
    if name == "SGD":
        return build_detectron2_optimizer(cfg, model)
    if name != "ADAM":
        raise UserError(f"SOLVER.OPTIMIZER must be 'SGD' or 'ADAM', got {cfg.SOLVER.OPTIMIZER!r}")
    params = get_default_optimizer_params(
        model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
    return maybe_add_gradient_clipping(cfg, torch.optim.Adam)(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
