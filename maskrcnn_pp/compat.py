"""Everything that differs between Detectron2 builds, in one place.

The package runs on the patched PyPI v0.6 (no ``detectron2._C``) and on an official
upstream build (with ``_C``). It uses no ``_C`` op; only the COCO evaluator's optional
C++ speed-up depends on the build.

Every private Detectron2 name the package needs (``_write_metrics``, ``_load_file``,
``comm._LOCAL_PROCESS_GROUP`` ...) is used here only, behind a public name, so an upgrade
has one file to check; ``tests/test_compat_boundary.py`` keeps it so.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import sys

import detectron2

DETECTRON2_VERSION = detectron2.__version__
HAS_C_EXTENSION = importlib.util.find_spec("detectron2._C") is not None


def coco_evaluator(dataset_name: str, output_dir=None, *, max_dets_per_image: int = 100,
                   **kwargs):
    """A ``COCOEvaluator`` that asks for the fast C++ implementation only where it exists,
    and for AP over ``max_dets_per_image`` detections where the build can (upstream; v0.6
    always stops at COCO's 100, which loses objects in crowded nuclei images)."""
    from detectron2.evaluation import COCOEvaluator

    kwargs.setdefault("use_fast_impl", HAS_C_EXTENSION)
    if "max_dets_per_image" in inspect.signature(COCOEvaluator.__init__).parameters:
        kwargs["max_dets_per_image"] = max_dets_per_image
    return COCOEvaluator(dataset_name, output_dir=output_dir, **kwargs)


def restart_data_loader(trainer) -> None:
    """Make a ``SimpleTrainer`` draw its next batch from a fresh iterator of its loader
    (after the sampler was moved). v0.6 creates the iterator in ``__init__``; upstream
    creates it lazily behind a ``_data_loader_iter`` property."""
    if isinstance(getattr(type(trainer), "_data_loader_iter", None), property):
        trainer._data_loader_iter_obj = None
    else:
        trainer._data_loader_iter = iter(trainer.data_loader)


def detectron2_export():
    """``detectron2.export`` (``TracingAdapter``, ``flatten``, ``torchscript_patch``) on any
    build. v0.6's package ``__init__`` imports caffe2, which current torch no longer ships;
    ``tools/install_detectron2.py`` guards that import, but a build installed before the
    guard still fails. There the package is registered without running its ``__init__``,
    so its caffe2-free submodules import as usual."""
    try:
        import detectron2.export as export
        return export
    except ImportError as err:
        if "caffe2" not in str(err):
            raise
    spec = importlib.util.find_spec("detectron2.export")
    package = importlib.util.module_from_spec(spec)
    sys.modules["detectron2.export"] = package
    from detectron2.export import flatten, torchscript_patch  # noqa: F401

    package.TracingAdapter = flatten.TracingAdapter
    return package


# --------------------------------------------------------------------------- private API
# Detectron2's private names that the package needs, each behind one public name here.


def init_trainer_base(trainer) -> None:
    """Set up only ``TrainerBase``'s state (hooks, iteration counters) of a
    ``DefaultTrainer`` subclass that builds its model, loader and inner trainer itself:
    ``DefaultTrainer.__init__`` would build a second model."""
    from detectron2.engine.train_loop import TrainerBase

    TrainerBase.__init__(trainer)


def train_loop_logger() -> logging.Logger:
    """The logger of Detectron2's training loop (it logs "Exception during training")."""
    from detectron2.engine.train_loop import TrainerBase

    return logging.getLogger(TrainerBase.__module__)


def inner_trainer(trainer):
    """The ``SimpleTrainer``/``AMPTrainer`` that runs the steps of a ``DefaultTrainer``."""
    return trainer._trainer


def set_inner_trainer(trainer, inner) -> None:
    """Make ``inner`` the step runner of a ``DefaultTrainer`` (see :func:`inner_trainer`)."""
    trainer._trainer = inner


class LossCheckHook:
    """Mixin before ``SimpleTrainer``/``AMPTrainer`` in the bases: calls
    ``self.check_losses(loss_dict)`` where Detectron2 writes a step's metrics (its private
    ``_write_metrics``), which is after the backward pass and before ``optimizer.step()``."""

    def check_losses(self, loss_dict) -> None:
        """Raise to stop before the step; the default accepts every loss."""

    def _write_metrics(self, loss_dict, *args, **kwargs):
        self.check_losses(loss_dict)
        super()._write_metrics(loss_dict, *args, **kwargs)


def set_local_process_group(group) -> None:
    """Detectron2's per-machine process group, read by ``comm.get_local_rank()`` and
    ``comm.get_local_size()``; ``None`` after the run."""
    from detectron2.utils import comm

    comm._LOCAL_PROCESS_GROUP = group


def transform_annotations(mapper, dataset_dict: dict, transforms, image_shape) -> None:
    """``DatasetMapper``'s annotation step (boxes, masks, keypoints under ``transforms``
    into ``dataset_dict["instances"]``), for mappers that read the image their own way."""
    mapper._transform_annotations(dataset_dict, transforms, image_shape)


def paste_mask_in_box(probabilities, boxes, height: int, width: int):
    """Detectron2's mask pasting over the boxes' region only: ``(pasted, (rows, cols))``
    with the slices of the image that ``pasted`` covers (``skip_empty``)."""
    from detectron2.layers.mask_ops import _do_paste_mask

    return _do_paste_mask(probabilities, boxes, height, width, skip_empty=True)


class SeekableTrainingSampler:
    """Public names for a ``TrainingSampler``'s private state; a mixin before
    ``TrainingSampler`` in the bases."""

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def infinite_indices(self):
        """The sampler's endless index stream of all ranks, from its start."""
        return self._infinite_indices()
