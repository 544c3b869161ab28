"""Metrics and Detectron2 evaluators (loaded on first use, so that a light module here, such
as ``metric_notes``, imports without torch)."""
import importlib

_EVALUATORS = {"NucleiEvaluator": "nuclei", "evaluate_coco_results": "nuclei",
               "SemanticEvaluator": "semantic"}

__all__ = list(_EVALUATORS)


def __getattr__(name: str):
    if name in _EVALUATORS:
        return getattr(importlib.import_module(f".{_EVALUATORS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
