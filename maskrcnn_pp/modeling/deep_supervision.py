"""Deep supervision of the top nodes ``X^{0,1..K}``, written once for the UNet++ mask head
and the semantic UNet++.

Both read K top nodes of the nested pathways through one output head each, train with one
loss per output, and at inference either average the trained outputs' probabilities
(the accurate mode, level ``ACCURATE = 0``) or use output ``j`` alone, computing only the
nodes it depends on (the fast mode, level ``j``: the pruned UNet++ L_j). An output given
loss weight 0 is built (so checkpoints keep one layout) but its classifier never learns,
so neither mode reads it: averaging its untrained logits in would only add noise.

Loss reduction: the weighted sum ``sum_j w_j * loss_j`` with ``w_j = 1/K`` unless the
config's ``DEEP_SUPERVISION_WEIGHTS`` says otherwise, i.e. the mean of the K losses. The
mean keeps the total on the scale of one output's loss whatever K is, so the learning rate
and the balance with other losses (Mask R-CNN's box and class terms) do not change when
outputs are added or deep supervision is switched off. Each weighted term is returned
under its own name (``loss_mask_j``, ``loss_seg_j``) so that it is logged on its own;
Detectron2 sums them.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..config import trained_outputs
from .nested import Node

__all__ = ["ACCURATE", "DeepSupervisionHeads", "mean_probabilities", "supervision_weights",
           "weighted_losses"]

# The inference level of the accurate mode (mean of every output); j >= 1 is UNet++ L_j.
ACCURATE = 0


def mean_probabilities(probabilities: Iterable[torch.Tensor]) -> torch.Tensor:
    """The accurate mode: the mean of the outputs' probabilities (not of their logits, so
    a confident output cannot outvote the others by its magnitude alone)."""
    return torch.stack(list(probabilities)).mean(dim=0)


def supervision_weights(levels: Sequence[int], weights: Sequence[float] = (), *,
                        config_prefix: str = "MODEL") -> dict[int, float]:
    """``w_j`` per output ``j``: the given weights (one per level), else ``1/K`` each."""
    levels = [int(j) for j in levels]
    if weights and len(weights) != len(levels):
        raise ValueError(f"{config_prefix}.DEEP_SUPERVISION_WEIGHTS has {len(weights)} "
                         f"value(s) for {len(levels)} supervised output(s) {levels}")
    values = [float(w) for w in weights] or [1.0 / len(levels)] * len(levels)
    if not any(w > 0 for w in values):
        raise ValueError(f"{config_prefix}.DEEP_SUPERVISION_WEIGHTS gives every output weight "
                         "0: at least one output must be trained")
    return dict(zip(levels, values))


def weighted_losses(losses: Mapping[int, torch.Tensor], weights: Mapping[int, float],
                    name: str) -> dict[str, torch.Tensor]:
    """``{f"{name}_{j}": w_j * loss_j}``: the reduction of the module docstring (Detectron2
    sums the returned terms)."""
    return {f"{name}_{j}": loss * weights[j] for j, loss in losses.items()}


class DeepSupervisionHeads(nn.ModuleDict):
    """One output head per supervised top node ``X^{0,j}``, keyed ``"j"``.

    Args:
        levels: the supervised outputs ``j`` (shallowest first).
        make_head: builds one head (a fresh module per call).
        loss_weights: ``w_j`` per output, in the order of ``levels``; empty means ``1/K``.
        config_prefix: the config node that holds the keys (e.g. ``MODEL.SEMANTIC``), so
            that errors name the key a user sets.
    """

    def __init__(self, levels: Sequence[int], make_head: Callable[[], nn.Module], *,
                 loss_weights: Sequence[float] = (), config_prefix: str = "MODEL"):
        super().__init__({str(j): make_head() for j in levels})
        self.levels: tuple[int, ...] = tuple(int(j) for j in levels)
        self.config_prefix = config_prefix
        self.loss_weights = supervision_weights(self.levels, loss_weights,
                                                config_prefix=config_prefix)
        # The outputs that learn (weight > 0): the only ones inference reads.
        self.trained_levels: tuple[int, ...] = tuple(
            trained_outputs(list(self.levels), list(self.loss_weights.values())))

    def check_level(self, level: int, source: str = "") -> int:
        """``level`` if it is the accurate mode (0) or one of the trained outputs, else an
        error naming where it came from (``source``; by default the config key).

        ``None``, the accurate mode of earlier versions' ``predict(x, level=None)``, is read
        as 0 with a ``FutureWarning`` for one release. (Where a caller that knows a config
        takes an optional level, as ``SemanticUNetPP.inference`` and ``load_predictor`` do,
        None means "not given": the configured ``INFERENCE_LEVEL``; it never reaches here.)"""
        if level is None:
            warnings.warn("level=None for the accurate mode is deprecated and will be removed "
                          f"in the next release; use level={ACCURATE} (ACCURATE)",
                          FutureWarning, stacklevel=3)
            return ACCURATE
        if level != ACCURATE and level not in self.trained_levels:
            source = source or f"{self.config_prefix}.INFERENCE_LEVEL"
            why = (f"is output {level}, trained with weight 0 "
                   f"({self.config_prefix}.DEEP_SUPERVISION_WEIGHTS)" if level in self.levels
                   else "is not available")
            raise ValueError(f"inference level {level} ({source}) {why}: use "
                             f"{ACCURATE} (accurate) or one of "
                             f"{list(self.trained_levels)}")
        return level

    def outputs_of(self, level: int, *, training: bool = False) -> tuple[int, ...]:
        """The outputs a level reads: every trained one (accurate) or output ``j`` alone.
        Training reads every output, weight 0 included, so that every parameter gets a
        gradient (DistributedDataParallel requires it)."""
        if training:
            return self.levels
        return self.trained_levels if self.check_level(level) == ACCURATE else (level,)

    def nodes_of(self, level: int, *, training: bool = False) -> list[Node]:
        """The top nodes to request from the nested pathways for ``level``."""
        return [(0, j) for j in self.outputs_of(level, training=training)]

    def forward(self, nodes: Mapping[Node, torch.Tensor], outputs: Sequence[int]
                ) -> dict[int, torch.Tensor]:
        """Logits of the given outputs from the computed nodes, keyed by ``j``."""
        return {j: self[str(j)](nodes[(0, j)]) for j in outputs}

    def weighted_losses(self, losses: Mapping[int, torch.Tensor], name: str
                        ) -> dict[str, torch.Tensor]:
        """``{f"{name}_{j}": w_j * loss_j}`` with this module's weights."""
        return weighted_losses(losses, self.loss_weights, name)
