"""Every inference mode of a semantic UNet++ scored in one pass over a data set.

UNet++ with deep supervision predicts in an accurate mode (level 0, the mean of its
outputs) and in fast modes L1..L_L (the network pruned to output j; the paper's Fig. 3).
:class:`InferenceModes` wraps a pure :class:`~maskrcnn_pp.evaluation.semantic.SemanticEvaluator`
for Detectron2's ``inference_on_dataset``: each batch's outputs go to it as they are, and
the batch's predictions in every mode go to it under that mode's name. Scores alone come
from one more forward pass (``SemanticUNetPP.inference_modes``: periodic evaluation in
``Trainer.test`` and studies); ``timed=True`` runs each mode's pruned network on its own
and times it (the pruning report).
"""
from __future__ import annotations

import time

import torch
from detectron2.evaluation import DatasetEvaluator
from torch import nn

from ..evaluation.semantic import SemanticEvaluator, mode_name

__all__ = ["InferenceModes", "inference_modes"]


def inference_modes(model: nn.Module) -> tuple[int, ...]:
    """The modes of a :class:`SemanticUNetPP` (or a DDP wrapper of one): fast modes L1..L_L,
    then the accurate mode 0, as the paper's Fig. 3."""
    net_owner = getattr(model, "module", model)
    if not (hasattr(net_owner, "inference") and hasattr(net_owner, "levels")):
        raise TypeError(f"{type(net_owner).__name__} has no inference(inputs, level); "
                        "pass a SemanticUNetPP")
    return (*net_owner.levels, 0)


class InferenceModes(DatasetEvaluator):
    """``evaluator`` fed with ``model``'s outputs and its predictions in every inference mode.

    The results are the evaluator's: ``IoU``/``Dice`` of the model's outputs, and
    ``IoU_<mode>``, ``Dice_<mode>`` of each mode (``L1``.., ``accurate``) and, when
    ``timed``, ``ms_per_image_<mode>``: the time of the model alone, with CUDA synchronized
    around it.
    """

    def __init__(self, model: nn.Module, evaluator: SemanticEvaluator, *, timed: bool = False):
        self.modes = inference_modes(model)
        self.model = getattr(model, "module", model)
        self.evaluator = evaluator
        self.timed = timed

    def reset(self) -> None:
        self.evaluator.reset()

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        self.evaluator.process(inputs, outputs)
        if not self.timed:
            with torch.no_grad():
                predictions = self.model.inference_modes(inputs)
            for mode in self.modes:
                self.evaluator.process(inputs, predictions[mode], mode=mode_name(mode))
            return
        cuda = self.model.device.type == "cuda"
        for mode in self.modes:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                predictions = self.model.inference(inputs, level=mode)
            if cuda:
                torch.cuda.synchronize()
            self.evaluator.process(inputs, predictions, mode=mode_name(mode),
                                   seconds=time.perf_counter() - start)

    def evaluate(self) -> dict:
        return self.evaluator.evaluate()
