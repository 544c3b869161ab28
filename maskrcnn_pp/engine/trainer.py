"""The Detectron2 trainer for every maskrcnn_pp model."""
from __future__ import annotations

import logging
import os
import weakref
from typing import List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from .. import compat
from ..data.mapper import CheckedDatasetMapper
from ..data.sampling import build_resumable_train_loader
from ..data.semantic_mapper import build_semantic_test_loader, build_semantic_train_loader
from ..evaluation.nuclei import NucleiEvaluator
from ..evaluation.semantic import SemanticEvaluator
from ..modeling.roi_align import use_sparse_roi_align
from ..utils.errors import UserError
from ..utils.io import cut_json_lines
from .checkpoint import SafeCheckpointer
from .config import group_norm_widths_named, is_semantic
from .inference_modes import InferenceModes
from .launch import create_ddp_model
from .optim import build_optimizer

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "NonFiniteLossError"]


class NonFiniteLossError(UserError):
    """A loss became NaN or infinite; the weights were not updated with it."""


class _FiniteLossCheck(compat.LossCheckHook):
    """Stops before the optimizer step when a loss is not finite, naming loss and iteration.

    Detectron2 checks only the total after logging; this names the culprit, and because
    the check runs before ``optimizer.step()`` the bad gradients are never applied.
    Detectron2's own divergence check (non-finite predicted boxes, raised in the forward
    pass after a finite but exploding step) is named the same way.
    """

    def check_losses(self, loss_dict) -> None:
        bad = {k: float(v.detach()) for k, v in loss_dict.items()
               if not torch.isfinite(v).all()}
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.iter}: "
                + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())))

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as err:
            raise NonFiniteLossError(self._divergence(err)) from None

    def _divergence(self, err: FloatingPointError) -> str:
        """Where training diverged: the iteration, the first non-finite weight, and the
        largest of the last (finite) losses."""
        weight = next((name for name, p in self.model.named_parameters()
                       if not torch.isfinite(p).all()), None)
        losses = sorted(((value, name, step) for name, (value, step)
                         in get_event_storage().latest().items() if name.startswith("loss")),
                        reverse=True)
        last = (f"; the losses of iteration {losses[0][2]} were finite, the largest "
                f"{losses[0][1]}={losses[0][0]:.4g}" if losses else "")
        return (f"diverged at iteration {self.iter}: non-finite predicted boxes or scores "
                f"(Detectron2: {str(err).splitlines()[0]}) with "
                f"{f'the first non-finite weight {weight}' if weight else 'finite weights'}"
                f"{last}")


def _hide_user_error_traceback(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], UserError))


class CheckedSimpleTrainer(_FiniteLossCheck, SimpleTrainer):
    pass


class CheckedAMPTrainer(_FiniteLossCheck, AMPTrainer):
    pass


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with this project's evaluators and checkpointing rules.

    Differences from Detectron2's: evaluators are chosen from each data set's metadata
    (COCO, plus the nuclei metrics for nuclei sets); AMP runs only where CUDA exists; a
    resumed run continues the data stream where the checkpoint left it and drops the
    ``metrics.json`` records written after that checkpoint.
    """

    def __init__(self, cfg: CfgNode, *, allow_unsafe_pickle: bool = False):
        compat.init_trainer_base(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        use_amp = cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE.startswith("cuda")
        compat.set_inner_trainer(self, (CheckedAMPTrainer if use_amp else CheckedSimpleTrainer)(
            model, data_loader, optimizer))
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model, trainer=weakref.proxy(self),
                                                    allow_unsafe_pickle=allow_unsafe_pickle)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self):
        """Detectron2's loop, without its "Exception during training" traceback before a
        :class:`UserError`, whose one line says everything."""
        loop_logger = compat.train_loop_logger()
        loop_logger.addFilter(_hide_user_error_traceback)
        try:
            return super().train()
        finally:
            loop_logger.removeFilter(_hide_user_error_traceback)

    @classmethod
    def build_checkpointer(cls, cfg: CfgNode, model: torch.nn.Module, *,
                           allow_unsafe_pickle: bool = False, require_all_weights: bool = False,
                           **checkpointables) -> SafeCheckpointer:
        """Atomic checkpoints that never run code from a file unless ``allow_unsafe_pickle``
        (--allow-unsafe-pickle; a config file cannot allow it)."""
        return SafeCheckpointer(model, cfg.OUTPUT_DIR, allow_unsafe_pickle=allow_unsafe_pickle,
                                require_all_weights=require_all_weights, **checkpointables)

    @property
    def _sampler(self):
        return getattr(compat.inner_trainer(self).data_loader, "resumable_sampler", None)

    def state_dict(self) -> dict:
        """Detectron2 v0.6 saves no optimizer state; resuming must restore it, and the data
        stream's seed."""
        state = super().state_dict()
        state["_trainer"] = compat.inner_trainer(self).state_dict()
        if self._sampler is not None:
            state["data_sampler"] = {"seed": self._sampler.seed}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            compat.inner_trainer(self).load_state_dict(state_dict["_trainer"])
        if "data_sampler" in state_dict and self._sampler is not None:
            self._sampler.seed = state_dict["data_sampler"]["seed"]

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        if not (resume and self.start_iter > 0):
            return
        if self.start_iter >= self.max_iter:
            self._finish_killed_run()
            return
        if comm.is_main_process():
            _drop_metrics_from(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"),
                               self.start_iter)
        if self._sampler is None:
            logger.warning("DATALOADER.SAMPLER_TRAIN %s cannot continue its stream: the "
                           "resumed run draws a new data order", self.cfg.DATALOADER.SAMPLER_TRAIN)
            return
        self._sampler.skip = self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH
        compat.restart_data_loader(compat.inner_trainer(self))
        logger.info("Data stream continues after %d samples (seed %d)", self._sampler.skip,
                    self._sampler.seed)

    def _finish_killed_run(self) -> None:
        """A run killed between its last periodic checkpoint and ``model_final.pth`` resumes
        with no iteration left, so Detectron2 would never write the final model: write it
        from the last checkpoint (as Detectron2 does, with the last iteration's number)."""
        if not os.path.isfile(os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")):
            logger.info("The last checkpoint is the end of training: writing model_final.pth")
            self.checkpointer.save("model_final", iteration=self.max_iter - 1)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """Detectron2's, with GroupNorm widths named (:func:`group_norm_widths_named`); on
        the CPU with ``MODEL.FAST_PATHS``, its ROI poolers use :class:`SparseROIAlign`."""
        with group_norm_widths_named(cfg):
            model = super().build_model(cfg)
        if cfg.MODEL.FAST_PATHS and cfg.MODEL.DEVICE == "cpu":
            use_sparse_roi_align(model)
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module):
        """SOLVER.OPTIMIZER: "SGD" (Detectron2's) or "ADAM" (the UNet++ paper's)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        if is_semantic(cfg):
            return build_semantic_train_loader(cfg)
        return build_resumable_train_loader(cfg, CheckedDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        if is_semantic(cfg):
            return build_semantic_test_loader(cfg, dataset_name)
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=CheckedDatasetMapper(cfg, False))

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        """As Detectron2's; semantic data sets are also scored in every inference mode,
        accurate and UNet++ L1..L4, from one more forward pass (:class:`InferenceModes`;
        timing each mode is the pruning report's job)."""
        if evaluators is None and is_semantic(cfg):
            evaluators = [InferenceModes(model, cls.build_evaluator(cfg, name))
                          for name in cfg.DATASETS.TEST]
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str,
                        output_folder: Optional[str] = None) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        meta = MetadataCatalog.get(dataset_name)
        evaluator_type = meta.get("evaluator_type", "coco")
        if evaluator_type == "semantic":
            return SemanticEvaluator(dataset_name, output_dir=output_folder)
        if evaluator_type != "coco":
            raise UserError(f"data set {dataset_name!r} has evaluator_type {evaluator_type!r}, "
                            "which this trainer cannot evaluate")
        evaluators: List[DatasetEvaluator] = [
            compat.coco_evaluator(dataset_name, output_dir=output_folder,
                                  max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)]
        if meta.get("nuclei", False):
            evaluators.append(NucleiEvaluator(dataset_name, output_dir=output_folder,
                                              max_dets=cfg.TEST.DETECTIONS_PER_IMAGE))
        return DatasetEvaluators(evaluators)


def _drop_metrics_from(path: str, start_iter: int) -> None:
    """Cut ``metrics.json`` before its first record of iteration ``start_iter`` or later
    (written after the checkpoint a resumed run starts from) or its first unreadable line (a
    record cut short by a kill). Truncating in place keeps the append-mode handle
    Detectron2's ``JSONWriter`` already holds valid."""
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    cut_json_lines(path, stop=lambda record: record.get("iteration", -1) >= start_iter)
    if os.path.isfile(path) and os.path.getsize(path) < size:
        logger.info("metrics.json: dropped the records from iteration %d on, which the "
                    "resumed run writes again", start_iter)
