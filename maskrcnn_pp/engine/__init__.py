"""Training: the Detectron2 trainer, launch, safe checkpoints, optimizers, config loading."""
from .config import is_semantic, load_config, setup

__all__ = ["is_semantic", "load_config", "setup"]
