"""The Detectron2 trainer for every maskrcnn_pp model, and config set-up for the CLIs."""
from __future__ import annotations

import logging
import os
import warnings
import weakref
from typing import List, Optional

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, default_setup
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .. import compat
from ..config import add_maskrcnn_pp_config, check_input_config
from ..data.mapper import CheckedDatasetMapper
from ..data.sampling import build_resumable_train_loader
from ..data.semantic import build_semantic_test_loader, build_semantic_train_loader
from ..evaluation.nuclei import NucleiEvaluator
from ..evaluation.semantic import SemanticEvaluator
from ..modeling.semantic_arch import SemanticUNetPP
from ..utils.errors import UserError
from ..utils.io import cut_json_lines
from .checkpoint import SafeCheckpointer
from .launch import create_ddp_model
from .optim import build_optimizer

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "NonFiniteLossError", "is_semantic", "load_config", "setup"]


class NonFiniteLossError(UserError):
    """A loss became NaN or infinite; the weights were not updated with it."""


class _FiniteLossCheck:
    """Stops before the optimizer step when a loss is not finite, naming loss and iteration.

    Detectron2 checks only the total after logging; this names the culprit, and because
    ``_write_metrics`` runs before ``optimizer.step()`` the bad gradients are never applied.
    """

    def _write_metrics(self, loss_dict, data_time, prefix=""):
        bad = {k: float(v.detach()) for k, v in loss_dict.items()
               if not torch.isfinite(v).all()}
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.iter}: "
                + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())))
        super()._write_metrics(loss_dict, data_time, prefix)


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
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        use_amp = cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE.startswith("cuda")
        self._trainer = (CheckedAMPTrainer if use_amp else CheckedSimpleTrainer)(
            model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model, trainer=weakref.proxy(self),
                                                    allow_unsafe_pickle=allow_unsafe_pickle)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

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
        return getattr(self._trainer.data_loader, "resumable_sampler", None)

    def state_dict(self) -> dict:
        """Detectron2 v0.6 saves no optimizer state; resuming must restore it, and the data
        stream's seed."""
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        if self._sampler is not None:
            state["data_sampler"] = {"seed": self._sampler.seed}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        if "data_sampler" in state_dict and self._sampler is not None:
            self._sampler.seed = state_dict["data_sampler"]["seed"]

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        if not (resume and self.start_iter > 0):
            return
        if comm.is_main_process():
            _drop_metrics_from(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"),
                               self.start_iter)
        if self._sampler is None:
            logger.warning("DATALOADER.SAMPLER_TRAIN %s cannot continue its stream: the "
                           "resumed run draws a new data order", self.cfg.DATALOADER.SAMPLER_TRAIN)
            return
        self._sampler.skip = self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH
        compat.restart_data_loader(self._trainer)
        logger.info("Data stream continues after %d samples (seed %d)", self._sampler.skip,
                    self._sampler.seed)

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
        """As Detectron2's, but semantic evaluators get the model, so they can also time and
        score every pruned level L1..L4."""
        if evaluators is None and is_semantic(cfg):
            evaluators = [SemanticEvaluator(name, model, output_dir=os.path.join(
                cfg.OUTPUT_DIR, "inference", name)) for name in cfg.DATASETS.TEST]
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


def is_semantic(cfg: CfgNode) -> bool:
    """Whether ``cfg`` describes a semantic network (``SemanticUNetPP``), not a detector."""
    return cfg.MODEL.META_ARCHITECTURE == SemanticUNetPP.__name__


def load_config(config_file: str, opts: Optional[List[str]] = None) -> CfgNode:
    """Detectron2 defaults + maskrcnn_pp keys + the YAML file + ``KEY VALUE`` overrides.

    YAML is parsed with ``yaml.safe_load`` only (Detectron2's default would fall back to
    ``unsafe_load``, which can run code). Every mistake raises :class:`UserError`.
    """
    cfg = add_maskrcnn_pp_config(get_cfg())
    if not config_file:
        raise UserError("--config-file is required")
    if not os.path.isfile(config_file):
        raise UserError(f"config file {config_file} does not exist")
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
        cfg.merge_from_list(list(opts or []))
    except yaml.YAMLError as err:
        raise UserError(f"{config_file}: not a safe YAML config "
                        f"({str(err).splitlines()[0]})") from None
    except KeyError as err:
        raise UserError(f"{config_file}: {err.args[0]}") from None
    except (ValueError, AssertionError, TypeError) as err:
        raise UserError(f"{config_file}: {err}") from None
    check_input_config(cfg, config_file)
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in DatasetCatalog.list():
                raise UserError(f"{config_file}: unknown data set {name!r} in DATASETS.{key}; "
                                "register it with DatasetCatalog or use one of the README's")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn("MODEL.DEVICE is 'cuda' but no CUDA device is available: using the CPU",
                      stacklevel=2)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def _check_weights(cfg: CfgNode, resume: bool) -> None:
    weights = cfg.MODEL.WEIGHTS
    if not weights or "://" in weights or resume and os.path.isfile(
            os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    if not os.path.isfile(weights):
        raise UserError(f"MODEL.WEIGHTS file {weights} does not exist")


def setup(args) -> CfgNode:
    """Config from parsed CLI args, frozen, with Detectron2's logging and output folder."""
    cfg = load_config(args.config_file, args.opts)
    _check_weights(cfg, getattr(args, "resume", False))
    cfg.freeze()
    default_setup(cfg, args)
    return cfg
