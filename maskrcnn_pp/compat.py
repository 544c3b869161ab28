"""Everything that differs between Detectron2 builds, in one place.

The package runs on the patched PyPI v0.6 (no ``detectron2._C``) and on an official
upstream build (with ``_C``). It uses no ``_C`` op; only the COCO evaluator's optional
C++ speed-up depends on the build.
"""
from __future__ import annotations

import importlib.util
import inspect
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
