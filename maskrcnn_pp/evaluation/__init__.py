"""Metrics and Detectron2 evaluators."""
from .nuclei import NucleiEvaluator, evaluate_coco_results  # noqa: F401
from .semantic import SemanticEvaluator  # noqa: F401
